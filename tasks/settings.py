"""Configuration: check the values from invoke.yaml and build the cluster model.

Pure: takes the configuration mapping, returns a `Cluster` or raises
`ConfigError` with a one-line message naming the key, the value and what is
expected. `cluster_from(c)` turns that into `invoke.Exit` at task boundaries.
"""
from __future__ import annotations

import ipaddress
import re
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Keys of every section of ours, with the type each value must have.
# invoke.yaml gives the defaults; tests check the two list the same keys.
SCHEMA = {
    "cluster": {
        "num_instances": int, "instance_name_prefix": str, "first_ip": str,
        "network": str, "provider": str, "hosts": list,
        "user_data_path": str, "activate_command": str, "ssh_timeout": int,
    },
    "vm": {
        "box": str, "box_url": str, "memory": int, "cpus": int,
        "timezone": str, "images": list,
    },
    "kubernetes": {"service_range": str, "dns_ip": str, "domain": str, "pause_image": str},
    "calico": {"pool": str},
    "versions": {"kubernetes": str, "calicoctl": str, "calico_cni": str,
                 "setup_network_environment": str},
    "paths": {"downloads": str, "output": str},
    "download": {
        "parallel": int, "timeout": int, "retries": int, "lock_file": str,
        "mirrors": dict, "artifacts": list,
    },
    "addons": {"manifests": list, "timeout": int},
    "verify": {"timeout": int, "interval": int, "api_url": str, "ui_path": str},
}
HOST_KEYS = {"name": str, "address": str, "port": int, "user": str, "key_file": str, "ip": str}
ARTIFACT_KEYS = {"name": str, "url": str, "dest": str, "mode": str, "sha256": str}
# Invoke's and Fabric's own top-level keys, which may appear in any config file.
FRAMEWORK_KEYS = {
    "run", "runners", "sudo", "tasks", "timeouts", "authentication", "connect_kwargs",
    "forward_agent", "gateway", "inline_ssh_env", "load_ssh_configs", "port",
    "ssh_config_path", "user",
}
PROVIDERS = ("vagrant", "hosts")
LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message is one line."""

    def __init__(self, key: str, value, expected: str):
        super().__init__(f"invalid configuration: {key} = {value!r}: expected {expected}")


@dataclass(frozen=True)
class Node:
    name: str
    ip: str                    # the cluster address: rendered into cloud-config and certificates
    role: str                  # "master" or "node"
    address: str = ""          # provider=hosts: where SSH reaches it (defaults to ip)
    port: int = 22
    user: str = "core"
    key_file: str = ""

    @property
    def is_master(self) -> bool:
        return self.role == "master"


@dataclass(frozen=True)
class Cluster:
    nodes: tuple[Node, ...]
    provider: str
    network: str
    service_range: str
    dns_ip: str
    domain: str
    pause_image: str
    pool: str
    versions: dict = field(hash=False)
    vm: dict = field(hash=False)
    user_data_path: str = ""
    activate_command: str = ""

    @property
    def master(self) -> Node:
        return self.nodes[0]

    @property
    def api_service_ip(self) -> str:
        """The first address of the service range: the `kubernetes` service."""
        return str(ipaddress.ip_network(self.service_range)[1])

    @property
    def calico_node_image(self) -> str:
        return f"calico/node:{self.versions['calicoctl']}"

    @property
    def images(self) -> list[str]:
        """Docker images every VM pre-pulls, without repeats, in a stable order."""
        wanted = [*self.vm["images"], self.pause_image, self.calico_node_image]
        return list(dict.fromkeys(wanted))

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)


def _get(config, section: str):
    try:
        return config[section]
    except KeyError:
        return {}


def check_keys(config) -> None:
    """Reject a key that no section knows: most often a typo."""
    for top in config:
        if top not in SCHEMA and top not in FRAMEWORK_KEYS:
            raise ConfigError(top, "...", f"one of the sections {', '.join(SCHEMA)}")
    for section, keys in SCHEMA.items():
        values = _get(config, section)
        if not hasattr(values, "items"):
            raise ConfigError(section, values, "a mapping of settings")
        for key, value in values.items():
            name = f"{section}.{key}"
            if key not in keys:
                raise ConfigError(name, value, f"a known key of {section}: {', '.join(keys)}")
            _check_type(name, value, keys[key])
    for i, entry in enumerate(_get(config, "cluster").get("hosts") or []):
        _check_entry(f"cluster.hosts[{i}]", entry, HOST_KEYS)
    for i, entry in enumerate(_get(config, "download").get("artifacts") or []):
        _check_entry(f"download.artifacts[{i}]", entry, ARTIFACT_KEYS)


def _check_type(name: str, value, kind: type) -> None:
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(name, value, "a whole number")
    if kind is dict and not hasattr(value, "items"):
        raise ConfigError(name, value, "a mapping")
    if kind in (str, list) and not isinstance(value, kind):
        raise ConfigError(name, value, "a list" if kind is list else "a string")


def _check_entry(name: str, entry, keys: dict) -> None:
    if not hasattr(entry, "items"):
        raise ConfigError(name, entry, f"a mapping with keys {', '.join(keys)}")
    for key, value in entry.items():
        if key not in keys:
            raise ConfigError(f"{name}.{key}", value, f"one of {', '.join(keys)}")
        _check_type(f"{name}.{key}", value, keys[key])


def _ipv4(name: str, value: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ConfigError(name, value, "an IPv4 address like 172.18.18.101") from None


def _net(name: str, value: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(value)
    except ValueError:
        raise ConfigError(name, value, "an IPv4 network in CIDR form like 10.100.0.0/16") from None


def positive(name: str, value: int) -> int:
    if value < 1:
        raise ConfigError(name, value, "a whole number of at least 1")
    return value


def _hostname(name: str, value: str) -> str:
    if not LABEL.match(value):
        raise ConfigError(name, value, "a hostname: lowercase letters, digits and '-', at most 63")
    return value


def _vagrant_nodes(cl: dict, network: ipaddress.IPv4Network) -> list[Node]:
    count = positive("cluster.num_instances", cl["num_instances"])
    prefix = cl["instance_name_prefix"]
    first = _ipv4("cluster.first_ip", cl["first_ip"])
    # Compared as numbers: listing the hosts of a /8 would take seconds and gigabytes.
    if not network.network_address < first < network.broadcast_address:
        raise ConfigError("cluster.first_ip", cl["first_ip"], f"a host address inside cluster.network {network}")
    room = int(network.broadcast_address) - int(first)
    if count > room:
        raise ConfigError("cluster.num_instances", count,
                          f"at most {room} nodes from {first} inside cluster.network {network}")
    names = [f"{prefix}-{i:02d}" for i in range(1, count + 1)]
    if not all(LABEL.match(n) for n in names):
        raise ConfigError("cluster.instance_name_prefix", prefix,
                          "a hostname prefix: lowercase letters, digits and '-'")
    return [Node(name=n, ip=str(first + i), role="master" if i == 0 else "node", address=str(first + i))
            for i, n in enumerate(names)]


def _host_nodes(cl: dict) -> list[Node]:
    entries = cl["hosts"]
    if not entries:
        raise ConfigError("cluster.hosts", entries, "at least one {name, address} entry when cluster.provider is hosts")
    nodes, seen_names, seen_ips = [], set(), set()
    for i, entry in enumerate(entries):
        key = f"cluster.hosts[{i}]"
        for required in ("name", "address"):
            if not entry.get(required):
                raise ConfigError(f"{key}.{required}", entry.get(required), "a non-empty string")
        name = _hostname(f"{key}.name", entry["name"])
        if name in seen_names:
            raise ConfigError(f"{key}.name", name, "a name no other host has")
        ip = entry.get("ip") or entry["address"]
        _ipv4(f"{key}.ip" if entry.get("ip") else f"{key}.address", ip)
        if ip in seen_ips:
            raise ConfigError(f"{key}.ip", ip, "an address no other host has")
        port = entry.get("port", 22)
        if not 0 < port < 65536:
            raise ConfigError(f"{key}.port", port, "a TCP port from 1 to 65535")
        seen_names.add(name)
        seen_ips.add(ip)
        nodes.append(Node(name=name, ip=ip, role="master" if i == 0 else "node",
                          address=entry["address"], port=port, user=entry.get("user", "core"),
                          key_file=entry.get("key_file", "")))
    return nodes


def _apart(services, pool, network, nodes: list[Node]) -> None:
    """Services, pods and nodes need address ranges of their own: overlaps break routing."""
    if pool.overlaps(services):
        raise ConfigError("calico.pool", str(pool), f"a network that does not overlap kubernetes.service_range {services}")
    if network is not None:
        for value, key in ((pool, "calico.pool"), (services, "kubernetes.service_range")):
            if value.overlaps(network):
                raise ConfigError(key, str(value), f"a network that does not overlap cluster.network {network}")
    for node in nodes:
        for value, key in ((pool, "calico.pool"), (services, "kubernetes.service_range")):
            if ipaddress.IPv4Address(node.ip) in value:
                raise ConfigError(key, str(value), f"a network that does not contain node {node.name}'s address {node.ip}")


def build(config) -> Cluster:
    """Check every value and return the cluster model; raises ConfigError."""
    check_keys(config)
    cl, vm, k8s = config["cluster"], config["vm"], config["kubernetes"]
    if cl["provider"] not in PROVIDERS:
        raise ConfigError("cluster.provider", cl["provider"], f"one of {', '.join(PROVIDERS)}")
    network = _net("cluster.network", cl["network"])
    if cl["provider"] == "vagrant":
        nodes = _vagrant_nodes(cl, network)
    else:
        nodes = _host_nodes(cl)
    services = _net("kubernetes.service_range", k8s["service_range"])
    if services.num_addresses < 4:
        raise ConfigError("kubernetes.service_range", k8s["service_range"], "a network of at least 4 addresses")
    dns = _ipv4("kubernetes.dns_ip", k8s["dns_ip"])
    if dns not in services or dns in (services.network_address, services[1], services.broadcast_address):
        raise ConfigError("kubernetes.dns_ip", k8s["dns_ip"],
                          f"an address inside kubernetes.service_range {services} other than {services[1]}")
    domain = k8s["domain"]
    if not domain or not all(LABEL.match(part) for part in domain.split(".")):
        raise ConfigError("kubernetes.domain", domain, "a DNS domain like cluster.local")
    pool = _net("calico.pool", config["calico"]["pool"])
    _apart(services, pool, network if cl["provider"] == "vagrant" else None, nodes)
    positive("verify.interval", config["verify"]["interval"])
    for section in ("addons", "verify"):
        if config[section]["timeout"] < 0:
            raise ConfigError(f"{section}.timeout", config[section]["timeout"], "a number of seconds, 0 or more")
    positive("vm.memory", vm["memory"])
    positive("vm.cpus", vm["cpus"])
    zones = zoneinfo.available_timezones()
    if zones and vm["timezone"] not in zones:
        raise ConfigError("vm.timezone", vm["timezone"], "a time zone name like Asia/Shanghai")
    for i, image in enumerate(vm["images"]):
        if not isinstance(image, str) or not image or " " in image:
            raise ConfigError(f"vm.images[{i}]", image, "a docker image name like busybox:latest")
    if not vm["box"]:
        raise ConfigError("vm.box", vm["box"], "a Vagrant box name")
    for key, value in config["versions"].items():
        if not value:
            raise ConfigError(f"versions.{key}", value, "a non-empty version")
    if not cl["user_data_path"].startswith("/"):
        raise ConfigError("cluster.user_data_path", cl["user_data_path"],
                          "an absolute path like /var/lib/coreos-vagrant/vagrantfile-user-data")
    if not k8s["pause_image"]:
        raise ConfigError("kubernetes.pause_image", k8s["pause_image"], "a docker image name")
    return Cluster(
        nodes=tuple(nodes), provider=cl["provider"], network=str(network),
        service_range=str(services), dns_ip=str(dns), domain=domain,
        pause_image=k8s["pause_image"], pool=str(pool), versions=dict(config["versions"]),
        vm=dict(vm, images=list(vm["images"])), user_data_path=cl["user_data_path"],
        activate_command=cl["activate_command"],
    )


def path(config, key: str) -> Path:
    """A `paths.*` value as an absolute path; relative ones start at the project folder."""
    return resolve(config["paths"][key])


def resolve(value: str) -> Path:
    """A configured path as an absolute one; relative ones start at the project folder."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else ROOT / p


def cluster_from(c) -> Cluster:
    """The cluster of a task's context, or `invoke.Exit` with the one-line reason."""
    from invoke import Exit

    try:
        return build(c.config)
    except ConfigError as err:
        raise Exit(str(err), code=2) from None

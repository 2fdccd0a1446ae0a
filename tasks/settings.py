"""Configuration: invoke.yaml and the stack's defaults, checked once into a `Project`.

Pure: `build(config)` takes the configuration mapping and returns the
`Project` every step receives, or raises `ConfigError` with a one-line message
naming the key, the value and what is expected. `load(c)` does the same for a
task's context.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import re
import string
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tasks import stack as stacks
from tasks.errors import ConfigError, UsageError
from tasks.stack import Stack

__all__ = ["ConfigError", "Project", "Cluster", "Node", "Artifact", "build", "load"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_USER = "core"  # the login of CoreOS and Flatcar machines, unless a hosts entry or ~/.ssh/config names one

# Keys of every section of ours, with the type each value must have.
# invoke.yaml gives the defaults; tests check the two list the same keys.
SCHEMA: dict[str, dict[str, type]] = {
    "cluster": {
        "num_instances": int,
        "instance_name_prefix": str,
        "first_ip": str,
        "network": str,
        "provider": str,
        "hosts": list,
        "user_data_path": str,
        "activate_command": str,
        "ssh_timeout": int,
        "host_key_policy": object,  # a string, checked in _cluster: a bare YAML `off` reads as false there
    },
    "vm": {
        "box": str,
        "box_url": str,
        "memory": int,
        "cpus": int,
        "timezone": str,
        "images": list,
    },
    "kubernetes": {"service_range": str, "dns_ip": str, "domain": str, "pause_image": str},
    "calico": {"pool": str},
    "versions": {
        "kubernetes": str,
        "calicoctl": str,
        "calico_cni": str,
        "setup_network_environment": str,
        "calico": str,
        "headlamp": str,
        "busybox": str,
    },
    "paths": {"downloads": str, "output": str},
    "download": {
        "parallel": int,
        "connections": int,
        "timeout": int,
        "connect_timeout": int,
        "retries": int,
        "lock_file": str,
        "mirrors": dict,
        "artifacts": list,
        "allow_http": bool,
    },
    "addons": {"manifests": list, "timeout": int},
    "verify": {"timeout": int, "interval": int, "api_url": str, "ui_path": str},
    "images": {"mirrors": dict},
}
# cluster.host_key_policy: how SSH host keys of the nodes are checked (tasks/nodes.py).
HOST_KEY_POLICIES = ("accept-new", "strict", "off")
HOST_KEYS = {"name": str, "address": str, "port": int, "user": str, "key_file": str, "ip": str}
ARTIFACT_KEYS = {"name": str, "url": str, "dest": str, "mode": str, "sha256": str, "roles": list}
# Invoke's and Fabric's own top-level keys, which may appear in any config file.
FRAMEWORK_KEYS = {
    "run",
    "runners",
    "sudo",
    "tasks",
    "timeouts",
    "authentication",
    "connect_kwargs",
    "forward_agent",
    "gateway",
    "inline_ssh_env",
    "load_ssh_configs",
    "port",
    "ssh_config_path",
    "user",
}
LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
LOGIN = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
HEX64 = re.compile(r"[0-9a-fA-F]{64}")
MODE = re.compile(r"[0-7]{3,4}")
# What configured words may contain where they end up in units, cloud-configs, the Vagrantfile or a command line.
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
ZONE = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*")
BOX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
NODE_PATH = re.compile(r"(/[A-Za-z0-9._+-]+)+")
REGISTRY = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# -- the model -----------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    name: str
    ip: str  # the cluster address: rendered into cloud-config and certificates
    role: str  # "master" or "node"
    address: str = ""  # provider=hosts: where SSH reaches it (defaults to ip)
    port: int = 22
    user: str = DEFAULT_USER
    key_file: str = ""
    # What the hosts entry leaves out of "port", "user": ~/.ssh/config's for the address then, else the above.
    unset: tuple[str, ...] = ()

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
    mirrors: dict = field(default_factory=dict, hash=False)  # registry -> mirror URL (images.mirrors)
    docker: bool = True  # the nodes' runtime is Docker, which `vagrant up` pre-pulls images with (the seed's)
    host_key_policy: str = "accept-new"

    @property
    def master(self) -> Node:
        return self.nodes[0]

    @property
    def api_service_ip(self) -> str:
        """The first address of the service range: the `kubernetes` service."""
        return str(ipaddress.ip_network(self.service_range)[1])

    @property
    def calico_node_image(self) -> str:
        """The seed's calico/node image, tagged like its calicoctl; "" where a stack has no such pairing."""
        return f"calico/node:{self.versions['calicoctl']}" if "calicoctl" in self.versions else ""

    @property
    def images(self) -> list[str]:
        """Docker images every VM pre-pulls (the seed's), without repeats, in a stable order.

        None where the nodes run no Docker: containerd pulls its own images, through images.mirrors.
        """
        if not self.docker:
            return []
        wanted = [*self.vm["images"], self.pause_image, self.calico_node_image]
        return list(dict.fromkeys(image for image in wanted if image))

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise UsageError(f"unknown node {name!r}: the nodes are {known}")


@dataclass(frozen=True)
class Artifact:
    name: str
    url: str  # where it is fetched: versions filled in, mirrors applied
    upstream: str  # the same before mirrors: what the lock file records
    dest: str  # folder on the nodes (`inv copy`)
    mode: int
    sha256: str  # pinned digest, lowercase, or ""
    path: Path  # paths.downloads/<name>
    roles: tuple[str, ...] = ()  # the node roles that get it (`inv copy`): every role of the stack unless given

    @property
    def target(self) -> str:
        """Where it goes on the nodes (~/: the SSH user's home)."""
        return f"{self.dest.rstrip('/')}/{self.name}"

    @property
    def owner(self) -> str:
        """ "user" for a file in the SSH user's home, else "root"."""
        return "user" if self.dest.startswith("~/") else "root"


@dataclass(frozen=True)
class Downloads:
    parallel: int  # files at once
    timeout: int
    retries: int
    lock_file: Path
    mirrors: dict = field(hash=False)
    artifacts: tuple[Artifact, ...] = ()
    allow_http: bool = False  # plain http:// URLs and redirects to them accepted
    connections: int = 8  # HTTP connections at once for the bodies, over all files (a large file gets several)
    connect_timeout: int = 5  # seconds for a connection to be made (a firewall that drops packets: no answer at all)


@dataclass(frozen=True)
class Addons:
    manifests: tuple[str, ...]
    timeout: int


@dataclass(frozen=True)
class Checks:
    timeout: int
    interval: int
    api_url: str
    ui_path: str


@dataclass(frozen=True)
class Project:
    """Everything a step needs, checked: what `build` makes of the configuration."""

    stack: Stack
    cluster: Cluster
    output_dir: Path
    downloads_dir: Path
    download: Downloads
    addons: Addons
    verify: Checks
    values: dict = field(hash=False, repr=False)  # the effective settings, for `inv config`
    ignored: tuple[str, ...] = ()  # settings changed from the defaults that the provider ignores
    ssh_timeout: int = 10
    # The task's Invoke config: only to clone each node's Fabric config from (None for a plain mapping).
    invoke_config: Any = field(default=None, hash=False, repr=False, compare=False)

    def artifact(self, name: str) -> Artifact:
        for artifact in self.download.artifacts:
            if artifact.name == name:
                return artifact
        raise ConfigError(
            "download.artifacts", f"[... no {name} ...]", f"an entry named {name}: it is needed on the nodes"
        )


# -- checks of single values ------------------------------------------------------


def _check_type(name: str, value, kind: type) -> None:
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(name, value, "a whole number")
    if kind is dict and not isinstance(value, dict):
        raise ConfigError(name, value, "a mapping")
    if kind in (str, list) and not isinstance(value, kind):
        raise ConfigError(name, value, "a list" if kind is list else "a string")


def _check_entry(name: str, entry, keys: dict) -> None:
    if not isinstance(entry, dict):
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


def _not_negative(name: str, value: int) -> int:
    if value < 0:
        raise ConfigError(name, value, "a number of seconds, 0 or more")
    return value


def hostname(name: str, value: str) -> str:
    if not LABEL.fullmatch(value):
        raise ConfigError(name, value, "a hostname: lowercase letters, digits and '-', at most 63")
    return value


def is_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not any(c.isspace() for c in url)


def _image(name: str, value) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*", value):
        raise ConfigError(name, value, "a docker image name like busybox:latest")
    return value


# -- the sections ---------------------------------------------------------------


def check_keys(config: dict) -> None:
    """Reject a key that no section knows (most often a typo), and values of the wrong type.

    A null value is a key the chosen stack has no use for: `stacks.apply` has filled every other.
    """
    for top in config:
        if top != "stack" and top not in SCHEMA and top not in FRAMEWORK_KEYS:
            raise ConfigError(top, "...", f"one of the sections stack, {', '.join(SCHEMA)}")
    for section, keys in SCHEMA.items():
        values = config.get(section, {})
        if not isinstance(values, dict):
            raise ConfigError(section, values, "a mapping of settings")
        for key, value in values.items():
            name = f"{section}.{key}"
            if key not in keys:
                raise ConfigError(name, value, f"a known key of {section}: {', '.join(keys)}")
            if value is not None:
                _check_type(name, value, keys[key])
        for key in keys:
            if key not in values:
                raise ConfigError(f"{section}.{key}", None, "a value (invoke.yaml gives every key one)")
    for i, entry in enumerate(config["cluster"].get("hosts") or []):
        _check_entry(f"cluster.hosts[{i}]", entry, HOST_KEYS)
    for i, entry in enumerate(config["download"].get("artifacts") or []):
        _check_entry(f"download.artifacts[{i}]", entry, ARTIFACT_KEYS)


def _from_environment(config: dict) -> dict:
    """List and mapping settings given as text (an INVOKE_* variable over a null default) read as YAML;
    a null list or mapping that no stack gives is empty."""
    import yaml

    given = stacks.stack_keys()
    for section, keys in SCHEMA.items():
        values: dict = config.get(section)  # type: ignore[assignment]
        if not isinstance(values, dict):
            continue
        for key, kind in keys.items():
            value = values.get(key)
            if kind in (list, dict) and isinstance(value, str):
                try:
                    values[key] = yaml.safe_load(value)
                except yaml.YAMLError:
                    raise ConfigError(
                        f"{section}.{key}", value, f"a YAML {'list' if kind is list else 'mapping'}"
                    ) from None
            elif kind in (list, dict) and value is None and key in values and key not in given.get(section, ()):
                values[key] = kind()
    return config


def _apart(services, pool, network, nodes: list[Node]) -> None:
    """Services, pods and nodes need address ranges of their own: overlaps break routing."""
    if pool.overlaps(services):
        raise ConfigError(
            "calico.pool", str(pool), f"a network that does not overlap kubernetes.service_range {services}"
        )
    if network is not None:
        for value, key in ((pool, "calico.pool"), (services, "kubernetes.service_range")):
            if value.overlaps(network):
                raise ConfigError(key, str(value), f"a network that does not overlap cluster.network {network}")
    for node in nodes:
        for value, key in ((pool, "calico.pool"), (services, "kubernetes.service_range")):
            if ipaddress.IPv4Address(node.ip) in value:
                raise ConfigError(
                    key, str(value), f"a network that does not contain node {node.name}'s address {node.ip}"
                )


def _known_zone(name: str) -> bool:
    """Whether the host's time-zone database has `name`; any name where it has none. One look-up, not the listing
    of the whole database (50 ms: most of a re-run's time) unless the name is not found."""
    try:
        zoneinfo.ZoneInfo(name)
        return True
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return not zoneinfo.available_timezones()  # empty where the host has no time-zone database


def _cluster(config: dict, docker: bool = True) -> Cluster:
    from tasks import providers

    cl, vm, k8s = config["cluster"], config["vm"], config["kubernetes"]
    if cl["provider"] not in providers.PROVIDERS:
        raise ConfigError("cluster.provider", cl["provider"], f"one of {', '.join(providers.PROVIDERS)}")
    provider = providers.PROVIDERS[cl["provider"]]
    network = _net("cluster.network", cl["network"])
    positive("cluster.ssh_timeout", cl["ssh_timeout"])
    if cl["host_key_policy"] not in HOST_KEY_POLICIES:
        quote = " ('off' in quotes: YAML reads a bare off as false)" if cl["host_key_policy"] is False else ""
        raise ConfigError(
            "cluster.host_key_policy", cl["host_key_policy"], f"one of {', '.join(HOST_KEY_POLICIES)}{quote}"
        )
    nodes = provider.nodes(cl, network)
    services = _net("kubernetes.service_range", k8s["service_range"])
    if services.num_addresses < 4:
        raise ConfigError("kubernetes.service_range", k8s["service_range"], "a network of at least 4 addresses")
    dns = _ipv4("kubernetes.dns_ip", k8s["dns_ip"])
    if dns not in services or dns in (services.network_address, services[1], services.broadcast_address):
        raise ConfigError(
            "kubernetes.dns_ip",
            k8s["dns_ip"],
            f"an address inside kubernetes.service_range {services} other than {services[1]}",
        )
    domain = k8s["domain"]
    if not domain or not all(LABEL.fullmatch(part) for part in domain.split(".")):
        raise ConfigError("kubernetes.domain", domain, "a DNS domain like cluster.local")
    pool = _net("calico.pool", config["calico"]["pool"])
    _apart(services, pool, network if provider.owns_network else None, nodes)
    positive("vm.memory", vm["memory"])
    positive("vm.cpus", vm["cpus"])
    if not ZONE.fullmatch(vm["timezone"]) or not _known_zone(vm["timezone"]):
        raise ConfigError("vm.timezone", vm["timezone"], "a time zone name like Asia/Shanghai")
    for i, image in enumerate(vm["images"] or []):
        _image(f"vm.images[{i}]", image)
    if vm["box"] is not None and not BOX.fullmatch(vm["box"]):
        raise ConfigError("vm.box", vm["box"], "a Vagrant box name")
    if vm["box_url"] and not is_http(vm["box_url"]):
        raise ConfigError("vm.box_url", vm["box_url"], "an http(s) URL of the box, or empty")
    for key, value in config["versions"].items():
        if value is not None and not VERSION.fullmatch(value):
            raise ConfigError(f"versions.{key}", value, "a non-empty version of letters, digits, '.', '_', '+' and '-'")
    if cl["user_data_path"] is not None and not NODE_PATH.fullmatch(cl["user_data_path"]):
        raise ConfigError(
            "cluster.user_data_path",
            cl["user_data_path"],
            "an absolute path like /var/lib/coreos-vagrant/vagrantfile-user-data",
        )
    if k8s["pause_image"] is not None:
        _image("kubernetes.pause_image", k8s["pause_image"])
    versions = {k: v for k, v in config["versions"].items() if v is not None}
    mirrors = config["images"]["mirrors"] or {}
    for registry, url in mirrors.items():
        key = f"images.mirrors[{registry!r}]"
        if not isinstance(registry, str) or not REGISTRY.fullmatch(registry):
            raise ConfigError(key, registry, "a registry host name like registry.k8s.io or docker.io")
        if not isinstance(url, str) or not is_http(url):
            raise ConfigError(key, url, "the mirror's http(s) URL, like https://registry.mirror.example")
    return Cluster(
        nodes=tuple(nodes),
        provider=cl["provider"],
        network=str(network),
        service_range=str(services),
        dns_ip=str(dns),
        domain=domain,
        pause_image=k8s["pause_image"] or "",
        pool=str(pool),
        versions=versions,
        vm=dict(vm, images=list(vm["images"] or [])),
        user_data_path=cl["user_data_path"] or "",
        activate_command=cl["activate_command"] or "",
        host_key_policy=cl["host_key_policy"],
        mirrors=dict(mirrors),
        docker=docker,
    )


def _fill(key: str, url: str, versions: dict) -> str:
    """`url` with its {version} placeholders filled in; ConfigError names any other."""
    names = ", ".join(f"{{{v}}}" for v in versions)
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(url) if f is not None]
    except ValueError:
        fields = [("", "", None)]
    if any(f not in versions or spec or conv for f, spec, conv in fields):
        raise ConfigError(key, url, f"an http(s) URL whose placeholders are among {names}")
    filled = url.format(**versions)
    if not is_http(filled):
        raise ConfigError(key, url, "an http:// or https:// URL")
    return filled


def check_mirrors(mirrors: dict) -> dict[str, str]:
    for prefix, replacement in mirrors.items():
        key = f"download.mirrors[{prefix!r}]"
        if not isinstance(prefix, str) or not is_http(prefix):
            raise ConfigError(key, prefix, "a URL prefix to replace, like https://storage.googleapis.com/")
        if not isinstance(replacement, str) or not is_http(replacement):
            raise ConfigError(key, replacement, "a replacement URL prefix starting with http:// or https://")
    return dict(mirrors)


def mirror_prefix(url: str, mirrors: dict[str, str]) -> str | None:
    """The longest prefix of `url` listed in `mirrors`, or None."""
    return max((p for p in mirrors if url.startswith(p)), key=len, default=None)


def mirror(url: str, mirrors: dict[str, str]) -> str:
    """`url` with the longest prefix listed in `mirrors` replaced."""
    prefix = mirror_prefix(url, mirrors)
    return url if prefix is None else mirrors[prefix] + url[len(prefix) :]


def _https_only(key: str, value: str, upstream: str, mirrors: dict[str, str]) -> None:
    """Refuse a plain http:// artifact URL (after mirrors), naming the setting that makes it so: `key` = `value`."""
    if urlsplit(mirror(upstream, mirrors)).scheme != "http":
        return
    expected = "an https:// {} (plain http only with download.allow_http: true)"
    prefix = mirror_prefix(upstream, mirrors)
    if prefix is None:
        raise ConfigError(key, value, expected.format("URL"))
    raise ConfigError(f"download.mirrors[{prefix!r}]", mirrors[prefix], expected.format("replacement URL prefix"))


def _roles(key: str, value, stack: Stack) -> tuple[str, ...]:
    known = list(stack.node_templates)
    if value is None:
        return tuple(known)
    if not value or any(role not in known for role in value):
        raise ConfigError(key, value, f"a list of node roles among {', '.join(known)} (leave it out for every role)")
    return tuple(dict.fromkeys(value))


def _downloads(config: dict, folder: Path, stack: Stack) -> Downloads:
    dl = config["download"]
    for key in ("parallel", "connections", "timeout", "connect_timeout", "retries"):
        positive(f"download.{key}", dl[key])
    if not dl["lock_file"]:
        raise ConfigError("download.lock_file", dl["lock_file"], "a file path like downloads.lock")
    mirrors = check_mirrors(dl["mirrors"])
    if not isinstance(dl["allow_http"], bool):
        raise ConfigError("download.allow_http", dl["allow_http"], "true or false")
    versions = {k: v for k, v in config["versions"].items() if v is not None}
    found: list[Artifact] = []
    for i, entry in enumerate(dl["artifacts"]):
        key = f"download.artifacts[{i}]"
        name = entry.get("name", "")
        if not FILE_NAME.fullmatch(name):
            raise ConfigError(f"{key}.name", name, "a file name of letters, digits, '.', '_', '+' and '-'")
        if any(a.name == name for a in found):
            raise ConfigError(f"{key}.name", name, "a name no other artifact has")
        upstream = _fill(f"{key}.url", entry.get("url", ""), versions)
        dest = entry.get("dest", "/opt/bin")
        if not NODE_PATH.fullmatch(dest.rstrip("/").removeprefix("~") or "/"):
            raise ConfigError(f"{key}.dest", dest, "an absolute folder like /opt/bin, or one in the home like ~/calico")
        mode = entry.get("mode", "0755")
        if not MODE.fullmatch(mode):
            raise ConfigError(f"{key}.mode", mode, "an octal file mode like 0755")
        pin = entry.get("sha256", "")
        if pin and not HEX64.fullmatch(pin):
            raise ConfigError(f"{key}.sha256", pin, "64 hexadecimal digits, or empty to rely on the lock file")
        if not dl["allow_http"]:
            _https_only(f"{key}.url", entry["url"], upstream, mirrors)
        found.append(
            Artifact(
                name=name,
                url=mirror(upstream, mirrors),
                upstream=upstream,
                dest=dest,
                mode=int(mode, 8),
                sha256=pin.lower(),
                path=folder / name,
                roles=_roles(f"{key}.roles", entry.get("roles"), stack),
            )
        )
    return Downloads(
        parallel=dl["parallel"],
        timeout=dl["timeout"],
        retries=dl["retries"],
        lock_file=resolve(dl["lock_file"]),
        mirrors=mirrors,
        artifacts=tuple(found),
        allow_http=dl["allow_http"],
        connections=dl["connections"],
        connect_timeout=dl["connect_timeout"],
    )


def _addons(config: dict, stack: Stack) -> Addons:
    known = stack.manifest_names()
    for i, name in enumerate(config["addons"]["manifests"]):
        if name not in known:
            raise ConfigError(f"addons.manifests[{i}]", name, f"one of {', '.join(known)} (in {stack.manifests})")
    return Addons(tuple(config["addons"]["manifests"]), _not_negative("addons.timeout", config["addons"]["timeout"]))


def _checks(config: dict) -> Checks:
    v = config["verify"]
    if v["api_url"] is not None and not is_http(v["api_url"]):
        raise ConfigError("verify.api_url", v["api_url"], "an http(s) URL of the API server as seen on the master")
    if not re.fullmatch(r"/[A-Za-z0-9._~/%:-]*", v["ui_path"]):
        raise ConfigError("verify.ui_path", v["ui_path"], "a URL path starting with /")
    return Checks(
        _not_negative("verify.timeout", v["timeout"]),
        positive("verify.interval", v["interval"]),
        v["api_url"] or "",
        v["ui_path"],
    )


def _paths(config: dict) -> tuple[Path, Path]:
    found = []
    for key in ("output", "downloads"):
        value = config["paths"][key]
        if not value or CONTROL.search(value):
            raise ConfigError(f"paths.{key}", value, "a folder")
        folder = resolve(value)
        if folder == ROOT or folder in ROOT.parents or folder == Path(folder.anchor):
            raise ConfigError(f"paths.{key}", value, f"a folder of its own: not /, the project folder {ROOT} or above")
        found.append(folder)
    output, downloads = found
    if output == downloads or output in downloads.parents or downloads in output.parents:
        raise ConfigError("paths.downloads", config["paths"]["downloads"], f"a folder apart from paths.output {output}")
    return output, downloads


def plain(value):
    """Invoke's config proxies as plain dicts and lists (copies)."""
    if hasattr(value, "items"):
        return {k: plain(v) for k, v in value.items()}
    return [plain(v) for v in value] if isinstance(value, list) else copy.deepcopy(value)


def build(config, invoke_config=None) -> Project:
    """Check every value and return the project; raises ConfigError."""
    raw = plain(config)
    stack = stacks.load(raw.get("stack", "seed"))
    values = _from_environment(stacks.apply(stack, raw))
    check_keys(values)
    output, downloads = _paths(values)
    cluster = _cluster(values, stack.docker)
    tenth = str(ipaddress.ip_network(cluster.service_range)[10])
    if stack.kubeadm and cluster.dns_ip != tenth:
        raise ConfigError(
            "kubernetes.dns_ip",
            cluster.dns_ip,
            f"{tenth}: kubeadm gives CoreDNS the tenth address of the service range",
        )
    effective: dict[str, Any] = {"stack": stack.name}
    for section in SCHEMA:
        effective[section] = {k: v for k, v in values[section].items() if v is not None}
    return Project(
        stack=stack,
        cluster=cluster,
        output_dir=output,
        downloads_dir=downloads,
        download=_downloads(values, downloads, stack),
        addons=_addons(values, stack),
        verify=_checks(values),
        values=effective,
        ignored=_ignored(values, stack, cluster.provider),
        ssh_timeout=values["cluster"]["ssh_timeout"],
        invoke_config=invoke_config,
    )


@functools.cache
def _invoke_yaml() -> dict:
    """The project's invoke.yaml as shipped, read once per run (stacks.apply copies it before changing it)."""
    from tasks import yamltext

    return yamltext.load((ROOT / "invoke.yaml").read_text())


def _ignored(values: dict, stack: Stack, provider: str) -> tuple[str, ...]:
    """The settings the provider has no use for that differ from invoke.yaml's and the stack's defaults."""
    from tasks import providers

    stock = _from_environment(stacks.apply(stack, _invoke_yaml()))
    return tuple(
        key
        for key in providers.PROVIDERS[provider].ignores
        if values[key.split(".")[0]][key.split(".")[1]] != stock[key.split(".")[0]][key.split(".")[1]]
    )


def _sources(config, raw: dict) -> list[ConfigError]:
    """What Invoke passes over in silence or misreads: a `-f FILE` that does not exist, an INVOKE_* that
    names no key, or one Invoke cannot apply (a switch that is not 1 or 0).

    Invoke reads no INVOKE_* for a mapping (it looks for its keys instead): one that every file leaves
    empty is put in `raw` (the plain configuration) here, as text that `build` reads as YAML.
    """
    import os

    found = []
    # Invoke keeps where the -f file was looked for, and whether it was found, only in private attributes.
    path, was_found = getattr(config, "_runtime_path", None), getattr(config, "_runtime_found", None)
    if path and not was_found:
        found.append(ConfigError("-f", path, "an existing configuration file"))
    known = {"INVOKE_DEBUG", "INVOKE_RUNTIME_CONFIG"}

    def walk(value, path: tuple[str, ...]) -> None:
        if hasattr(value, "items"):
            for key, inner in value.items():
                walk(inner, (*path, key))
        else:
            known.add("INVOKE_" + "_".join(path).upper())

    walk(config, ())
    ours = {f"INVOKE_{section}_{key}".upper(): (section, key) for section, keys in SCHEMA.items() for key in keys}
    runtime = getattr(config, "_runtime", None) or {}  # what the -f file set (private to Invoke too)
    for name in sorted(os.environ):
        value = os.environ[name]
        if name in ours and SCHEMA[ours[name][0]][ours[name][1]] is bool and value not in ("0", "1"):
            # Invoke reads every text but "0" and "" as true: "false" would turn the switch on.
            found.append(ConfigError(name, value, "1 (true) or 0 (false)"))
        elif name in ours and name not in known:
            section, key = ours[name]
            values = raw.get(section)
            if isinstance(values, dict) and values.get(key) == {}:
                values[key] = value
            else:
                where = f"{section}.{key}"
                found.append(ConfigError(name, value, f"no value: a configuration file sets {where}: change it there"))
        elif name.startswith("INVOKE_") and name not in known:
            import difflib

            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f", like {close[0]}" if close else ""
            found.append(ConfigError(name, value, f"INVOKE_<SECTION>_<KEY> naming a key of invoke.yaml{hint}"))
        elif name in ours and isinstance(runtime.get(ours[name][0]), dict) and ours[name][1] in runtime[ours[name][0]]:
            from tasks import ui

            ui.note_once(f"{name} is not used: -f {path} sets {'.'.join(ours[name])}, and a -f file comes first")
    return found


def problems(config) -> list[ConfigError]:
    """Every unusable value of `config`, not only the first that `build` stops at.

    Builds again with each bad key put back to invoke.yaml's value (the stack's
    default where that is null) until the configuration builds. An error on a
    key already put back (a default that does not fit another value) ends the
    search: it would only repeat what is said.
    """
    raw = plain(config)
    found: list[ConfigError] = []
    done: set[str] = set()
    while True:
        try:
            build(raw)
            return found
        except ConfigError as err:
            top = _top_key(err.key)
            if top in done:
                return found
            found.append(err)
            done.add(top)
            _put_back(raw, top)


def _top_key(key: str) -> str:
    """The setting a ConfigError's key is part of: cluster.hosts[0].port -> cluster.hosts."""
    match = re.match(r"[A-Za-z_]+(\.[A-Za-z_]+)?", key)
    return match.group(0) if match else key


def _put_back(raw: dict, key: str) -> None:
    """invoke.yaml's value at `key` (a section, or section.key) of `raw`; a key it does not have is removed."""
    stock = _invoke_yaml()
    section, _, name = key.partition(".")
    values = raw.get(section)
    if not name or not isinstance(values, dict):
        if section in stock:
            raw[section] = copy.deepcopy(stock[section])
        else:
            raw.pop(section, None)
    elif name in stock.get(section, {}):
        values[name] = copy.deepcopy(stock[section][name])
    else:
        values.pop(name, None)


def load(c) -> Project:
    """The project of a task's context; says once which settings the provider ignores.

    Raises ConfigError, or ConfigErrors naming every unusable value when there are several.
    """
    from tasks import ui
    from tasks.errors import ConfigErrors

    raw = plain(c.config)
    found = _sources(c.config, raw)
    try:
        project = build(raw, c.config)
    except ConfigError:
        found += problems(raw)
    if len(found) == 1:
        raise found[0]
    if found:
        raise ConfigErrors(found)
    if project.ignored:
        ui.note_once(f"cluster.provider {project.cluster.provider} ignores {', '.join(project.ignored)}")
    return project


def resolve(value: str) -> Path:
    """A configured path as an absolute one; relative ones start at the project folder."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else ROOT / p

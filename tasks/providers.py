"""Where the machines come from: `vagrant` (VirtualBox VMs) or `hosts` (machines you have).

Both answer the same questions, so no step asks which one is in use: the node
list (from the configuration, pure), how to reach each node over SSH, and how
to start, list, log in to and delete the machines.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shutil
import sys
from dataclasses import dataclass

from tasks.errors import ConfigError, StepError
from tasks.settings import DEFAULT_USER, Node, positive

VAGRANT_INSTALL = (
    "vagrant is not installed: install Vagrant (https://developer.hashicorp.com/vagrant/install, "
    "or `apt-get install vagrant`) and VirtualBox, or set cluster.provider: hosts"
)
VIRTUALBOX_INSTALL = (
    "VirtualBox is not installed (no VBoxManage on PATH): install VirtualBox "
    "(https://www.virtualbox.org/wiki/Downloads), which `vagrant up` needs"
)


@dataclass(frozen=True)
class Target:
    """How SSH reaches one node."""

    host: str
    port: int | None  # None: ~/.ssh/config's for the host, else 22
    user: str | None  # None: ~/.ssh/config's for the host, else settings.DEFAULT_USER
    key_files: tuple[str, ...] = ()


def _role(index: int) -> str:
    return "master" if index == 0 else "node"


class Provider:
    """What every provider answers, so that no step asks which one is in use."""

    name = ""
    owns_network = False  # whether node addresses are taken from cluster.network
    ignores: tuple[str, ...] = ()  # settings it has no use for
    load_ssh_config = False  # whether ~/.ssh/config applies to its nodes

    def __init__(self, project, c):
        self.project, self.c = project, c

    @staticmethod
    def nodes(cl: dict, network: ipaddress.IPv4Network) -> list[Node]:
        """The node list from the cluster section (pure); ConfigError on a bad value."""
        raise NotImplementedError

    def targets(self, names: list[str]) -> dict[str, Target]:
        """How SSH reaches each of `names`."""
        raise NotImplementedError

    def check_start(self) -> None:
        """Fail now, not after a long boot, when what `start` needs is missing."""

    def start(self) -> None:
        """Start the machines; returns once they boot."""

    def states(self) -> dict[str, str]:
        """Each machine's state, "-" where the provider cannot tell."""
        return {n.name: "-" for n in self.project.cluster.nodes}

    def host_key_rule(self, starting: bool = False):
        """How the nodes' SSH host keys are checked (nodes.HostKeyRule); `starting`: in `inv up`, after `start`."""
        from tasks import nodes

        policy = self.project.cluster.host_key_policy
        known_hosts = self.project.output_dir / nodes.KNOWN_HOSTS
        return nodes.HostKeyRule(known_hosts, policy, f"cluster.host_key_policy {policy}")

    def login(self, node: str, command: str) -> tuple[list[str], dict, str]:
        """(argv, environment, folder) of an interactive SSH session on `node`."""
        raise NotImplementedError

    def destroy(self, ask) -> None:
        """Delete the machines, if `ask(question)` agrees."""
        raise NotImplementedError


class Vagrant(Provider):
    """VirtualBox VMs from the Vagrantfile, which reads the cluster description `inv render` wrote."""

    name = "vagrant"
    owns_network = True
    ignores = ("cluster.hosts",)
    load_ssh_config = False  # Vagrant's details are complete: a `Host *` rule of the user must not bend them

    # -- the node list (pure) ---------------------------------------------------
    @staticmethod
    def nodes(cl: dict, network: ipaddress.IPv4Network) -> list[Node]:
        from tasks.settings import LABEL, _ipv4

        count = positive("cluster.num_instances", cl["num_instances"])
        prefix = cl["instance_name_prefix"]
        first = _ipv4("cluster.first_ip", cl["first_ip"])
        # Compared as numbers: listing the hosts of a /8 would take seconds and gigabytes.
        if not network.network_address < first < network.broadcast_address:
            raise ConfigError("cluster.first_ip", cl["first_ip"], f"a host address inside cluster.network {network}")
        room = int(network.broadcast_address) - int(first)
        if count > room:
            raise ConfigError(
                "cluster.num_instances", count, f"at most {room} nodes from {first} inside cluster.network {network}"
            )
        names = [f"{prefix}-{i:02d}" for i in range(1, count + 1)]
        if not all(LABEL.fullmatch(n) for n in names):
            raise ConfigError(
                "cluster.instance_name_prefix", prefix, "a hostname prefix: lowercase letters, digits and '-'"
            )
        return [Node(name=n, ip=str(first + i), role=_role(i), address=str(first + i)) for i, n in enumerate(names)]

    # -- effects --------------------------------------------------------------------
    def env(self) -> dict:
        """What the Vagrantfile needs: the cluster description `inv render` wrote."""
        from tasks import render

        return {"CLUSTER_DESCRIPTION": str(self.project.output_dir / render.DESCRIPTION)}

    def vagrant(self, args: str, **kwargs):
        """Run `vagrant ARGS` in the project folder (the Vagrantfile's); StepError when Vagrant is missing."""
        from tasks.settings import ROOT

        if not shutil.which("vagrant"):
            raise StepError(VAGRANT_INSTALL)
        from tasks import runlog

        with self.c.cd(str(ROOT)):
            result = self.c.run(f"vagrant {args}", in_stream=False, env=self.env(), **kwargs)
        runlog.record_result(self.project.output_dir, "host", result)
        return result

    def _rendered(self) -> None:
        from tasks import render

        description = self.project.output_dir / render.DESCRIPTION
        if not description.is_file():
            raise StepError(f"{description} is missing: run `inv render` first")

    def targets(self, names: list[str]) -> dict[str, Target]:
        """One `vagrant ssh-config` for all `names`."""
        if not names:
            return {}
        result = self.vagrant("ssh-config " + " ".join(names), hide=True, warn=True)
        if result.failed:
            raise vagrant_failed("ssh-config", result, " (are the VMs up? run `inv up`)")
        return parse_ssh_config(result.stdout, names)

    def check_start(self) -> None:
        from tasks import doctor

        self._rendered()
        doctor.preflight(self)  # Vagrant, VirtualBox, the host-only network, memory

    def start(self) -> None:
        # Vagrant's own output streams through: box download, boot, provisioners.
        if self.vagrant("up", warn=True).failed:
            raise StepError("`vagrant up` failed (its output is above)")

    def host_key_rule(self, starting: bool = False):
        """Each VM's key is recorded when `inv up` has started it (a re-created VM's replaces the old one);
        every other task checks it strictly against what `inv up` recorded."""
        rule = super().host_key_rule(starting)
        if rule.mode == "off":
            return rule
        if starting:
            return dataclasses.replace(rule, mode="record", why="")
        return dataclasses.replace(rule, mode="strict", why="`inv up` records the VMs' keys")

    def states(self) -> dict[str, str]:
        result = self.vagrant("status --machine-readable", hide=True, warn=True)
        if result.failed:
            raise vagrant_failed("status", result)
        return parse_status(result.stdout)

    def login(self, node: str, command: str) -> tuple[list[str], dict, str]:
        from tasks.settings import ROOT

        if not shutil.which("vagrant"):
            raise StepError(VAGRANT_INSTALL)
        argv = ["vagrant", "ssh", node] + (["-c", command] if command else [])
        return argv, dict(os.environ, **self.env()), str(ROOT)

    def destroy(self, ask) -> None:
        """Deletes the VMs the last render described, which the Vagrantfile lists: those `inv up` started."""
        from tasks import render, ui

        self._rendered()
        rendered = render.last_render(self.project.output_dir) or {"nodes": []}
        names = ", ".join(str(n.get("name")) for n in rendered["nodes"] if isinstance(n, dict))
        changed = render.changes(rendered, self.project)
        if changed:
            ui.progress(
                f"note: the configuration changed since `inv render` ({'; '.join(changed)}): deleting the VMs "
                f"rendered then, {names}; run `inv render` afterwards"
            )
        if not ask(f"Delete the VMs {names} and everything on them? [y/N] "):
            raise StepError("not deleted: answer y, or pass --yes")
        if self.vagrant("destroy -f", warn=True).failed:
            raise StepError("`vagrant destroy` failed (its output is above)")


class Hosts(Provider):
    """Machines that exist already, listed in cluster.hosts: nothing to start or delete."""

    name = "hosts"
    ignores = (
        "cluster.num_instances",
        "cluster.instance_name_prefix",
        "cluster.first_ip",
        "cluster.network",
        "vm.box",
        "vm.box_url",
        "vm.memory",
        "vm.cpus",
    )
    # Existing machines: honour ~/.ssh/config (ProxyJump to a bastion, IdentityFile, ...) as ssh would.
    load_ssh_config = True

    @staticmethod
    def nodes(cl: dict, network=None) -> list[Node]:
        from tasks.settings import LOGIN, _ipv4, hostname

        entries = cl["hosts"]
        if not entries:
            raise ConfigError(
                "cluster.hosts", entries, "at least one {name, address} entry when cluster.provider is hosts"
            )
        nodes: list[Node] = []
        for i, entry in enumerate(entries):
            key = f"cluster.hosts[{i}]"
            for required in ("name", "address"):
                if not entry.get(required):
                    raise ConfigError(f"{key}.{required}", entry.get(required), "a non-empty string")
            name = hostname(f"{key}.name", entry["name"])
            if any(n.name == name for n in nodes):
                raise ConfigError(f"{key}.name", name, "a name no other host has")
            ip = entry.get("ip") or entry["address"]
            _ipv4(f"{key}.ip" if entry.get("ip") else f"{key}.address", ip)
            if any(n.ip == ip for n in nodes):
                raise ConfigError(f"{key}.ip", ip, "an address no other host has")
            port = entry.get("port", 22)
            if not 0 < port < 65536:
                raise ConfigError(f"{key}.port", port, "a TCP port from 1 to 65535")
            user = entry.get("user", DEFAULT_USER)
            if not LOGIN.fullmatch(user):
                raise ConfigError(f"{key}.user", user, "a login name: letters, digits, '_', '.', '-'")
            nodes.append(
                Node(
                    name=name,
                    ip=ip,
                    role=_role(i),
                    address=entry["address"],
                    port=port,
                    user=user,
                    key_file=entry.get("key_file", ""),
                    unset=tuple(k for k in ("port", "user") if k not in entry),
                )
            )
        return nodes

    def targets(self, names: list[str]) -> dict[str, Target]:
        chosen = [n for n in self.project.cluster.nodes if n.name in names]
        return {
            n.name: Target(
                n.address or n.ip,
                None if "port" in n.unset else n.port,
                None if "user" in n.unset else n.user,
                (os.path.expanduser(n.key_file),) if n.key_file else (),
            )
            for n in chosen
        }

    def login(self, node: str, command: str) -> tuple[list[str], dict, str]:
        """ssh with the host keys and policy of the tasks' connections; no configured value can read as an option."""
        from tasks import nodes, ui

        t = self.targets([node])[node]
        rule = self.host_key_rule()
        if rule.mode == "off":
            ui.progress(nodes.OFF_WARNING)
        argv = nodes.ssh_argv(self.project, t, rule, self.load_ssh_config)
        if command and sys.stdin.isatty():
            argv.insert(1, "-t")
        return argv + ([command] if command else []), dict(os.environ), os.getcwd()

    def destroy(self, ask) -> None:
        raise StepError(
            "inv destroy only deletes Vagrant VMs; with cluster.provider hosts the machines are not ours to delete"
        )


PROVIDERS: dict[str, type[Provider]] = {"vagrant": Vagrant, "hosts": Hosts}


def of(project, c, stale_ok: bool = False) -> Provider:
    """The provider the project's configuration names, working through task context `c`.

    Every task on the machines comes here first: a configuration whose machines are not those `inv render` last
    described (nodes, addresses, stack) stops it with StepError, unless `stale_ok` (`destroy`, `doctor`).
    """
    if not stale_ok:
        from tasks import render

        render.check_current(project)
    return PROVIDERS[project.cluster.provider](project, c)


def parse_ssh_config(text: str, names) -> dict[str, Target]:
    """`vagrant ssh-config` output -> {name: Target} for each name; StepError naming a node it lacks."""
    import paramiko

    parsed = paramiko.SSHConfig.from_text(text)
    known = parsed.get_hostnames()
    out = {}
    for name in names:
        if name not in known:
            raise StepError(
                f"vagrant ssh-config has no entry for {name} "
                f"(has: {', '.join(sorted(known - {'*'})) or 'none'}): run `inv up`"
            )
        entry = parsed.lookup(name)
        out[name] = Target(
            entry.get("hostname", name),
            int(entry.get("port", 22)),
            entry.get("user", "core"),
            tuple(entry.get("identityfile", [])),
        )
    return out


def parse_status(text: str) -> dict[str, str]:
    """`vagrant status --machine-readable` -> {machine: state}, e.g. running, poweroff, not_created."""
    states = {}
    for line in text.splitlines():
        fields = line.split(",", 3)
        if len(fields) >= 4 and fields[2] == "state" and fields[1]:
            states[fields[1]] = fields[3]
    return states


def vagrant_failed(command: str, result, hint: str = "") -> StepError:
    """The error of a failed `vagrant COMMAND`: a line of ours, then Vagrant's own message, whole and indented."""
    from tasks.ui import indented

    says = indented(vagrant_says(result.stdout, result.stderr))
    return StepError(f"`vagrant {command}` failed{hint}; Vagrant says:\n{says}")


def vagrant_says(stdout: str, stderr: str) -> str:
    """Vagrant's whole error message: its stderr, or with --machine-readable the `error-exit` line of stdout."""
    for line in stdout.splitlines():
        fields = line.split(",", 4)
        if len(fields) == 5 and fields[2] == "error-exit":
            return fields[4].replace("%!(VAGRANT_COMMA)", ",").replace("\\n", "\n").replace("\\r", "")
    return stderr.strip() or stdout.strip()

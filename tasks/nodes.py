"""The cluster's machines over SSH: one Fabric connection per node, used in parallel.

Where the connection details come from depends on `cluster.provider`:
`vagrant` asks Vagrant once (`vagrant ssh-config`, parsed with paramiko's
SSHConfig); `hosts` takes them from the `cluster.hosts` entries. Every
connection has a Fabric config of its own, cloned from the task's, so one
machine's key never leaks to the next (DESIGN.md §3).

    conns = nodes.connections(c, cluster)
    hostnames = nodes.on_nodes(conns, lambda name, conn: conn.run("hostname", hide=True).stdout)
"""
from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, TypeVar

from invoke import Exit

from tasks import settings
from tasks.settings import Cluster
from tasks.ui import last_line

T = TypeVar("T")
VAGRANT_INSTALL = ("vagrant is not installed: install Vagrant (https://developer.hashicorp.com/vagrant/install, "
                   "or `apt-get install vagrant`) and VirtualBox, or set cluster.provider: hosts")


@dataclass(frozen=True)
class Failure:
    """Why one node failed: printed as `calico-02 (127.0.0.2:2222): connection refused`."""

    node: str
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.node} ({self.where}): {self.reason}"


def _fabric_config(c):
    """A Fabric config of the node's own, cloned from the task's."""
    import fabric

    cfg = c.config.clone(into=fabric.Config)
    # No stdin under pytest or CI: Fabric would fail reading it.
    cfg.run.in_stream = False
    cfg.sudo.in_stream = False
    cfg.timeouts.connect = c.config.cluster.ssh_timeout
    if c.config.cluster.provider == "hosts":
        # Existing machines: honour ~/.ssh/config (ProxyJump to a bastion, IdentityFile, ...) as ssh would.
        # Vagrant's details are complete already and must not be bent by a `Host *` rule.
        cfg.load_ssh_config()
    return cfg


def _transport(*args, **kwargs):
    """A paramiko Transport preferring AES-GCM, when the server offers it, over paramiko's AES-CTR + HMAC.

    About twice as fast for the copy's hundreds of megabytes, on both ends;
    every other cipher stays available for older servers.
    """
    import paramiko

    transport = paramiko.Transport(*args, **kwargs)
    preferred = transport._preferred_ciphers
    gcm = tuple(name for name in preferred if "-gcm@" in name)
    transport._preferred_ciphers = gcm + tuple(name for name in preferred if name not in gcm)
    return transport


def _connection(c, host: str, port: int, user: str, key_files: list[str]):
    import fabric

    kwargs = {"transport_factory": _transport}
    if key_files:
        # Only the given key: an agent's or ~/.ssh's keys, tried first, may exhaust the server's MaxAuthTries.
        kwargs.update(key_filename=key_files, look_for_keys=False, allow_agent=False)
    # Throwaway VMs and test nodes: host keys change with every `vagrant up`. Fabric's client
    # accepts them (AutoAddPolicy) and keeps them in memory only, never writing known_hosts.
    return fabric.Connection(host, user=user, port=port, config=_fabric_config(c), connect_kwargs=kwargs)


def parse_ssh_config(text: str, names) -> dict[str, dict]:
    """`vagrant ssh-config` output -> {name: {host, port, user, key_files}} for each name.

    Raises Exit naming a node the text has no entry for.
    """
    import paramiko

    parsed = paramiko.SSHConfig.from_text(text)
    known = parsed.get_hostnames()
    out = {}
    for name in names:
        if name not in known:
            raise Exit(f"vagrant ssh-config has no entry for {name} (has: {', '.join(sorted(known - {'*'})) or 'none'}): "
                       f"run `inv up`", code=1)
        entry = parsed.lookup(name)
        out[name] = {"host": entry.get("hostname", name), "port": int(entry.get("port", 22)),
                     "user": entry.get("user", "core"), "key_files": list(entry.get("identityfile", []))}
    return out


def vagrant_env(config) -> dict:
    """What the Vagrantfile needs: the cluster description `inv render` wrote."""
    from tasks import render

    return {"CLUSTER_DESCRIPTION": str(settings.path(config, "output") / render.DESCRIPTION)}


def vagrant(c, args: str, **kwargs):
    """Run `vagrant ARGS` in the project folder (the Vagrantfile's); Exit when Vagrant is missing."""
    import shutil

    if not shutil.which("vagrant"):
        raise Exit(VAGRANT_INSTALL, code=1)
    with c.cd(str(settings.ROOT)):
        return c.run(f"vagrant {args}", in_stream=False, env=vagrant_env(c.config), **kwargs)


def details(c, cluster: Cluster, names=None) -> dict[str, dict]:
    """How to reach each node (or those `names`): {name: {host, port, user, key_files}}, in cluster order."""
    chosen = [n for n in cluster.nodes if names is None or n.name in names]
    if cluster.provider == "hosts":
        return {n.name: {"host": n.address or n.ip, "port": n.port, "user": n.user,
                         "key_files": [os.path.expanduser(n.key_file)] if n.key_file else []} for n in chosen}
    names = [n.name for n in chosen]
    if not names:
        return {}
    result = vagrant(c, "ssh-config " + " ".join(names), hide=True, warn=True)
    if result.failed:
        why = last_line(result.stderr)
        raise Exit(f"`vagrant ssh-config` failed: {why} (are the VMs up? run `inv up`)", code=1)
    return parse_ssh_config(result.stdout, names)


def connections(c, cluster: Cluster, names=None) -> dict:
    """One fabric.Connection per node name (all, or those in `names`), in cluster order; none opened yet."""
    return {name: _connection(c, d["host"], d["port"], d["user"], d["key_files"])
            for name, d in details(c, cluster, names).items()}


def where(conn) -> str:
    return f"{conn.host}:{conn.port}"


def describe(error: BaseException) -> str:
    """A one-line reason for a failed SSH connection or command."""
    import paramiko
    from invoke import UnexpectedExit
    from paramiko.ssh_exception import NoValidConnectionsError

    if isinstance(error, UnexpectedExit):
        r = error.result
        last = last_line(r.stderr) if r.stderr.strip() else last_line(r.stdout)
        command = " ".join(r.command.split())
        command = command if len(command) <= 60 else command[:57] + "..."
        return f"`{command}` exited {r.exited}: {last}"
    if isinstance(error, (ConnectionRefusedError, NoValidConnectionsError)):
        return "connection refused (is sshd running?)"
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(error, paramiko.AuthenticationException):
        return f"authentication failed ({error}): check the user and key file"
    if isinstance(error, Exit):
        return str(error.message)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def attempt(conns: dict, fn: Callable[[str, object], T]) -> tuple[dict[str, T], dict[str, Failure]]:
    """Run fn(name, conn) for every node in parallel; (results, failures) by name."""
    if not conns:
        return {}, {}
    with ThreadPoolExecutor(max_workers=len(conns)) as pool:
        futures = {name: pool.submit(fn, name, conn) for name, conn in conns.items()}
    results, failures = {}, {}
    for name, future in futures.items():
        error = future.exception()
        if error is None:
            results[name] = future.result()
        else:
            failures[name] = Failure(name, where(conns[name]), describe(error))
    return results, failures


def failed(failures: dict[str, Failure], what: str = "") -> Exit:
    """The Exit for failed nodes: one line per node naming it and why."""
    head = f"{what} failed on" if what else "failed on"
    lines = [f"{head} {len(failures)} node(s):"] + [f"  {f}" for f in failures.values()]
    return Exit("\n".join(lines), code=1)


def on_nodes(conns: dict, fn: Callable[[str, object], T], what: str = "") -> dict[str, T]:
    """fn(name, conn) on every node in parallel -> results by name.

    When any node fails, raises Exit naming every failed node and why, after
    all nodes have finished.
    """
    results, failures = attempt(conns, fn)
    if failures:
        raise failed(failures, what)
    return results


def booting(error: BaseException) -> bool:
    """Whether `error` is what SSH gives while a machine is still starting."""
    import paramiko
    from paramiko.ssh_exception import NoValidConnectionsError

    if isinstance(error, paramiko.AuthenticationException):
        return False
    return isinstance(error, (ConnectionError, NoValidConnectionsError, socket.timeout, TimeoutError,
                              EOFError, paramiko.SSHException))


def wait_ready(conns: dict, timeout: float) -> None:
    """Wait until every node runs a command over SSH; Exit naming those that did not in `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout

    def ready(name, conn):
        while True:
            try:
                conn.run("true", hide=True)
                return
            except Exception as err:
                conn.close()
                # A booting machine refuses, resets or times out; a wrong key or user never heals.
                if not booting(err) or time.monotonic() + 1 > deadline:
                    raise
                time.sleep(1)

    on_nodes(conns, ready, what=f"waiting {timeout:g} s for SSH")


def share(conn) -> None:
    """Let threads share `conn`: one opens it (or fails to), the others wait for that.

    Fabric's `open` has no lock; threads opening one connection at once would
    each start a transport and leak all but one.
    """
    import threading

    lock, open_once = threading.Lock(), conn.open

    def open_locked():
        with lock:
            return None if conn.is_connected else open_once()

    conn.open = open_locked


def close_all(conns: dict) -> None:
    for conn in conns.values():
        conn.close()

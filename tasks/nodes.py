"""The cluster's machines over SSH: a `Nodes` group, one Fabric connection per node.

Shaped like Fabric's `Group`, but it collects per-node failures instead of
raising at the first:

    with Nodes(c, project) as group:
        hostnames = group.run(lambda name, conn: conn.run("hostname", hide=True).stdout)

The provider says how to reach each node. Every connection has a Fabric config
of its own, cloned from the task's, so one machine's key never leaks to the
next (DESIGN.md §3).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from tasks.errors import StepError
from tasks.ui import last_line

T = TypeVar("T")


@dataclass(frozen=True)
class Failure:
    """Why one node failed: printed as `calico-02 (127.0.0.2:2222): connection refused`."""

    node: str
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.node} ({self.where}): {self.reason}"


class NodesFailed(StepError):
    """Some nodes failed; the message has a line per node naming it and why."""

    def __init__(self, failures: dict[str, Failure], what: str = ""):
        self.failures = failures
        head = f"{what} failed on" if what else "failed on"
        super().__init__("\n".join([f"{head} {len(failures)} node(s):"] + [f"  {f}" for f in failures.values()]))


def _transport(*args, **kwargs):
    """A paramiko Transport preferring AES-GCM, when the server offers it, over paramiko's AES-CTR + HMAC.

    About twice as fast for the copy's hundreds of megabytes, on both ends;
    every other cipher stays available for older servers. paramiko has no
    public setting for the order of ciphers: this is the one place that
    touches its private `_preferred_ciphers`.
    """
    import paramiko

    transport = paramiko.Transport(*args, **kwargs)
    preferred = transport._preferred_ciphers  # type: ignore[attr-defined]
    gcm = tuple(name for name in preferred if "-gcm@" in name)
    transport._preferred_ciphers = gcm + tuple(name for name in preferred if name not in gcm)  # type: ignore[attr-defined]
    return transport


def _connection(base_config, target, ssh_timeout: int, load_ssh_config: bool):
    import fabric

    cfg = base_config.clone(into=fabric.Config) if base_config is not None else fabric.Config()
    # No stdin under pytest or CI: Fabric would fail reading it.
    cfg.run.in_stream = False
    cfg.sudo.in_stream = False
    cfg.timeouts.connect = ssh_timeout
    if load_ssh_config:
        cfg.load_ssh_config()
    kwargs: dict = {"transport_factory": _transport}
    if target.key_files:
        # Only the given key: an agent's or ~/.ssh's keys, tried first, may exhaust the server's MaxAuthTries.
        kwargs.update(key_filename=list(target.key_files), look_for_keys=False, allow_agent=False)
    # Throwaway VMs and test nodes: host keys change with every `vagrant up`. Fabric's client
    # accepts them (AutoAddPolicy) and keeps them in memory only, never writing known_hosts.
    return fabric.Connection(target.host, user=target.user, port=target.port, config=cfg, connect_kwargs=kwargs)


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
    if isinstance(error, StepError):
        return str(error)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def booting(error: BaseException) -> bool:
    """Whether `error` is what SSH gives while a machine is still starting."""
    import paramiko
    from paramiko.ssh_exception import NoValidConnectionsError

    if isinstance(error, paramiko.AuthenticationException):
        return False
    return isinstance(
        error, (ConnectionError, NoValidConnectionsError, socket.timeout, TimeoutError, EOFError, paramiko.SSHException)
    )


class Nodes:
    """One SSH connection per node (all, or `names`), in cluster order; a context manager that closes them.

    Connections open on first use. `conn(name)` opens one under a lock, so
    several threads may share it (Fabric's `open` has none: threads opening
    one connection at once would each start a transport and leak all but one).
    """

    def __init__(self, c, project, names=None):
        from tasks import providers

        self.project = project
        self.provider = providers.of(project, c)
        self.names = [n.name for n in project.cluster.nodes if names is None or n.name in names]
        self.connections: dict = {}
        self._locks = {name: threading.Lock() for name in self.names}

    def __enter__(self) -> "Nodes":
        targets = self.provider.targets(self.names)
        self.connections = {
            name: _connection(
                self.project.invoke_config, targets[name], self.project.ssh_timeout, self.provider.load_ssh_config
            )
            for name in self.names
        }
        return self

    def __exit__(self, *exc) -> None:
        for conn in self.connections.values():
            conn.close()

    def __getitem__(self, name: str):
        return self.connections[name]

    def conn(self, name: str):
        """Node `name`'s connection, opened (once, whichever thread asks first)."""
        connection = self.connections[name]
        with self._locks[name]:
            if not connection.is_connected:
                connection.open()
        return connection

    def attempt(self, fn: Callable[[str, Any], T]) -> tuple[dict[str, T], dict[str, Failure]]:
        """fn(name, conn) on every node in parallel; (results, failures) by name, in cluster order."""
        if not self.connections:
            return {}, {}
        with ThreadPoolExecutor(max_workers=len(self.connections)) as pool:
            futures = {name: pool.submit(fn, name, conn) for name, conn in self.connections.items()}
        results, failures = {}, {}
        for name, future in futures.items():
            error = future.exception()
            if error is None:
                results[name] = future.result()
            else:
                failures[name] = Failure(name, where(self.connections[name]), describe(error))
        return results, failures

    def run(self, fn: Callable[[str, Any], T], what: str = "") -> dict[str, T]:
        """fn(name, conn) on every node in parallel -> results by name; NodesFailed after all have finished."""
        results, failures = self.attempt(fn)
        if failures:
            raise NodesFailed(failures, what)
        return results

    def wait_ready(self, timeout: float) -> None:
        """Wait until every node runs a command over SSH; NodesFailed naming those that did not in time."""
        from tasks.waiting import until

        deadline = time.monotonic() + timeout

        def try_once(conn):
            try:
                conn.run("true", hide=True)
                return None
            except Exception as err:
                conn.close()
                return err

        def ready(name, conn):
            # A booting machine refuses, resets or times out; a wrong key or user never heals.
            error = until(lambda: try_once(conn), deadline, 1.0, done=lambda err: err is None, again=booting)
            if error is not None:
                raise error

        self.run(ready, what=f"waiting {timeout:g} s for SSH")

"""The cluster's machines over SSH: a `Nodes` group, one Fabric connection per node.

Shaped like Fabric's `Group`, but it collects per-node failures instead of
raising at the first:

    with Nodes(c, project) as group:
        hostnames = group.run(lambda name, conn: conn.run("hostname", hide=True).stdout)

The provider says how to reach each node. Every connection has a Fabric config
of its own, cloned from the task's, so one machine's key never leaks to the
next (DESIGN.md §3).

Host keys are checked as OpenSSH checks them, at connect, before anything is
sent: against the user's known_hosts files (those ~/.ssh/config names, or
ssh's defaults) and the project's own, `<paths.output>/known_hosts`, where new
keys are recorded (`HostKeyCheck`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import shlex
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tasks.errors import StepError
from tasks.ui import last_line, progress

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


# -- host keys -------------------------------------------------------------------

KNOWN_HOSTS = "known_hosts"  # the project's file, in paths.output
# The files ssh reads when ssh_config names none (UserKnownHostsFile, GlobalKnownHostsFile).
USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
# How each mode is said to ssh (`inv ssh`).
SSH_STRICT = {"accept-new": "accept-new", "strict": "yes", "off": "no"}
OFF_WARNING = "warning: cluster.host_key_policy is off: the nodes' SSH host keys are not checked"
_known_hosts_lock = threading.Lock()  # the threads of one run record keys in the same file


class HostKeyRefused(StepError):
    """A host key that is not accepted; the message names it, says why and how to accept it (`accept`)."""

    def __init__(self, message: str, accept: str = ""):
        super().__init__(message)
        self.accept = accept  # the `inv accept-host-key ...` command, where one would accept it


class HostKeyNew(HostKeyRefused):
    """An unknown host key that accept-new would record, under a `dry` rule (`inv doctor`), which records nothing."""


@dataclass(frozen=True)
class HostKeyRule:
    """How one connection checks its host's key.

    mode: accept-new, strict or off (cluster.host_key_policy); record (`inv up` of a Vagrant VM:
    replace what is recorded); pin (`inv accept-host-key`: record the key whose fingerprint is `pin`).
    """

    project_file: Path
    mode: str
    why: str = ""  # what makes a strict mode strict, for the message
    pin: str = ""
    dry: bool = False  # record nothing: a key accept-new would record raises HostKeyNew (`inv doctor`)
    # (name, fingerprint) of each key recorded under this rule; shared by its copies with another mode
    recorded: list = field(default_factory=list, compare=False)


def fingerprint(key) -> str:
    """A host key's fingerprint as ssh prints it: SHA256:<base64, unpadded>."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def key_name(host: str, port: int) -> str:
    """How known_hosts names a host: `host` on port 22, `[host]:port` elsewhere (as ssh and paramiko do)."""
    return host if port == 22 else f"[{host}]:{port}"


def _from_ssh_config(ssh_config) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """(UserKnownHostsFile, GlobalKnownHostsFile, StrictHostKeyChecking yes) of a host's ssh_config lookup."""
    users = shlex.split(ssh_config.get("userknownhostsfile", "")) or list(USER_KNOWN_HOSTS)
    globals_ = shlex.split(ssh_config.get("globalknownhostsfile", "")) or list(GLOBAL_KNOWN_HOSTS)
    strict = str(ssh_config.get("stricthostkeychecking", "")).lower() == "yes"
    return (
        tuple(os.path.expanduser(f) for f in users if f != "none"),
        tuple(os.path.expanduser(f) for f in globals_ if f != "none"),
        strict,
    )


def _entry(line: str):
    """The known_hosts line as a paramiko HostKeyEntry; None for comments, markers and lines it cannot read."""
    from paramiko.hostkeys import HostKeyEntry

    line = line.strip()
    if not line or line.startswith(("#", "@")):  # @cert-authority and @revoked lines are not supported
        return None
    try:
        return HostKeyEntry.from_line(line)
    except Exception:  # a line ssh could not use either: a key type or encoding paramiko does not know
        return None


def _names(entry, name: str) -> bool:
    """Whether a known_hosts entry is for `name` (listed as it is, or hashed as with HashKnownHosts)."""
    from paramiko.hostkeys import HostKeys

    for listed in entry.hostnames:
        if listed == name:
            return True
        if listed.startswith("|1|"):
            try:
                if HostKeys.hash_host(name, listed) == listed:
                    return True
            except Exception:  # a damaged hash
                continue
    return False


def known_keys(files, name: str) -> list[tuple[str, Any]]:
    """(file, key) of every entry for `name` in `files`; a missing or unreadable file has none, as for ssh."""
    found = []
    with _known_hosts_lock:
        for path in files:
            try:
                lines = Path(path).read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                entry = _entry(line)
                if entry is not None and _names(entry, name):
                    found.append((str(path), entry.key))
    return found


def record_key(path: Path, name: str, key, replace: bool = False) -> None:
    """Add `name`'s key to the known_hosts file `path`; with `replace`, drop its other entries there first."""
    from tasks.files import write_atomic

    with _known_hosts_lock:
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        if replace:
            lines = [line for line in lines if not ((entry := _entry(line)) and _names(entry, name))]
        lines.append(f"{name} {key.get_name()} {key.get_base64()}")
        write_atomic(path, ("\n".join(lines) + "\n").encode())


class HostKeyCheck:
    """Checks a server's host key as OpenSSH does, before anything else goes over the connection.

    A key equal to an entry of any file is known. Another key of a type that
    has an entry is a changed key: always refused, naming both fingerprints
    and the command that accepts the new one. An unknown key is recorded in
    the project's file (accept-new) or refused (strict). Used as the paramiko
    client's MissingHostKeyPolicy (`_policy_class`) while the client's own key
    stores stay empty, so paramiko asks it on every connection.
    """

    def __init__(self, rule: HostKeyRule, node: str, files: tuple[str, ...] = ()):
        self.rule, self.node = rule, node
        self.files = (str(rule.project_file), *files)

    def missing_host_key(self, client, hostname: str, key) -> None:
        try:
            self.check(hostname, key)
        except HostKeyRefused:
            client.close()  # the transport paramiko opened for the key exchange: nothing else goes over it
            raise

    def check(self, name: str, key) -> None:
        rule, new = self.rule, fingerprint(key)
        if rule.mode == "off":
            return
        accept = f"`inv accept-host-key {self.node} {new}`"
        if rule.mode == "pin" and new == rule.pin:
            self.record(name, key, replace=True)
            return
        entries = known_keys(self.files, name)
        if any(known.asbytes() == key.asbytes() for _, known in entries):
            return
        if rule.mode == "pin":
            raise HostKeyRefused(f"host key of {name} is {new}, not the {rule.pin} given: nothing recorded")
        changed = [(path, known) for path, known in entries if known.get_name() == key.get_name()]
        if rule.mode == "record":
            self.record(name, key, replace=True)
            if changed:
                progress(
                    f"note: {self.node}: host key of {name} changed from {fingerprint(changed[0][1])} to {new}: "
                    f"recorded, as `inv up` started the VM"
                )
            return
        if changed:
            path, old = changed[0]
            raise HostKeyRefused(
                f"host key of {name} changed: recorded {fingerprint(old)} ({path}), now {new}; "
                f"if the machine was reinstalled, check {new} on it and accept it with {accept}",
                accept,
            )
        if rule.mode == "accept-new" and rule.dry:
            raise HostKeyNew(f"host key of {name} is not known yet: it is {new}, recorded at first contact", accept)
        if rule.mode == "accept-new":
            self.record(name, key)
            return
        raise HostKeyRefused(
            f"host key of {name} is not known ({rule.why}): it is {new}; check it, then run {accept}", accept
        )

    def record(self, name: str, key, replace: bool = False) -> None:
        record_key(self.rule.project_file, name, key, replace)
        self.rule.recorded.append((name, fingerprint(key)))


@functools.cache
def _logged_class() -> type:
    """A Fabric Connection whose run and sudo record each command in the run log (runlog), made on first use."""
    import fabric
    from invoke import UnexpectedExit

    from tasks import runlog

    def logged(method):
        def call(self, command, **kwargs):
            where = f"{self.node_name} ({self.host}:{self.port})"
            try:
                result = method(self, command, **kwargs)
            except UnexpectedExit as err:
                runlog.record_result(self.log_folder, where, err.result)
                raise
            except Exception as err:
                runlog.record(self.log_folder, where, command, f"not finished: {describe(err)}")
                raise
            runlog.record_result(self.log_folder, where, result)
            return result

        return call

    return type(
        "LoggedConnection",
        (fabric.Connection,),
        {"run": logged(fabric.Connection.run), "sudo": logged(fabric.Connection.sudo)},
    )


@functools.cache
def _policy_class() -> type:
    """HostKeyCheck as a paramiko MissingHostKeyPolicy, made on first use: importing this module imports no paramiko."""
    import paramiko

    return type("HostKeyPolicy", (HostKeyCheck, paramiko.MissingHostKeyPolicy), {})


# -- connections -------------------------------------------------------------------

RSA_ALGORITHMS = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")


def _transport(*args, prefer: tuple[str, ...] = (), **kwargs):
    """A paramiko Transport preferring AES-GCM, when the server offers it, over paramiko's AES-CTR + HMAC.

    About twice as fast for the copy's hundreds of megabytes, on both ends;
    every other cipher stays available for older servers. paramiko has no
    public setting for the order of ciphers: this is the one place that
    touches its private `_preferred_ciphers`.

    `prefer`: the host key types known for the server, asked for first (as ssh
    does), so that a server with several keys shows one that can be checked.
    """
    import paramiko

    transport = paramiko.Transport(*args, **kwargs)
    preferred = transport._preferred_ciphers  # type: ignore[attr-defined]
    gcm = tuple(name for name in preferred if "-gcm@" in name)
    transport._preferred_ciphers = gcm + tuple(name for name in preferred if name not in gcm)  # type: ignore[attr-defined]
    if prefer:
        options = transport.get_security_options()
        wanted = [algorithm for kind in prefer for algorithm in (RSA_ALGORITHMS if kind == "ssh-rsa" else (kind,))]
        first = [algorithm for algorithm in dict.fromkeys(wanted) if algorithm in options.key_types]
        options.key_types = tuple(first + [a for a in options.key_types if a not in first])
    return transport


def host_key_files(conn, rule: HostKeyRule, ssh_config: bool) -> tuple[tuple[str, ...], tuple[str, ...], str, str]:
    """(user files, global files, mode, why) for the host of Fabric connection `conn` under `rule`.

    Without `ssh_config` (Vagrant's VMs) only the project's file counts. With it, the files are those
    the host's ssh_config names, else ssh's defaults; StrictHostKeyChecking yes there makes the host
    strict, and nothing there makes one less strict.
    """
    if not ssh_config:
        return (), (), rule.mode, rule.why
    users, globals_, strict = _from_ssh_config(conn.ssh_config)
    if strict and rule.mode in ("accept-new", "off"):
        return users, globals_, "strict", "StrictHostKeyChecking yes in ssh_config"
    return users, globals_, rule.mode, rule.why


def _guard(conn, node: str, rule: HostKeyRule, ssh_config: bool) -> None:
    """Check the host keys of `conn` and of its ProxyJump hops with `rule` (in place of Fabric's AutoAddPolicy)."""
    import dataclasses

    import fabric

    hop = conn
    while isinstance(hop, fabric.Connection):
        users, globals_, mode, why = host_key_files(hop, rule, ssh_config)
        files = users + globals_
        check = _policy_class()(dataclasses.replace(rule, mode=mode, why=why), node, files)
        hop.client.set_missing_host_key_policy(check)
        known = known_keys((str(rule.project_file), *files), key_name(hop.host, hop.port))
        prefer = tuple(dict.fromkeys(key.get_name() for _, key in known))
        hop.connect_kwargs["transport_factory"] = functools.partial(_transport, prefer=prefer)
        hop = hop.gateway


def _connection(
    base_config,
    target,
    ssh_timeout: int,
    load_ssh_config: bool,
    rule: HostKeyRule,
    node: str = "",
    log_folder: Path | None = None,
):
    """A Fabric connection to `target` (not opened yet); with `log_folder`, its commands go to the run log there."""
    import fabric

    from tasks import settings

    cfg = base_config.clone(into=fabric.Config) if base_config is not None else fabric.Config()
    # No stdin under pytest or CI: Fabric would fail reading it.
    cfg.run.in_stream = False
    cfg.sudo.in_stream = False
    cfg.timeouts.connect = ssh_timeout
    cfg.user = settings.DEFAULT_USER  # where neither the target nor ssh_config names one (Fabric's own: the local user)
    if load_ssh_config:
        cfg.load_ssh_config()
    kwargs: dict = {}
    if target.key_files:
        # Only the given key: an agent's or ~/.ssh's keys, tried first, may exhaust the server's MaxAuthTries.
        kwargs.update(key_filename=list(target.key_files), look_for_keys=False, allow_agent=False)
    kind = _logged_class() if log_folder is not None else fabric.Connection
    conn = kind(target.host, user=target.user, port=target.port, config=cfg, connect_kwargs=kwargs)
    if log_folder is not None:
        conn._set(log_folder=log_folder, node_name=node or target.host)
    _guard(conn, node or target.host, rule, load_ssh_config)
    return conn


def login_options(project, target, rule: HostKeyRule, ssh_config: bool) -> list[str]:
    """The `ssh` options that log in to `target` as the tasks' connections do (`inv ssh`): the same user and
    port, and host keys checked the same way.

    The project's file comes first: ssh's accept-new records there.
    """
    conn = _connection(project.invoke_config, target, project.ssh_timeout, ssh_config, rule)
    users, _, mode, _ = host_key_files(conn, rule, ssh_config)
    rule.project_file.parent.mkdir(parents=True, exist_ok=True)
    # Quoted, and % doubled: ssh splits the value at spaces and expands %-tokens in it.
    files = " ".join('"' + str(f).replace("%", "%%") + '"' for f in (rule.project_file, *users))
    return [
        *("-l", conn.user, "-p", str(conn.port)),
        *("-o", f"UserKnownHostsFile={files}", "-o", f"StrictHostKeyChecking={SSH_STRICT[mode]}"),
    ]


def ssh_argv(project, target, rule: HostKeyRule, ssh_config: bool) -> list[str]:
    """OpenSSH's `ssh` to `target`, as the tasks' connections reach it (user, port, keys, host keys checked the
    same way), up to the host name: a command may follow. No configured value can read as an option."""
    argv = ["ssh", *login_options(project, target, rule, ssh_config)]
    if not ssh_config:
        argv += ["-F", "/dev/null"]  # the provider's details are complete: the user's `Host *` must not bend them
    argv += ["-o", "LogLevel=ERROR", "-o", f"ConnectTimeout={project.ssh_timeout}"]
    for key in target.key_files:
        argv += ["-i", key, "-o", "IdentitiesOnly=yes"]
    return [*argv, "--", target.host]


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

    def __init__(self, c, project, names=None, starting: bool = False, accept: str = "", dry: bool = False):
        """`starting`: `inv up` started the machines (a Vagrant VM's new key is recorded);
        `accept`: the fingerprint of a host key to record (`inv accept-host-key`);
        `dry`: record no host key and take the configuration as it is, rendered or not (`inv doctor`)."""
        import dataclasses

        from tasks import providers

        self.project = project
        self.provider = providers.of(project, c, stale_ok=dry)
        self.names = [n.name for n in project.cluster.nodes if names is None or n.name in names]
        self.rule = dataclasses.replace(self.provider.host_key_rule(starting), dry=dry)
        if accept:
            self.rule = HostKeyRule(self.rule.project_file, "pin", pin=accept)
        self.connections: dict = {}
        self.targets: dict = {}
        self._locks = {name: threading.Lock() for name in self.names}

    def __enter__(self) -> "Nodes":
        targets = self.targets = self.provider.targets(self.names)
        if self.rule.mode == "off" and self.names:
            progress(OFF_WARNING)
        self.connections = {
            name: _connection(
                self.project.invoke_config,
                targets[name],
                self.project.ssh_timeout,
                self.provider.load_ssh_config,
                self.rule,
                name,
                log_folder=None if self.rule.dry else self.project.output_dir,  # doctor writes nothing
            )
            for name in self.names
        }
        return self

    def __exit__(self, *exc) -> None:
        for conn in self.connections.values():
            conn.close()

    def __getitem__(self, name: str):
        return self.connections[name]

    def ssh(self, name: str) -> list[str] | None:
        """OpenSSH's `ssh` to node `name`, as its connection reaches it (see ssh_argv); None without an ssh here."""
        import shutil

        if not shutil.which("ssh"):
            return None
        return ssh_argv(self.project, self.targets[name], self.rule, self.provider.load_ssh_config)

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

"""Simulated cluster nodes: one real OpenSSH sshd per node on 127.0.0.N.

Usage (tests/conftest.py imports the fixture, so any test file just asks for it):

    def test_something(ssh_nodes, tmp_path):
        ssh_nodes.config                         # make_config(tmp_path) with provider=hosts and 3 hosts
        run_inv(tmp_path, "copy", config=ssh_nodes.config)
        ssh_nodes.path("calico-01", "/opt/bin/kubectl")   # -> Path on this machine
        ssh_nodes.stop("calico-02"); ...; ssh_nodes.start("calico-02")
        ssh_nodes.host_key("calico-02")          # its host public key: "ssh-ed25519 AAAA..."
        ssh_nodes.new_host_key("calico-02")      # a reinstalled machine: a new host key, sshd restarted
        ssh_nodes.drop("calico-02")              # as if it lost power: every process of the node killed

`ssh_nodes` is function-scoped over one session-wide set of sshd processes:
before each test every node's filesystem is emptied and every stopped sshd is
started again. Outside pytest (benchmarks): `with SSHNodes(tmp, count=6) as nodes:`.

Each node `calico-0N` is an sshd listening on 127.0.0.N:PORT (one free PORT for
all, below the ephemeral port range), started as `unshare --mount --uts
--propagation private` with its own hostname, its own host key and its own
client key (`.key_file(name)`; a node accepts only its own, so a key leaking to
another host fails the login). Inside its mount namespace the node sees these
folders of `.root(name)`:

    root/opt                      -> /opt
    root/srv                      -> /srv
    root/etc-kubernetes           -> /etc/kubernetes
    root/home-core                -> /home/core   (owned by core)
    root/var-lib-coreos-vagrant   -> /var/lib/coreos-vagrant
    root/var-lib-standin          -> /var/lib/standin   (state of stand-in programs)
    root/var-lib-inv              -> /var/lib/inv   (root's record of what `inv copy` installed)
    root/etc-systemd-system       -> /etc/systemd/system   (units and drop-ins; tests/standins/systemctl)
    root/etc-containerd           -> /etc/containerd
    root/etc-sysctl.d             -> /etc/sysctl.d
    root/etc-modules-load.d       -> /etc/modules-load.d
    root/etc-flatcar              -> /etc/flatcar   (update.conf)
    root/var-lib-kubelet          -> /var/lib/kubelet
    root/var-lib-etcd             -> /var/lib/etcd
    root/hosts                    -> /etc/hosts   (names the node, so sudo resolves it)

and one folder that all nodes share, the pretend cluster's state as its etcd
would hold it (tests/standins/kubeadm writes it, kubectl reads it):

    <base>/standin-cluster        -> /var/lib/standin-cluster   (`.shared_dir()`)

Binding over this machine's /etc/systemd/system inside a node's namespace hides
nothing from this machine's systemd: the stand-in `systemctl` the tests ship to
/opt/bin only ever reads the node's folder. The binds are recursive: a filesystem mounted inside one of these folders
before the node starts is the node's too (`.small_disk(name, path)`).
Everything else (/tmp, /usr, /etc) is this machine's. The user is `core`
(created if missing, password login impossible, passwordless sudo), as on
CoreOS. Needs root, `unshare` (util-linux) and the Debian packages
openssh-server and sudo. The mount points (/etc/kubernetes, ...) are created
empty on this machine if missing and left there: other sessions may be using them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
USER = "core"
# Folder of root(name) -> where the node sees it.
MOUNTS = {
    "opt": "/opt",
    "srv": "/srv",
    "etc-kubernetes": "/etc/kubernetes",
    "home-core": "/home/core",
    "var-lib-coreos-vagrant": "/var/lib/coreos-vagrant",
    "var-lib-standin": "/var/lib/standin",
    "var-lib-inv": "/var/lib/inv",
    "etc-systemd-system": "/etc/systemd/system",
    "etc-containerd": "/etc/containerd",
    "etc-sysctl.d": "/etc/sysctl.d",
    "etc-modules-load.d": "/etc/modules-load.d",
    "etc-flatcar": "/etc/flatcar",
    "var-lib-kubelet": "/var/lib/kubelet",
    "var-lib-etcd": "/var/lib/etcd",
}
# The folder of .base every node sees at SHARED_MOUNT: the pretend cluster's state.
SHARED_FOLDER, SHARED_MOUNT = "standin-cluster", "/var/lib/standin-cluster"
HOSTS_FILE = "hosts"

SSHD_CONFIG = """\
ListenAddress {address}:{port}
HostKey {dir}/host_key
PidFile none
AuthorizedKeysFile none
AuthorizedKeysCommand /bin/cat {dir}/authorized_keys
AuthorizedKeysCommandUser root
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
StrictModes no
UsePAM no
UseDNS no
PrintMotd no
MaxStartups 100
MaxSessions 100
Subsystem sftp internal-sftp
"""

# Runs inside the new namespaces: name the node, bind its folders, become sshd.
NAMESPACE_SCRIPT = 'hostname "$NODE_NAME" && {mounts} && exec "$@"'


def free_port(addresses: list[str]) -> int:
    """A TCP port free on every one of `addresses`, below the kernel's ephemeral range.

    Nodes restart on their port (`stop`, then `start`): a port the kernel never
    gives to a bind(0) or an outgoing connection cannot be taken meanwhile by a
    test server or a client of another xdist worker or session.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = random.SystemRandom()
    for _ in range(50):
        port = ports.randrange(10000, low) if low > 11000 else 0
        try:
            with socket.socket() as probe:
                probe.bind((addresses[0], port))
                port = probe.getsockname()[1]
            for address in addresses[1:]:
                with socket.socket() as s:
                    s.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no TCP port free on all of {addresses}")


def _account_tool(*args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    """useradd/usermod, tried again while another process holds the lock of /etc/passwd."""
    for _ in range(50):
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode in ok or "lock" not in done.stderr:
            break
        time.sleep(0.1)
    return done


def ensure_user() -> None:
    """The `core` user with a home, unlocked for key login, passwordless sudo.

    xdist workers (and other sessions) set up nodes at the same time: the
    workers of this machine take turns through a lock file, and the account
    tools are tried again while some other process edits /etc/passwd.
    """
    with open("/run/sshnodes-user.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if subprocess.run(["id", USER], capture_output=True).returncode != 0:
            done = _account_tool("useradd", "-m", "-s", "/bin/bash", USER, ok=(0, 9))  # 9: created meanwhile
            if done.returncode not in (0, 9):
                raise RuntimeError(f"useradd {USER}: {done.stderr.strip()}")
        done = _account_tool("usermod", "-p", "*", USER)
        if done.returncode != 0:
            raise RuntimeError(f"usermod {USER}: {done.stderr.strip()}")
        sudoers = Path("/etc/sudoers.d") / USER
        line = f"{USER} ALL=(ALL) NOPASSWD:ALL\n"
        if not sudoers.exists() or sudoers.read_text() != line:
            # A name of its own (sessions without this lock write too); sudo skips names with a dot.
            fd, tmp = tempfile.mkstemp(dir=sudoers.parent, prefix=f".{USER}.", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(line)
            os.chmod(tmp, 0o440)
            os.replace(tmp, sudoers)


def _empty(folder: Path) -> None:
    """Remove what is in `folder`, never the folder itself: a node's bind mount holds on to it."""
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
    )


class SSHNodes:
    """`count` sshd nodes calico-01.. on 127.0.0.1.. under `base`; see the module docstring."""

    def __init__(self, base: Path, count: int = 3, prefix: str = "calico"):
        if os.geteuid() != 0:
            raise RuntimeError("the SSH test nodes need root (mount namespaces, a core user)")
        self.base = Path(base)
        self.names = [f"{prefix}-{i:02d}" for i in range(1, count + 1)]
        self.addresses = {name: f"127.0.0.{i}" for i, name in enumerate(self.names, 1)}
        self.port = 0
        self.procs: dict[str, subprocess.Popen] = {}
        self.config: dict = {}

    # -- layout -------------------------------------------------------------
    def dir(self, name: str) -> Path:
        return self.base / name

    def root(self, name: str) -> Path:
        return self.dir(name) / "root"

    def key_file(self, name: str) -> Path:
        return self.dir(name) / "client_key"

    def host_key(self, name: str) -> str:
        """Node `name`'s host public key as known_hosts holds it: "<type> <base64>"."""
        return " ".join((self.dir(name) / "host_key.pub").read_text().split()[:2])

    def log(self, name: str) -> str:
        return (self.dir(name) / "sshd.log").read_text(errors="replace")

    def shared_dir(self) -> Path:
        """The folder every node sees at /var/lib/standin-cluster."""
        return self.base / SHARED_FOLDER

    def path(self, name: str, node_path: str) -> Path:
        """Where `node_path` as seen on node `name` lives on this machine."""
        if node_path == SHARED_MOUNT or node_path.startswith(SHARED_MOUNT + "/"):
            return self.shared_dir() / node_path[len(SHARED_MOUNT) :].lstrip("/")
        for folder, mount in sorted(MOUNTS.items(), key=lambda kv: -len(kv[1])):
            if node_path == mount or node_path.startswith(mount + "/"):
                return self.root(name) / folder / node_path[len(mount) :].lstrip("/")
        folders = ", ".join([*MOUNTS.values(), SHARED_MOUNT])
        raise ValueError(f"{node_path} is not inside a node folder: {folders}")

    def hosts(self, **fields) -> list[dict]:
        """The cluster.hosts entries for these nodes; `fields` are added to each."""
        return [
            {
                "name": n,
                "address": self.addresses[n],
                "port": self.port,
                "user": USER,
                "key_file": str(self.key_file(n)),
                **fields,
            }
            for n in self.names
        ]

    def make_config(self, tmp_path: Path, **sections) -> dict:
        """make_config(tmp_path) reaching these nodes with provider=hosts."""
        from conftest import make_config

        cluster = {"provider": "hosts", "hosts": self.hosts(), **sections.pop("cluster", {})}
        return make_config(tmp_path, cluster=cluster, **sections)

    # -- lifecycle ------------------------------------------------------------
    def __enter__(self) -> "SSHNodes":
        try:
            self.setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def setup(self) -> None:
        ensure_user()
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        for mount in [*MOUNTS.values(), SHARED_MOUNT]:
            Path(mount).mkdir(parents=True, exist_ok=True)
        self._make_shared_dir()
        self.port = free_port(list(self.addresses.values()))
        for name in self.names:
            d = self.dir(name)
            d.mkdir(parents=True, exist_ok=True)
            _keygen(d / "host_key")
            _keygen(self.key_file(name))
            shutil.copyfile(self.key_file(name).with_suffix(".pub"), d / "authorized_keys")
            (d / "sshd_config").write_text(SSHD_CONFIG.format(address=self.addresses[name], port=self.port, dir=d))
            (self.root(name) / HOSTS_FILE).parent.mkdir(parents=True, exist_ok=True)
            (self.root(name) / HOSTS_FILE).write_text(f"127.0.0.1\tlocalhost\n{self.addresses[name]}\t{name}\n")
            self._make_folders(name)
        for name in self.names:
            self._spawn(name)
        for name in self.names:
            self._wait(name)
        self.config = {}

    def _make_folders(self, name: str) -> None:
        import pwd

        user = pwd.getpwnam(USER)
        for folder in MOUNTS:
            p = self.root(name) / folder
            p.mkdir(parents=True, exist_ok=True)
            p.chmod(0o755)
        os.chown(self.root(name) / "home-core", user.pw_uid, user.pw_gid)

    def _make_shared_dir(self) -> None:
        self.shared_dir().mkdir(parents=True, exist_ok=True)
        self.shared_dir().chmod(0o755)

    def _spawn(self, name: str) -> None:
        binds = [f"mount --rbind {self.root(name) / folder} {mount}" for folder, mount in MOUNTS.items()]
        binds.append(f"mount --rbind {self.shared_dir()} {SHARED_MOUNT}")
        binds.append(f"mount --bind {self.root(name) / HOSTS_FILE} /etc/hosts")
        script = NAMESPACE_SCRIPT.format(mounts=" && ".join(binds))
        log = open(self.dir(name) / "sshd.log", "ab")
        self.procs[name] = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
                SSHD,
                "-D",
                "-e",
                "-f",
                str(self.dir(name) / "sshd_config"),
            ],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NODE_NAME": name},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()

    def _wait(self, name: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while True:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"sshd of {name} exited {proc.returncode}: {self.log(name)[-2000:]}")
            try:
                with socket.create_connection((self.addresses[name], self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd of {name} not answering on {self.addresses[name]}:{self.port}")
            time.sleep(0.02)

    def stop(self, name: str) -> None:
        """Stop node `name`'s sshd (its sessions too); the port then refuses connections."""
        proc = self.procs.get(name)
        if proc and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def drop(self, name: str) -> None:
        """Kill every process of node `name` at once (its sshd, its sessions, the commands they run), as a
        machine that loses power or network does; `stop` ends only the listening sshd. `start` brings it back."""
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        namespace = os.readlink(f"/proc/{proc.pid}/ns/mnt")
        proc.kill()  # first the listener: no new session can start while the others are killed
        proc.wait()
        while True:
            killed = 0
            for entry in Path("/proc").iterdir():
                try:
                    if entry.name.isdigit() and os.readlink(entry / "ns" / "mnt") == namespace:
                        os.kill(int(entry.name), signal.SIGKILL)
                        killed += 1
                except (FileNotFoundError, ProcessLookupError, PermissionError):
                    continue  # ended meanwhile
            if not killed:  # a session may have forked while we looked: look again until none is left
                return
            time.sleep(0.01)

    @contextlib.contextmanager
    def small_disk(self, name: str, node_path: str, size: str = "64k"):
        """A tmpfs of `size` at `node_path` (inside a node folder) on node `name`, for a disk that fills up.

        Mounted on this machine and seen by the node, restarted for it; its files
        are at `.path(name, node_path)` as usual. Unmounted at the end, and the
        node restarted without it.
        """
        host = self.path(name, node_path)
        host.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(host)], check=True)
        try:
            self.stop(name)
            self.start(name)
            yield host
        finally:
            subprocess.run(["umount", "--lazy", str(host)], check=True)
            self.stop(name)
            self.start(name)

    def start(self, name: str) -> None:
        """Start node `name`'s sshd again (no-op when running) and wait until it answers."""
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            self._spawn(name)
        self._wait(name)

    def new_host_key(self, name: str) -> None:
        """Give node `name` a new host key, as a reinstalled machine has, and restart its sshd with it."""
        self.stop(name)
        for old in ("host_key", "host_key.pub"):
            (self.dir(name) / old).unlink()
        _keygen(self.dir(name) / "host_key")
        self.start(name)

    def reset(self) -> None:
        """Every node running, with empty folders (the shared one too): the state a test starts from."""
        _empty(self.shared_dir())
        self._make_shared_dir()
        for name in self.names:
            for folder in MOUNTS:
                _empty(self.root(name) / folder)
            self._make_folders(name)
            self.start(name)

    def close(self) -> None:
        for name in list(self.procs):
            try:
                self.stop(name)
            except ProcessLookupError:
                pass
        self.procs.clear()


@pytest.fixture(scope="session")
def ssh_cluster(tmp_path_factory):
    """Three sshd nodes for the whole session; tests use `ssh_nodes`."""
    with SSHNodes(tmp_path_factory.mktemp("sshnodes")) as nodes:
        yield nodes


@pytest.fixture
def ssh_nodes(ssh_cluster, tmp_path):
    """The session's nodes, reset (empty folders, all running), with `.config` for this test."""
    ssh_cluster.reset()
    ssh_cluster.config = ssh_cluster.make_config(tmp_path)
    yield ssh_cluster

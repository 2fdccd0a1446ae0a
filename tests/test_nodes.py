"""tasks/nodes.py against real OpenSSH nodes (tests/sshnodes.py).

The vagrant provider is tested with a stand-in `vagrant` program on PATH that
prints a `vagrant ssh-config` text in Vagrant 2.3's exact format pointing at
the sshd nodes: VirtualBox cannot run here, and the connection details are
all `nodes` takes from Vagrant.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import threading
import time

import invoke
import pytest

from conftest import make_config
from tasks import providers, settings
from tasks.errors import StepError
from tasks.nodes import Nodes, NodesFailed

# `vagrant ssh-config calico-01 calico-02` as Vagrant 2.3.4 prints it (user paths shortened).
VAGRANT_SSH_CONFIG = """\
Host calico-01
  HostName 127.0.0.1
  User core
  Port 2222
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile /home/me/project/.vagrant/machines/calico-01/virtualbox/private_key
  IdentitiesOnly yes
  LogLevel FATAL
  PubkeyAcceptedKeyTypes +ssh-rsa
  HostKeyAlgorithms +ssh-rsa

Host calico-02
  HostName 127.0.0.1
  User core
  Port 2200
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile /home/me/project/.vagrant/machines/calico-02/virtualbox/private_key
  IdentitiesOnly yes
  LogLevel FATAL
  PubkeyAcceptedKeyTypes +ssh-rsa
  HostKeyAlgorithms +ssh-rsa

"""


def context(config) -> invoke.Context:
    return invoke.Context(invoke.Config(overrides=config))


def group(c, names=None, starting=False) -> Nodes:
    """The `Nodes` group of the task context `c`, as a task makes it (`starting`: as `inv up` does)."""
    return Nodes(c, settings.load(c), names, starting=starting)


def hostname(name, conn):
    return conn.run("hostname", hide=True).stdout.strip()


def test_hosts_provider_reaches_each_node_with_its_own_key(ssh_nodes):
    c = context(ssh_nodes.config)
    with group(c) as conns:
        assert conns.names == ["calico-01", "calico-02", "calico-03"]
        # Each sshd accepts only its own node's key: a leaked key would fail here.
        assert conns.run(hostname) == {n: n for n in conns.names}
        keys = [conn.connect_kwargs["key_filename"] for conn in conns.connections.values()]
        assert keys == [[str(ssh_nodes.key_file(n))] for n in conns.names]
        assert all(conn.config.run.in_stream is False for conn in conns.connections.values())
        # OpenSSH offers AES-GCM: preferred over paramiko's default AES-CTR + HMAC for speed.
        assert {conn.transport.local_cipher for conn in conns.connections.values()} == {"aes128-gcm@openssh.com"}


def test_hosts_provider_honours_the_users_ssh_config(ssh_nodes, tmp_path, monkeypatch):
    """Entries without key_file: each node's key comes from ~/.ssh/config, as with plain ssh."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        "".join(f"Host {ssh_nodes.addresses[n]}\n  IdentityFile {ssh_nodes.key_file(n)}\n" for n in ssh_nodes.names)
    )
    monkeypatch.setenv("HOME", str(home))
    config = ssh_nodes.config
    config["cluster"]["hosts"] = [{k: v for k, v in h.items() if k != "key_file"} for h in config["cluster"]["hosts"]]
    c = context(config)
    with group(c) as conns:
        assert conns.run(hostname) == {n: n for n in conns.names}


def ssh_config_hosts(ssh_nodes, home, login: str, **entry) -> dict:
    """Hosts entries with only name, address and key_file (and `entry`), and an ~/.ssh/config giving each
    node's address the nodes' Port and User `login`."""
    (home / ".ssh" / "config").write_text(
        "".join(f"Host {a}\n  Port {ssh_nodes.port}\n  User {login}\n" for a in ssh_nodes.addresses.values())
    )
    hosts = [{k: h[k] for k in ("name", "address", "key_file")} | entry for h in ssh_nodes.hosts()]
    return copy.deepcopy(ssh_nodes.config) | {"cluster": ssh_nodes.config["cluster"] | {"hosts": hosts}}


def test_ssh_config_port_applies_where_the_hosts_entry_leaves_it_out(ssh_nodes, home):
    c = context(ssh_config_hosts(ssh_nodes, home, "core"))
    with group(c) as conns:
        assert conns.run(hostname) == {n: n for n in ssh_nodes.names}


def test_ssh_config_user_applies_where_the_hosts_entry_leaves_it_out(ssh_nodes, home):
    """The nodes' sshd logs in whichever user asks with the node's key: `nobody` (home /nonexistent), whose
    shell refuses."""
    c = context(ssh_config_hosts(ssh_nodes, home, "nobody"))
    with (
        group(c) as conns,
        pytest.raises(NodesFailed, match="exited 1: Could not chdir to home directory /nonexistent"),
    ):
        conns.run(hostname)
    c = context(ssh_config_hosts(ssh_nodes, home, "nobody", user="core"))  # the entry's wins
    with group(c) as conns:
        assert conns.run(hostname) == {n: n for n in ssh_nodes.names}


def test_a_hosts_entrys_port_wins_over_ssh_config(ssh_nodes, home):
    c = context(ssh_config_hosts(ssh_nodes, home, "core", port=1))  # nothing listens there
    with group(c) as conns, pytest.raises(NodesFailed, match=r"calico-01 \(127.0.0.1:1\): connection refused"):
        conns.run(hostname)


def test_on_nodes_names_the_failed_node_after_the_others_complete(ssh_nodes):
    ssh_nodes.stop("calico-02")
    c = context(ssh_nodes.config)
    with group(c) as conns, pytest.raises(NodesFailed) as err:
        conns.run(lambda name, conn: conn.run(f"echo {name} > ~/seen", hide=True), what="marking")
    message = str(err.value)
    assert message.splitlines() == [
        "marking failed on 1 node(s):",
        f"  calico-02 (127.0.0.2:{ssh_nodes.port}): connection refused (is sshd running?)",
    ]
    for name in ("calico-01", "calico-03"):
        assert ssh_nodes.path(name, "/home/core/seen").read_text() == f"{name}\n"


def test_attempt_returns_failures_with_the_command_and_its_error(ssh_nodes):
    c = context(ssh_nodes.config)

    def fn(name, conn):
        if name == "calico-03":
            conn.run("echo first >&2; echo 'disk full' >&2; exit 3", hide=True)
        return name.upper()

    with group(c) as conns:
        results, failures = conns.attempt(fn)
    assert results == {"calico-01": "CALICO-01", "calico-02": "CALICO-02"}
    assert str(failures["calico-03"]) == (
        f"calico-03 (127.0.0.3:{ssh_nodes.port}): `echo first >&2; echo 'disk full' >&2; exit 3` exited 3: disk full"
    )


def test_a_wrong_key_is_reported_as_an_authentication_failure(ssh_nodes, tmp_path):
    hosts = ssh_nodes.hosts()
    hosts[1]["key_file"] = hosts[0]["key_file"]
    c = context(make_config(tmp_path, cluster={"provider": "hosts", "hosts": hosts}))
    with group(c) as conns:
        results, failures = conns.attempt(hostname)
    assert set(results) == {"calico-01", "calico-03"}
    assert "calico-02" in str(failures["calico-02"]) and "authentication failed" in failures["calico-02"].reason


def test_wait_ready_waits_for_a_node_that_comes_up(ssh_nodes):
    ssh_nodes.stop("calico-03")
    c = context(ssh_nodes.config)
    later = threading.Timer(1.5, ssh_nodes.start, args=("calico-03",))
    later.start()
    try:
        with group(c) as conns:
            conns.wait_ready(timeout=30)
            assert conns.run(hostname)["calico-03"] == "calico-03"
    finally:
        later.join()


def test_wait_ready_gives_up_naming_the_node(ssh_nodes):
    ssh_nodes.stop("calico-01")
    c = context(ssh_nodes.config)
    started = time.monotonic()
    with group(c) as conns, pytest.raises(NodesFailed) as err:
        conns.wait_ready(timeout=2)
    assert time.monotonic() - started < 15
    assert f"calico-01 (127.0.0.1:{ssh_nodes.port}): connection refused" in str(err.value)
    assert "calico-02" not in str(err.value)


def test_parse_vagrant_ssh_config_gives_each_host_its_own_port_and_key():
    got = providers.parse_ssh_config(VAGRANT_SSH_CONFIG, ["calico-01", "calico-02"])
    assert got == {
        "calico-01": providers.Target(
            "127.0.0.1", 2222, "core", ("/home/me/project/.vagrant/machines/calico-01/virtualbox/private_key",)
        ),
        "calico-02": providers.Target(
            "127.0.0.1", 2200, "core", ("/home/me/project/.vagrant/machines/calico-02/virtualbox/private_key",)
        ),
    }


def test_parse_vagrant_ssh_config_names_a_missing_machine():
    with pytest.raises(StepError) as err:
        providers.parse_ssh_config(VAGRANT_SSH_CONFIG, ["calico-01", "calico-02", "calico-03"])
    assert "no entry for calico-03 (has: calico-01, calico-02): run `inv up`" in str(err.value)


def stand_in_vagrant(folder, ssh_nodes, exit_code=0):
    """A `vagrant` that logs its arguments and answers `ssh-config` for the sshd nodes."""
    text = "".join(
        f"Host {n}\n  HostName {ssh_nodes.addresses[n]}\n  User core\n  Port {ssh_nodes.port}\n"
        f"  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n  PasswordAuthentication no\n"
        f"  IdentityFile {ssh_nodes.key_file(n)}\n  IdentitiesOnly yes\n  LogLevel FATAL\n\n"
        for n in ssh_nodes.names
    )
    (folder / "ssh-config.txt").write_text(text)
    script = folder / "vagrant"
    script.write_text(f"""#!/bin/sh
echo "$@" >> {folder}/calls.log
echo "CLUSTER_DESCRIPTION=$CLUSTER_DESCRIPTION" >> {folder}/calls.log
case "$1" in
  ssh-config) cat {folder}/ssh-config.txt ;;
  *) echo "vagrant $1: stand-in output" ;;
esac
exit {exit_code}
""")
    script.chmod(0o755)
    return folder / "calls.log"


def test_vagrant_provider_takes_every_node_from_one_ssh_config_call(ssh_nodes, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = stand_in_vagrant(bin_dir, ssh_nodes)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    c = context(make_config(tmp_path))  # provider vagrant, calico-01..03
    with group(c, starting=True) as conns:  # as `inv up`: the VMs' keys are recorded
        assert conns.run(hostname) == {n: n for n in ssh_nodes.names}
    log = calls.read_text().splitlines()
    assert log[0] == "ssh-config calico-01 calico-02 calico-03"
    assert log[1] == f"CLUSTER_DESCRIPTION={tmp_path / 'out' / 'cluster.json'}"
    assert len(log) == 2


def test_vagrant_ssh_config_failure_says_to_run_up(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vagrant").write_text(
        "#!/bin/sh\necho 'The provider for this Vagrant-managed machine is "
        "reporting that it is not yet ready for SSH.' >&2\nexit 1\n"
    )
    (bin_dir / "vagrant").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    c = context(make_config(tmp_path))
    with pytest.raises(StepError) as err, group(c):
        pass
    assert str(err.value) == (
        "`vagrant ssh-config` failed (are the VMs up? run `inv up`); Vagrant says:\n"
        "  The provider for this Vagrant-managed machine is reporting that it is not yet ready for SSH."
    )


def test_missing_vagrant_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    c = context(make_config(tmp_path))
    with pytest.raises(StepError) as err, group(c):
        pass
    assert str(err.value) == providers.VAGRANT_INSTALL


def test_key_file_with_a_tilde_is_the_users_home(ssh_nodes, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    hosts = ssh_nodes.hosts()
    for host in hosts:
        shutil.copyfile(host["key_file"], home / f"{host['name']}.key")
        (home / f"{host['name']}.key").chmod(0o600)
        host["key_file"] = f"~/{host['name']}.key"
    monkeypatch.setenv("HOME", str(home))
    c = context(make_config(tmp_path, cluster={"provider": "hosts", "hosts": hosts}))
    with group(c) as conns:
        assert conns.run(hostname) == {n: n for n in conns.names}


@pytest.mark.timeout(60)  # a regression would wait out the 600 s below
def test_wait_ready_does_not_wait_out_a_wrong_key(ssh_nodes, tmp_path):
    hosts = ssh_nodes.hosts()
    hosts[1]["key_file"] = hosts[0]["key_file"]
    c = context(make_config(tmp_path, cluster={"provider": "hosts", "hosts": hosts}))
    with group(c) as conns, pytest.raises(NodesFailed) as err:
        conns.wait_ready(timeout=600)
    assert "calico-02" in str(err.value) and "authentication failed" in str(err.value)
    assert "calico-01" not in str(err.value)


def test_conn_opens_one_connection_for_many_threads(ssh_nodes):
    """Threads sharing a node's connection through `Nodes.conn` open it once: sshd logs one login."""
    from concurrent.futures import ThreadPoolExecutor

    c = context(ssh_nodes.config)
    before = ssh_nodes.log("calico-01").count("Accepted publickey")
    with group(c, ["calico-01"]) as conns:
        with ThreadPoolExecutor(6) as pool:
            names = list(
                pool.map(lambda _: conns.conn("calico-01").run("hostname", hide=True).stdout.strip(), range(6))
            )
    assert names == ["calico-01"] * 6
    assert ssh_nodes.log("calico-01").count("Accepted publickey") - before == 1


# -- host keys -------------------------------------------------------------------


def known_hosts_file(tmp_path):
    """The project's known_hosts file of a test's configuration (paths.output is tmp_path/out)."""
    return tmp_path / "out" / "known_hosts"


def known_entry(ssh_nodes, name: str) -> str:
    """Node `name`'s known_hosts line, as ssh writes it (unhashed)."""
    return f"[{ssh_nodes.addresses[name]}]:{ssh_nodes.port} {ssh_nodes.host_key(name)}"


def ssh_fingerprint(ssh_nodes, name: str) -> str:
    """Node `name`'s host key fingerprint as OpenSSH's ssh-keygen prints it."""
    done = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(ssh_nodes.dir(name) / "host_key.pub")],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()[1]


def logins(ssh_nodes, name: str) -> int:
    """How many logins node `name`'s sshd has accepted so far."""
    return ssh_nodes.log(name).count("Accepted publickey")


def test_first_contact_records_each_nodes_key_and_the_next_run_checks_against_it(ssh_nodes, tmp_path, home):
    c = context(ssh_nodes.config)  # cluster.host_key_policy accept-new, the default
    with group(c) as conns:
        assert conns.run(hostname) == {n: n for n in conns.names}
    known = known_hosts_file(tmp_path)
    assert sorted(known.read_text().splitlines()) == sorted(known_entry(ssh_nodes, n) for n in ssh_nodes.names)
    recorded = (known.read_text(), known.stat().st_mtime_ns)
    with group(c) as conns:
        assert conns.run(hostname) == {n: n for n in conns.names}
    assert (known.read_text(), known.stat().st_mtime_ns) == recorded
    assert not (home / ".ssh" / "known_hosts").exists()  # the user's own file is only read


def test_strict_refuses_an_unknown_node_naming_it_and_accepts_the_users_known_hosts(ssh_nodes, tmp_path, home):
    (home / ".ssh" / "known_hosts").write_text(
        f"{known_entry(ssh_nodes, 'calico-01')}\n{known_entry(ssh_nodes, 'calico-03')}\n"
    )
    c = context(ssh_nodes.make_config(tmp_path, cluster={"host_key_policy": "strict"}))
    before = logins(ssh_nodes, "calico-02")
    with group(c) as conns:
        results, failures = conns.attempt(hostname)
    assert results == {"calico-01": "calico-01", "calico-03": "calico-03"}
    new = ssh_fingerprint(ssh_nodes, "calico-02")
    assert str(failures["calico-02"]) == (
        f"calico-02 (127.0.0.2:{ssh_nodes.port}): host key of [127.0.0.2]:{ssh_nodes.port} is not known "
        f"(cluster.host_key_policy strict): it is {new}; check it, then run `inv accept-host-key calico-02 {new}`"
    )
    assert logins(ssh_nodes, "calico-02") == before  # refused before the login
    assert not known_hosts_file(tmp_path).exists()  # strict records nothing


def test_ssh_config_names_the_known_hosts_files_and_makes_hosts_strict(ssh_nodes, tmp_path, home):
    """UserKnownHostsFile and StrictHostKeyChecking of ~/.ssh/config count, as for ssh; hashed names too."""
    elsewhere = home / "elsewhere"
    elsewhere.write_text(f"{known_entry(ssh_nodes, 'calico-01')}\n{known_entry(ssh_nodes, 'calico-03')}\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(elsewhere)], check=True, capture_output=True)  # HashKnownHosts
    assert "127.0.0.1" not in elsewhere.read_text()
    (home / ".ssh" / "config").write_text("Host *\n  UserKnownHostsFile ~/elsewhere\n  StrictHostKeyChecking yes\n")
    c = context(ssh_nodes.config)  # accept-new; the user's ssh config makes every host strict
    with group(c) as conns:
        results, failures = conns.attempt(hostname)
    assert results == {"calico-01": "calico-01", "calico-03": "calico-03"}
    assert "is not known (StrictHostKeyChecking yes in ssh_config)" in failures["calico-02"].reason
    assert not known_hosts_file(tmp_path).exists()


@pytest.mark.parametrize("recorded_in", ["project", "user"])
def test_a_changed_host_key_is_refused_naming_both_fingerprints_and_the_node_gets_nothing(
    ssh_nodes, tmp_path, home, recorded_in
):
    if recorded_in == "user":
        known = home / ".ssh" / "known_hosts"
        known.write_text("".join(known_entry(ssh_nodes, n) + "\n" for n in ssh_nodes.names))
    else:
        known = known_hosts_file(tmp_path)
    c = context(ssh_nodes.config)
    with group(c) as conns:
        conns.run(hostname)  # the first contact: recorded in the project's file, or known from the user's
    old = ssh_fingerprint(ssh_nodes, "calico-02")
    ssh_nodes.new_host_key("calico-02")
    new = ssh_fingerprint(ssh_nodes, "calico-02")
    before = logins(ssh_nodes, "calico-02")
    with group(c) as conns, pytest.raises(NodesFailed) as err:
        conns.run(lambda name, conn: conn.run("touch ~/touched", hide=True), what="touching")
    assert str(err.value).splitlines() == [
        "touching failed on 1 node(s):",
        f"  calico-02 (127.0.0.2:{ssh_nodes.port}): host key of [127.0.0.2]:{ssh_nodes.port} changed: "
        f"recorded {old} ({known}), now {new}; if the machine was reinstalled, check {new} on it "
        f"and accept it with `inv accept-host-key calico-02 {new}`",
    ]
    assert not ssh_nodes.path("calico-02", "/home/core/touched").exists()
    assert logins(ssh_nodes, "calico-02") == before  # not even a login: the check comes first
    assert ssh_nodes.path("calico-01", "/home/core/touched").exists()
    with Nodes(c, settings.load(c), ["calico-02"], accept=new) as conns:  # as `inv accept-host-key` does
        conns.run(hostname)
    with group(c) as conns:  # the new key is known now, wherever the old one was
        assert conns.run(hostname) == {n: n for n in conns.names}


def test_a_changed_key_of_a_proxyjump_host_is_refused(ssh_nodes, tmp_path, home):
    """~/.ssh/config's ProxyJump: the jump host's key is checked as the node's is."""
    port = ssh_nodes.port
    (home / ".ssh" / "config").write_text(
        f"Host 127.0.0.2\n  ProxyJump core@127.0.0.1:{port}\n"
        f"Host 127.0.0.1\n  IdentityFile {ssh_nodes.key_file('calico-01')}\n  IdentitiesOnly yes\n"
    )
    c = context(ssh_nodes.config)
    with group(c, ["calico-02"]) as conns:
        assert conns.run(hostname) == {"calico-02": "calico-02"}
    recorded = known_hosts_file(tmp_path).read_text().splitlines()
    assert sorted(recorded) == sorted(known_entry(ssh_nodes, n) for n in ("calico-01", "calico-02"))
    ssh_nodes.new_host_key("calico-01")
    with group(c, ["calico-02"]) as conns:
        results, failures = conns.attempt(hostname)
    assert results == {}
    reason = failures["calico-02"].reason
    assert reason.startswith(f"host key of [127.0.0.1]:{port} changed: ")
    assert f"now {ssh_fingerprint(ssh_nodes, 'calico-01')}" in reason


def test_a_host_with_several_keys_shows_the_one_known(ssh_nodes, tmp_path, home):
    """As ssh does, the key types known for a host are asked for first: a server with an ED25519 and an
    ECDSA key, known (strict) by its ECDSA key only, passes the check."""
    from sshnodes import SSHD, SSHD_CONFIG, free_port

    folder = tmp_path / "server"
    folder.mkdir()
    for kind in ("ed25519", "ecdsa"):
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(folder / kind)], check=True)
    shutil.copyfile(f"{ssh_nodes.key_file('calico-01')}.pub", folder / "authorized_keys")
    port = free_port(["127.0.0.4"])
    text = SSHD_CONFIG.format(address="127.0.0.4", port=port, dir=folder).replace(
        f"HostKey {folder}/host_key", f"HostKey {folder}/ed25519\nHostKey {folder}/ecdsa"
    )
    (folder / "sshd_config").write_text(text)
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["ssh-keyscan", "-p", str(port), "127.0.0.4"], capture_output=True).returncode:
            assert time.monotonic() < deadline, "the test sshd does not answer"
            time.sleep(0.1)
        ecdsa = " ".join((folder / "ecdsa.pub").read_text().split()[:2])
        (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.4]:{port} {ecdsa}\n")
        host = {"name": "calico-01", "address": "127.0.0.4", "port": port, "user": "core"}
        host["key_file"] = str(ssh_nodes.key_file("calico-01"))
        c = context(make_config(tmp_path, cluster={"provider": "hosts", "hosts": [host], "host_key_policy": "strict"}))
        with group(c) as conns:
            assert conns.run(lambda name, conn: conn.run("true", hide=True).ok) == {"calico-01": True}
    finally:
        server.terminate()
        server.wait()

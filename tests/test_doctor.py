"""`inv doctor`, the checks `inv up` runs first, and the refusal of a configuration changed since `inv render`.

The pure checks get facts as arguments. `inv doctor` itself runs for real: the
real `vagrant` CLI, the real OpenSSH nodes of tests/sshnodes.py, a real HTTP
server on 127.0.0.1 as the download mirror (tests/test_download.py's), and a
networks.conf of the test's own (INV_VBOX_NETWORKS_CONF). VirtualBox cannot run
here: `VBoxManage` is a stand-in script printing what the real one prints for
`--version` (7.0.14r161095, or that after the warning VirtualBox's wrapper
prints when its kernel module is not loaded).
"""

from __future__ import annotations

import copy
import hashlib
import os
import socket
import sys

import pytest

from conftest import make_config, project, run_inv
from tasks import doctor, providers, render
from tasks.doctor import MISSING, OK, WARN, Answer
from test_download import FileServer, mirrored, publish
from test_nodes import known_entry, known_hosts_file, ssh_fingerprint

VBOX_VERSION = "7.0.14r161095\n"
# What VirtualBox 7's VBoxManage wrapper (VBox.sh) prints first when vboxdrv is not loaded.
VBOXDRV_WARNING = """\
WARNING: The vboxdrv kernel module is not loaded. Either there is no module
         available for the current kernel (6.1.0-18-amd64) or it failed to
         load. Please recompile the kernel module and install it by

           sudo /sbin/vboxconfig

         You will not be able to start VMs until this problem is fixed.
"""


# -- pure checks ---------------------------------------------------------------------


def test_python_row():
    assert doctor.python_row((3, 11, 7), ">=3.11").state == OK
    old = doctor.python_row((3, 10, 12), ">=3.11")
    assert (old.state, old.found, old.todo) == (MISSING, "3.10.12, needs >=3.11", "install Python 3.11 or newer")


def test_package_rows_name_what_is_missing_or_too_old():
    rows = doctor.package_rows(
        {"invoke": "2.2.1", "fabric": None, "rich": "12.6.0"},
        {"invoke": ">=2.2,<3", "fabric": ">=3.2.2,<4", "rich": ">=13,<16"},
    )
    assert [(r.check, r.state, r.found) for r in rows] == [
        ("invoke", OK, "2.2.1"),
        ("fabric", MISSING, "not installed"),
        ("rich", MISSING, "12.6.0, needs >=13,<16"),
    ]
    assert rows[1].todo == doctor.PIP_INSTALL


def test_the_packages_checked_are_pyprojects():
    python, needed = doctor.requirements()
    assert python == ">=3.11"
    assert {"invoke", "fabric", "Jinja2", "PyYAML", "requests", "cryptography", "rich"} <= set(needed)
    assert needed["invoke"] == ">=2.2,<3"


@pytest.mark.parametrize(
    ("version", "spec", "ok"),
    [("2.2.1", ">=2.2,<3", True), ("3.0", ">=2.2,<3", False), ("2.1.9", ">=2.2", False), ("13.9.4", ">=13,<16", True)],
)
def test_satisfies(version, spec, ok):
    assert doctor.satisfies(version, spec) is ok


def test_vagrant_row():
    assert doctor.vagrant_row("Vagrant 2.3.4\n") == doctor.Row("vagrant", OK, "2.3.4")
    missing = doctor.vagrant_row(None)
    assert (missing.state, missing.message) == (MISSING, providers.VAGRANT_INSTALL)


def test_virtualbox_row():
    assert doctor.virtualbox_row(VBOX_VERSION) == doctor.Row("VirtualBox", OK, "7.0.14r161095")
    missing = doctor.virtualbox_row(None)
    assert (missing.state, missing.message) == (MISSING, providers.VIRTUALBOX_INSTALL)
    no_driver = doctor.virtualbox_row(VBOXDRV_WARNING + VBOX_VERSION)
    assert no_driver.state == MISSING
    assert no_driver.found == "7.0.14r161095, but its kernel module vboxdrv is not loaded"
    assert no_driver.todo == "run `sudo /sbin/vboxconfig`"


@pytest.mark.parametrize(
    ("network", "version", "conf", "platform", "state", "line"),
    [
        ("172.18.18.0/24", VBOX_VERSION, None, "linux", MISSING, "* 172.18.18.0/24 192.168.56.0/21"),
        ("192.168.56.0/24", VBOX_VERSION, None, "linux", OK, ""),
        ("172.18.18.0/24", VBOX_VERSION, "* 10.0.0.0/8 192.168.0.0/16\n", "linux", MISSING, "* 172.18.18.0/24"),
        ("172.18.18.0/24", VBOX_VERSION, "# ranges\n* 172.16.0.0/12\n* fd00::/8\n", "linux", OK, ""),
        # networks.conf replaces the default range: 192.168.56.x is no longer allowed by itself
        ("192.168.56.0/24", VBOX_VERSION, "* 10.0.0.0/8\n", "linux", MISSING, "* 192.168.56.0/24"),
        ("172.18.18.0/24", "6.1.26r145957\n", None, "linux", OK, ""),
        ("172.18.18.0/24", "6.1.28r147628\n", None, "linux", MISSING, "* 172.18.18.0/24 192.168.56.0/21"),
        ("172.18.18.0/24", None, None, "linux", MISSING, "* 172.18.18.0/24 192.168.56.0/21"),  # a new install
        ("172.18.18.0/24", VBOX_VERSION, None, "darwin", OK, ""),
        ("172.18.18.0/24", "6.1.30r148432\n", None, "darwin", MISSING, "* 172.18.18.0/24 192.168.56.0/21"),
        ("172.18.18.0/24", VBOX_VERSION, None, "win32", OK, ""),
    ],
)
def test_host_only_row(network, version, conf, platform, state, line):
    row = doctor.host_only_row(network, version, "/etc/vbox/networks.conf", conf, platform)
    assert row.state == state, row
    if line:
        assert row.todo.startswith(f"add the line `{line}` to /etc/vbox/networks.conf (as root)")


def test_memory_row():
    assert doctor.memory_row(3, 2048, {"MemTotal": 16_000_000, "MemAvailable": 8_000_000}).state == OK
    short = doctor.memory_row(3, 2048, {"MemTotal": 8_000_000, "MemAvailable": 4_000_000})
    assert (short.state, short.found) == (MISSING, "3 VM(s) to start x 2048 MB = 6144 MB, 3906 MB free")
    assert "cluster.num_instances or vm.memory" in short.todo
    assert doctor.memory_row(0, 2048, {"MemAvailable": 1}).state == OK  # they all run already
    assert doctor.memory_row(3, 2048, None).state == WARN


def test_disk_row(tmp_path):
    assert doctor.disk_row(tmp_path, 10**9, {}).state == OK
    assert doctor.disk_row(tmp_path, 10**9, {"kubelet": 10**8, "kubectl": None}).state == OK
    full = doctor.disk_row(tmp_path, 10**9, {"kubelet": 2 * 10**9})
    assert full.state == MISSING
    assert "paths.downloads" in full.todo


def test_host_row():
    assert doctor.host_row("https://dl.k8s.io", Answer("HTTP 200 OK"), ["kubelet"], False).state == OK
    down = doctor.host_row("https://dl.k8s.io", Answer(error="connection refused"), ["kubelet"], False)
    assert (down.state, down.todo) == (
        MISSING,
        "map https://dl.k8s.io/ to a mirror in download.mirrors, or set HTTPS_PROXY; then `inv download --check`",
    )
    assert doctor.host_row("https://dl.k8s.io", Answer(error="connection refused"), [], False).state == WARN
    assert doctor.host_row("https://dl.k8s.io", Answer("HTTP 404 Not Found"), ["kubelet"], False).state == WARN
    mirror = doctor.host_row("http://mirror", Answer(error="DNS: the name does not resolve"), ["kubelet"], True)
    assert mirror.todo.startswith("check that mirror in download.mirrors")


def test_summary():
    rows = [doctor.Row("a", OK, ""), doctor.Row("b", WARN, ""), doctor.Row("c", MISSING, "")]
    assert doctor.summary(rows, "x") == (False, "doctor: 1 missing for x: c; 1 warning(s): b")
    assert doctor.summary(rows[:2], "x") == (True, "doctor: everything x needs is in place; 1 warning(s): b")


# -- `inv doctor` for real ---------------------------------------------------------------


@pytest.fixture
def server():
    with FileServer() as srv:
        yield srv


def machine(tmp_path, vbox: str | None = VBOX_VERSION, vagrant: bool = True, conf: str | None = None) -> dict:
    """The environment of a run: PATH with a stand-in VBoxManage printing `vbox` (None: none), the real vagrant
    (or not), and a networks.conf of `conf`'s text (None: no such file)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if vbox is not None:
        # Shell builtins only: PATH may hold nothing else.
        script = f"#!/bin/sh\nwhile IFS= read -r line; do echo \"$line\"; done <<'EOF'\n{vbox}EOF\n"
        (bin_dir / "VBoxManage").write_text(script)
        (bin_dir / "VBoxManage").chmod(0o755)
    path = [str(bin_dir)]
    if vagrant:
        path.append(os.path.dirname(shutil_which("vagrant")))
    path.append(os.path.dirname(sys.executable))
    env = dict(
        os.environ,
        PATH=":".join(path),
        VAGRANT_HOME=str(tmp_path / "vagrant.d"),
        VAGRANT_CHECKPOINT_DISABLE="1",
        VAGRANT_DOTFILE_PATH=str(tmp_path / "dot-vagrant"),
    )
    conf_path = tmp_path / "networks.conf"
    env[doctor.NETWORKS_CONF_VARIABLE] = str(conf_path)
    if conf is not None:
        conf_path.write_text(conf)
    return env


def shutil_which(name: str) -> str:
    import shutil

    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed here")
    return found


def served(tmp_path, srv: FileServer, base: dict | None = None, **sections) -> dict:
    """`base` (default: make_config) with both download hosts mirrored to `srv`, which serves every file."""
    config = copy.deepcopy(base) if base else make_config(tmp_path)
    config["download"] = mirrored(tmp_path, srv, timeout=2)["download"]
    for section, values in sections.items():
        config[section].update(values)
    publish(srv, config)
    return config


def rows(stdout: str) -> dict[str, list[str]]:
    """The table of `inv doctor` (plain: not a terminal): check -> [state, found, what to do]."""
    lines = stdout.splitlines()
    start = lines.index("check\tstate\tfound\twhat to do")
    return {line.split("\t")[0]: line.split("\t")[1:] for line in lines[start + 1 :] if "\t" in line}


def snapshot(folder) -> dict:
    """Every file under `folder` but the run's own -f file and Vagrant's home, with its modification time."""
    skip = {"vagrant.d", "test-config.yaml"}
    return {str(p): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if not skip & set(p.parts)}


def test_doctor_with_everything_in_place_exits_0(tmp_path, server):
    config = served(tmp_path, server, vm={"memory": 64})
    env = machine(tmp_path, conf="* 172.18.18.0/24 192.168.56.0/21\n")
    before = snapshot(tmp_path)
    done = run_inv(tmp_path, "doctor", config=config, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    table = rows(done.stdout)
    assert {check: row[0] for check, row in table.items()} == {
        "python": OK,
        **{name: OK for name in doctor.requirements()[1]},
        "vagrant": OK,
        "VirtualBox": OK,
        "host-only network": OK,
        "memory": OK,
        "render": OK,
        "ssh client": OK,
        "disk": OK,
        f"host {server.base}": OK,
    }
    assert table["vagrant"][1] == "2.3.4"
    assert table["VirtualBox"][1] == "7.0.14r161095"
    assert table["host-only network"][1] == f"172.18.18.0/24 (allowed by {tmp_path / 'networks.conf'})"
    assert table["memory"][1].startswith("3 VM(s) to start x 64 MB = 192 MB, ")
    assert table[f"host {server.base}"][1] == "answers (HTTP 200 OK)"
    assert {method for method, _, _ in server.log} == {"HEAD"}  # one HEAD for the host, no download
    assert done.stdout.splitlines()[-1] == "doctor: everything stack seed on provider vagrant needs is in place"
    assert snapshot(tmp_path) == before  # nothing written: no output folder, no downloads folder


def test_doctor_names_each_missing_thing_of_vagrant_and_exits_1(tmp_path, server):
    config = served(tmp_path, server, vm={"memory": 10**9})  # a petabyte a VM
    env = machine(tmp_path, vbox=None, vagrant=False, conf="* 10.0.0.0/8 192.168.0.0/16\n")
    done = run_inv(tmp_path, "doctor", config=config, env=env)
    assert done.returncode == 1
    table = rows(done.stdout)
    assert table["vagrant"][:2] == [MISSING, "not installed"]
    assert table["VirtualBox"][:2] == [MISSING, "not installed (no VBoxManage)"]
    conf = tmp_path / "networks.conf"
    assert table["host-only network"] == [
        MISSING,
        f"VirtualBox 6.1.28+ allows 10.0.0.0/8, 192.168.0.0/16 ({conf}), not cluster.network 172.18.18.0/24",
        f"add the line `* 172.18.18.0/24` to {conf} (as root), or choose cluster.network and cluster.first_ip inside 192.168.56.0/21",
    ]
    assert table["memory"][0] == MISSING
    assert table["ssh client"][0] == doctor.WARN  # not on this PATH either: a warning, copy has SFTP
    assert done.stderr.strip() == (
        "doctor: 4 missing for stack seed on provider vagrant: vagrant, VirtualBox, host-only network, memory; "
        "1 warning(s): ssh client"
    )


def test_doctor_reports_virtualboxs_kernel_module_warning(tmp_path, server):
    config = served(tmp_path, server, vm={"memory": 64})
    env = machine(tmp_path, vbox=VBOXDRV_WARNING + VBOX_VERSION, conf="* 172.18.18.0/24\n")
    done = run_inv(tmp_path, "doctor", config=config, env=env)
    assert done.returncode == 1
    assert rows(done.stdout)["VirtualBox"] == [
        MISSING,
        "7.0.14r161095, but its kernel module vboxdrv is not loaded",
        "run `sudo /sbin/vboxconfig`",
    ]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_doctor_names_a_download_host_that_does_not_answer(tmp_path, server):
    config = served(tmp_path, server, vm={"memory": 64})
    dead = f"http://127.0.0.1:{closed_port()}"
    config["download"]["mirrors"]["https://github.com/"] = dead + "/"
    env = machine(tmp_path, conf="* 172.18.18.0/24\n")
    done = run_inv(tmp_path, "doctor", config=config, env=env)
    assert done.returncode == 1
    assert rows(done.stdout)[f"host {dead}"] == [
        MISSING,
        "connection refused",
        "check that mirror in download.mirrors (or set HTTPS_PROXY); then `inv download --check`",
    ]
    assert rows(done.stdout)[f"host {server.base}"][0] == OK
    # Once its files are downloaded, the host is only needed to download them again: a warning.
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    for art in project(config).download.artifacts:
        art.path.write_bytes(b"downloaded")
    done = run_inv(tmp_path, "doctor", config=config, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert rows(done.stdout)[f"host {dead}"][:2] == [WARN, "connection refused (its files are downloaded already)"]
    assert rows(done.stdout)["disk"][:2] == [OK, f"every download is in {downloads}"]


def test_doctor_counts_the_downloads_the_lock_file_sizes(tmp_path, server):
    config = served(tmp_path, server, vm={"memory": 64})
    lock = tmp_path / "downloads.lock"
    lock.write_text(
        "".join(
            f"{hashlib.sha256(a.name.encode()).hexdigest()}  {a.name}  {a.upstream}  {10**13}\n"
            for a in project(config).download.artifacts
        )
    )
    env = machine(tmp_path, conf="* 172.18.18.0/24\n")
    done = run_inv(tmp_path, "doctor", config=config, env=env)
    assert done.returncode == 1
    disk = rows(done.stdout)["disk"]
    assert disk[0] == MISSING
    assert disk[1].startswith("10 download(s) of 100000.0 GB, ")
    assert disk[2] == "make room, or set paths.downloads to a folder on a larger disk"


def test_doctor_with_stale_render_warns(tmp_path, server):
    config = served(tmp_path, server, vm={"memory": 64})
    render.render_all(project(config))
    config["cluster"]["num_instances"] = 2
    env = machine(tmp_path, conf="* 172.18.18.0/24\n")
    done = run_inv(tmp_path, "doctor", config=config, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert rows(done.stdout)["render"] == [
        WARN,
        "the configuration changed since: 3 node(s) rendered, 2 configured",
        "`inv render`",
    ]


def test_doctor_without_rich_prints_a_plain_table_and_names_it(tmp_path, server, monkeypatch):
    for name in [m for m in sys.modules if m == "rich" or m.startswith("rich.")] + ["rich"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import rich` fails, as when it is not installed
    done = run_inv(tmp_path, "doctor", config=served(tmp_path, server))
    assert done.returncode == 1
    assert rows(done.stdout)["rich"] == [MISSING, "not installed", doctor.PIP_INSTALL]
    assert done.stderr.strip() == "doctor: 1 missing for these tasks: rich"


def test_doctor_with_hosts_checks_ssh_and_host_keys_but_records_nothing(ssh_nodes, tmp_path, server, home):
    config = served(tmp_path, server, ssh_nodes.config, cluster={"host_key_policy": "strict"})
    (home / ".ssh" / "known_hosts").write_text(known_entry(ssh_nodes, "calico-01") + "\n")
    ssh_nodes.stop("calico-03")
    done = run_inv(tmp_path, "doctor", config=config)
    assert done.returncode == 1
    table = rows(done.stdout)
    assert not {"vagrant", "VirtualBox", "host-only network", "memory"} & set(table)  # no VMs here
    port = ssh_nodes.port
    assert table["ssh calico-01"] == [OK, f"core@127.0.0.1:{port}: logs in; host key known", ""]
    new = ssh_fingerprint(ssh_nodes, "calico-02")
    assert table["ssh calico-02"][0] == MISSING
    assert table["ssh calico-02"][2] == f"check the key on the machine, then `inv accept-host-key calico-02 {new}`"
    assert table["ssh calico-03"][:2] == [MISSING, f"core@127.0.0.3:{port}: connection refused (is sshd running?)"]
    assert done.stderr.strip() == "doctor: 2 missing for stack seed on provider hosts: ssh calico-02, ssh calico-03"
    assert not known_hosts_file(tmp_path).exists()
    assert not (tmp_path / "out").exists()


def test_doctor_with_accept_new_warns_of_unknown_keys_and_records_none(ssh_nodes, tmp_path, server, home):
    config = served(tmp_path, server, ssh_nodes.config)
    done = run_inv(tmp_path, "doctor", config=config)
    assert done.returncode == 0, done.stdout + done.stderr
    table = rows(done.stdout)
    for name in ssh_nodes.names:
        new = ssh_fingerprint(ssh_nodes, name)
        assert table[f"ssh {name}"][0] == WARN
        assert f"is not known yet: it is {new}, recorded at first contact" in table[f"ssh {name}"][1]
        assert table[f"ssh {name}"][2] == f"check it on the machine; or first `inv accept-host-key {name} {new}`"
    assert not known_hosts_file(tmp_path).exists()
    assert "3 warning(s)" in done.stdout.splitlines()[-1]


def test_memory_of_vms_that_run_already_is_not_counted_again(tmp_path, server):
    """A second `inv up`: Vagrant (a stand-in answering `status` as Vagrant 2.3 does) says two VMs run already."""
    config = served(tmp_path, server)
    render.render_all(project(config))
    free_mb = doctor.meminfo()["MemAvailable"] // 1024
    config["vm"]["memory"] = free_mb // 2  # three would not fit, one does
    env = machine(tmp_path, vagrant=False, conf="* 172.18.18.0/24\n")
    vagrant = tmp_path / "bin" / "vagrant"
    vagrant.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        "  --version) echo 'Vagrant 2.3.4' ;;\n"
        "  status) printf '%s\\n' 1795838515,calico-01,state,running 1795838515,calico-02,state,running "
        "1795838515,calico-03,state,poweroff ;;\n"
        "esac\n"
    )
    vagrant.chmod(0o755)
    done = run_inv(tmp_path, "doctor", config=config, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert rows(done.stdout)["memory"][1].startswith(f"1 VM(s) to start x {free_mb // 2} MB")


# -- `inv up` checks first ----------------------------------------------------------------


def test_up_stops_before_vagrant_up_when_virtualbox_refuses_the_network(tmp_path):
    config = make_config(tmp_path)
    render.render_all(project(config))
    env = machine(tmp_path, conf=None)  # no networks.conf: only 192.168.56.0/21
    done = run_inv(tmp_path, "up", "--no-copy", config=config, env=env)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "host-only network: VirtualBox 6.1.28+ allows 192.168.56.0/21 (no "
        f"{tmp_path / 'networks.conf'}), not cluster.network 172.18.18.0/24: add the line "
        f"`* 172.18.18.0/24 192.168.56.0/21` to {tmp_path / 'networks.conf'} (as root), or choose cluster.network "
        "and cluster.first_ip inside 192.168.56.0/21"
    )
    assert not (tmp_path / "dot-vagrant").exists()  # vagrant up never ran


def test_up_stops_before_vagrant_up_without_the_memory_for_the_vms(tmp_path):
    config = make_config(tmp_path, vm={"memory": 10**9})
    render.render_all(project(config))
    done = run_inv(tmp_path, "up", "--no-copy", config=config, env=machine(tmp_path, conf="* 172.18.18.0/24\n"))
    assert done.returncode == 1
    assert done.stderr.startswith("memory: 3 VM(s) to start x 1000000000 MB = 3000000000 MB, ")
    assert done.stderr.strip().endswith("MB free: close programs, or lower cluster.num_instances or vm.memory")


def test_ssh_client_row():
    """OpenSSH's client carries `inv copy`'s bytes; without one the copy still works, over SFTP: a warning."""
    found = doctor.ssh_client_row("OpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL 3.0.15 3 Sep 2024\n")
    assert found == doctor.Row("ssh client", OK, "OpenSSH_9.2p1")
    missing = doctor.ssh_client_row(None)
    assert missing.state == doctor.WARN and "over SFTP" in missing.found
    assert "openssh-client" in missing.message

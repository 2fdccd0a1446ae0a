"""`inv copy` against three real OpenSSH nodes (tests/sshnodes.py), through the real `inv`.

The downloaded binaries are stand-ins: small random files under each
artifact's name (their content is all `copy` looks at), recorded in a lock
file of their own. The activation command is a stand-in for `coreos-cloudinit
--from-file`: it records which files exist at the moment it runs.
"""

from __future__ import annotations

import copy as copy_module
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ARTIFACTS, SEED_DEFAULTS, project, run_inv, run_inv_on_terminal, start_inv
from sshnodes import MOUNTS
from standin_cluster import lock_downloads
from tasks import copy, render

# Runs as root on the node after the cloud-config is in place.
ACTIVATE = (
    "find /opt /srv /home/core /var/lib/coreos-vagrant -type f | sort"
    " > /var/lib/standin/activated-$(date +%s%N); echo {path} >> /var/lib/standin/activated-path"
)
# The seed's roles: what only the master's units (and `inv addons`/`inv verify`) use.
MASTER_ONLY = {"kubectl", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}
MASTER_PKI = ("ca.crt", "server.cert", "server.key", "kubecfg.crt", "kubecfg.key")


@pytest.fixture(scope="module")
def prepared(ssh_cluster, tmp_path_factory):
    """Rendered output and stand-in downloads with their lock file, made once for the module."""
    base = tmp_path_factory.mktemp("copy")
    config = ssh_cluster.make_config(base)
    render.render_all(project(config))
    downloads = project(config).downloads_dir
    downloads.mkdir()
    for i, artifact in enumerate(ARTIFACTS):
        (downloads / artifact["name"]).write_bytes(os.urandom(2000 + i))
    lock_downloads(config)
    return base, config["download"]


@pytest.fixture
def cfg(ssh_nodes, prepared):
    base, download = prepared
    config = ssh_nodes.config
    config["paths"] = {"output": str(base / "out"), "downloads": str(base / "downloads")}
    config["download"].update(copy_module.deepcopy(download))
    config["cluster"]["activate_command"] = ACTIVATE
    config["cluster"]["user_data_path"] = SEED_DEFAULTS["cluster"]["user_data_path"]
    return config


def expected(config, node: str) -> dict[str, tuple[Path | None, int, str]]:
    """node path -> (source, mode, owner) of everything `node` must get: the seed's per-role lists."""
    out, downloads = Path(config["paths"]["output"]), Path(config["paths"]["downloads"])
    master = node == "calico-01"
    files = {
        f"{a['dest']}/{a['name']}": (downloads / a["name"], 0o755, "root")
        for a in ARTIFACTS
        if master or a["name"] not in MASTER_ONLY
    }
    files["/opt/kubernetes/manifests"] = (None, 0o755, "root")
    for name in MASTER_PKI if master else ():
        files[f"/srv/kubernetes/{name}"] = (out / "pki" / name, 0o600 if name.endswith(".key") else 0o644, "root")
    if master:
        for m in sorted((out / "manifests").glob("*.yaml")):
            files[f"/home/core/{m.name}"] = (m, 0o644, "core")
    files[config["cluster"]["user_data_path"]] = (out / "nodes" / f"{node}.yaml", 0o644, "root")
    return files


def leftovers(ssh_nodes, node: str) -> list[Path]:
    """Temporary files of `inv copy` anywhere in the node's folders."""
    return [p for folder in MOUNTS for p in (ssh_nodes.root(node) / folder).rglob(".inv-copy*")]


def owner(path: Path) -> str:
    import pwd

    return pwd.getpwuid(path.stat().st_uid).pw_name


def node_files(ssh_nodes, node: str) -> list[str]:
    return sorted(
        str(p.relative_to(ssh_nodes.root(node)))
        for p in ssh_nodes.root(node).rglob("*")
        if p.is_file() and p.name != "hosts"
    )


def failure_lines(stderr: str) -> list[str]:
    """stderr from the failure summary on: the progress notes before it (activations running) left out."""
    lines = stderr.strip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("copy failed on")]
    return lines[starts[-1] :] if starts else lines


def rows(stdout: str) -> dict[str, list[str]]:
    """The result table's rows by node: uploaded, unchanged, failed, detail."""
    return {
        line.split("\t")[0]: line.split("\t")[1:]
        for line in stdout.splitlines()
        if line.startswith("calico-") and "\t" in line
    }


def test_copy_lands_every_file_with_mode_and_owner_and_activates_last(ssh_nodes, cfg, tmp_path):
    done = run_inv(tmp_path, "copy", config=cfg)
    assert done.returncode == 0, done.stderr
    for node in ssh_nodes.names:
        want = expected(cfg, node)
        for target, (source, mode, user) in want.items():
            got = ssh_nodes.path(node, target)
            assert (got.stat().st_mode & 0o7777, owner(got)) == (mode, user), (node, target)
            assert got.is_dir() if source is None else got.read_bytes() == source.read_bytes()
        # The activation saw every file in place and no temporary one, the cloud-config included.
        (marker,) = ssh_nodes.path(node, "/var/lib/standin").glob("activated-[0-9]*")
        assert marker.read_text().split() == sorted(t for t, (source, _, _) in want.items() if source is not None)
        assert (
            ssh_nodes.path(node, "/var/lib/standin/activated-path").read_text()
            == f"{cfg['cluster']['user_data_path']}\n"
        )
        # Put in place last: renamed over its target (which sets the change time) after every other file.
        user_data = ssh_nodes.path(node, cfg["cluster"]["user_data_path"]).stat().st_ctime_ns
        assert all(ssh_nodes.path(node, t).stat().st_ctime_ns <= user_data for t in want)
        assert leftovers(ssh_nodes, node) == []
        # The record of what is installed: root's, in a folder only root can enter.
        folder, record = ssh_nodes.path(node, copy.STATE_DIR), ssh_nodes.path(node, copy.STATE)
        assert (folder.stat().st_mode & 0o7777, owner(folder)) == (0o700, "root")
        assert owner(record) == "root" and not record.is_symlink()
        assert not ssh_nodes.path(node, "/home/core/.inv-copy.sums").exists()
    assert not ssh_nodes.path("calico-02", "/home/core/skydns.yaml").exists()
    table = rows(done.stdout)
    assert table["calico-01"][:3] == [str(len(expected(cfg, "calico-01"))), "0", "0"]
    assert table["calico-02"][:3] == [str(len(expected(cfg, "calico-02"))), "0", "0"]


def test_each_node_gets_what_its_units_read_and_no_more(ssh_nodes, cfg, tmp_path):
    """Workers get no control-plane binary and no key; every file a node's cloud-config names is there."""
    done = run_inv(tmp_path, "copy", config=cfg)
    assert done.returncode == 0, done.stderr
    out = Path(cfg["paths"]["output"])
    for node in ssh_nodes.names:
        named = set(
            re.findall(r"/(?:opt/bin|opt/cni/bin|srv/kubernetes)/[\w.-]+", (out / "nodes" / f"{node}.yaml").read_text())
        )
        assert named and all(ssh_nodes.path(node, path).is_file() for path in named), node
        assert not ssh_nodes.path(node, "/srv/kubernetes/ca.key").exists()  # the CA key never leaves the host
    for worker in ("calico-02", "calico-03"):
        assert sorted(p.name for p in ssh_nodes.path(worker, "/opt/bin").iterdir()) == sorted(
            a["name"] for a in ARTIFACTS if a["dest"] == "/opt/bin" and a["name"] not in MASTER_ONLY
        )
        assert not ssh_nodes.path(worker, "/srv/kubernetes").exists()
    assert sorted(p.name for p in ssh_nodes.path("calico-01", "/srv/kubernetes").iterdir()) == sorted(MASTER_PKI)
    assert MASTER_ONLY <= {p.name for p in ssh_nodes.path("calico-01", "/opt/bin").iterdir()}


def test_copy_on_a_terminal_shows_each_nodes_bytes(ssh_nodes, cfg, tmp_path):
    code, text = run_inv_on_terminal(tmp_path, "copy", config=cfg)
    assert code == 0, text
    total = sum(
        source.stat().st_size for source, _, _ in (v for v in expected(cfg, "calico-02").values()) if source is not None
    )
    for node in ssh_nodes.names:
        assert re.search(rf"{node}\s+━+ [\d.]+/[\d.]+ [kM]B", text), text
    assert f"{total / 1000:.1f}/{total / 1000:.1f} kB" in text or f"{total / 1e6:.1f}/{total / 1e6:.1f} MB" in text


def test_files_of_other_roles_left_by_an_earlier_copy_are_removed(ssh_nodes, cfg, tmp_path):
    assert run_inv(tmp_path, "copy", config=cfg).returncode == 0
    # What earlier versions put on every node; and a file of the user's own.
    earlier = ["/opt/bin/kube-apiserver", "/opt/bin/kubectl", "/srv/kubernetes/server.key", "/srv/kubernetes/ca.crt"]
    for path in earlier:
        ssh_nodes.path("calico-02", path).parent.mkdir(parents=True, exist_ok=True)
        ssh_nodes.path("calico-02", path).write_bytes(b"from an earlier copy")
    ssh_nodes.path("calico-02", "/home/core/skydns.yaml").write_text("the user's own")
    dry = run_inv(tmp_path, "copy", "--dry", config=cfg)
    assert dry.returncode == 0, dry.stderr
    assert rows(dry.stdout)["calico-02"][3] == f"would remove {', '.join(sorted(earlier))} (not for its role)"
    assert all(ssh_nodes.path("calico-02", path).exists() for path in earlier)
    done = run_inv(tmp_path, "copy", config=cfg)
    assert done.returncode == 0, done.stderr
    assert rows(done.stdout)["calico-02"] == [
        "0",
        str(len(expected(cfg, "calico-02"))),
        "0",
        f"removed {', '.join(sorted(earlier))} (not for its role)",
    ]
    assert not any(ssh_nodes.path("calico-02", path).exists() for path in earlier)
    assert ssh_nodes.path("calico-02", "/home/core/skydns.yaml").read_text() == "the user's own"
    assert rows(done.stdout)["calico-03"][2:] == ["0", ""]


def test_rerun_uploads_nothing_and_does_not_activate_again(ssh_nodes, cfg, tmp_path):
    assert run_inv(tmp_path, "copy", config=cfg).returncode == 0
    before = {
        n: {f: os.stat(ssh_nodes.root(n) / f).st_mtime_ns for f in node_files(ssh_nodes, n)} for n in ssh_nodes.names
    }
    again = run_inv(tmp_path, "copy", config=cfg)
    assert again.returncode == 0, again.stderr
    assert {n: r[:3] for n, r in rows(again.stdout).items()} == {
        n: ["0", str(len(expected(cfg, n))), "0"] for n in ssh_nodes.names
    }
    after = {
        n: {f: os.stat(ssh_nodes.root(n) / f).st_mtime_ns for f in node_files(ssh_nodes, n)} for n in ssh_nodes.names
    }
    assert after == before


def test_without_the_record_of_sums_a_rerun_hashes_on_the_node_and_uploads_nothing(ssh_nodes, cfg, tmp_path):
    assert run_inv(tmp_path, "copy", config=cfg).returncode == 0
    state = ssh_nodes.path("calico-03", copy.STATE)
    lines = state.read_text().splitlines()
    assert len(lines) == len(expected(cfg, "calico-03"))  # the files (not the folder) and the activation
    assert lines[-1].startswith("activated|")
    state.unlink()
    # Same size, other bytes: only the sha256 can tell.
    kubectl = ssh_nodes.path("calico-01", "/opt/bin/kubectl")
    kubectl.write_bytes(bytes(len(kubectl.read_bytes())))
    again = run_inv(tmp_path, "copy", config=cfg)
    assert again.returncode == 0, again.stderr
    table = rows(again.stdout)
    # Without its record, calico-03 cannot tell whether the last activation succeeded: its cloud-config goes again.
    assert table["calico-03"][:3] == ["1", str(len(expected(cfg, "calico-03")) - 1), "0"]
    assert table["calico-02"][:3] == ["0", str(len(expected(cfg, "calico-02"))), "0"]
    assert table["calico-01"][:3] == ["2", str(len(expected(cfg, "calico-01")) - 2), "0"]  # kubectl, cloud-config
    assert kubectl.read_bytes() == (Path(cfg["paths"]["downloads"]) / "kubectl").read_bytes()
    again_lines = state.read_text().splitlines()
    # Recorded again: the same files with the same sums (the cloud-config is a new file), and the activation.
    assert again_lines[:-2] == lines[:-2] and again_lines[-1] == lines[-1]


def test_a_changed_file_is_uploaded_with_the_cloud_config_after_it(ssh_nodes, cfg, tmp_path):
    assert run_inv(tmp_path, "copy", config=cfg).returncode == 0
    # On calico-01 someone loosened a key's mode, on calico-02 replaced kubelet.
    key = ssh_nodes.path("calico-01", "/srv/kubernetes/server.key")
    key.chmod(0o644)
    ssh_nodes.path("calico-02", "/opt/bin/kubelet").write_bytes(b"old")
    again = run_inv(tmp_path, "copy", config=cfg)
    assert again.returncode == 0, again.stderr
    table = rows(again.stdout)
    assert table["calico-01"][:3] == ["2", str(len(expected(cfg, "calico-01")) - 2), "0"]
    assert table["calico-02"][:3] == ["2", str(len(expected(cfg, "calico-02")) - 2), "0"]
    assert table["calico-03"][:3] == ["0", str(len(expected(cfg, "calico-03"))), "0"]
    assert key.stat().st_mode & 0o777 == 0o600
    assert (
        ssh_nodes.path("calico-02", "/opt/bin/kubelet").read_bytes()
        == (Path(cfg["paths"]["downloads"]) / "kubelet").read_bytes()
    )
    assert len(list(ssh_nodes.path("calico-02", "/var/lib/standin").glob("activated-[0-9]*"))) == 2
    assert len(list(ssh_nodes.path("calico-03", "/var/lib/standin").glob("activated-[0-9]*"))) == 1


def test_dry_prints_what_each_node_would_get_and_changes_nothing(ssh_nodes, cfg, tmp_path):
    done = run_inv(tmp_path, "copy", "--dry", config=cfg)
    assert done.returncode == 0, done.stderr
    for node in ssh_nodes.names:
        assert f"{node} would get" in done.stdout
        assert node_files(ssh_nodes, node) == []
    assert "/srv/kubernetes/server.key\tupload\t0600\troot\t" in done.stdout
    assert "~/skydns.yaml\tupload\t0644\tcore\t" in done.stdout
    assert {n: r[:3] for n, r in rows(done.stdout).items()} == {
        n: [str(len(expected(cfg, n))), "0", "0"] for n in ssh_nodes.names
    }


def test_dry_marks_each_file_and_force_sends_everything_and_activates_again(ssh_nodes, cfg, tmp_path):
    assert run_inv(tmp_path, "copy", config=cfg).returncode == 0
    manifest = Path(cfg["paths"]["output"]) / "manifests" / "busybox.yaml"
    manifest.write_text(manifest.read_text() + "# changed\n")
    dry = run_inv(tmp_path, "copy", "--dry", config=cfg)
    assert dry.returncode == 0, dry.stderr
    marks = [line.split("\t")[:2] for line in dry.stdout.splitlines() if line.startswith(("/", "~", "("))]
    assert ["~/busybox.yaml", "upload"] in marks
    assert ["/srv/kubernetes/server.key", "unchanged"] in marks and ["/opt/bin/kubelet", "unchanged"] in marks
    # The master's configuration goes again after a change (and is activated); the workers' stay.
    uploads = [target for target, action in marks if action == "upload"]
    assert uploads == ["~/busybox.yaml", cfg["cluster"]["user_data_path"]]
    forced = run_inv(tmp_path, "copy", "--force", config=cfg)
    assert forced.returncode == 0, forced.stderr
    assert {n: r[:3] for n, r in rows(forced.stdout).items()} == {
        n: [str(len(expected(cfg, n))), "0", "0"] for n in ssh_nodes.names
    }
    for node in ssh_nodes.names:
        assert len(list(ssh_nodes.path(node, "/var/lib/standin").glob("activated-[0-9]*"))) == 2


def test_a_stopped_node_is_named_while_the_others_complete(ssh_nodes, cfg, tmp_path):
    ssh_nodes.stop("calico-02")
    done = run_inv(tmp_path, "copy", config=cfg)
    assert done.returncode == 1
    assert failure_lines(done.stderr) == [
        "copy failed on 1 node(s):",
        f"  calico-02 (127.0.0.2:{ssh_nodes.port}): connection refused (is sshd running?)",
    ]
    for node in ("calico-01", "calico-03"):
        assert ssh_nodes.path(node, cfg["cluster"]["user_data_path"]).exists()
    assert node_files(ssh_nodes, "calico-02") == []


def test_a_failed_install_stops_before_the_cloud_config(ssh_nodes, cfg, tmp_path):
    # A directory where calico-03's kubelet must go: no file can be renamed over it.
    ssh_nodes.path("calico-03", "/opt/bin/kubelet/x").mkdir(parents=True)
    done = run_inv(tmp_path, "copy", config=cfg)
    assert done.returncode == 1
    lines = failure_lines(done.stderr)
    assert lines[0] == "copy failed on 1 node(s):"
    assert lines[1].startswith(f"  calico-03 (127.0.0.3:{ssh_nodes.port}): /opt/bin/kubelet: exited 1: mv:")
    assert not ssh_nodes.path("calico-03", cfg["cluster"]["user_data_path"]).exists()
    assert not list(ssh_nodes.path("calico-03", "/var/lib/standin").iterdir())
    assert leftovers(ssh_nodes, "calico-03") == []
    assert ssh_nodes.path("calico-02", cfg["cluster"]["user_data_path"]).exists()
    # kubelet comes first on a worker: nothing after it was installed.
    assert rows(done.stdout)["calico-03"][:3] == ["0", "0", str(len(expected(cfg, "calico-03")))]


def test_a_full_disk_leaves_the_old_file_whole_with_its_mode(ssh_nodes, cfg, tmp_path):
    """The new file is written beside the old one and renamed over it: a full disk stops the copy, not the node."""
    with ssh_nodes.small_disk("calico-02", "/opt/bin", "64k") as disk:
        old = disk / "kubelet"
        old.write_bytes(b"the old kubelet\n")
        old.chmod(0o750)
        filler = disk / "filler"
        with pytest.raises(OSError, match="No space left"), open(filler, "wb") as f:
            while True:
                f.write(b"x" * 512)
                f.flush()
        done = run_inv(tmp_path, "copy", config=cfg)
        assert done.returncode == 1
        lines = failure_lines(done.stderr)
        assert lines[:1] == ["copy failed on 1 node(s):"]
        assert re.match(
            rf"  calico-02 \(127.0.0.2:{ssh_nodes.port}\): /opt/bin/kubelet: .*No space left",
            lines[1],
        ), lines
        assert (old.read_bytes(), old.stat().st_mode & 0o7777) == (b"the old kubelet\n", 0o750)
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "kubelet"]  # no temporary file left
        assert leftovers(ssh_nodes, "calico-02") == []
        assert not ssh_nodes.path("calico-02", cfg["cluster"]["user_data_path"]).exists()
    assert ssh_nodes.path("calico-03", cfg["cluster"]["user_data_path"]).exists()


def big_downloads(cfg, tmp_path: Path, size: int = 256 << 20) -> Path:
    """The module's downloads with a `size`-byte kubelet (sparse: quick to make), locked: a copy that takes a while."""
    downloads = tmp_path / "big-downloads"
    shutil.copytree(cfg["paths"]["downloads"], downloads)
    with open(downloads / "kubelet", "wb") as f:
        f.truncate(size)
    cfg["paths"]["downloads"] = str(downloads)
    lock_downloads(cfg)
    return downloads / "kubelet"


def inv_copy_process(cfg, tmp_path: Path) -> subprocess.Popen:
    """A real `inv copy` process, which a test can interrupt."""
    return start_inv(cfg, tmp_path, "copy")


def wait_for_upload(ssh_nodes, node: str, proc: subprocess.Popen) -> None:
    """Until some bytes of an upload arrived in a temporary file on `node` (beside a target, or in the home)."""
    deadline = time.monotonic() + 60
    while not any(p.is_file() and p.stat().st_size for p in leftovers(ssh_nodes, node)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no upload started"
        time.sleep(0.005)


def test_a_connection_dropped_mid_copy_leaves_the_old_file_and_the_next_run_cleans_up(ssh_nodes, cfg, tmp_path):
    kubelet = big_downloads(cfg, tmp_path)
    old = ssh_nodes.path("calico-02", "/opt/bin/kubelet")
    old.parent.mkdir(parents=True)
    old.write_bytes(b"the old kubelet\n")
    old.chmod(0o755)
    proc = inv_copy_process(cfg, tmp_path)
    wait_for_upload(ssh_nodes, "calico-02", proc)
    ssh_nodes.drop("calico-02")  # mid-upload: sshd, the session and its sftp-server all gone at once
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert re.search(
        r"copy failed on 1 node\(s\):\n  calico-02 \(127.0.0.2:\d+\): /opt/bin/kubelet: connection lost during the upload",
        stderr,
    ), stderr
    assert (old.read_bytes(), old.stat().st_mode & 0o7777) == (b"the old kubelet\n", 0o755)
    assert leftovers(ssh_nodes, "calico-02")  # nothing on the node could remove them
    ssh_nodes.start("calico-02")
    again = run_inv(tmp_path, "copy", config=cfg)
    assert again.returncode == 0, again.stderr
    assert leftovers(ssh_nodes, "calico-02") == []
    assert old.stat().st_size == kubelet.stat().st_size
    assert rows(again.stdout)["calico-03"][:3] == ["0", str(len(expected(cfg, "calico-03"))), "0"]


def test_ctrl_c_removes_the_temporary_files_from_every_node(ssh_nodes, cfg, tmp_path):
    big_downloads(cfg, tmp_path)
    proc = inv_copy_process(cfg, tmp_path)
    for node in ssh_nodes.names:  # every node mid-upload, however busy the machine
        wait_for_upload(ssh_nodes, node, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted: stopping the copies and removing their temporary files from the nodes" in stderr
    assert stderr.strip().splitlines()[-1] == "copy: interrupted; run `inv copy` again to resume"
    for node in ssh_nodes.names:
        assert leftovers(ssh_nodes, node) == [], node
        assert not ssh_nodes.path(node, cfg["cluster"]["user_data_path"]).exists()


def test_leftovers_of_an_interrupted_run_are_removed_by_the_next(ssh_nodes, cfg, tmp_path):
    assert run_inv(tmp_path, "copy", config=cfg).returncode == 0
    planted = {
        "calico-01": ["/home/core/.inv-copy-0123456789ab/0", "/srv/kubernetes/.inv-copy-0123456789ab-7"],
        "calico-02": ["/opt/bin/.inv-copy-0123456789ab-0", "/opt/cni/bin/.inv-copy-0123456789ab-5"],
        "calico-03": [
            "/var/lib/inv/.inv-copy-0123456789ab-record",
            "/var/lib/coreos-vagrant/.inv-copy-0123456789ab-9",
            "/home/core/.inv-copy.sums",  # the record's old place
        ],
    }
    for node, paths in planted.items():
        for path in paths:
            ssh_nodes.path(node, path).parent.mkdir(parents=True, exist_ok=True)
            ssh_nodes.path(node, path).write_bytes(b"half a file")
    done = run_inv(tmp_path, "copy", config=cfg)
    assert done.returncode == 0, done.stderr
    assert {n: r[:3] for n, r in rows(done.stdout).items()} == {
        n: ["0", str(len(expected(cfg, n))), "0"] for n in ssh_nodes.names
    }
    for node in ssh_nodes.names:
        assert leftovers(ssh_nodes, node) == [], node


def test_a_damaged_record_is_ignored_and_every_file_hashed_again(ssh_nodes, cfg, tmp_path):
    assert run_inv(tmp_path, "copy", config=cfg).returncode == 0
    record = ssh_nodes.path("calico-02", copy.STATE)
    good = record.read_text()
    record.write_text(good[: len(good) // 2])  # cut in the middle of a line
    done = run_inv(tmp_path, "copy", config=cfg)
    assert done.returncode == 0, done.stderr
    # Every file hashed: all current; the activation, no longer on record, again with the cloud-config.
    assert rows(done.stdout)["calico-02"][:3] == ["1", str(len(expected(cfg, "calico-02")) - 1), "0"]
    lines = record.read_text().splitlines()
    assert len(lines) == len(good.splitlines()) and lines[:-2] == good.splitlines()[:-2]  # recorded again
    assert all(copy.SUM_LINE.fullmatch(line) for line in lines[:-1]) and copy.ACTIVATED_LINE.fullmatch(lines[-1])
    assert len(list(ssh_nodes.path("calico-02", "/var/lib/standin").glob("activated-[0-9]*"))) == 2


def forged_record(ssh_nodes, node: str, cfg, target: str) -> str:
    """A record vouching that `target`, as it is now on `node`, holds the right file."""
    path = ssh_nodes.path(node, target)
    st = path.stat()
    source = expected(cfg, node)[target][0]
    import hashlib

    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    ctime = subprocess.run(["stat", "-c", "%z", str(path)], capture_output=True, text=True, check=True).stdout.strip()
    return f"sum|{digest}|{st.st_size}|{st.st_ino}|{ctime}|{target}\n"


@pytest.mark.parametrize("how", ["symlink", "folder not root's"])
def test_a_record_root_did_not_write_is_not_believed(ssh_nodes, cfg, tmp_path, how):
    """The record counts only as a root-owned file in a 0700 root folder: anything else is re-checked and replaced."""
    assert run_inv(tmp_path, "copy", config=cfg).returncode == 0
    kubelet = ssh_nodes.path("calico-03", "/opt/bin/kubelet")
    kubelet.write_bytes(b"x" * kubelet.stat().st_size)  # tampered with, same size
    forged = forged_record(ssh_nodes, "calico-03", cfg, "/opt/bin/kubelet")
    record, folder = ssh_nodes.path("calico-03", copy.STATE), ssh_nodes.path("calico-03", copy.STATE_DIR)
    if how == "symlink":
        elsewhere = ssh_nodes.path("calico-03", "/home/core/forged")
        elsewhere.write_text(forged)
        record.unlink()
        record.symlink_to("/home/core/forged")
    else:  # root's file, in a folder others could have written it into
        import pwd

        core = pwd.getpwnam("core")
        record.write_text(forged)
        os.chown(folder, core.pw_uid, core.pw_gid)
        folder.chmod(0o755)
    done = run_inv(tmp_path, "copy", config=cfg)
    assert done.returncode == 0, done.stderr
    assert kubelet.read_bytes() == (Path(cfg["paths"]["downloads"]) / "kubelet").read_bytes()
    assert not record.is_symlink() and owner(record) == "root"
    assert (folder.stat().st_mode & 0o7777, owner(folder)) == (0o700, "root")
    assert "sum|" in record.read_text() and forged not in record.read_text()
    if how == "symlink":
        assert ssh_nodes.path("calico-03", "/home/core/forged").read_text() == forged  # not written through


def test_a_failed_activation_runs_again_on_the_next_copy(ssh_nodes, cfg, tmp_path):
    cfg["cluster"]["activate_command"] = (
        "echo x >> /var/lib/standin/activations; test -e /var/lib/standin/ready || { echo not ready >&2; exit 3; }"
    )
    done = run_inv(tmp_path, "copy", config=cfg)
    assert done.returncode == 1
    assert failure_lines(done.stderr)[1:] == [
        f"  calico-0{i} (127.0.0.{i}:{ssh_nodes.port}): activate_command: exited 3: not ready" for i in (1, 2, 3)
    ]
    # Nothing changed since, yet the activation is due: it runs again (and fails again).
    again = run_inv(tmp_path, "copy", config=cfg)
    assert again.returncode == 1
    assert {n: r[:3] for n, r in rows(again.stdout).items()} == {
        n: ["1", str(len(expected(cfg, n)) - 1), "1"]
        for n in ssh_nodes.names  # the cloud-config, then the activation
    }
    for node in ssh_nodes.names:
        ssh_nodes.path(node, "/var/lib/standin/ready").touch()
    assert run_inv(tmp_path, "copy", config=cfg).returncode == 0
    assert run_inv(tmp_path, "copy", config=cfg).returncode == 0  # done now: not again
    for node in ssh_nodes.names:
        assert ssh_nodes.path(node, "/var/lib/standin/activations").read_text() == "x\n" * 3


def test_a_hanging_activation_is_stopped_and_named(ssh_nodes, cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(copy, "ACTIVATE_TIMEOUT", 1)
    cfg["cluster"]["activate_command"] = "sleep 60"
    started = time.monotonic()
    done = run_inv(tmp_path, "copy", config=cfg)
    assert time.monotonic() - started < 30
    assert done.returncode == 1
    assert failure_lines(done.stderr)[1:] == [
        f"  calico-0{i} (127.0.0.{i}:{ssh_nodes.port}): cluster.activate_command timed out after 1 s: sleep 60 "
        "(it runs again on the next `inv copy`)"
        for i in (1, 2, 3)
    ]
    for node in ssh_nodes.names:  # every file is in place, the activation not on record
        assert ssh_nodes.path(node, cfg["cluster"]["user_data_path"]).exists()
        assert "activated|" not in ssh_nodes.path(node, copy.STATE).read_text()


def test_a_missing_addon_manifest_says_run_render(ssh_nodes, cfg, tmp_path):
    """The manifests `inv addons` will create must all be there, not just some file in the folder."""
    cfg["paths"]["output"] = str(tmp_path / "out")  # not the module's shared output
    render.render_all(project(cfg))
    (tmp_path / "out" / "manifests" / "busybox.yaml").unlink()
    done = run_inv(tmp_path, "copy", config=cfg)
    assert done.returncode == 1
    assert done.stderr.strip().endswith("manifests/busybox.yaml is missing: run `inv render` first")


def test_missing_render_output_says_run_render_and_touches_no_node(ssh_nodes, cfg, tmp_path):
    cfg["paths"]["output"] = str(tmp_path / "nothing")
    done = run_inv(tmp_path, "copy", config=cfg)
    assert done.returncode == 1
    assert (
        done.stderr.strip() == f"{tmp_path / 'nothing' / 'nodes' / 'calico-01.yaml'} is missing: run `inv render` first"
    )
    assert all(node_files(ssh_nodes, n) == [] for n in ssh_nodes.names)


def test_missing_download_says_run_download_and_touches_no_node(ssh_nodes, cfg, tmp_path):
    downloads = tmp_path / "downloads"
    shutil.copytree(cfg["paths"]["downloads"], downloads)
    (downloads / "calico-ipam").unlink()
    cfg["paths"]["downloads"] = str(downloads)
    done = run_inv(tmp_path, "copy", "--dry", config=cfg)
    assert done.returncode == 1
    assert done.stderr.strip() == f"downloaded file {downloads / 'calico-ipam'} is missing: run `inv download` first"
    assert all(node_files(ssh_nodes, n) == [] for n in ssh_nodes.names)


def test_a_download_changed_since_it_was_locked_is_refused_before_any_node_is_touched(ssh_nodes, cfg, tmp_path):
    downloads = tmp_path / "downloads"
    shutil.copytree(cfg["paths"]["downloads"], downloads)
    cfg["paths"]["downloads"] = str(downloads)
    (downloads / "kube-proxy").write_bytes(b"a different kube-proxy")
    locked = project(cfg).download.lock_file
    done = run_inv(tmp_path, "copy", config=cfg)
    assert done.returncode == 1
    assert re.fullmatch(
        rf"downloaded file {re.escape(str(downloads / 'kube-proxy'))} has sha256 [0-9a-f]{{64}}, not [0-9a-f]{{64}} "
        rf"as its entry in {re.escape(str(locked))} says: it changed after download; "
        r"run `inv download` to fetch it again",
        done.stderr.strip(),
    ), done.stderr
    assert all(node_files(ssh_nodes, n) == [] for n in ssh_nodes.names)
    # A pin is checked the same way, and wins over the lock.
    artifacts = cfg["download"]["artifacts"]
    artifacts[[a["name"] for a in artifacts].index("calico")]["sha256"] = "0" * 64
    done = run_inv(tmp_path, "copy", "--dry", config=cfg)
    assert done.returncode == 1
    assert f"downloaded file {downloads / 'calico'} has sha256 " in done.stderr
    assert f"not {'0' * 64} as its pin in download.artifacts says" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 2  # kube-proxy and calico, a line each


def test_a_download_without_pin_or_lock_entry_is_refused_naming_it(ssh_nodes, cfg, tmp_path):
    lock = Path(cfg["download"]["lock_file"])
    kept = [
        line for line in lock.read_text().splitlines() if "  calico-ipam  " not in line and "  kubelet  " not in line
    ]
    cfg["download"]["lock_file"] = str(tmp_path / "downloads.lock")
    Path(cfg["download"]["lock_file"]).write_text("\n".join(kept) + "\n")
    done = run_inv(tmp_path, "copy", config=cfg)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"kubelet, calico-ipam: neither a sha256 pin in download.artifacts nor an entry in {tmp_path / 'downloads.lock'}: "
        "run `inv download` first"
    )
    assert all(node_files(ssh_nodes, n) == [] for n in ssh_nodes.names)


def test_a_relative_user_data_path_is_refused_before_any_node_is_touched(ssh_nodes, cfg, tmp_path):
    cfg["cluster"]["user_data_path"] = "user-data"
    done = run_inv(tmp_path, "copy", config=cfg)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "invalid configuration: cluster.user_data_path = 'user-data': expected an "
        "absolute path like /var/lib/coreos-vagrant/vagrantfile-user-data"
    )
    assert all(node_files(ssh_nodes, n) == [] for n in ssh_nodes.names)


def test_plan_puts_the_cloud_config_last_and_manifests_only_on_the_master(cfg):
    cluster = project(cfg).cluster
    wanted = copy.plan(project(cfg))
    for node in cluster.nodes:
        assert wanted[node.name][-1].target == cfg["cluster"]["user_data_path"]
        assert {i.target for i in wanted[node.name]} == {
            t.replace("/home/core", copy.HOME) for t in expected(cfg, node.name)
        }


# The record's folder and file as check_command shows them when root wrote them.
TRUSTED = (
    "stat|700|root|directory|4096|2|1700000000|/var/lib/inv\n"
    "stat|644|root|regular file|300|3|1700000000|/var/lib/inv/copy.sums\n"
)
STATS = (
    "stat|755|root|regular file|10|7|1700000000|/opt/bin/a\n"
    "stat|755|root|directory|4096|8|1700000000|/opt/kubernetes/manifests\n"
    "stat|644|core|regular file|20|9|1700000000|/home/core/x.yaml\n"
    "stat|644|root|regular file|30|10|1700000000|/var/lib/coreos-vagrant/vagrantfile-user-data\n"
)
RECORD = (
    f"record|sum|{'1' * 64}|10|7|1700000000|/opt/bin/a\n"
    f"record|sum|{'2' * 64}|20|9|1700000000|/home/core/x.yaml\n"
    f"record|sum|{'3' * 64}|30|10|1699999999|/var/lib/coreos-vagrant/vagrantfile-user-data\n"
    f"record|activated|{'4' * 64}|{'3' * 64}\n"
)


def test_needed_compares_content_mode_and_owner():
    a = copy.Item("/opt/bin/a", 0o755, Path("a"))
    d = copy.Item("/opt/kubernetes/manifests", 0o755)
    h = copy.Item("/home/core/x.yaml", 0o644, Path("x"), owner="user")
    last = copy.Item("/var/lib/coreos-vagrant/vagrantfile-user-data", 0o644, Path("u"))
    items = [a, d, h, last]
    sums = {Path("a"): "1" * 64, Path("x"): "2" * 64, Path("u"): "3" * 64}
    remote = copy.parse_check(TRUSTED + STATS + RECORD + "left|/opt/bin/.inv-copy-0123456789ab-0\n")
    assert remote.leftovers == ["/opt/bin/.inv-copy-0123456789ab-0"]
    assert remote.activated == {f"activated|{'4' * 64}|{'3' * 64}"}
    files = remote.files
    # The cloud-config changed after its sum was recorded: that sum does not count.
    assert copy.unhashed(items, files) == [last.target]
    assert copy.needed(items, files, sums, "core") == [last]
    hashed = copy.parse_hashes(f"{'3' * 64}  /var/lib/coreos-vagrant/vagrantfile-user-data\nsha256sum: x: gone\n")
    assert hashed == {last.target: "3" * 64}
    files[last.target]["sha256"] = hashed[last.target]
    assert copy.needed(items, files, sums, "core") == []
    assert copy.needed(items, files, sums, "core", activated=False) == [last]  # the activation is due again
    files["/opt/bin/a"]["mode"] = 0o644
    assert copy.needed(items, files, sums, "core") == [a, last]
    assert copy.needed(items, files, sums, "someone") == [a, h, last]
    assert copy.needed(items, {}, sums, "core") == items


@pytest.mark.parametrize(
    "record, trusted",
    [
        (TRUSTED + RECORD, True),
        (TRUSTED + RECORD.replace("|10|7|", "|10|7"), False),  # a damaged line: the whole record goes
        (TRUSTED + RECORD + f"record|{'1' * 64}  /opt/bin/a\n", False),  # not a line of ours: no sha256sum here
        (TRUSTED + RECORD + "record|\n", False),
        (TRUSTED.replace("stat|700|", "stat|755|") + RECORD, False),  # others may enter the folder
        (TRUSTED.replace("|root|directory|", "|core|directory|") + RECORD, False),
        (TRUSTED.replace("|root|regular file|", "|core|regular file|") + RECORD, False),
        (TRUSTED.replace("regular file|300", "symbolic link|300") + RECORD, False),
        (RECORD, False),  # no folder at all
    ],
)
def test_the_record_counts_only_whole_and_written_by_root(record, trusted):
    remote = copy.parse_check(STATS + record)
    assert ("sha256" in remote.files["/opt/bin/a"], bool(remote.activated)) == (trusted, trusted)
    assert copy.STATE not in remote.files and copy.STATE_DIR not in remote.files


def test_no_stack_sends_the_ca_key(cfg):
    """Only the master gets keys, and the CA key stays on the host; a stack listing it is refused."""
    import dataclasses

    proj = project(cfg)
    assert copy.pki_names(proj, "node") == []
    assert copy.pki_names(proj, "master") == list(MASTER_PKI)
    bad = dataclasses.replace(proj, stack=dataclasses.replace(proj.stack, pki_files={"master": ("ca.crt", "ca.key")}))
    with pytest.raises(copy.StepError, match=r"stack seed: pki_files of role master lists ca.key: only ca.crt, "):
        copy.pki_names(bad, "master")


def landed(ssh_nodes, cfg) -> bool:
    """Every node has every file it must get, byte for byte."""
    for node in ssh_nodes.names:
        for target, (source, _, _) in expected(cfg, node).items():
            if source is not None and ssh_nodes.path(node, target).read_bytes() != source.read_bytes():
                return False
    return True


def test_the_bytes_go_over_openssh_checking_the_host_key_as_the_connections_do(ssh_nodes, cfg, tmp_path, monkeypatch):
    """OpenSSH's ssh carries the bytes (a process per node); a wrapper on PATH records how it is called."""
    calls = tmp_path / "ssh-calls"
    wrapper = tmp_path / "bin" / "ssh"
    wrapper.parent.mkdir()
    real = shutil.which("ssh")
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {calls}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:{os.environ['PATH']}")
    done = run_inv(tmp_path, "copy", config=cfg)
    assert done.returncode == 0, done.stderr
    assert landed(ssh_nodes, cfg)
    lines = calls.read_text().splitlines()
    assert len(lines) == 3  # one stream a node
    known_hosts = Path(cfg["paths"]["output"]) / "known_hosts"
    for line in lines:
        assert f'UserKnownHostsFile="{known_hosts}"' in line and "StrictHostKeyChecking=accept-new" in line
        assert "IdentitiesOnly=yes" in line
        assert line.endswith(" sudo -n tar -x -f - -C /")


def test_without_openssh_the_bytes_go_over_sftp(ssh_nodes, cfg, tmp_path, monkeypatch):
    from tasks import nodes

    monkeypatch.setattr(nodes.Nodes, "ssh", lambda self, name: None)
    done = run_inv(tmp_path, "copy", config=cfg)
    assert done.returncode == 0, done.stderr
    assert landed(ssh_nodes, cfg)

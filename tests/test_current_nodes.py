"""The current stack on three real OpenSSH nodes: `inv download render up addons verify`, re-runs, a failed kubeadm.

Flatcar, Kubernetes 1.36 and Calico 3 cannot run here, so these programs on
the nodes are the stand-ins of tests/standins/, which reproduce upstream's
syntax, output and errors: `kubeadm` (init, join with token discovery and the
CA pin, reset), `kubectl` (1.36, against the cluster the kubeadm stand-in
made: apply -f/-k, nodes NotReady until Calico runs, Headlamp through the
API server proxy, busybox 1.36 nslookup), `calicoctl` (v3 `node status`),
`systemctl` (units, daemon-reload, restarts). Calico's release manifest is a
shortened stand-in (tests/standins/calico.yaml); the kubelet is generated
bytes. Everything else is real: the tasks, SSH, sudo, the activation script,
the downloads from a loopback HTTP server through download.mirrors.
"""

from __future__ import annotations

import hashlib
import json
import shutil

from test_end_to_end import serve_artifacts

from conftest import project, run_inv
from standin_cluster import STANDINS, give_state_folders, prepare
from test_download import FileServer, url_path


def current_config(ssh_nodes, tmp_path, **sections) -> dict:
    config = ssh_nodes.make_config(tmp_path, verify={"interval": 1}, **sections)
    config["stack"] = "current"
    return config


def ready_nodes(ssh_nodes, config: dict, **kubeadm) -> None:
    """Fresh nodes with the systemctl stand-in, and what calicoctl reports: every other node a mesh peer."""
    ips = {n.name: n.ip for n in project(config).cluster.nodes}
    for name in ssh_nodes.names:
        systemctl = ssh_nodes.path(name, "/opt/bin/systemctl")
        systemctl.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(STANDINS / "systemctl", systemctl)
        systemctl.chmod(0o755)
        calico = {"running": True, "peers": [{"address": ip} for other, ip in ips.items() if other != name]}
        scenario = {"calico": calico, "kubeadm": kubeadm}
        ssh_nodes.path(name, "/var/lib/standin/scenario.json").write_text(json.dumps(scenario))
    give_state_folders(ssh_nodes)


def shared_cluster(ssh_nodes) -> dict:
    return json.loads((ssh_nodes.shared_dir() / "cluster.json").read_text())


def systemd(ssh_nodes, name: str) -> dict:
    return json.loads(ssh_nodes.path(name, "/var/lib/standin/systemd.json").read_text())


def test_the_whole_procedure_brings_up_a_verified_cluster_and_a_rerun_changes_nothing(ssh_nodes, tmp_path):
    with FileServer() as srv:
        config = current_config(
            ssh_nodes,
            tmp_path,
            download={
                "lock_file": str(tmp_path / "downloads.lock"),
                "mirrors": {
                    "https://dl.k8s.io/": srv.base + "/",
                    "https://github.com/": srv.base + "/",
                    "https://raw.githubusercontent.com/": srv.base + "/",
                },
                "allow_http": True,  # the loopback server
            },
        )
        # Every artifact pinned, as the stack pins the releases: here to the stand-ins' digests, so no
        # trust on first use is needed, as with the real ones.
        versions = project(config).stack.defaults["versions"]
        serve_artifacts(srv, config)
        config["download"]["artifacts"] = [
            dict(a, sha256=hashlib.sha256(srv.files[url_path(a["url"].format(**versions))]).hexdigest())
            for a in project(config).stack.defaults["download"]["artifacts"]
        ]
        ssh_nodes.reset()
        ready_nodes(ssh_nodes, config)
        steps = ["download", "render", "up", "--timeout", "30"]
        steps += ["addons", "--timeout", "30", "verify", "--timeout", "30", "--json"]
        done = run_inv(tmp_path, *steps, config=config)
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout[done.stdout.index('{\n  "ok"') :])
        assert report["ok"] is True
        checks = {r["check"] for r in report["checks"]}
        assert checks >= {"nodes", "kube-system", "busybox", "dns", "bgp", "headlamp", "mesh", "service", "policy"}
        dns = next(r for r in report["checks"] if r["check"] == "dns")
        assert dns["detail"] == "kubernetes.default.svc.cluster.local -> 10.96.0.1 from 10.96.0.10"

    master, *workers = ssh_nodes.names
    cluster = shared_cluster(ssh_nodes)
    assert [(n["name"], n["role"]) for n in cluster["nodes"]] == [
        (master, "control-plane"),
        *sorted((w, "worker") for w in workers),
    ] or sorted(n["name"] for n in cluster["nodes"]) == sorted(ssh_nodes.names)
    # kubeadm used the CA `inv render` made: the workers pinned it, the host's kubeconfig trusts it.
    ca = (tmp_path / "out" / "pki" / "ca.crt").read_text()
    assert cluster["ca_pem"].split() == ca.split()
    assert ssh_nodes.path(master, "/etc/kubernetes/pki/ca.key").stat().st_mode & 0o777 == 0o600
    for worker in workers:
        assert not ssh_nodes.path(worker, "/etc/kubernetes/inv").exists()  # no CA key, no CA copy
    # containerd runs its new configuration; the kubelet is enabled and active.
    for name in ssh_nodes.names:
        units = systemd(ssh_nodes, name)["units"]
        assert units["kubelet.service"]["enabled"] and units["kubelet.service"]["active"]
        assert units["containerd.service"]["starts"] >= 1
        assert systemd(ssh_nodes, name)["warnings"] == []  # daemon-reload came before every restart
    # Calico as released, with this cluster's address detection patched in.
    objects = json.loads(ssh_nodes.path(master, "/var/lib/standin/kubectl.json").read_text())["objects"]
    node_ds = next(o for o in objects if o["kind"] == "DaemonSet" and o["metadata"]["name"] == "calico-node")
    env = {e["name"]: e.get("value") for e in node_ds["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["IP_AUTODETECTION_METHOD"] == "kubernetes-internal-ip" and env["CALICO_IPV4POOL_CIDR"] == "10.244.0.0/16"

    # Again: nothing to send, kubeadm not run again, every object unchanged.
    joined = [n["joined"] for n in shared_cluster(ssh_nodes)["nodes"]]
    again = run_inv(tmp_path, "copy", "addons", "--timeout", "30", "verify", "--timeout", "30", config=config)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [n["joined"] for n in shared_cluster(ssh_nodes)["nodes"]] == joined
    assert " created" not in again.stdout and "unchanged" in again.stdout
    assert "All " in again.stdout and "checks passed" in again.stdout


def test_a_failed_kubeadm_init_fails_copy_and_the_next_copy_resets_and_succeeds(ssh_nodes, tmp_path):
    config = current_config(ssh_nodes, tmp_path)
    prepare(config)
    ssh_nodes.reset()
    master = ssh_nodes.names[0]
    ready_nodes(ssh_nodes, config, discovery_timeout=2)
    scenario = ssh_nodes.path(master, "/var/lib/standin/scenario.json")
    data = json.loads(scenario.read_text())
    scenario.write_text(json.dumps(dict(data, kubeadm={"fail": "wait-control-plane"})))

    failed = run_inv(tmp_path, "copy", config=config)
    assert failed.returncode == 1
    assert "copy failed on 3 node(s)" in failed.stderr, failed.stderr
    assert "wait-control-plane" in failed.stderr
    assert f"{master}: files in place; running the activation (up to 10 min)" in failed.stderr  # not silent
    assert "connection refused" in failed.stderr  # the workers found no control plane
    assert ssh_nodes.path(master, "/etc/kubernetes/admin.conf").exists()  # what the failed init left

    scenario.write_text(json.dumps(data))
    done = run_inv(tmp_path, "copy", config=config)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = systemd(ssh_nodes, master)["calls"]
    assert sorted(n["name"] for n in shared_cluster(ssh_nodes)["nodes"]) == sorted(ssh_nodes.names)
    assert ["stop", "kubelet"] in calls or any("stop" in c for c in calls)  # kubeadm reset stopped the kubelet
    # A setting kubeadm cannot change in a running cluster: the next copy says so instead of pretending.
    config["kubernetes"]["domain"] = "example.internal"
    assert run_inv(tmp_path, "render", config=config).returncode == 0
    changed = run_inv(tmp_path, "copy", config=config)
    assert changed.returncode == 1
    assert (
        "activate: this node joined the cluster with another /etc/kubernetes/kubeadm.yaml: kubeadm cannot apply "
        "a new one in place; set the settings back, or rebuild the cluster" in changed.stderr
    ), changed.stderr


def test_the_kubeadm_configuration_with_its_token_is_root_s_alone_on_every_node(ssh_nodes, tmp_path):
    config = current_config(ssh_nodes, tmp_path)
    prepare(config)
    ssh_nodes.reset()
    ready_nodes(ssh_nodes, config)
    assert run_inv(tmp_path, "copy", config=config).returncode == 0
    for name in ssh_nodes.names:
        info = ssh_nodes.path(name, "/etc/kubernetes/kubeadm.yaml").stat()
        assert (info.st_mode & 0o777, info.st_uid) == (0o600, 0)


def test_a_node_added_a_day_later_joins_with_the_bootstrap_token_made_again(ssh_nodes, tmp_path):
    """kubeadm lets the bootstrap token expire 24 h after init: copy makes it again on the master first."""
    config = current_config(ssh_nodes, tmp_path)
    config["cluster"]["hosts"] = ssh_nodes.hosts()[:2]
    prepare(config)
    ssh_nodes.reset()
    ready_nodes(ssh_nodes, config)
    assert run_inv(tmp_path, "copy", config=config).returncode == 0
    token = (tmp_path / "out" / "pki" / "bootstrap-token").read_text().strip()
    state = ssh_nodes.shared_dir() / "cluster.json"
    cluster = json.loads(state.read_text())
    assert cluster["tokens"] == [token]
    state.write_text(json.dumps(dict(cluster, tokens=[])))  # a day later: expired

    config["cluster"]["hosts"] = ssh_nodes.hosts()
    assert run_inv(tmp_path, "render", config=config).returncode == 0
    ready_nodes(ssh_nodes, config, discovery_timeout=5)  # a join that found no token would fail, not hang
    done = run_inv(tmp_path, "copy", config=config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(n["name"] for n in shared_cluster(ssh_nodes)["nodes"]) == sorted(ssh_nodes.names)
    assert shared_cluster(ssh_nodes)["tokens"] == [token]
    # While the token lives, nothing is made again.
    assert run_inv(tmp_path, "copy", config=config).returncode == 0
    assert shared_cluster(ssh_nodes)["tokens"] == [token]

"""The stand-ins for kubeadm 1.36 and systemd's systemctl (tests/standins/), run directly.

kubeadm and systemd cannot run here, so the node tests ship these programs to the
nodes; they reproduce upstream's documented output, errors and exit codes. Here
each "node" is a folder given as STANDIN_ROOT, and the pretend cluster's shared
state (as its etcd would hold it) one folder for all, STANDIN_CLUSTER_DIR.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from tasks import kubeadm as product_kubeadm

STANDINS = Path(__file__).resolve().parent / "standins"
CLOUD_CONFIG = Path(__file__).resolve().parent.parent / "cloud-config" / "current"
MASTER_IP, WORKER_IP = "192.168.56.101", "192.168.56.102"
TOKEN = "abcdef.0123456789abcdef"
INIT = f"""\
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
bootstrapTokens:
  - token: "{TOKEN}"
nodeRegistration:
  name: calico-01
  criSocket: unix:///run/containerd/containerd.sock
  kubeletExtraArgs:
    - name: node-ip
      value: "{MASTER_IP}"
localAPIEndpoint:
  advertiseAddress: "{MASTER_IP}"
  bindPort: 6443
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v1.36.4
controlPlaneEndpoint: "{MASTER_IP}:6443"
networking: {{serviceSubnet: 10.96.0.0/12, podSubnet: 10.244.0.0/16, dnsDomain: cluster.local}}
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
clusterDNS: ["10.96.0.10"]
"""
STACK_HINT = "To see the stack trace of this error execute with --v=5 or higher\n"


def join_config(ca_hash: str, token: str = TOKEN, endpoint: str = f"{MASTER_IP}:6443", name: str = "calico-02") -> str:
    return f"""\
apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
nodeRegistration:
  name: {name}
  criSocket: unix:///run/containerd/containerd.sock
  kubeletExtraArgs:
    - name: node-ip
      value: "{WORKER_IP}"
discovery:
  bootstrapToken:
    apiServerEndpoint: "{endpoint}"
    token: "{token}"
    caCertHashes: ["{ca_hash}"]
"""


class Node:
    """One pretend node: its filesystem under `root`, the cluster's shared state in `shared`."""

    def __init__(self, tmp_path: Path, name: str, shared: Path):
        self.root = tmp_path / name
        self.root.mkdir()
        self.shared = shared
        self.env = {k: v for k, v in os.environ.items() if k not in ("STANDIN_DIR", "STANDIN_CLUSTER_DIR")}
        self.env |= {"STANDIN_ROOT": str(self.root), "STANDIN_CLUSTER_DIR": str(shared)}

    def path(self, node_path: str) -> Path:
        return self.root / node_path.lstrip("/")

    def write(self, node_path: str, text: str) -> Path:
        target = self.path(node_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target

    def run(self, program: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(STANDINS / program), *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def kubeadm(self, *args: str, config: str | None = None) -> subprocess.CompletedProcess:
        if config is not None:
            args = (*args, "--config", str(self.write("/home/core/kubeadm.yaml", config)))
        return self.run("kubeadm", *args)

    def kubeadm_process(self, *args: str, config: str) -> subprocess.Popen:
        """kubeadm running in the background (a join waiting for the control plane)."""
        args = (*args, "--config", str(self.write("/home/core/kubeadm.yaml", config)))
        return subprocess.Popen(
            [sys.executable, str(STANDINS / "kubeadm"), *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def systemctl(self, *args: str) -> subprocess.CompletedProcess:
        return self.run("systemctl", *args)

    def systemd(self) -> dict:
        return json.loads(self.path("/var/lib/standin/systemd.json").read_text())

    def scenario(self, **sections) -> None:
        self.write("/var/lib/standin/scenario.json", json.dumps(sections))

    def prepare(self) -> None:
        """What the activation script does before kubeadm: unit files, sysctl, reload, enable kubelet."""
        self.write("/etc/systemd/system/kubelet.service", (CLOUD_CONFIG / "kubelet.service.j2").read_text())
        self.write(
            "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf", (CLOUD_CONFIG / "10-kubeadm.conf.j2").read_text()
        )
        self.write("/etc/sysctl.d/90-kubernetes.conf", "net.ipv4.ip_forward = 1\n")
        for command in (["daemon-reload"], ["restart", "systemd-sysctl"], ["enable", "kubelet"]):
            done = self.systemctl(*command)
            assert done.returncode == 0, done.stderr


def cluster_state(shared: Path) -> dict:
    return json.loads((shared / "cluster.json").read_text())


@pytest.fixture
def shared(tmp_path) -> Path:
    return tmp_path / "standin-cluster"


@pytest.fixture
def master(tmp_path, shared) -> Node:
    node = Node(tmp_path, "calico-01", shared)
    node.prepare()
    return node


@pytest.fixture
def worker(tmp_path, shared) -> Node:
    node = Node(tmp_path, "calico-02", shared)
    node.prepare()
    return node


@pytest.fixture
def initialised(master) -> Node:
    done = master.kubeadm("init", config=INIT)
    assert done.returncode == 0, done.stdout + done.stderr
    return master


def ca_hash_of(node: Node) -> str:
    """The discovery hash as the product computes it (the `cryptography` package), of the node's CA."""
    return product_kubeadm.discovery_hash(
        x509.load_pem_x509_certificate(node.path("/etc/kubernetes/pki/ca.crt").read_bytes())
    )


# -- kubeadm init and join ------------------------------------------------------------------


def test_init_then_join_records_both_nodes_in_the_shared_state(initialised, worker, shared):
    state = cluster_state(shared)
    assert state["ca_hash"] == ca_hash_of(initialised)
    assert (state["endpoint"], state["tokens"], state["version"]) == (f"{MASTER_IP}:6443", [TOKEN], "v1.36.4")
    assert (state["pod_subnet"], state["service_subnet"], state["dns_domain"]) == (
        "10.244.0.0/16",
        "10.96.0.0/12",
        "cluster.local",
    )

    done = worker.kubeadm("join", config=join_config(state["ca_hash"]))

    assert done.returncode == 0, done.stdout + done.stderr
    assert "This node has joined the cluster:\n* Certificate signing request was sent to apiserver" in done.stdout
    nodes = [(n["name"], n["ip"], n["role"], n["ready"]) for n in cluster_state(shared)["nodes"]]
    assert nodes == [("calico-01", MASTER_IP, "control-plane", True), ("calico-02", WORKER_IP, "worker", True)]
    assert worker.path("/etc/kubernetes/pki/ca.crt").read_text() == state["ca_pem"]
    assert f"server: https://{MASTER_IP}:6443" in worker.path("/etc/kubernetes/kubelet.conf").read_text()
    flags = worker.path("/var/lib/kubelet/kubeadm-flags.env").read_text()
    assert f"--node-ip={WORKER_IP}" in flags and flags.startswith('KUBELET_KUBEADM_ARGS="')
    assert "clusterDNS:\n- 10.96.0.10" in worker.path("/var/lib/kubelet/config.yaml").read_text()
    assert worker.systemd()["units"]["kubelet.service"]["active"]


def test_init_prints_kubeadms_success_text_and_writes_its_files(master):
    done = master.kubeadm("init", config=INIT)

    assert done.returncode == 0, done.stderr
    assert '[certs] Generating "ca" certificate and key\n' in done.stdout
    assert "\nYour Kubernetes control-plane has initialized successfully!\n" in done.stdout
    hash_ = cluster_state(master.shared)["ca_hash"]
    assert done.stdout.endswith(
        f"kubeadm join {MASTER_IP}:6443 --token {TOKEN} \\\n\t--discovery-token-ca-cert-hash {hash_} \n"
    )
    for name in ("admin.conf", "super-admin.conf", "kubelet.conf", "controller-manager.conf", "scheduler.conf"):
        assert master.path(f"/etc/kubernetes/{name}").is_file(), name
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        assert master.path(f"/etc/kubernetes/manifests/{name}.yaml").is_file(), name
    assert f"--node-ip={MASTER_IP}" in master.path("/var/lib/kubelet/kubeadm-flags.env").read_text()
    ca = str(master.path("/etc/kubernetes/pki/ca.crt"))
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", ca, str(master.path("/etc/kubernetes/pki/apiserver.crt"))],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stderr


def test_init_uses_the_ca_placed_before_it(master, shared):
    pki = master.path("/etc/kubernetes/pki")
    pki.mkdir(parents=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(pki / "ca.key")]
        + ["-out", str(pki / "ca.crt"), "-days", "30", "-subj", "/CN=kubernetes"],
        check=True,
        capture_output=True,
    )
    placed = ca_hash_of(master)

    done = master.kubeadm("init", config=INIT)

    assert done.returncode == 0, done.stderr
    assert "[certs] Using existing ca certificate authority\n" in done.stdout
    assert cluster_state(shared)["ca_hash"] == placed


def test_a_ca_lost_to_reset_becomes_a_new_one_and_the_workers_pin_fails(initialised, worker, shared):
    pinned = cluster_state(shared)["ca_hash"]
    assert initialised.kubeadm("reset", "-f").returncode == 0
    assert not initialised.path("/etc/kubernetes/pki/ca.crt").exists()

    again = initialised.kubeadm("init", config=INIT)
    assert again.returncode == 0, again.stderr
    assert '[certs] Generating "ca" certificate and key\n' in again.stdout
    new = cluster_state(shared)["ca_hash"]
    assert new != pinned

    done = worker.kubeadm("join", config=join_config(pinned))
    assert (done.returncode, done.stderr) == (
        1,
        "error: error execution phase preflight: couldn't validate the identity of the API Server: cluster CA "
        f'found in cluster-info ConfigMap is invalid: none of the public keys "{new}" are pinned\n' + STACK_HINT,
    )


def test_join_with_an_unknown_token_asks_again_then_is_refused(initialised, worker, shared):
    worker.scenario(kubeadm={"discovery_timeout": 1.5})
    done = worker.kubeadm("join", config=join_config(cluster_state(shared)["ca_hash"], token="zyxwvu.0123456789abcdef"))

    assert done.returncode == 1
    assert 'does not yet contain a JWS signature for token ID "zyxwvu", will try again' in done.stderr
    assert done.stderr.endswith(
        "error: error execution phase preflight: couldn't validate the identity of the API Server: could not find "
        'a JWS signature in the cluster-info ConfigMap for token ID "zyxwvu"\n' + STACK_HINT
    )
    assert [n["name"] for n in cluster_state(shared)["nodes"]] == ["calico-01"]


def test_a_token_created_on_the_control_plane_lets_a_waiting_join_through(initialised, worker, shared, tmp_path):
    worker.scenario(kubeadm={"discovery_timeout": 30})
    new = "zyxwvu.0123456789abcdef"
    joining = worker.kubeadm_process("join", config=join_config(cluster_state(shared)["ca_hash"], token=new))
    listed = initialised.kubeadm("token", "list")
    assert listed.returncode == 0 and new not in listed.stdout
    created = initialised.kubeadm("token", "create", new, "--ttl", "24h0m0s")
    assert (created.returncode, created.stdout) == (0, new + "\n")
    assert new in initialised.kubeadm("token", "list").stdout
    again = initialised.kubeadm("token", "create", new)
    assert again.returncode == 1 and 'secrets "bootstrap-token-zyxwvu" already exists' in again.stderr
    assert joining.wait(timeout=30) == 0, joining.stderr.read()
    assert "calico-02" in [n["name"] for n in cluster_state(shared)["nodes"]]


def test_join_to_another_endpoint_meets_a_refused_connection(initialised, worker, shared):
    worker.scenario(kubeadm={"discovery_timeout": 0})
    done = worker.kubeadm("join", config=join_config(cluster_state(shared)["ca_hash"], endpoint="192.168.56.109:6443"))

    url = "https://192.168.56.109:6443/api/v1/namespaces/kube-public/configmaps/cluster-info?timeout=10s"
    assert (done.returncode, done.stderr) == (
        1,
        "error: error execution phase preflight: couldn't validate the identity of the API Server: failed to "
        f'request the cluster-info ConfigMap: Get "{url}": dial tcp 192.168.56.109:6443: connect: connection '
        "refused\n" + STACK_HINT,
    )


def test_join_before_any_init_asks_again_until_the_discovery_timeout(worker):
    worker.scenario(kubeadm={"discovery_timeout": 1.5})
    done = worker.kubeadm("join", config=join_config("sha256:" + "0" * 64))

    assert done.returncode == 1
    assert "[discovery] Failed to request cluster-info, will try again" in done.stderr
    assert done.stderr.endswith("dial tcp 192.168.56.101:6443: connect: connection refused\n" + STACK_HINT), done.stderr


def test_a_node_name_registered_and_ready_cannot_join_again(initialised, tmp_path, shared):
    twin = Node(tmp_path, "other-machine", shared)
    twin.prepare()

    done = twin.kubeadm("join", config=join_config(cluster_state(shared)["ca_hash"], name="calico-01"))

    assert (done.returncode, done.stderr) == (
        1,
        'error: error execution phase kubelet-start: a Node with name "calico-01" and status "Ready" already exists '
        "in the cluster. You must delete the existing Node or change the name of this new joining Node\n" + STACK_HINT,
    )


# -- preflight ------------------------------------------------------------------------------


def test_a_second_init_fails_preflight_on_what_the_first_wrote(initialised):
    done = initialised.kubeadm("init", config=INIT)

    manifest = "/etc/kubernetes/manifests/{}.yaml"
    errors = "".join(
        f"\t[ERROR FileAvailable-{manifest.format(c).replace('/', '-')}]: {manifest.format(c)} already exists\n"
        for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")
    )
    assert done.returncode == 1
    assert done.stderr == (
        "[preflight] Some fatal errors occurred:\n"
        + errors
        + "\t[ERROR DirAvailable--var-lib-etcd]: /var/lib/etcd is not empty\n"
        "[preflight] If you know what you are doing, you can make a check non-fatal with "
        "`--ignore-preflight-errors=...`\n"
        "error: error execution phase preflight: preflight checks failed\n" + STACK_HINT
    )
    assert done.stdout == "[init] Using Kubernetes version: v1.36.4\n[preflight] Running pre-flight checks\n"


def test_preflight_wants_a_running_runtime_applied_sysctl_and_warns_of_a_disabled_kubelet(tmp_path, shared):
    node = Node(tmp_path, "calico-01", shared)
    node.scenario(systemd={"inactive": ["containerd.service"]})
    node.write("/etc/sysctl.d/90-kubernetes.conf", "net.ipv4.ip_forward = 1\n")  # never applied

    done = node.kubeadm("init", config=INIT)

    assert done.returncode == 1
    assert done.stderr.startswith(
        "\t[WARNING Service-Kubelet]: kubelet service does not exist\n[preflight] Some fatal errors occurred:\n"
        "\t[ERROR CRI]: could not connect to the container runtime: failed to create new CRI runtime service: "
        'validate service connection: validate CRI v1 runtime API for endpoint "unix:///run/containerd/containerd.sock"'
    )
    assert (
        "\t[ERROR FileContent--proc-sys-net-ipv4-ip_forward]: /proc/sys/net/ipv4/ip_forward contents are not set to 1\n"
        in done.stderr
    )

    node.prepare()
    node.systemctl("disable", "kubelet")
    node.systemctl("restart", "containerd")
    done = node.kubeadm("init", config=INIT)
    assert done.returncode == 0, done.stderr
    assert done.stderr == (
        "\t[WARNING Service-Kubelet]: kubelet service is not enabled, please run 'systemctl enable kubelet.service'\n"
    )


def test_an_ignored_preflight_error_is_a_warning(initialised):
    done = initialised.kubeadm("init", "--ignore-preflight-errors=all", config=INIT)

    assert done.returncode == 0, done.stderr
    assert "\t[WARNING DirAvailable--var-lib-etcd]: /var/lib/etcd is not empty\n" in done.stderr


def test_configuration_kubeadm_does_not_know_is_refused(master):
    done = master.kubeadm(
        "init", config=INIT.replace("v1beta4\nkind: ClusterConfiguration", "v1beta3\nkind: ClusterConfiguration")
    )

    assert (done.returncode, done.stderr) == (
        1,
        'error: no kind "ClusterConfiguration" is registered for version "kubeadm.k8s.io/v1beta3" in scheme '
        '"k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm/scheme/scheme.go:31"\n' + STACK_HINT,
    )
    join = master.kubeadm("join", config=INIT)
    assert join.returncode == 1 and 'no kind "InitConfiguration" is registered' in join.stderr


def test_version_short(master):
    done = master.kubeadm("version", "-o", "short")
    assert (done.returncode, done.stdout) == (0, "v1.36.4\n")


# -- reset ----------------------------------------------------------------------------------


def test_reset_undoes_init_marks_the_node_not_ready_and_init_works_again(initialised, shared):
    done = initialised.kubeadm("reset", "-f")

    assert done.returncode == 0, done.stderr
    assert (
        "[reset] Deleting contents of directories: [/etc/kubernetes/manifests /var/lib/kubelet /etc/kubernetes/pki]\n"
        in done.stdout
    )
    assert "The reset process does not perform cleanup of CNI plugin configuration,\n" in done.stdout
    for leftover in ("/etc/kubernetes/pki", "/etc/kubernetes/manifests", "/var/lib/kubelet", "/var/lib/etcd"):
        assert not any(initialised.path(leftover).iterdir()), leftover
    assert not initialised.path("/etc/kubernetes/admin.conf").exists()
    assert [n["ready"] for n in cluster_state(shared)["nodes"]] == [False]
    assert not initialised.systemd()["units"]["kubelet.service"]["active"]

    again = initialised.kubeadm("init", config=INIT)
    assert again.returncode == 0, again.stderr
    assert [(n["name"], n["ready"]) for n in cluster_state(shared)["nodes"]] == [("calico-01", True)]


def test_a_reset_worker_can_join_again(initialised, worker, shared):
    config = join_config(cluster_state(shared)["ca_hash"])
    assert worker.kubeadm("join", config=config).returncode == 0
    again = worker.kubeadm("join", config=config)
    assert again.returncode == 1 and "[ERROR FileAvailable--etc-kubernetes-kubelet.conf]" in again.stderr

    assert worker.kubeadm("reset", "--force").returncode == 0
    assert [n["ready"] for n in cluster_state(shared)["nodes"]] == [True, False]
    done = worker.kubeadm("join", config=config)
    assert done.returncode == 0, done.stderr
    assert [n["ready"] for n in cluster_state(shared)["nodes"]] == [True, True]


def test_reset_without_force_asks_and_stops_without_a_yes(initialised):
    done = initialised.kubeadm("reset")

    assert done.returncode == 1
    assert done.stdout == "[reset] Are you sure you want to proceed? [y/N]: "
    assert (
        "error: error execution phase preflight: won't proceed; the user didn't answer (Y|y) in order to continue\n"
        in done.stderr
    )
    assert initialised.path("/etc/kubernetes/admin.conf").exists()


# -- the failure hooks ----------------------------------------------------------------------


def test_init_failing_to_bring_up_the_control_plane_leaves_its_files_until_a_reset(master, shared):
    master.scenario(kubeadm={"fail": "wait-control-plane"})

    done = master.kubeadm("init", config=INIT)

    assert done.returncode == 1
    assert done.stderr.startswith(
        "error: error execution phase wait-control-plane: failed while waiting for the control plane to start: "
        f"[kube-apiserver check failed at https://{MASTER_IP}:6443/livez: "
    )
    assert "[control-plane-check] kube-apiserver is not healthy after" in done.stdout
    assert master.path("/etc/kubernetes/manifests/kube-apiserver.yaml").exists()
    assert master.path("/etc/kubernetes/admin.conf").exists()
    assert not (shared / "cluster.json").exists()

    master.scenario()
    retry = master.kubeadm("init", config=INIT)
    assert retry.returncode == 1 and "[ERROR FileAvailable--etc-kubernetes-manifests-etcd.yaml]" in retry.stderr
    assert master.kubeadm("reset", "-f").returncode == 0
    assert master.kubeadm("init", config=INIT).returncode == 0


def test_join_failing_in_kubelet_start_needs_a_reset_before_it_can_try_again(initialised, worker, shared):
    worker.scenario(kubeadm={"fail": "join"})
    config = join_config(cluster_state(shared)["ca_hash"])

    done = worker.kubeadm("join", config=config)

    assert done.returncode == 1
    assert done.stderr.startswith(
        "error: error execution phase kubelet-start: The HTTP call equal to 'curl -sSL http://127.0.0.1:10248/healthz'"
    )
    assert [n["name"] for n in cluster_state(shared)["nodes"]] == ["calico-01"]
    worker.scenario()
    retry = worker.kubeadm("join", config=config)
    assert retry.returncode == 1 and "[ERROR FileAvailable--etc-kubernetes-pki-ca.crt]" in retry.stderr
    assert worker.kubeadm("reset", "-f").returncode == 0
    assert worker.kubeadm("join", config=config).returncode == 0


def test_init_without_a_kubelet_unit_fails_waiting_for_the_kubelet(tmp_path, shared):
    node = Node(tmp_path, "calico-01", shared)
    node.prepare()
    node.path("/etc/systemd/system/kubelet.service").unlink()

    done = node.kubeadm("init", "--ignore-preflight-errors=Service-Kubelet", config=INIT)

    assert done.returncode == 1
    assert (
        "error: error execution phase wait-control-plane: failed while waiting for the kubelet to start: "
        in done.stderr
    )


# -- systemctl ------------------------------------------------------------------------------


def test_systemctl_refuses_units_that_do_not_exist(tmp_path, shared):
    node = Node(tmp_path, "calico-01", shared)

    restart = node.systemctl("restart", "kubelet")
    enable = node.systemctl("enable", "--now", "kubelet")
    active = node.systemctl("is-active", "kubelet")

    assert (restart.returncode, restart.stderr) == (
        5,
        "Failed to restart kubelet.service: Unit kubelet.service not found.\n",
    )
    assert (enable.returncode, enable.stderr) == (
        1,
        "Failed to enable unit: Unit file kubelet.service does not exist.\n",
    )
    assert (active.returncode, active.stdout) == (3, "inactive\n")


def test_systemctl_enable_links_the_unit_and_starts_it_with_now(tmp_path, shared):
    node = Node(tmp_path, "calico-01", shared)
    node.write("/etc/systemd/system/kubelet.service", (CLOUD_CONFIG / "kubelet.service.j2").read_text())

    done = node.systemctl("enable", "--now", "kubelet")

    assert done.returncode == 0, done.stderr
    link = node.path("/etc/systemd/system/multi-user.target.wants/kubelet.service")
    assert os.readlink(link) == "/etc/systemd/system/kubelet.service"
    assert node.systemctl("is-active", "kubelet").stdout == "active\n"
    assert node.systemctl("is-enabled", "kubelet.service").stdout == "enabled\n"


def test_systemctl_warns_when_a_changed_unit_was_not_reloaded(master):
    master.systemctl("restart", "kubelet")
    master.write("/etc/systemd/system/kubelet.service.d/20-extra.conf", "[Service]\nEnvironment=A=1\n")
    before = master.systemd()["loaded"]["kubelet.service"]

    done = master.systemctl("restart", "kubelet")

    warning = (
        "Warning: The unit file, source configuration file or drop-ins of kubelet.service changed on disk. "
        "Run 'systemctl daemon-reload' to reload units."
    )
    assert (done.returncode, done.stderr) == (0, warning + "\n")
    state = master.systemd()
    assert state["warnings"] == [warning]
    assert state["units"]["kubelet.service"]["unit_hash"] == before  # still runs what was loaded

    master.systemctl("daemon-reload")
    assert master.systemctl("restart", "kubelet").stderr == ""
    assert master.systemd()["units"]["kubelet.service"]["unit_hash"] != before


def test_systemctl_records_whether_containerd_runs_its_current_config(tmp_path, shared):
    node = Node(tmp_path, "calico-01", shared)
    config = node.write("/etc/containerd/config.toml", "version = 3\n")
    node.systemctl("daemon-reload")
    stale = node.systemd()["units"]["containerd.service"]["config_hash"]

    node.systemctl("restart", "containerd")

    applied = node.systemd()["units"]["containerd.service"]["config_hash"]
    assert applied != stale
    config.write_text("version = 3\n# changed\n")
    node.systemctl("restart", "containerd")
    assert node.systemd()["units"]["containerd.service"]["config_hash"] not in (stale, applied)


def test_systemctl_scenario_makes_a_restart_fail(tmp_path, shared):
    node = Node(tmp_path, "calico-01", shared)
    node.scenario(systemd={"fail": {"containerd.service": True}})

    done = node.systemctl("restart", "containerd")

    assert (done.returncode, done.stderr) == (
        1,
        "Job for containerd.service failed because the control process exited with error code.\n"
        'See "systemctl status containerd.service" and "journalctl -xeu containerd.service" for details.\n',
    )
    assert (
        node.systemctl("is-active", "containerd").stdout,
        node.systemd()["units"]["containerd.service"]["active"],
    ) == (
        "failed\n",
        False,
    )

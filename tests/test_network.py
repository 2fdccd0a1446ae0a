"""`inv verify`'s pod network checks (mesh, service, policy), with one path broken at a time.

Kubernetes and Calico cannot run here: on the three OpenSSH test nodes the
master's `kubectl` is the stand-in of tests/standins/kubectl, installed by the
real `inv copy`. Its `exec POD -- sh -c SCRIPT` runs verify's real script with
this machine's sh, where `ping` and `wget` are stand-ins printing busybox's
output formats; what each path does comes from the scenario's "network"
section (`Scenario.kubernetes["network"]`), so a test breaks exactly one path.
The last tests run the stand-in's kubectl 1.36 flavour on this machine (see there).
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

import test_verify
from conftest import make_config, run_inv
from standin_cluster import STANDINS, prepare
from test_verify import results, verify_fails

# test_verify's fixtures: the stand-in cluster with the addons created (one per module), healthy for each test.
up, scenario, ui_server = test_verify.up, test_verify.scenario, test_verify.ui_server


def objects(ssh_cluster) -> list[str]:
    state = json.loads(ssh_cluster.path("calico-01", "/var/lib/standin/kubectl.json").read_text())
    return sorted(f"{o['kind']}/{o['metadata'].get('namespace')}/{o['metadata']['name']}" for o in state["objects"])


def probes(ssh_cluster) -> list[str]:
    return [o for o in objects(ssh_cluster) if "net-probe" in o]


def matrix(stdout: str) -> dict[tuple[str, str], str]:
    """The matrix table: {(source, destination): mark}."""
    lines = stdout.splitlines()
    start = lines.index("from \\ to\tcalico-01\tcalico-02\tcalico-03")
    names = lines[start].split("\t")[1:]
    cells = {}
    for line in lines[start + 1 : start + 4]:
        source, *marks = line.split("\t")
        cells.update({(source, target): mark for target, mark in zip(names, marks, strict=True)})
    return cells


def failed(stdout: str, check: str) -> list[tuple[str, str]]:
    return [(row[1], row[3]) for row in results(stdout) if row[0] == check and row[2] == "FAILED"]


def test_healthy_matrix_and_services_pass_and_leave_nothing(ssh_cluster, up, scenario, tmp_path):
    before = objects(ssh_cluster)
    done = run_inv(tmp_path, "verify", "--timeout", "5", config=up)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [row for row in results(done.stdout) if row[0] in ("mesh", "service")]
    assert len(rows) == 12 and all(row[2] == "ok" for row in rows), rows
    assert [row[1] for row in rows if row[0] == "mesh"] == ["calico-01"] * 2 + ["calico-02"] * 2 + ["calico-03"] * 2
    cells = matrix(done.stdout)
    assert {mark for (source, target), mark in cells.items() if source == target} == {"·"}
    assert all(mark.startswith("✓ 0.") and mark.endswith(" ms") for (s, t), mark in cells.items() if s != t), cells
    # The probes' Service answers from every node, from a probe; the API service with its 401.
    assert all(
        "answered by net-probe-calico-0" in row[3] for row in rows if row[0] == "service" and "net-probe" in row[3]
    )
    assert [
        "service",
        "calico-02",
        "ok",
        "service kubernetes (10.100.0.1:443) answered: HTTP/1.1 401 Unauthorized",
    ] in rows
    assert objects(ssh_cluster) == before  # the probes and their Service are gone again
    again = run_inv(tmp_path, "verify", "--timeout", "5", config=up)
    assert again.returncode == 0, again.stdout + again.stderr
    assert objects(ssh_cluster) == before


def test_json_has_the_matrix(up, scenario, tmp_path):
    done = run_inv(tmp_path, "verify", "--timeout", "5", "--json", config=up)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert [(c["from"], c["to"]) for c in report["matrix"]] == [
        ("calico-01", "calico-02"),
        ("calico-01", "calico-03"),
        ("calico-02", "calico-01"),
        ("calico-02", "calico-03"),
        ("calico-03", "calico-01"),
        ("calico-03", "calico-02"),
    ]
    first = report["matrix"][0]
    assert first["ok"] is True and first["icmp"]["ms"] > 0 and first["tcp"]["message"] == "net-probe-calico-02"


def test_keep_leaves_the_probes_and_a_rerun_adds_none(ssh_cluster, up, scenario, tmp_path):
    before = objects(ssh_cluster)
    for _ in range(2):
        done = run_inv(tmp_path, "verify", "--timeout", "5", "--keep", config=up)
        assert done.returncode == 0, done.stdout + done.stderr
        assert probes(ssh_cluster) == [
            "Pod/default/net-probe-calico-01",
            "Pod/default/net-probe-calico-02",
            "Pod/default/net-probe-calico-03",
            "Service/default/net-probe",
        ]
    # Without --keep the next run removes what the last one kept.
    done = run_inv(tmp_path, "verify", "--timeout", "5", config=up)
    assert done.returncode == 0, done.stdout + done.stderr
    assert objects(ssh_cluster) == before


def test_one_nodes_routes_missing_fails_exactly_its_column(ssh_cluster, up, scenario, tmp_path):
    scenario.kubernetes["network"] = {"paths": [{"to": "127.0.0.3", "fails": "timeout"}]}
    scenario.write()
    message = verify_fails(tmp_path, up, "mesh")
    assert message.count("mesh on ") == 2
    for source in ("calico-01", "calico-02"):
        assert (
            f"mesh on {source}: to calico-03 (192.168." in message
            and f"packets from {source} to calico-03's pods are lost: `ip route | grep bird` on {source} "
            "must show calico-03's pod block via 127.0.0.3"
            in message
        )
    assert (
        "ICMP timeout (1 packets transmitted, 0 packets received, 100% packet loss), TCP 8080 timeout (wget: download timed out)"
        in message
    )
    done = run_inv(tmp_path, "verify", "--timeout", "1", config=up)
    cells = matrix(done.stdout)
    broken = {pair for pair, mark in cells.items() if mark.startswith("✗")}
    assert broken == {("calico-01", "calico-03"), ("calico-02", "calico-03")}
    assert cells[("calico-01", "calico-03")] == "✗ icmp timeout, tcp timeout"
    # The Service still answers from every node: a try that lands on calico-03's probe is tried again.
    assert not failed(done.stdout, "service")
    assert probes(ssh_cluster) == []  # removed after a failed run too


def test_no_route_between_two_nodes_names_that_cell(up, scenario, tmp_path):
    scenario.kubernetes["network"] = {"paths": [{"from": "127.0.0.1", "to": "127.0.0.2", "fails": "unreachable"}]}
    scenario.write()
    message = verify_fails(tmp_path, up, "mesh")
    assert message.count("mesh on ") == 1
    assert "mesh on calico-01: to calico-02 (" in message
    assert (
        "ICMP no route (ping: sendto: No route to host), TCP 8080 no route (wget: can't connect to remote host"
        in message
    )
    assert "calico-01 has no route to calico-02's pods" in message


def test_tcp_refused_on_one_node_is_named(up, scenario, tmp_path):
    scenario.kubernetes["network"] = {"paths": [{"to": "127.0.0.2", "proto": "tcp", "fails": "refused"}]}
    scenario.write()
    done = run_inv(tmp_path, "verify", "--timeout", "1", config=up)
    assert done.returncode == 1
    assert [node for node, _ in failed(done.stdout, "mesh")] == ["calico-01", "calico-03"]
    assert all(
        detail.startswith("to calico-02 (")
        and "ICMP 0." in detail
        and "the probe on calico-02 answers ping but refuses TCP 8080" in detail
        for _, detail in failed(done.stdout, "mesh")
    )
    assert matrix(done.stdout)[("calico-03", "calico-02")] == "✗ tcp refused"


def test_kube_proxy_down_on_one_node_fails_its_service_rows(up, scenario, tmp_path):
    scenario.kubernetes["network"] = {"kube_proxy_down": ["127.0.0.2"]}
    scenario.write()
    message = verify_fails(tmp_path, up, "service")
    assert message.count("service on calico-02: ") == 2 and message.count("service on ") == 2
    assert (
        "service on calico-02: service net-probe (10.100.0.102:80) timeout (wget: download timed out): "
        "kube-proxy on calico-02 does not forward it" in message
    )


def test_the_kubernetes_service_not_answering_is_named_on_every_node(up, scenario, tmp_path):
    scenario.kubernetes["network"] = {"api_service": "down"}
    scenario.write()
    done = run_inv(tmp_path, "verify", "--timeout", "1", config=up)
    assert done.returncode == 1
    rows = failed(done.stdout, "service")
    assert [node for node, _ in rows] == ["calico-01", "calico-02", "calico-03"]
    assert all(
        detail.startswith(
            "service kubernetes (10.100.0.1:443) timeout (wget: download timed out): `kubectl get endpoints kubernetes`"
        )
        for _, detail in rows
    )


def test_a_probe_that_does_not_start_is_named(up, scenario, tmp_path):
    scenario.kubernetes["pods"] = {"net-probe-calico-02": {"phase": "Pending", "waiting": "ErrImagePull"}}
    scenario.write()
    message = verify_fails(tmp_path, up, "mesh")
    assert "mesh on calico-02: probe not running yet: net-probe-calico-02 0/1 Pending" in message


# -- policy: stack current's check, run here on the stand-in cluster ------------------------
#
# `inv verify` runs it for stack current only (Kubernetes 1.1 has no NetworkPolicy). Until that
# stack runs on the nodes, these tests drive the same `Mesh` that verify uses, with policy on, on
# the stand-in cluster, whose kubectl evaluates NetworkPolicies (matchLabels) in its exec'd pods.


def policy_check(config: dict) -> list:
    """The mesh and policy checks as `inv verify` runs them, with the policy check switched on; rows of `policy`."""
    import invoke

    from tasks import kube, probe, settings
    from tasks.nodes import Nodes

    c = invoke.Context(invoke.Config(overrides=config))
    project = settings.load(c)
    with Nodes(c, project) as group, probe.Mesh(project, group, policy=True) as mesh:
        rows = kube.run_checks(mesh.checks(), 2, 1)
    return [r for r in rows if r.check == "policy"]


def test_policy_deny_then_allow_and_the_namespace_goes(ssh_cluster, up, scenario):
    before = objects(ssh_cluster)
    rows = policy_check(up)
    assert [(r.node, r.ok) for r in rows] == [("calico-02", True), ("calico-02", True)], rows
    assert rows[0].detail.startswith("default-deny enforced after ") and rows[0].detail.endswith(
        "(timeout: wget: download timed out)"
    )
    assert rows[1].detail.startswith("allow rule honoured after ")
    assert objects(ssh_cluster) == before  # the scratch namespace, its pods and policies, and the probes: gone


def test_policy_not_enforced_is_named_and_the_namespace_still_goes(ssh_cluster, up, scenario, monkeypatch):
    from tasks import probe

    monkeypatch.setattr(probe, "POLICY_SECONDS", 1)
    scenario.kubernetes["network"] = {"policy": "ignored"}
    scenario.write()
    before = objects(ssh_cluster)
    (row,) = policy_check(up)
    assert not row.ok and row.node == "calico-02"
    assert row.detail.startswith("default-deny not enforced within 1 s: the target still answers TCP 8080; ")
    assert objects(ssh_cluster) == before


def test_policy_target_unreachable_without_policy_points_at_the_mesh(up, scenario):
    scenario.kubernetes["network"] = {"paths": [{"from": "127.0.0.1", "to": "127.0.0.2", "proto": "tcp"}]}
    scenario.write()
    (row,) = policy_check(up)
    assert not row.ok
    assert re.fullmatch(
        r"the target in net-policy-[0-9a-f]{8} is unreachable before any policy "
        r"\(timeout: wget: download timed out\): see check mesh",
        row.detail,
    ), row.detail


# -- stack current: kubectl 1.36 ----------------------------------------------------------------
#
# The kubectl stand-in's 1.36 flavour (a kubeconfig present) answers from the kubeadm stand-in's
# cluster description. Here it runs on this machine: `Here` is a `Nodes` group whose nodes are all
# this machine (commands through invoke, as Fabric runs them over SSH), and the project's kubectl is
# the stand-in itself. The checks are verify's own (`Mesh`: mesh, service and, for this stack, policy).


class Here:
    """Every node is this machine: `conn` runs commands here."""

    def __init__(self, names):
        self.names = names

    def conn(self, name):
        import invoke

        return invoke.Context()


@pytest.fixture
def current(tmp_path, monkeypatch):
    """A current-stack project whose kubectl is the stand-in, on a three-node kubeadm cluster with Calico."""
    import base64

    import yaml

    config = dict(make_config(tmp_path), stack="current")
    prepare(config)
    for artifact in config["download"]["artifacts"]:
        if artifact["name"] == "kubectl":
            artifact["dest"] = str(STANDINS)
    ca = "-----BEGIN CERTIFICATE-----\nstand-in\n-----END CERTIFICATE-----\n"
    nodes = [{"name": f"calico-0{n}", "ip": f"192.168.56.10{n}"} for n in (1, 2, 3)]
    nodes[0]["role"] = "control-plane"
    description = {"endpoint": "192.168.56.101:6443", "ca_pem": ca, "version": "v1.36.4", "nodes": nodes}
    description.update(service_subnet="10.96.0.0/12", pod_subnet="10.244.0.0/16", dns_domain="cluster.local")
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "cluster.json").write_text(json.dumps(description))
    cluster = {
        "server": "https://192.168.56.101:6443",
        "certificate-authority-data": base64.b64encode(ca.encode()).decode(),
    }
    kubeconfig = {"apiVersion": "v1", "kind": "Config", "clusters": [{"name": "k", "cluster": cluster}]}
    (tmp_path / "admin.conf").write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.setenv("STANDIN_DIR", str(tmp_path / "standin"))
    monkeypatch.setenv("STANDIN_CLUSTER_DIR", str(tmp_path / "cluster"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "admin.conf"))
    applied = subprocess.run(
        [str(STANDINS / "kubectl"), "apply", "-f", str(STANDINS / "calico.yaml")], capture_output=True, text=True
    )
    assert applied.returncode == 0, applied.stderr
    return config, tmp_path / "standin"


def current_checks(config: dict) -> list:
    """verify's network checks (mesh, service, policy: stack current) on `Here`, their rows."""
    from tasks import kube, probe, settings

    project = settings.build(config)
    with probe.Mesh(project, Here([n.name for n in project.cluster.nodes])) as mesh:
        return kube.run_checks(mesh.checks(), 6, 1)  # a healthy run passes at the first try


def stored(folder) -> list[str]:
    return sorted(o["metadata"]["name"] for o in json.loads((folder / "kubectl.json").read_text())["objects"])


def test_current_stack_mesh_service_and_policy_pass_and_leave_nothing(current):
    config, folder = current
    before = stored(folder)
    rows = current_checks(config)
    assert [r.check for r in rows] == ["mesh"] * 6 + ["service"] * 6 + ["policy"] * 2, [
        r.detail[:300] for r in rows[12:]
    ]
    assert all(r.ok for r in rows), [r for r in rows if not r.ok]
    assert "service kubernetes (10.96.0.1:443) answered: " in rows[7].detail
    assert rows[0].detail.startswith("to calico-02 (10.244.")
    assert [r.node for r in rows if r.check == "policy"] == ["calico-02", "calico-02"]
    assert stored(folder) == before  # probes, Service, scratch namespace and policies removed


def test_current_stack_policy_not_enforced_and_a_broken_route_are_named(current, monkeypatch):
    from tasks import probe

    monkeypatch.setattr(probe, "POLICY_SECONDS", 1)
    config, folder = current
    network = {"policy": "ignored", "paths": [{"from": "calico-03", "to": "calico-01", "fails": "timeout"}]}
    (folder / "scenario.json").write_text(json.dumps({"kubernetes": {"network": network}}))
    before = stored(folder)
    failed = [r for r in current_checks(config) if not r.ok]
    assert [(r.check, r.node) for r in failed] == [("mesh", "calico-03"), ("policy", "calico-02")], [
        r.detail[:400] for r in failed if r.check == "policy"
    ]
    assert failed[0].detail.startswith("to calico-01 (10.244.")
    assert "packets from calico-03 to calico-01's pods are lost" in failed[0].detail
    assert failed[1].detail.startswith("default-deny not enforced within 1 s")
    assert stored(folder) == before

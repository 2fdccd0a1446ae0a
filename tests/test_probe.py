"""The pod network checks' pure part (tasks/probe.py): objects, script, busybox's outputs, rows, remedies.

The outputs below are busybox's own formats (ping -c 1 -W 2, wget -q -O - -T 2),
as the stand-in kubectl also prints them (tests/test_network.py runs it).
"""

from __future__ import annotations

import subprocess

import kubernetes_validate
import pytest

from conftest import make_config, project
from tasks import kube, probe, settings

PING_OK = """PING 10.244.1.5 (10.244.1.5): 56 data bytes
64 bytes from 10.244.1.5: seq=0 ttl=62 time=0.412 ms

--- 10.244.1.5 ping statistics ---
1 packets transmitted, 1 packets received, 0% packet loss
round-trip min/avg/max = 0.412/0.412/0.412 ms"""
PING_LOST = """PING 10.244.1.5 (10.244.1.5): 56 data bytes

--- 10.244.1.5 ping statistics ---
1 packets transmitted, 0 packets received, 100% packet loss"""
PING_NO_ROUTE = "PING 10.244.1.5 (10.244.1.5): 56 data bytes\nping: sendto: No route to host"
REFUSED = "wget: can't connect to remote host (10.244.1.5): Connection refused"
NO_ROUTE = "wget: can't connect to remote host (10.244.1.5): No route to host"
TIMED_OUT = "wget: download timed out"


@pytest.fixture
def cluster(tmp_path):
    return settings.build(make_config(tmp_path)).cluster


def cell(icmp: probe.Outcome, tcp: probe.Outcome) -> probe.Cell:
    return probe.Cell("calico-01", "calico-03", "10.244.1.5", icmp, tcp)


def test_ping_outputs_of_busybox():
    assert probe.ping_outcome(0, PING_OK) == probe.Outcome(True, ms=0.412)
    assert probe.ping_outcome(1, PING_LOST) == probe.Outcome(
        False, "timeout", message="1 packets transmitted, 0 packets received, 100% packet loss"
    )
    assert probe.ping_outcome(1, PING_NO_ROUTE) == probe.Outcome(
        False, "no route", message="ping: sendto: No route to host"
    )
    # No CAP_NET_RAW in the pod: neither answered nor lost, and said as it is.
    denied = probe.ping_outcome(1, "ping: permission denied (are you root?)")
    assert (denied.ok, denied.failure, denied.message) == (False, "error", "ping: permission denied (are you root?)")


def test_wget_outputs_of_busybox():
    assert probe.wget_outcome(0, "net-probe-calico-03") == probe.Outcome(True, message="net-probe-calico-03")
    assert probe.wget_outcome(1, REFUSED).failure == "refused"
    assert probe.wget_outcome(1, NO_ROUTE).failure == "no route"
    assert probe.wget_outcome(1, TIMED_OUT) == probe.Outcome(False, "timeout", message=TIMED_OUT)
    # An HTTP error is an answer: the API server said 401 through the service address.
    unauthorized = probe.wget_outcome(1, "wget: server returned error: HTTP/1.1 401 Unauthorized")
    assert unauthorized == probe.Outcome(True, message="HTTP/1.1 401 Unauthorized")
    retried = probe.wget_outcome(0, f"{TIMED_OUT}\nnet-probe-calico-02")
    assert (retried.message, retried.note) == ("net-probe-calico-02", f"after 1 failed try: {TIMED_OUT}")


def test_the_sweep_script_runs_in_sh_and_its_output_parses(tmp_path):
    """The script, run by a real sh with ping and wget replaced by scripts printing busybox's outputs."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "ping").write_text(f"#!/bin/sh\ncat <<'EOF'\n{PING_OK}\nEOF\n")
    (bin_ / "wget").write_text(f"#!/bin/sh\ncat >&2 <<'EOF'\n{REFUSED}\nEOF\nexit 1\n")
    for tool in bin_.iterdir():
        tool.chmod(0o755)
    script = probe.sweep_script({"calico-02": "10.244.1.5", "calico-03": "10.244.2.7"}, "10.100.0.102", "10.100.0.1")
    done = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, env={"PATH": f"{bin_}:/usr/bin:/bin"}, check=True
    )
    found = probe.parse_sweep(done.stdout)
    assert sorted(found) == [
        ("api", "tcp"),
        ("calico-02", "icmp"),
        ("calico-02", "tcp"),
        ("calico-03", "icmp"),
        ("calico-03", "tcp"),
        ("service", "tcp"),
    ]
    assert found[("calico-03", "icmp")] == (0, PING_OK)
    assert found[("calico-02", "tcp")] == (1, REFUSED)
    assert found[("service", "tcp")] == (1, "\n".join([REFUSED] * 3))  # tried three times


def test_remedies_name_the_cell_and_where_to_look(cluster):
    ok = probe.Outcome(True, ms=0.4)
    lost = probe.Outcome(False, "timeout", message="1 packets transmitted, 0 packets received, 100% packet loss")
    timed_out = probe.Outcome(False, "timeout", message=TIMED_OUT)
    routes = probe.cell_result(cell(lost, timed_out), cluster)
    assert routes.check == "mesh" and routes.node == "calico-01" and not routes.ok
    assert routes.detail.startswith(
        f"to calico-03 (10.244.1.5): ICMP timeout ({lost.message}), TCP 8080 timeout ({TIMED_OUT}): "
        "packets from calico-01 to calico-03's pods are lost: `ip route | grep bird` on calico-01 must show "
        "calico-03's pod block via 172.18.18.103"
    )
    assert "allow TCP 179 (BGP) and IP protocol 4 (IP-in-IP) between the nodes" in routes.detail
    no_route = probe.cell_result(
        cell(probe.Outcome(False, "no route", message="ping: sendto: No route to host"), ok), cluster
    )
    assert "calico-01 has no route to calico-03's pods" in no_route.detail
    assert "BGP session calico-01-calico-03 must be Established" in no_route.detail
    refused = probe.cell_result(cell(ok, probe.Outcome(False, "refused", message=REFUSED)), cluster)
    assert (
        "answers ping but refuses TCP 8080" in refused.detail and "kubectl logs net-probe-calico-03" in refused.detail
    )
    mtu = probe.cell_result(cell(ok, timed_out), cluster)
    assert "ping passes but TCP 8080 is dropped" in mtu.detail and "IP-in-IP takes 20 bytes" in mtu.detail
    icmp_only = probe.cell_result(cell(lost, probe.Outcome(True, message="net-probe-calico-03")), cluster)
    assert icmp_only.detail.endswith(
        "TCP passes but ICMP is dropped: a host firewall on calico-01 or calico-03 drops ICMP"
    )
    passed = probe.cell_result(cell(ok, probe.Outcome(True, message="net-probe-calico-03")), cluster)
    assert passed == kube.Result("mesh", "calico-01", True, "to calico-03 (10.244.1.5): ICMP 0.4 ms, TCP ok")


def test_service_rows_and_their_remedies():
    answered = probe.Outcome(True, message="net-probe-calico-02")
    api = probe.Outcome(True, message="HTTP/1.1 401 Unauthorized")
    rows = probe.service_results("calico-01", "10.100.0.102", "10.100.0.1", answered, api)
    assert rows == [
        kube.Result(
            "service", "calico-01", True, "service net-probe (10.100.0.102:80) answered by net-probe-calico-02"
        ),
        kube.Result(
            "service", "calico-01", True, "service kubernetes (10.100.0.1:443) answered: HTTP/1.1 401 Unauthorized"
        ),
    ]
    timed_out = probe.Outcome(False, "timeout", message=TIMED_OUT)
    refused = probe.Outcome(False, "refused", message=REFUSED)
    proxy, endpoints = probe.service_results("calico-02", "10.100.0.102", "10.100.0.1", timed_out, timed_out)
    assert proxy.detail == (
        f"service net-probe (10.100.0.102:80) timeout ({TIMED_OUT}): kube-proxy on calico-02 does not forward it "
        "(its log; `sudo iptables-save | grep net-probe` on calico-02 shows its rules)"
    )
    assert "`kubectl get endpoints kubernetes` must list the master's private address" in endpoints.detail
    empty, _ = probe.service_results("calico-02", "10.100.0.102", "10.100.0.1", refused, api)
    assert "it has no ready endpoints (`kubectl get endpoints net-probe`)" in empty.detail


def test_the_matrix_marks_each_cell(cluster):
    good = probe.Outcome(True, ms=0.412)
    lost = probe.Outcome(False, "timeout")
    cells = [
        probe.Cell("calico-01", "calico-02", "a", good, probe.Outcome(True)),
        probe.Cell("calico-01", "calico-03", "b", lost, probe.Outcome(False, "timeout")),
        probe.Cell("calico-02", "calico-01", "c", good, probe.Outcome(False, "refused")),
    ]
    columns, rows = probe.matrix(cluster, cells)
    assert columns == ("from \\ to", "calico-01", "calico-02", "calico-03")
    assert rows == [
        ("calico-01", "·", "✓ 0.41 ms", "✗ icmp timeout, tcp timeout"),
        ("calico-02", "✗ tcp refused", "·", "?"),
        ("calico-03", "?", "?", "·"),
    ]
    assert [c["ok"] for c in probe.matrix_json(cells)] == [True, False, False]


def test_a_missing_result_fails_its_cell(cluster):
    cells, service = probe.sweep_results(
        cluster, "calico-01", {"calico-02": "10.244.1.5"}, "10.100.0.102", "error: unable to upgrade connection"
    )
    assert [(c.icmp.failure, c.icmp.message) for c in cells] == [
        ("error", "no result: error: unable to upgrade connection")
    ]
    assert [r.ok for r in service] == [False, False]


@pytest.mark.parametrize(("stack", "image"), [("seed", "busybox"), ("current", "docker.io/library/busybox:1.36")])
def test_one_probe_pinned_to_each_node_and_a_service_in_front(tmp_path, stack, image):
    from standin_cluster import prepare

    config = dict(make_config(tmp_path), stack=stack)
    prepare(config)  # rendered, and the downloads (the current stack's addons include Calico's release manifest)
    docs = probe.manifests(
        {"calico-01": "172.18.18.101", "calico-02": "calico-02"}, probe.probe_image(kube.documents(project(config)))
    )
    pods, service = docs[:-1], docs[-1]
    assert [(p["metadata"]["name"], p["spec"]["nodeName"]) for p in pods] == [
        ("net-probe-calico-01", "172.18.18.101"),
        ("net-probe-calico-02", "calico-02"),
    ]
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {image}
    assert service["spec"]["selector"] == pods[0]["metadata"]["labels"] == {"inv-verify": "net-probe"}
    assert service["spec"]["ports"] == [{"port": 80, "targetPort": 8080}]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.25", strict=True)


def test_probe_pods_and_registered_names(cluster):
    listing = {
        "items": [
            {"metadata": {"name": "net-probe-calico-01", "labels": {"inv-verify": "net-probe"}}},
            {
                "metadata": {
                    "name": "net-probe-calico-02",
                    "labels": {"inv-verify": "net-probe"},
                    "deletionTimestamp": "x",
                }
            },
            {"metadata": {"name": "net-probe-calico-03", "labels": {"app": "other"}}},
            {"metadata": {"name": "busybox", "labels": {"inv-verify": "net-probe"}}},
        ]
    }
    assert list(probe.probe_pods(cluster, listing)) == ["calico-01"]
    nodes = {"items": [{"metadata": {"name": "172.18.18.101"}}, {"metadata": {"name": "calico-02"}}]}
    assert probe.registered(cluster, nodes) == {"calico-01": "172.18.18.101", "calico-02": "calico-02"}
    assert probe.pod_name("Worker_7.example") == "net-probe-worker-7-example"


# -- policy (stack current) --------------------------------------------------------------


def test_policy_objects_are_valid_and_select_what_they_say():
    namespace = "net-policy-0a1b2c3d"
    ns, client, target = probe.policy_manifests(namespace, "calico-01", "calico-02", "docker.io/library/busybox:1.36")
    assert ns["metadata"] == {"name": namespace, "labels": {"inv-verify": "net-policy"}}
    assert (client["spec"]["nodeName"], target["spec"]["nodeName"]) == ("calico-01", "calico-02")
    deny, allow = probe.deny_all(namespace), probe.allow_client(namespace)
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}  # every pod, no ingress rule
    assert allow["spec"]["podSelector"]["matchLabels"] == target["metadata"]["labels"]
    (rule,) = allow["spec"]["ingress"]
    assert rule["from"][0]["podSelector"]["matchLabels"] == client["metadata"]["labels"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    for doc in (ns, client, target, deny, allow):
        kubernetes_validate.validate(doc, "1.25", strict=True)


def test_policy_rows_say_which_step_failed_and_where_to_look():
    answered = probe.Outcome(True, message="target")
    timed_out = probe.Outcome(False, "timeout", message=TIMED_OUT)
    held = [
        probe.Phase(True, 1.25, timed_out),
        probe.Phase(True, 0.5, answered),
    ]
    rows = probe.policy_results("calico-02", "net-policy-x", answered, *held)
    assert rows == [
        kube.Result("policy", "calico-02", True, f"default-deny enforced after 1.2 s (timeout: {TIMED_OUT})"),
        kube.Result("policy", "calico-02", True, "allow rule honoured after 0.5 s"),
    ]
    (unreachable,) = probe.policy_results("calico-02", "net-policy-x", timed_out, None, None)
    assert unreachable.detail == (
        f"the target in net-policy-x is unreachable before any policy (timeout: {TIMED_OUT}): see check mesh"
    )
    (ignored,) = probe.policy_results("calico-02", "net-policy-x", answered, probe.Phase(False, 20, answered), None)
    assert not ignored.ok
    assert ignored.detail.startswith("default-deny not enforced within 20 s: the target still answers TCP 8080; ")
    assert "is calico-node running on calico-02" in ignored.detail
    stuck = probe.policy_results("calico-02", "net-policy-x", answered, held[0], probe.Phase(False, 20, timed_out))
    assert [r.ok for r in stuck] == [True, False]
    assert stuck[1].detail.startswith(f"the allow rule did not open TCP 8080 within 20 s (timeout: {TIMED_OUT}): ")

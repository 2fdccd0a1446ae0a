"""`inv verify`: parsing on the seed's verbatim outputs, and the real task over real SSH.

Kubernetes 1.1 and Calico 0.15 cannot run here: on the three OpenSSH test
nodes, `kubectl` and `calicoctl` are the stand-ins in tests/standins/ (their
output formats are checked against the seed's below), installed by the real
`inv copy`; the API server proxy to the kube-ui is a loopback HTTP server.
See tests/standin_cluster.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from conftest import make_config, project, run_inv, seed_file
from standin_cluster import STANDINS, Scenario, UIServer, install, prepare
from tasks import kube, settings, verify
from tasks.errors import UsageError


def post() -> str:
    return seed_file("000_f30f3fc981904be9.txt").read_text(encoding="utf-8")


def seed_output(command: str) -> str:
    """What the seed post shows after `$ command`, up to the next comment or prompt."""
    text = post()
    start = text.index(f"$ {command}\n") + len(f"$ {command}\n")
    end = re.compile(r"^(#|core@|```)", re.M).search(text, start).start()
    return text[start:end].rstrip("\n") + "\n"


@pytest.fixture
def seed_cluster(tmp_path):
    return settings.build(make_config(tmp_path)).cluster


# -- pure: the seed's outputs --------------------------------------------------------


def test_bgp_table_of_the_seed_parses_and_passes(seed_cluster):
    status = seed_output("calicoctl status")
    assert [(p["address"], p["type"], p["state"], p["info"]) for p in verify.parse_bgp(status)] == [
        ("172.18.18.102", "node-to-node mesh", "up", "Established"),
        ("172.18.18.103", "node-to-node mesh", "up", "Established"),
    ]
    rows = verify.bgp_results(seed_cluster, "calico-01", status)
    assert [(r.ok, r.detail) for r in rows] == [
        (True, "peer calico-02 (172.18.18.102): up, Established since 03:57:16"),
        (True, "peer calico-03 (172.18.18.103): up, Established since 03:59:36"),
    ]


def test_a_peer_not_established_is_named_with_its_row(seed_cluster):
    status = seed_output("calicoctl status").replace(
        "|   up  | 03:59:36 | Established |", "| start | 03:59:36 |   Connect   |"
    )
    rows = verify.bgp_results(seed_cluster, "calico-01", status)
    assert [r.ok for r in rows] == [True, False]
    assert rows[1].detail == (
        "peer calico-03 (172.18.18.103): start, Connect: "
        "| 172.18.18.103 | node-to-node mesh | start | 03:59:36 |   Connect   |"
    )


def test_a_peer_at_the_nat_address_gets_the_interface_hint(seed_cluster):
    status = seed_output("calicoctl status").replace("| 172.18.18.103 |", "|   10.0.2.15   |")
    rows = verify.bgp_results(seed_cluster, "calico-01", status)
    assert [(r.ok, r.detail) for r in rows[1:]] == [
        (False, "peer calico-03 (172.18.18.103): no BGP session"),
        (
            False,
            "a peer at the NAT address 10.0.2.15: calico-node on calico-03 picked the wrong interface; "
            "it must run `calicoctl node --ip=<its private address>`",
        ),
    ]


def test_calico_node_not_running(seed_cluster):
    (row,) = verify.bgp_results(seed_cluster, "calico-02", "calico-node container not running\n")
    assert not row.ok
    assert row.detail == "calico-node container not running: is calico-node running on calico-02?"


def test_nslookup_of_the_seed_passes_and_wrong_answers_fail(seed_cluster):
    answer = seed_output("kubectl exec busybox -- nslookup kubernetes")
    assert verify.parse_nslookup(answer) == {
        "server": "10.100.0.10",
        "name": "kubernetes",
        "addresses": ["10.100.0.1"],
        "error": "",
    }
    assert verify.dns_result(seed_cluster, answer, "calico-01").ok
    wrong_server = answer.replace("10.100.0.10", "10.0.2.3")
    assert "resolver is 10.0.2.3, expected 10.100.0.10" in verify.dns_result(seed_cluster, wrong_server, "m").detail
    wrong_answer = answer.replace("Address 1: 10.100.0.1\n", "Address 1: 10.100.0.7\n")
    assert verify.dns_result(seed_cluster, wrong_answer, "m").detail == "kubernetes -> 10.100.0.7, expected 10.100.0.1"
    no_answer = "Server:    10.100.0.10\nAddress 1: 10.100.0.10\n\nnslookup: can't resolve 'kubernetes'\n"
    failed = verify.dns_result(seed_cluster, no_answer, "m")
    assert not failed.ok and failed.detail.startswith("nslookup: can't resolve 'kubernetes' (server 10.100.0.10)")


def test_kube_ui_answer_and_api_server_status_message():
    url = "http://127.0.0.1:8080/api/v1/proxy/namespaces/kube-system/services/kube-ui/"
    assert verify.ui_result(url, "<html>ui</html>\n200", "", "calico-01").ok
    refused = verify.ui_result(
        url, '{"kind":"Status","message":"no endpoints available for service \\"kube-ui\\""}\n503', "", "calico-01"
    )
    assert refused.detail == f'HTTP 503 from {url}: no endpoints available for service "kube-ui"'
    down = verify.ui_result(
        url, "\n000", "curl: (7) Failed to connect to 127.0.0.1 port 8080: Connection refused", "calico-01"
    )
    assert (
        down.detail == f"no answer from {url}: curl: (7) Failed to connect to 127.0.0.1 port 8080: Connection refused"
    )
    missing = verify.ui_result(url, "", "bash: line 1: curl: command not found", "calico-01")
    assert missing.detail == f"no answer from {url}: bash: line 1: curl: command not found"


def test_failure_message_names_every_failed_check():
    rows = [
        kube.Result("nodes", "calico-01", True, "ok"),
        kube.Result("nodes", "calico-02", False, "172.18.18.102 NotReady"),
        kube.Result("bgp", "calico-03", False, "peer calico-02 (172.18.18.102): start, Connect"),
    ]
    assert verify.failure_message(rows) == (
        "verify failed: 2 check(s) (nodes, bgp): nodes on calico-02: 172.18.18.102 NotReady; "
        "bgp on calico-03: peer calico-02 (172.18.18.102): start, Connect"
    )


def test_timeouts_must_be_seconds():
    assert kube.seconds(None, 120) == 120 and kube.seconds("2.5", 120) == 2.5
    for bad in ("soon", "-1"):
        with pytest.raises(UsageError, match=f"--timeout '{bad}': expected a number of seconds"):
            kube.seconds(bad, 120)


# -- the stand-ins against the seed's outputs ------------------------------------------


def standin(tmp_path, program: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(STANDINS / program), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, STANDIN_DIR=str(tmp_path / "standin")),
    )


@pytest.fixture
def local_standins(tmp_path):
    """The stand-ins run here, on the seed's cluster, with the rendered manifests created."""
    config = make_config(tmp_path)
    cluster = project(config).cluster
    prepare(config)
    (tmp_path / "standin").mkdir()
    scenario = {
        "kubernetes": {
            "nodes": [{"name": n.ip} for n in cluster.nodes],
            "cluster_dns": cluster.dns_ip,
            "kubernetes_ip": cluster.api_service_ip,
        },
        "calico": {
            "running": True,
            "ip": "172.18.18.101",
            "peers": [
                {"address": "172.18.18.102", "since": "03:57:16"},
                {"address": "172.18.18.103", "since": "03:59:36"},
            ],
        },
    }
    (tmp_path / "standin" / "scenario.json").write_text(json.dumps(scenario))
    manifests = tmp_path / "out" / "manifests"
    for name in project(config).addons.manifests:
        assert standin(tmp_path, "kubectl", "create", "-f", str(manifests / name)).returncode == 0
    return tmp_path, cluster


def columns(line: str) -> list[int]:
    """Where each column of a kubectl table starts."""
    return [m.start() for m in re.finditer(r"(?:^|(?<=\s\s))\S", line)]


def test_standin_tables_have_the_seeds_columns(local_standins):
    tmp_path, _ = local_standins
    for command in ("kubectl get node", "kubectl get po -o wide --namespace=kube-system", "kubectl get po -o wide"):
        seed = seed_output(command).splitlines()
        mine = standin(tmp_path, *command.split()).stdout.splitlines()
        assert mine[0] == seed[0], command
        assert len(mine) == len(seed), command
        for got, want in zip(mine[1:], seed[1:], strict=True):
            assert columns(got) == columns(want), (command, got, want)
            # Same cells but the generated pod suffix, age and restarts.
            assert got.split()[1:3] == want.split()[1:3]


def test_standin_calicoctl_and_nslookup_print_what_the_seed_shows(local_standins):
    tmp_path, _ = local_standins
    assert standin(tmp_path, "calicoctl", "status").stdout == seed_output("calicoctl status")
    assert standin(tmp_path, "kubectl", "exec", "busybox", "--", "nslookup", "kubernetes").stdout == seed_output(
        "kubectl exec busybox -- nslookup kubernetes"
    )


def test_standin_json_feeds_the_checks(local_standins):
    tmp_path, cluster = local_standins
    listing = json.loads(standin(tmp_path, "kubectl", "get", "nodes", "-o", "json").stdout)
    assert listing["kind"] == "List" and listing["apiVersion"] == "v1"
    assert [r.ok for r in verify.node_results(cluster, listing)] == [True, True, True]
    listing["items"][1]["status"]["conditions"][0].update(
        status="Unknown", reason="NodeStatusUnknown", message="Kubelet stopped posting node status."
    )
    del listing["items"][2]
    rows = verify.node_results(cluster, listing)
    assert [(r.node, r.ok, r.detail) for r in rows[1:]] == [
        (
            "calico-02",
            False,
            "172.18.18.102 NotReady (Ready=Unknown, NodeStatusUnknown: Kubelet stopped posting node status.)",
        ),
        ("calico-03", False, "172.18.18.103 not registered: is kubelet running on calico-03?"),
    ]
    pods = json.loads(standin(tmp_path, "kubectl", "get", "pods", "--namespace=kube-system", "-o", "json").stdout)
    expected = [w for w in kube.workloads(project(make_config(tmp_path))) if w.namespace == "kube-system"]
    rows = kube.pod_results("kube-system", cluster, pods["items"], expected)
    assert [r.ok for r in rows] == [True, True]
    assert re.fullmatch(r"kube-dns-v9-\w{5} 4/4 Running", rows[0].detail)
    missing = kube.pod_results("kube-system", cluster, pods["items"][1:], expected)
    assert missing[0] == kube.Result(
        "kube-system", "-", False, "no pod of replication controller kube-system/kube-dns-v9: run `inv addons`"
    )


# -- `inv verify` over SSH ----------------------------------------------------------


@pytest.fixture(scope="module")
def ui_server():
    with UIServer() as server:
        yield server


@pytest.fixture(scope="module")
def up(ssh_cluster, tmp_path_factory, ui_server):
    """Nodes with everything copied and the addons created, once for the module."""
    base = tmp_path_factory.mktemp("verify")
    config = ssh_cluster.make_config(base, verify={"interval": 1, "api_url": ui_server.url})
    prepare(config)
    install(ssh_cluster, config, base)
    Scenario(ssh_cluster, config).write()
    done = run_inv(base, "addons", "--timeout", "5", config=config)
    assert done.returncode == 0, done.stdout + done.stderr
    return config


@pytest.fixture
def scenario(ssh_cluster, up, ui_server):
    """Healthy, for the test to break."""
    ui_server.status = 200
    healthy = Scenario(ssh_cluster, up)
    healthy.write()
    return healthy


def results(stdout: str) -> list[list[str]]:
    """The rows of the checks' table: check, node, result, detail (the matrix's table comes after it)."""
    lines = stdout.splitlines()
    start = lines.index("check\tnode\tresult\tdetail") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].count("\t") != 3), len(lines))
    return [line.split("\t") for line in lines[start:end]]


def verify_fails(tmp_path, config, *checks: str) -> str:
    """Run a failing `inv verify`; its one-line message, checked to name exactly the failed `checks`."""
    done = run_inv(tmp_path, "verify", "--timeout", "2", config=config)
    assert done.returncode == 1, done.stdout + done.stderr
    message = done.stderr.strip()
    assert message.startswith(f"verify failed: {len(checks)} check(s) ({', '.join(checks)}): "), message
    assert {row[0] for row in results(done.stdout) if row[2] == "FAILED"} == set(checks)
    # Under the tables, what to do about each failed check the stack has a remedy for (the network checks
    # name theirs in each row), and no other.
    remedies = project(config).stack.checks["remedies"]
    wanted = [check for check in checks if check in remedies]
    if not wanted:
        assert "What to do" not in done.stdout
        return message
    told = done.stdout[done.stdout.index("What to do") :]
    assert [line.split("\t")[0] for line in told.splitlines()[2:] if "\t" in line] == wanted
    assert all(f"{check}\t{remedies[check]}" in told for check in wanted)
    return message


def test_healthy_cluster_passes_every_check(ssh_cluster, up, scenario, ui_server, tmp_path):
    done = run_inv(tmp_path, "verify", "--timeout", "5", config=up)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "What to do" not in done.stdout
    rows = results(done.stdout)
    assert all(row[2] == "ok" for row in rows), rows
    assert [row[0] for row in rows] == ["nodes"] * 3 + ["kube-system"] * 2 + ["busybox", "dns"] + ["bgp"] * 6 + [
        "kube-ui"
    ] + ["mesh"] * 6 + ["service"] * 6
    assert [row[1] for row in rows if row[0] == "nodes"] == ssh_cluster.names
    assert ["dns", "calico-01", "ok", "kubernetes -> 10.100.0.1 from 10.100.0.10"] in rows
    assert ["bgp", "calico-02", "ok", "peer calico-03 (127.0.0.3): up, Established since 03:57:16"] in rows
    assert ui_server.requests[-1] == "/api/v1/proxy/namespaces/kube-system/services/kube-ui/"
    assert done.stdout.rstrip().endswith(
        "All 8 checks passed: nodes, kube-system, busybox, dns, bgp, kube-ui, mesh, service."
    )


def test_json_output_shape(up, scenario, tmp_path):
    scenario.node("127.0.0.3")["ready"] = False
    scenario.write()
    done = run_inv(tmp_path, "verify", "--timeout", "1", "--json", config=up)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["ok"] is False and report["timeout"] == 1
    assert all(set(row) == {"check", "node", "ok", "detail"} for row in report["checks"])
    assert [r["node"] for r in report["checks"] if not r["ok"]] == ["calico-03"]
    assert (
        "nodes on calico-03: 127.0.0.3 NotReady (Ready=False, KubeletNotReady: container runtime is down)"
        in done.stderr
    )


def test_a_node_not_ready_is_named(up, scenario, tmp_path):
    scenario.node("127.0.0.2").update(ready=False, reason="KubeletNotReady", message="docker is not running")
    scenario.write()
    message = verify_fails(tmp_path, up, "nodes")
    assert "nodes on calico-02: 127.0.0.2 NotReady (Ready=False, KubeletNotReady: docker is not running)" in message


def test_a_node_that_gets_ready_in_time_passes(up, scenario, tmp_path):
    scenario.node("127.0.0.2")["ready_after"] = 1.5
    scenario.write()
    done = run_inv(tmp_path, "verify", "--timeout", "10", config=up)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_kube_system_pod_not_ready_shows_its_containers(up, scenario, tmp_path):
    scenario.kubernetes["pods"] = {
        "kube-dns-v9": {"not_ready": ["skydns", "healthz"], "waiting": "CrashLoopBackOff", "restarts": 7}
    }
    scenario.write()
    # Without its DNS pod ready, the cluster DNS does not answer either.
    message = verify_fails(tmp_path, up, "kube-system", "dns")
    assert re.search(
        r"kube-system on calico-0\d: kube-dns-v9-\w{5} 2/4 Running; skydns not ready "
        r"\(waiting: CrashLoopBackOff, restarts 7\); healthz not ready",
        message,
    ), message


def test_dns_not_answering_is_named(up, scenario, tmp_path):
    scenario.kubernetes["dns"] = "down"
    scenario.write()
    message = verify_fails(tmp_path, up, "dns")
    assert "dns on calico-01: nslookup: can't resolve 'kubernetes' (server 10.100.0.10)" in message


def test_a_bgp_peer_not_established_names_node_and_peer(up, scenario, tmp_path):
    scenario.peer("calico-03", of="calico-02").update(state="start", info="Connect")
    scenario.write()
    message = verify_fails(tmp_path, up, "bgp")
    assert message.endswith(
        "(bgp): bgp on calico-03: peer calico-02 (127.0.0.2): start, Connect: "
        "|  127.0.0.2   | node-to-node mesh | start | 03:57:16 |   Connect   |"
    )


def test_kube_ui_not_answering_is_named(up, scenario, ui_server, tmp_path):
    ui_server.status = 503
    message = verify_fails(tmp_path, up, "kube-ui")
    assert (
        f"kube-ui on calico-01: HTTP 503 from {ui_server.url}/api/v1/proxy/namespaces/kube-system/services/"
        f'kube-ui/: no endpoints available for service "kube-ui"' in message
    )


def test_an_unreachable_node_fails_its_checks_and_the_others_complete(ssh_cluster, up, scenario, tmp_path):
    ssh_cluster.stop("calico-03")
    try:
        message = verify_fails(tmp_path, up, "bgp")
    finally:
        ssh_cluster.start("calico-03")
    assert "bgp on calico-03: cannot run the check: connection refused" in message


def test_an_api_server_proxy_that_refuses_shows_curls_message(up, scenario, tmp_path):
    refusing = dict(up, verify=dict(up["verify"], api_url="http://127.0.0.1:1"))
    message = verify_fails(tmp_path, refusing, "kube-ui")
    assert message.startswith(
        "verify failed: 1 check(s) (kube-ui): kube-ui on calico-01: no answer from "
        "http://127.0.0.1:1/api/v1/proxy/namespaces/kube-system/services/kube-ui/: curl: (7) "
    )


def test_long_waits_say_what_they_wait_for(capsys):
    """Minutes of image pulls must not look like a hang: failing checks are reported while polled."""
    started = time.monotonic()

    def slow_dns(deadline):
        ready = time.monotonic() - started > 1.0
        return [kube.Result("dns", "calico-01", ready, "answered" if ready else "no answer: timed out")]

    rows = kube.run_checks([slow_dns], timeout=10, interval=0.1, every=0.3)
    assert rows == [kube.Result("dns", "calico-01", True, "answered")]
    err = capsys.readouterr().err
    assert "s for dns on calico-01: no answer: timed out" in err
    assert err.startswith("waiting ")

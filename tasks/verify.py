"""`inv verify`: the checks the seed does by hand once the cluster is up.

Each check runs its command over SSH (kubectl, calicoctl and curl on the
nodes themselves, so host routing does not matter) and is tried again until it
passes or the run's timeout is over. Parsing is pure: `*_results` functions
turn a command's output into `Result` rows; the effects are in `probes` and
`kube.run_checks`.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict

from invoke import task

from tasks import kube, probe, settings
from tasks.errors import StepError, exits
from tasks.kube import Probe, Result, guarded, kubectl_json, remote
from tasks.settings import Cluster, Project
from tasks.ui import last_line

# VirtualBox gives every VM this NAT address; a BGP peer there means a
# calico-node registered the wrong interface instead of its private address.
NAT_ADDRESS = "10.0.2.15"
MESH = "node-to-node mesh"
SEED_NAT_REMEDY = "it must run `calicoctl node --ip=<its private address>`"


# -- pure: outputs -> results -------------------------------------------------------


def _condition(obj: dict, kind: str) -> dict:
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return {}


def node_results(cluster: Cluster, listing: dict) -> list[Result]:
    """`kubectl get nodes -o json` -> one row per cluster node: registered and Ready."""
    registered = {item["metadata"]["name"]: item for item in listing.get("items") or []}
    rows = []
    for node in cluster.nodes:
        item = registered.get(node.ip) or registered.get(node.name)
        if item is None:
            rows.append(
                Result("nodes", node.name, False, f"{node.ip} not registered: is kubelet running on {node.name}?")
            )
            continue
        ready = _condition(item, "Ready")
        if ready.get("status") == "True":
            rows.append(Result("nodes", node.name, True, f"{node.ip} Ready"))
        else:
            why = ": ".join(v for v in (ready.get("reason"), ready.get("message")) if v)
            state = f"Ready={ready.get('status', 'missing')}{', ' + why if why else ''}"
            rows.append(Result("nodes", node.name, False, f"{node.ip} NotReady ({state})"))
    return rows


def parse_nslookup(text: str) -> dict:
    """busybox nslookup output -> {server, name, addresses, error}."""
    out: dict = {"server": "", "name": "", "addresses": [], "error": ""}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Server:"):
            out["server"], section = line.split(":", 1)[1].strip(), "server"
        elif line.startswith("Name:"):
            out["name"], section = line.split(":", 1)[1].strip(), "name"
        elif line.startswith("Address") and section == "name":
            # "Address 1: 10.100.0.1 kubernetes.default.svc.cluster.local": the address is the first word.
            out["addresses"].append(line.split(":", 1)[1].split()[0])
        elif line.startswith("nslookup:") or "can't resolve" in line or "can't find" in line or "timed out" in line:
            # busybox 1.1x "can't resolve"; 1.28+ "** server can't find NAME: NXDOMAIN", ";; connection timed out"
            out["error"] = line
    return out


def dns_result(cluster: Cluster, output: str, node: str, name: str = "kubernetes") -> Result:
    """`nslookup NAME` in busybox: answered by the cluster DNS with the API service address."""
    got = parse_nslookup(output)
    want_server, want = cluster.dns_ip, cluster.api_service_ip
    if not got["server"]:
        return Result("dns", node, False, f"no answer: {last_line(output)}")
    if got["server"] != want_server:
        return Result(
            "dns",
            node,
            False,
            f"resolver is {got['server']}, expected {want_server} (kubelet --cluster-dns): {last_line(output)}",
        )
    if want in got["addresses"]:
        return Result("dns", node, True, f"{name} -> {want} from {want_server}")
    if got["addresses"]:
        return Result("dns", node, False, f"{name} -> {', '.join(got['addresses'])}, expected {want}")
    return Result(
        "dns",
        node,
        False,
        f"{got['error'] or last_line(output)} (server {want_server}): are the cluster DNS pods (kube-dns) ready?",
    )


def parse_bgp(text: str) -> list[dict]:
    """The IPv4 peer table of `calicoctl status` -> [{address, type, state, since, info}]."""
    rows, header, in_v4 = [], None, False
    for line in text.splitlines():
        if line.startswith("IPv4 BGP status"):
            in_v4 = True
        elif line.startswith("IPv6 BGP status"):
            break
        elif in_v4 and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
                continue
            row = dict(zip(("address", "type", "state", "since", "info"), cells, strict=False))
            row["row"] = line.strip()
            rows.append(row)
    return rows


def bgp_results(cluster: Cluster, node: str, output: str, remedy: str = "") -> list[Result]:
    """On `node`: every other node a node-to-node mesh peer, up and Established.

    `remedy`: how calico-node is told its address (a peer at the NAT address means it was not).
    """
    peers = parse_bgp(output)
    if "IPv4 BGP status" not in output:
        return [Result("bgp", node, False, f"{last_line(output)}: is calico-node running on {node}?")]
    by_address = {p["address"]: p for p in peers}
    rows = []
    missing = []
    for other in cluster.nodes:
        if other.name == node:
            continue
        peer = by_address.get(other.ip)
        label = f"peer {other.name} ({other.ip})"
        if peer is None:
            missing.append(other.name)
            rows.append(Result("bgp", node, False, f"{label}: no BGP session"))
        elif peer["type"] == MESH and peer["state"] == "up" and peer["info"] == "Established":
            rows.append(Result("bgp", node, True, f"{label}: up, Established since {peer['since']}"))
        else:
            rows.append(Result("bgp", node, False, f"{label}: {peer['state']}, {peer['info']}: {peer['row']}"))
    if NAT_ADDRESS in by_address:
        suspects = ", ".join(missing) or "another node"
        rows.append(
            Result(
                "bgp",
                node,
                False,
                f"a peer at the NAT address {NAT_ADDRESS}: calico-node on {suspects} picked the "
                f"wrong interface; {remedy or SEED_NAT_REMEDY}",
            )
        )
    return rows


def ui_result(url: str, stdout: str, stderr: str, node: str, check: str = "kube-ui") -> Result:
    """`curl -w '\\n%{http_code}' URL`: the web UI answers 200 through the API server proxy."""
    body, _, code = stdout.rstrip("\n").rpartition("\n")
    if code == "200":
        return Result(check, node, True, f"HTTP 200 from {url}")
    message = body.strip()
    try:
        message = json.loads(body).get("message", message)  # the API server's Status object
    except (ValueError, AttributeError):
        pass
    if code.isdigit() and code != "000":
        got = f"HTTP {code}"
    else:  # curl's own complaint: refused, timed out, not installed
        got, message = "no answer", last_line(stderr or stdout)
    return Result(check, node, False, f"{got} from {url}{': ' + message[:200] if message else ''}")


def raw_ui_result(path: str, result, node: str, check: str) -> Result:
    """`kubectl get --raw PATH`: the web UI answers through the API server proxy (kubectl exits 0 on 2xx)."""
    if not result.failed and result.stdout.strip():
        return Result(check, node, True, f"answered through the API server at {path}")
    return Result(check, node, False, f"no answer at {path}: {last_line(result.stderr or result.stdout)}")


def failure_message(results: list[Result]) -> str:
    """The one line `inv verify` exits with: every failed check, where, and why."""
    failed = [r for r in results if not r.ok]
    checks = list(dict.fromkeys(r.check for r in failed))
    parts = [f"{r.check} on {r.node}: {r.detail}" for r in failed]
    return f"verify failed: {len(checks)} check(s) ({', '.join(checks)}): " + "; ".join(parts)


# -- effects ----------------------------------------------------------------------


def probes(project: Project, group) -> list[Probe]:
    """Every check as a probe (deadline -> rows), over the `Nodes` group's connections."""
    cluster = project.cluster
    kubectl = shlex.quote(project.artifact("kubectl").target)
    calicoctl = shlex.quote(project.artifact("calicoctl").target)
    master_name = cluster.master.name
    workloads = kube.workloads(project)
    system = [w for w in workloads if w.namespace == "kube-system"]
    busybox = [w for w in workloads if w.kind == "Pod" and w.name == "busybox"]
    busybox_ns = busybox[0].namespace if busybox else "default"
    url = project.verify.api_url.rstrip("/") + project.verify.ui_path
    asks = project.stack.checks
    dns_name = asks["dns_name"].format(domain=cluster.domain)
    bgp_command = asks["bgp"].format(calicoctl=calicoctl)
    ui_name = asks["ui_name"]

    def master():
        return group.conn(master_name)  # the master's checks share its connection

    def nodes_(deadline):
        return node_results(cluster, kubectl_json(master(), kubectl, "get nodes", deadline))

    def system_pods(deadline):
        listing = kubectl_json(master(), kubectl, "get pods --namespace=kube-system", deadline)
        return kube.pod_results("kube-system", cluster, listing.get("items") or [], system)

    def busybox_(deadline):
        listing = kubectl_json(master(), kubectl, f"get pods --namespace={busybox_ns}", deadline)
        pods = [p for p in listing.get("items") or [] if any(w.owns(p) for w in busybox)]
        return kube.pod_results("busybox", cluster, pods, busybox)

    def dns(deadline):
        lookup = f"nslookup {shlex.quote(dns_name)}"
        result = remote(master(), f"{kubectl} exec busybox --namespace={busybox_ns} -- {lookup}", deadline)
        return [dns_result(cluster, result.stdout + result.stderr, master_name, dns_name)]

    def ui(deadline):
        if asks["ui"] == "kubectl":
            path = project.verify.ui_path
            result = remote(master(), f"{kubectl} get --raw {shlex.quote(path)}", deadline)
            return [raw_ui_result(path, result, master_name, ui_name)]
        left = max(1, int(deadline - time.monotonic()))
        result = remote(master(), f"curl -sS --max-time {left} -w '\\n%{{http_code}}' {shlex.quote(url)}", deadline)
        return [ui_result(url, result.stdout, result.stderr, master_name, ui_name)]

    def bgp(name):
        def probe(deadline):
            result = remote(group.conn(name), bgp_command, deadline)
            return bgp_results(cluster, name, result.stdout + result.stderr, asks.get("nat_remedy", ""))

        return guarded("bgp", name, probe)

    checks = [
        guarded("nodes", master_name, nodes_),
        guarded("kube-system", master_name, system_pods),
        guarded("busybox", master_name, busybox_),
        guarded("dns", master_name, dns),
    ]
    checks += [bgp(name) for name in group.names]
    checks.append(guarded(ui_name, master_name, ui))
    return checks


def remedies_for(results: list[Result], remedies: dict) -> dict[str, str]:
    """What to do about each failed check that has a remedy (the stack's checks.remedies), in check order."""
    failed = dict.fromkeys(r.check for r in results if not r.ok)
    return {check: remedies[check] for check in failed if check in remedies}


def report(
    results: list[Result],
    as_json: bool,
    timeout: float,
    mesh: probe.Mesh | None = None,
    remedies: dict | None = None,
) -> None:
    from tasks import ui

    cells = mesh.cells if mesh else []
    todo = remedies_for(results, remedies or {})
    if as_json:
        body = {"ok": all(r.ok for r in results), "timeout": timeout, "checks": [asdict(r) for r in results]}
        body["matrix"] = probe.matrix_json(cells)
        body["remedies"] = todo
        print(json.dumps(body, indent=2), flush=True)
        return
    ui.table("Cluster checks", ("check", "node", "result", "detail"), kube.table_rows(results))
    if mesh and cells:
        ui.table(*mesh.table())
    if todo:
        ui.table("What to do", ("check", "remedy"), list(todo.items()))


@task(
    help={
        "timeout": "Seconds each check may keep failing before it counts as failed (default verify.timeout).",
        "json": "Print the results as JSON (for scripts) instead of a table.",
        "keep": "Leave the probe pods and their Service on the cluster afterwards (for debugging).",
    }
)
@exits
def verify(c, timeout=None, json=False, keep=False):
    """Check the running cluster: nodes, pods, DNS, BGP, the pod network and web UI, with what to do about failures.

    Every node registered and Ready; every kube-system pod and busybox running
    and ready; the API service's name looked up in busybox and answered by the
    cluster DNS; on every node a `node-to-node mesh` BGP session, up and
    Established, to every other node; the web UI (kube-ui, Headlamp) answering
    through the API server proxy; from a probe pod on every node, every other
    node's probe over ICMP and TCP, the probes' Service and the kubernetes
    service, and (stack current) NetworkPolicy enforced (tasks/probe.py).
    Exits non-zero naming every failed check.
    """
    from tasks.nodes import Nodes

    project = settings.load(c)
    project.stack.check_step("verify")
    wait = kube.seconds(timeout, project.verify.timeout)
    with Nodes(c, project) as group, probe.Mesh(project, group, keep) as mesh:
        results = kube.run_checks(probes(project, group) + mesh.checks(), wait, project.verify.interval)
    report(results, json, wait, mesh, project.stack.checks.get("remedies"))
    if not all(r.ok for r in results):
        raise StepError(failure_message(results))
    if not json:
        from tasks import ui

        checks = list(dict.fromkeys(r.check for r in results))
        ui.say(f"All {len(checks)} checks passed: {', '.join(checks)}.")


TASKS = (verify,)

"""`inv verify`: the checks the seed does by hand once the cluster is up.

Each check runs its command over SSH (kubectl, calicoctl and curl on the
nodes themselves, so host routing does not matter) and is tried again until it
passes or the run's timeout is over. Parsing is pure: `*_results` functions
turn a command's output into `Result` rows; the effects are in `probes` and
`run_checks`.
"""
from __future__ import annotations

import json
import math
import shlex
import time
from dataclasses import asdict, dataclass
from typing import Callable

from invoke import Exit, task

from tasks import settings
from tasks.ui import last_line
from tasks.settings import Cluster

# VirtualBox gives every VM this NAT address; a BGP peer there means a
# calico-node registered the wrong interface instead of its private address.
NAT_ADDRESS = "10.0.2.15"
MESH = "node-to-node mesh"


@dataclass(frozen=True)
class Result:
    check: str
    node: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Workload:
    """What an addon manifest runs: a bare pod, or a replication controller's pods."""

    namespace: str
    name: str
    kind: str                      # "Pod" or "ReplicationController"
    selector: tuple = ()           # RC: sorted (label, value) pairs its pods carry

    def owns(self, pod: dict) -> bool:
        meta = pod.get("metadata", {})
        if meta.get("namespace", "default") != self.namespace:
            return False
        if self.kind == "Pod":
            return meta.get("name") == self.name
        labels = meta.get("labels") or {}
        return all(labels.get(k) == v for k, v in self.selector)

    def __str__(self) -> str:
        return f"{'pod' if self.kind == 'Pod' else 'replication controller'} {self.namespace}/{self.name}"


# -- pure: configuration -------------------------------------------------------

def binary(config, name: str) -> str:
    """Where the downloaded artifact `name` lives on the nodes (its dest folder + name)."""
    from tasks import download

    try:
        artifacts = download.artifacts(config)
    except settings.ConfigError as err:
        raise Exit(str(err), code=2) from None
    for artifact in artifacts:
        if artifact.name == name:
            return artifact.target
    raise Exit(f"download.artifacts has no entry named {name}: it is needed on the nodes", code=2)


def seconds(value, default) -> float:
    """A task's timeout flag (a string when given, None when not) or the configured default."""
    raw = default if value is None else value
    try:
        number = float(raw)
    except (TypeError, ValueError):
        number = -1
    if not 0 <= number < math.inf:  # also refuses nan, which would never reach a deadline
        raise Exit(f"--timeout {raw!r}: expected a number of seconds, 0 or more", code=2)
    return number


def node_name(cluster: Cluster, registered: str) -> str:
    """The cluster's name for a kubelet's registration name (its address)."""
    for node in cluster.nodes:
        if registered in (node.ip, node.name):
            return node.name
    return registered or "-"


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
            rows.append(Result("nodes", node.name, False,
                               f"{node.ip} not registered: is kubelet running on {node.name}?"))
            continue
        ready = _condition(item, "Ready")
        if ready.get("status") == "True":
            rows.append(Result("nodes", node.name, True, f"{node.ip} Ready"))
        else:
            why = ": ".join(v for v in (ready.get("reason"), ready.get("message")) if v)
            state = f"Ready={ready.get('status', 'missing')}{', ' + why if why else ''}"
            rows.append(Result("nodes", node.name, False, f"{node.ip} NotReady ({state})"))
    return rows


def pod_state(pod: dict) -> tuple[bool, str]:
    """(running with every container ready, "name 4/4 Running" plus what is wrong)."""
    status = pod.get("status", {})
    phase = status.get("phase", "Unknown")
    containers = status.get("containerStatuses") or []
    wanted = len(pod.get("spec", {}).get("containers") or containers)
    ready = sum(1 for c in containers if c.get("ready"))
    problems = []
    for c in containers:
        if c.get("ready"):
            continue
        state = c.get("state") or {}
        how = next(iter(state), "unknown")
        reason = (state.get(how) or {}).get("reason") or (state.get(how) or {}).get("message")
        problems.append(f"{c.get('name')} not ready ({how}{': ' + reason if reason else ''}"
                        f"{', restarts ' + str(c['restartCount']) if c.get('restartCount') else ''})")
    if status.get("reason") or status.get("message"):
        problems.insert(0, ": ".join(v for v in (status.get("reason"), status.get("message")) if v))
    ok = phase == "Running" and wanted > 0 and ready == wanted
    detail = f"{pod.get('metadata', {}).get('name', '?')} {ready}/{wanted} {phase}"
    return ok, detail + ("; " + "; ".join(problems) if problems and not ok else "")


def pod_results(check: str, cluster: Cluster, pods: list[dict], expected: list[Workload]) -> list[Result]:
    """One row per pod (Running, all containers ready) and one per expected workload with no pod."""
    rows = []
    for workload in expected:
        if not any(workload.owns(p) for p in pods):
            rows.append(Result(check, "-", False, f"no pod of {workload}: run `inv addons`"))
    for pod in pods:
        ok, detail = pod_state(pod)
        host = pod.get("spec", {}).get("nodeName") or pod.get("status", {}).get("hostIP", "")
        rows.append(Result(check, node_name(cluster, host), ok, detail))
    if not rows:
        rows.append(Result(check, "-", False, "no pods"))
    return rows


def parse_nslookup(text: str) -> dict:
    """busybox nslookup output -> {server, name, addresses, error}."""
    out = {"server": "", "name": "", "addresses": [], "error": ""}
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
        elif line.startswith("nslookup:") or "can't resolve" in line:
            out["error"] = line
    return out


def dns_result(cluster: Cluster, output: str, node: str) -> Result:
    """`nslookup kubernetes` in busybox: answered by the cluster DNS with the API service address."""
    got = parse_nslookup(output)
    want_server, want = cluster.dns_ip, cluster.api_service_ip
    if not got["server"]:
        return Result("dns", node, False, f"no answer: {last_line(output)}")
    if got["server"] != want_server:
        return Result("dns", node, False, f"resolver is {got['server']}, expected {want_server} "
                                          f"(kubelet --cluster-dns): {last_line(output)}")
    if want in got["addresses"]:
        return Result("dns", node, True, f"kubernetes -> {want} from {want_server}")
    if got["addresses"]:
        return Result("dns", node, False, f"kubernetes -> {', '.join(got['addresses'])}, expected {want}")
    return Result("dns", node, False, f"{got['error'] or last_line(output)} (server {want_server}): "
                                      "are the kube-dns pods ready?")


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
            row = dict(zip(("address", "type", "state", "since", "info"), cells))
            row["row"] = line.strip()
            rows.append(row)
    return rows


def bgp_results(cluster: Cluster, node: str, output: str) -> list[Result]:
    """On `node`: every other node a node-to-node mesh peer, up and Established."""
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
        rows.append(Result("bgp", node, False,
                           f"a peer at the NAT address {NAT_ADDRESS}: calico-node on {suspects} picked the "
                           f"wrong interface; it must run `calicoctl node --ip=<its private address>`"))
    return rows


def ui_result(url: str, stdout: str, stderr: str, node: str) -> Result:
    """`curl -w '\\n%{http_code}' URL`: the kube-ui answers 200 through the API server proxy."""
    body, _, code = stdout.rstrip("\n").rpartition("\n")
    if code == "200":
        return Result("kube-ui", node, True, f"HTTP 200 from {url}")
    message = body.strip()
    try:
        message = json.loads(body).get("message", message)  # the API server's Status object
    except (ValueError, AttributeError):
        pass
    if code.isdigit() and code != "000":
        got = f"HTTP {code}"
    else:  # curl's own complaint: refused, timed out, not installed
        got, message = "no answer", last_line(stderr or stdout)
    return Result("kube-ui", node, False, f"{got} from {url}{': ' + message[:200] if message else ''}")


def failure_message(results: list[Result]) -> str:
    """The one line `inv verify` exits with: every failed check, where, and why."""
    failed = [r for r in results if not r.ok]
    checks = list(dict.fromkeys(r.check for r in failed))
    parts = [f"{r.check} on {r.node}: {r.detail}" for r in failed]
    return f"verify failed: {len(checks)} check(s) ({', '.join(checks)}): " + "; ".join(parts)


# -- effects ----------------------------------------------------------------------

def remote(conn, command: str, deadline: float):
    """Run `command` on `conn`, bounded by the run's deadline; never raises on exit status."""
    left = max(1.0, deadline - time.monotonic())
    return conn.run(command, hide=True, warn=True, in_stream=False, timeout=left)


def kubectl_json(conn, kubectl: str, args: str, deadline: float) -> dict:
    """`kubectl ARGS -o json` parsed; raises CheckError with kubectl's own message."""
    result = remote(conn, f"{kubectl} {args} -o json", deadline)
    if result.failed:
        raise CheckError(last_line(result.stderr or result.stdout))
    try:
        return json.loads(result.stdout)
    except ValueError:
        raise CheckError(f"`kubectl {args} -o json` printed no JSON: {last_line(result.stdout)}") from None


class CheckError(Exception):
    """A command whose failure is the check's result (shown as its detail)."""


def guarded(check: str, node: str, probe: Callable[[float], list[Result]]) -> Callable[[float], list[Result]]:
    """The probe, with a failing command or connection turned into a failed row."""
    from tasks import nodes

    def run(deadline: float) -> list[Result]:
        try:
            return probe(deadline)
        except CheckError as err:
            return [Result(check, node, False, str(err))]
        except Exception as err:  # SSH and command errors are this check's result, not a crash
            return [Result(check, node, False, f"cannot run the check: {nodes.describe(err)}")]
    return run


def poll(probe: Callable[[float], list[Result]], deadline: float, interval: float,
         latest: dict | None = None) -> list[Result]:
    """Try `probe` until all its rows pass or the deadline; the last rows (also kept in `latest`)."""
    while True:
        rows = probe(deadline)
        if latest is not None:
            latest[probe] = rows
        if all(r.ok for r in rows) or time.monotonic() + interval > deadline:
            return rows
        time.sleep(interval)


def probes(c, cluster: Cluster, conns: dict) -> list[Callable[[float], list[Result]]]:
    """Every check as a probe: deadline -> rows."""
    from tasks import addons

    config = c.config
    kubectl = shlex.quote(binary(config, "kubectl"))
    calicoctl = shlex.quote(binary(config, "calicoctl"))
    master_name = cluster.master.name
    master = conns[master_name]
    workloads = addons.workloads(config, list(config.addons.manifests))
    system = [w for w in workloads if w.namespace == "kube-system"]
    busybox = [w for w in workloads if w.kind == "Pod" and w.name == "busybox"]
    busybox_ns = busybox[0].namespace if busybox else "default"
    url = config.verify.api_url.rstrip("/") + config.verify.ui_path

    def nodes_(deadline):
        return node_results(cluster, kubectl_json(master, kubectl, "get nodes", deadline))

    def system_pods(deadline):
        listing = kubectl_json(master, kubectl, "get pods --namespace=kube-system", deadline)
        return pod_results("kube-system", cluster, listing.get("items") or [], system)

    def busybox_(deadline):
        listing = kubectl_json(master, kubectl, f"get pods --namespace={busybox_ns}", deadline)
        pods = [p for p in listing.get("items") or [] if any(w.owns(p) for w in busybox)]
        return pod_results("busybox", cluster, pods, busybox)

    def dns(deadline):
        result = remote(master, f"{kubectl} exec busybox --namespace={busybox_ns} -- nslookup kubernetes", deadline)
        return [dns_result(cluster, result.stdout + result.stderr, master_name)]

    def ui(deadline):
        left = max(1, int(deadline - time.monotonic()))
        result = remote(master, f"curl -sS --max-time {left} -w '\\n%{{http_code}}' {shlex.quote(url)}", deadline)
        return [ui_result(url, result.stdout, result.stderr, master_name)]

    def bgp(name, conn):
        def probe(deadline):
            result = remote(conn, f"{calicoctl} status", deadline)
            return bgp_results(cluster, name, result.stdout + result.stderr)
        return guarded("bgp", name, probe)

    checks = [guarded("nodes", master_name, nodes_), guarded("kube-system", master_name, system_pods),
              guarded("busybox", master_name, busybox_), guarded("dns", master_name, dns)]
    checks += [bgp(name, conn) for name, conn in conns.items()]
    checks.append(guarded("kube-ui", master_name, ui))
    return checks


def run_checks(checks: list[Callable[[float], list[Result]]], timeout: float, interval: float,
               every: float = 15.0) -> list[Result]:
    """Every probe polled at once until it passes or `timeout` seconds are over; rows in check order.

    While some still fail, says every `every` seconds on stderr what is awaited:
    pulling images and starting pods takes minutes, and silence looks like a hang.
    """
    from concurrent.futures import ThreadPoolExecutor, wait

    from tasks import ui

    started = time.monotonic()
    deadline = started + timeout
    latest: dict = {}
    # The master's checks share its connection, one SSH channel each (sshd allows 10 by default).
    with ThreadPoolExecutor(max_workers=len(checks)) as pool:
        futures = [pool.submit(poll, probe, deadline, interval, latest) for probe in checks]
        while wait(futures, timeout=every).not_done:
            failing = [r for rows in list(latest.values()) for r in rows if not r.ok]
            if failing:
                ui.progress(f"waiting {time.monotonic() - started:.0f}/{timeout:g} s for "
                            + "; ".join(f"{r.check} on {r.node}: {r.detail}" for r in failing))
    return [row for f in futures for row in f.result()]


def report(results: list[Result], as_json: bool, timeout: float) -> None:
    from tasks import ui

    if as_json:
        print(json.dumps({"ok": all(r.ok for r in results), "timeout": timeout,
                          "checks": [asdict(r) for r in results]}, indent=2), flush=True)
        return
    ui.table("Cluster checks", ("check", "node", "result", "detail"), table_rows(results))


def table_rows(results: list[Result]) -> list[tuple]:
    return [(r.check, r.node, "ok" if r.ok else "FAILED", r.detail) for r in results]


@task(help={"timeout": "Seconds each check may keep failing before it counts as failed (default verify.timeout).",
            "json": "Print the results as JSON (for scripts) instead of a table."})
def verify(c, timeout=None, json=False):
    """Check the running cluster, as the seed does by hand.

    Every node registered and Ready; every kube-system pod and busybox running
    and ready; `nslookup kubernetes` in busybox answered by the cluster DNS;
    on every node a `node-to-node mesh` BGP session, up and Established, to
    every other node; the kube-ui answering through the API server proxy.
    Exits non-zero naming every failed check.
    """
    from tasks import nodes

    cluster = settings.cluster_from(c)
    wait = seconds(timeout, c.config.verify.timeout)
    interval = float(c.config.verify.interval)  # checked with the configuration
    conns = nodes.connections(c, cluster)
    # Several checks share the master's connection from their threads.
    nodes.share(conns[cluster.master.name])
    try:
        results = run_checks(probes(c, cluster, conns), wait, interval)
    finally:
        nodes.close_all(conns)
    report(results, json, wait)
    if not all(r.ok for r in results):
        raise Exit(failure_message(results), code=1)
    if not json:
        from tasks import ui

        checks = list(dict.fromkeys(r.check for r in results))
        ui.say(f"All {len(checks)} checks passed: {', '.join(checks)}.")


TASKS = (verify,)

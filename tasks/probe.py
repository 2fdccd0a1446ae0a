"""The pod network proved from inside pods: `inv verify`'s mesh, service and policy checks.

`verify` checks what an operator would otherwise do by hand with `ping` and
`wget` from inside pods:

- **mesh**: from a probe pod on each node, every other node's probe pod
  answers ICMP (`ping`) and TCP (`wget` of the page it serves): an N x N
  matrix of source node x destination node. A failed cell names both nodes,
  what failed (timeout, no route, refused) and where to look.
- **service**: from each probe pod, the ClusterIP Service `net-probe` in front
  of the probes answers (kube-proxy on that node forwards it), and so does the
  `kubernetes` service on the first service address (port 443).
- **policy** (stack current; Kubernetes 1.1 has no NetworkPolicy): in a scratch
  namespace of the run, a default-deny NetworkPolicy makes a target pod
  unreachable from a client pod, then an allow rule makes it reachable again,
  each within POLICY_SECONDS; the namespace is removed whatever happens.

The probes are one bare Pod per node, pinned with `spec.nodeName`, not a
DaemonSet: Kubernetes 1.1 (stack seed) serves no DaemonSet unless the
extensions API is switched on, while a pinned Pod means the same to 1.1 and
1.36, needs no scheduler, and lands on a node even when it is cordoned. Each
runs busybox (the image of the addons' busybox pod: the stack's pin, a tag,
as no digest of it can be checked here) serving its hostname with `httpd` on
`PORT`. `verify` creates them (an existing one is kept), waits for them, and
removes them and the Service afterwards unless `--keep`, so a re-run leaves no
extra objects. Each source node's whole row is one `kubectl exec` of one shell
script whose pings and wgets run at once, so a run costs N execs, in parallel.

Pure: the objects (`manifests`), the script (`sweep_script`), busybox's
output read back (`parse_sweep`, `ping_outcome`, `wget_outcome`) and turned
into rows with their remedies (`cell_result`, `service_results`), the matrix.
Effects: `Mesh` and its `Policy`, over the `Nodes` group's connection to the master.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from tasks import kube
from tasks.kube import CheckError, Probe, Result, kubectl_json, remote
from tasks.settings import Cluster, Project
from tasks.ui import last_line

LABEL = ("inv-verify", "net-probe")  # on every object verify makes, and the Service's selector
NAMESPACE = "default"
SERVICE = "net-probe"
PORT = 8080  # what each probe serves: its hostname (the pod's name)
SERVICE_PORT = 80
API_PORT = 443
WAIT = 2  # seconds each ping and wget waits for an answer
SCRIPT_SECONDS = 3 * WAIT + 20  # a row's script: its slowest part (three tries of the Service) and kubectl exec
# A try, once started, may take this long even past the run's timeout: the last try then says what it found,
# not that it was cut short.
TRY_SECONDS = 15
SERVE = f"mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p {PORT} -h /tmp/www"
HEADER = re.compile(r"^### (\S+) (icmp|tcp) (\d+)$")


@dataclass(frozen=True)
class Outcome:
    """One ping or wget: ok, else failure is timeout, no route, refused or error (`message`: the tool's line)."""

    ok: bool
    failure: str = ""
    ms: float | None = None  # ping's round trip
    message: str = ""  # wget: the body; otherwise busybox's own line
    note: str = ""  # wget answered after failed tries: how many, and the last one's line


@dataclass(frozen=True)
class Cell:
    """From the probe on `source` to the probe on `target` (node names)."""

    source: str
    target: str
    address: str
    icmp: Outcome
    tcp: Outcome

    @property
    def ok(self) -> bool:
        return self.icmp.ok and self.tcp.ok

    def mark(self) -> str:
        if self.ok:
            return f"✓ {self.icmp.ms:.2f} ms" if self.icmp.ms is not None else "✓"
        failed = [f"{proto} {o.failure}" for proto, o in (("icmp", self.icmp), ("tcp", self.tcp)) if not o.ok]
        return "✗ " + ", ".join(failed)


# -- pure: the objects ------------------------------------------------------------------


def pod_name(node: str) -> str:
    """The probe pod of a node: a DNS label (hosts may have any name)."""
    return ("net-probe-" + re.sub(r"[^a-z0-9-]+", "-", node.lower())).strip("-")[:63]


def probe_image(documents: dict[str, list[dict]]) -> str:
    """The image of the addons' busybox pod (the stack's pin); plain busybox when there is none."""
    for docs in documents.values():
        for doc in docs:
            if doc.get("kind") == "Pod" and doc.get("metadata", {}).get("name") == "busybox":
                return doc["spec"]["containers"][0]["image"]
    return "busybox"


def registered(cluster: Cluster, listing: dict) -> dict[str, str]:
    """`kubectl get nodes -o json` -> {cluster node name: the name its kubelet registered (address or name)}."""
    names = {item["metadata"]["name"] for item in listing.get("items") or []}
    out = {}
    for node in cluster.nodes:
        found = node.ip if node.ip in names else node.name if node.name in names else ""
        if found:
            out[node.name] = found
    return out


def probe_pod(name: str, namespace: str, labels: dict[str, str], where: str, image: str) -> dict:
    """A busybox pod pinned to node `where` (its registered name), serving its hostname on PORT."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "nodeName": where,
            "terminationGracePeriodSeconds": 1,
            "restartPolicy": "Always",
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", SERVE],
                    "ports": [{"name": "http", "containerPort": PORT}],
                }
            ],
        },
    }


def manifests(pinned: dict[str, str], image: str) -> list[dict]:
    """A probe pod pinned to each registered node ({node: registered name}) and the Service in front of them."""
    key, value = LABEL
    docs = [probe_pod(pod_name(node), NAMESPACE, {key: value}, where, image) for node, where in pinned.items()]
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": NAMESPACE, "labels": {key: value}},
            "spec": {"selector": {key: value}, "ports": [{"port": SERVICE_PORT, "targetPort": PORT}]},
        }
    )
    return docs


def probe_pods(cluster: Cluster, listing: dict) -> dict[str, dict]:
    """The probe pods of `kubectl get pods -o json`, by node name (pods being deleted left out)."""
    key, value = LABEL
    by_name = {pod_name(n.name): n.name for n in cluster.nodes}
    out = {}
    for pod in listing.get("items") or []:
        meta = pod.get("metadata", {})
        if (meta.get("labels") or {}).get(key) == value and meta.get("name") in by_name:
            if not meta.get("deletionTimestamp"):
                out[by_name[meta["name"]]] = pod
    return out


# -- pure: the script and what busybox says -------------------------------------------------


def script(jobs: list[tuple[str, str]]) -> str:
    """A shell script running each (`LABEL PROTO`, command) at once, each result printed whole under
    `### LABEL PROTO STATUS` (one write, so results do not interleave)."""
    lines = ['run() { key=$1; shift; out=$("$@" 2>&1); printf "### %s %s\\n%s\\n" "$key" "$?" "$out"; }']
    lines += [f"run {shlex.quote(key)} {command} &" for key, command in jobs]
    return "\n".join([*lines, "wait"])


def fetch(url: str) -> str:
    return f"wget -q -O - -T {WAIT} {url}"


def sweep_script(pods: dict[str, str], service_ip: str, api_ip: str) -> str:
    """A probe pod's script: ping and fetch each of `pods` ({label: pod address}), fetch the Service and the
    API service."""
    jobs = []
    for label, address in pods.items():
        jobs += [
            (f"{label} icmp", f"ping -c 1 -W {WAIT} {address}"),
            (f"{label} tcp", fetch(f"http://{address}:{PORT}/")),
        ]
    prelude = ""
    if service_ip:  # tried up to 3 times: one try may land on a probe that the mesh shows unreachable
        get = fetch(f"http://{service_ip}:{SERVICE_PORT}/")
        prelude = f"service() {{ {get} || {get} || {get}; }}\n"
        jobs.append(("service tcp", "service"))
    jobs.append(("api tcp", fetch(f"https://{api_ip}:{API_PORT}/version")))
    return prelude + script(jobs)


def parse_sweep(text: str) -> dict[tuple[str, str], tuple[int, str]]:
    """The script's output -> {(label, proto): (exit status, output)}."""
    found: dict[tuple[str, str], tuple[int, list[str]]] = {}
    key = None
    for line in text.splitlines():
        match = HEADER.match(line)
        if match:
            key = (match.group(1), match.group(2))
            found[key] = (int(match.group(3)), [])
        elif key is not None:
            found[key][1].append(line)
    return {k: (status, "\n".join(body).strip()) for k, (status, body) in found.items()}


def _failure(message: str) -> str:
    if re.search(r"No route to host|Network unreachable|Network is unreachable", message):
        return "no route"
    if "Connection refused" in message:
        return "refused"
    if re.search(r"timed out|100% packet loss", message):
        return "timeout"
    return "error"


def ping_outcome(status: int, output: str) -> Outcome:
    """busybox `ping -c 1`: the round trip when answered; else 100% loss (timeout), sendto's error, or other."""
    rtt = re.search(r"round-trip min/avg/max = [\d.]+/([\d.]+)/", output)
    received = re.search(r"(\d+) packets received", output)
    if status == 0 and received and int(received.group(1)) > 0:
        return Outcome(True, ms=float(rtt.group(1)) if rtt else None)
    line = next((ln for ln in output.splitlines() if ln.startswith("ping:")), "") or last_line(output)
    return Outcome(False, _failure(line), message=line)


def wget_outcome(status: int, output: str) -> Outcome:
    """busybox `wget -q -O -`: the body when answered; an HTTP error status is an answer too (`answered_by`)."""
    if status == 0:
        missed = [line for line in output.splitlines() if line.startswith("wget:") and "note:" not in line]
        note = f"after {len(missed)} failed {'try' if len(missed) == 1 else 'tries'}: {missed[-1]}" if missed else ""
        return Outcome(True, message=last_line(output), note=note)
    line = next((ln for ln in output.splitlines() if ln.startswith("wget:") and "note:" not in ln), "")
    line = line or last_line(output)
    if "server returned error" in line:
        return Outcome(True, message=line.split("server returned error:", 1)[1].strip())
    return Outcome(False, _failure(line), message=line)


# -- pure: rows and their remedies ---------------------------------------------------------


def remedy(cell: Cell, cluster: Cluster) -> str:
    """Where to look for a failed cell: the routes, the encapsulation, the firewall, the probe."""
    src, dst = cell.source, cell.target
    via = cluster.node(dst).ip
    kinds = {cell.icmp.failure, cell.tcp.failure} - {""}
    if "no route" in kinds:
        return (
            f"{src} has no route to {dst}'s pods: `ip route | grep bird` on {src} must show {dst}'s pod block "
            f"via {via} (or tunl0); the BGP session {src}-{dst} must be Established (`calicoctl status`, "
            f"`birdcl show protocols`; TCP 179 open between them)"
        )
    if cell.icmp.failure == "timeout" and cell.tcp.failure == "timeout":
        return (
            f"packets from {src} to {dst}'s pods are lost: `ip route | grep bird` on {src} must show {dst}'s "
            f"pod block via {via} (or tunl0; `birdcl show route`); with the route there, the encapsulation or "
            f"a host firewall drops them: allow TCP 179 (BGP) and IP protocol 4 (IP-in-IP) between the nodes"
        )
    if cell.tcp.failure == "refused":
        return (
            f"the probe on {dst} answers ping but refuses TCP {PORT}: its httpd is not listening "
            f"(`kubectl logs {pod_name(dst)}`), or a REJECT rule on {dst} (host firewall, policy)"
        )
    if cell.tcp.failure == "timeout":
        return (
            f"ping passes but TCP {PORT} is dropped: a host firewall on {src} or {dst}, or a pod MTU too large "
            f"for the encapsulation (IP-in-IP takes 20 bytes: 1440 on a 1500-byte network)"
        )
    if cell.icmp.failure == "timeout":
        return f"TCP passes but ICMP is dropped: a host firewall on {src} or {dst} drops ICMP"
    return "; ".join(f"{proto}: {o.message}" for proto, o in (("icmp", cell.icmp), ("tcp", cell.tcp)) if not o.ok)


def _said(proto: str, outcome: Outcome) -> str:
    if outcome.ok:
        return f"ICMP {outcome.ms:g} ms" if proto == "icmp" and outcome.ms is not None else f"{proto.upper()} ok"
    return f"{'ICMP' if proto == 'icmp' else f'TCP {PORT}'} {outcome.failure} ({outcome.message})"


def cell_result(cell: Cell, cluster: Cluster) -> Result:
    """One row of check `mesh`: from `cell.source` to `cell.target`, and on failure what to do."""
    said = ", ".join(_said(proto, o) for proto, o in (("icmp", cell.icmp), ("tcp", cell.tcp)))
    head = f"to {cell.target} ({cell.address}): {said}"
    return Result("mesh", cell.source, cell.ok, head if cell.ok else f"{head}: {remedy(cell, cluster)}")


def service_results(node: str, service_ip: str, api_ip: str, service: Outcome, api: Outcome) -> list[Result]:
    """The two rows of check `service` from `node`'s probe: the probes' Service, the kubernetes service."""
    where = f"service {SERVICE} ({service_ip}:{SERVICE_PORT})"
    if service.ok:
        after = f" ({service.note})" if service.note else ""
        first = Result("service", node, True, f"{where} answered by {service.message or '?'}{after}")
    elif service.failure == "refused":
        first = Result(
            "service",
            node,
            False,
            f"{where} refused ({service.message}): it has no ready endpoints (`kubectl get endpoints {SERVICE}`)",
        )
    else:
        first = Result(
            "service",
            node,
            False,
            f"{where} {service.failure} ({service.message}): kube-proxy on {node} does not forward it "
            f"(its log; `sudo iptables-save | grep {SERVICE}` on {node} shows its rules)",
        )
    where = f"service kubernetes ({api_ip}:{API_PORT})"
    if api.ok:
        second = Result("service", node, True, f"{where} answered{': ' + api.message[:60] if api.message else ''}")
    else:
        second = Result(
            "service",
            node,
            False,
            f"{where} {api.failure} ({api.message}): `kubectl get endpoints kubernetes` must list the master's "
            f"private address (kube-apiserver --advertise-address), then look at kube-proxy on {node}",
        )
    return [first, second]


def sweep_results(
    cluster: Cluster, source: str, addresses: dict[str, str], service_ip: str, output: str
) -> tuple[list[Cell], list[Result]]:
    """The output of `source`'s script ({node: probe address} of the others) -> its cells, its service rows."""
    found = parse_sweep(output)
    missing = Outcome(False, "error", message=f"no result: {last_line(output)}")

    def outcome(label: str, proto: str, read: Callable[[int, str], Outcome]) -> Outcome:
        return read(*found[(label, proto)]) if (label, proto) in found else missing

    cells = [
        Cell(source, node, address, outcome(node, "icmp", ping_outcome), outcome(node, "tcp", wget_outcome))
        for node, address in addresses.items()
    ]
    service = outcome("service", "tcp", wget_outcome) if service_ip else Outcome(False, "error", message="no address")
    api = outcome("api", "tcp", wget_outcome)
    return cells, service_results(source, service_ip, cluster.api_service_ip, service, api)


def matrix(cluster: Cluster, cells: list[Cell]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The table: a row per source node, a column per destination node, ✓ with ICMP latency or ✗ with why."""
    names = [n.name for n in cluster.nodes]
    by_pair = {(c.source, c.target): c for c in cells}

    def mark(source: str, target: str) -> str:
        cell = by_pair.get((source, target))
        return "·" if source == target else cell.mark() if cell else "?"

    return ("from \\ to", *names), [(source, *(mark(source, target) for target in names)) for source in names]


def matrix_json(cells: list[Cell]) -> list[dict]:
    return [
        {"from": c.source, "to": c.target, "address": c.address, "ok": c.ok}
        | {"icmp": asdict(c.icmp), "tcp": asdict(c.tcp)}
        for c in cells
    ]


# -- pure: policy (stack current) ----------------------------------------------------------

POLICY_LABEL = ("inv-verify", "net-policy")  # the scratch namespace of each run
POLICY_SECONDS = 20  # how long a NetworkPolicy may take to be enforced, each way
NETPOL = "networking.k8s.io/v1"


@dataclass(frozen=True)
class Phase:
    """Tries of the client reaching the target until it `held` (reachable as wanted): how long it took, or the
    bound (POLICY_SECONDS) when it did not hold; the last try's outcome."""

    held: bool
    seconds: float
    last: Outcome


def policy_manifests(namespace: str, client_at: str, target_at: str, image: str) -> list[dict]:
    """The scratch namespace, a client pod and a target pod in it, pinned to two nodes (registered names)."""
    key, value = POLICY_LABEL
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": {key: value}}},
        probe_pod("client", namespace, {"role": "client"}, client_at, image),
        probe_pod("target", namespace, {"role": "target"}, target_at, image),
    ]


def deny_all(namespace: str) -> dict:
    """Default deny: every pod of the namespace takes no ingress."""
    return {
        "apiVersion": NETPOL,
        "kind": "NetworkPolicy",
        "metadata": {"name": "default-deny", "namespace": namespace, "labels": dict([POLICY_LABEL])},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }


def allow_client(namespace: str) -> dict:
    """The client may reach the target's PORT again."""
    return {
        "apiVersion": NETPOL,
        "kind": "NetworkPolicy",
        "metadata": {"name": "allow-client", "namespace": namespace, "labels": dict([POLICY_LABEL])},
        "spec": {
            "podSelector": {"matchLabels": {"role": "target"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                    "ports": [{"protocol": "TCP", "port": PORT}],
                }
            ],
        },
    }


def policy_results(
    node: str, namespace: str, baseline: Outcome, deny: Phase | None, allow: Phase | None
) -> list[Result]:
    """Rows of check `policy` (on the target's node): reachable first, denied, then allowed again, each in time."""
    if not baseline.ok:
        why = f"{baseline.failure}: {baseline.message}"
        return [
            Result(
                "policy",
                node,
                False,
                f"the target in {namespace} is unreachable before any policy ({why}): see check mesh",
            )
        ]
    said: list[tuple[bool, str]] = []
    if deny is not None and deny.held:
        said.append(
            (True, f"default-deny enforced after {deny.seconds:.1f} s ({deny.last.failure}: {deny.last.message})")
        )
    elif deny is not None:
        said.append(
            (
                False,
                f"default-deny not enforced within {deny.seconds:g} s: the target still answers TCP {PORT}; "
                f"is calico-node running on {node} (`kubectl -n kube-system get pods -l k8s-app=calico-node "
                f"-o wide`), and is Calico the CNI plugin there (`/etc/cni/net.d`)?",
            )
        )
    if allow is not None and allow.held:
        said.append((True, f"allow rule honoured after {allow.seconds:.1f} s"))
    elif allow is not None:
        said.append(
            (
                False,
                f"the allow rule did not open TCP {PORT} within {allow.seconds:g} s ({allow.last.failure}: "
                f"{allow.last.message}): look at calico-node's log on {node} "
                f"(`kubectl -n kube-system logs <its calico-node pod> -c calico-node`)",
            )
        )
    return [Result("policy", node, ok, detail) for ok, detail in said]


# -- effects ------------------------------------------------------------------------------


class Mesh:
    """The probes of one `inv verify` run: its checks, what they found, and the clean-up.

    with Mesh(project, group, keep) as mesh:
        results = kube.run_checks(... + mesh.checks(), ...)
    mesh.cells   # the last sweep's matrix
    """

    def __init__(self, project: Project, group, keep: bool = False, policy: bool | None = None):
        self.project, self.group, self.keep = project, group, keep
        self.cluster = project.cluster
        self.kubectl = shlex.quote(project.artifact("kubectl").target)
        self.image = probe_image(kube.documents(project))
        self.cells: list[Cell] = []
        self.touched = False  # whether this run may have made objects (or found kept ones) to remove
        # NetworkPolicy: stack current (Kubernetes 1.1 has none).
        wanted = project.stack.name == "current" if policy is None else policy
        self.policy = Policy(self) if wanted else None

    def __enter__(self) -> Mesh:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.touched and not self.keep:
                self.remove()
        finally:
            if self.policy is not None:
                self.policy.remove()  # whatever happened, --keep or not

    def checks(self) -> list[Probe]:
        checks = [kube.guarded("mesh", self.cluster.master.name, self.sweep)]
        if self.policy is not None:
            checks.append(kube.guarded("policy", self.cluster.master.name, self.policy.check))
        return checks

    def conn(self):
        return self.group.conn(self.cluster.master.name)

    def _get(self, args: str, deadline: float) -> dict:
        return kubectl_json(self.conn(), self.kubectl, f"{args} --namespace={NAMESPACE}", deadline)

    def _service_ip(self, deadline: float) -> str:
        try:
            return self._get(f"get services {SERVICE}", deadline).get("spec", {}).get("clusterIP", "")
        except CheckError as err:
            if "not found" in str(err):
                return ""
            raise

    def _look(self, deadline: float, nodes: bool = False) -> tuple[dict[str, str], dict[str, dict], str]:
        """(registered node names, when `nodes`; the probe pods; the Service's address), asked at once."""
        with ThreadPoolExecutor(max_workers=3) as pool:
            listing = pool.submit(kubectl_json, self.conn(), self.kubectl, "get nodes", deadline) if nodes else None
            pods = pool.submit(self._get, "get pods", deadline)
            service_ip = pool.submit(self._service_ip, deadline)
            pinned = registered(self.cluster, listing.result()) if listing else {}
            return pinned, probe_pods(self.cluster, pods.result()), service_ip.result()

    def _create(self, pinned: dict[str, str], deadline: float) -> None:
        self.touched = True
        self.create(manifests(pinned, self.image), deadline)

    def create(self, docs: list[dict], deadline: float) -> None:
        """`kubectl create -f -` of `docs`; objects that exist already are fine (CheckError otherwise)."""
        import yaml

        from tasks.addons import create_outcome

        text = yaml.safe_dump_all(docs, sort_keys=False)
        result = remote(self.conn(), f"printf %s {shlex.quote(text)} | {self.kubectl} create -f -", deadline)
        errors = create_outcome(result.stdout, result.stderr, result.exited)[2]
        if errors:
            raise CheckError(
                f"cannot create {', '.join(d['kind'] + ' ' + d['metadata']['name'] for d in docs)}: "
                + "; ".join(errors)
            )

    def sweep(self, deadline: float) -> list[Result]:
        """Probes in place and running, then every row's script at once: rows of checks mesh and service."""
        from tasks.nodes import describe

        deadline = max(deadline, time.monotonic() + TRY_SECONDS)
        pinned, pods, service_ip = self._look(deadline, nodes=True)
        self.touched = self.touched or bool(pods) or bool(service_ip)
        if any(node not in pods for node in pinned) or not service_ip:
            self._create(pinned, deadline)
            _, pods, service_ip = self._look(deadline)
        rows = [
            Result("mesh", n.name, False, "no probe: the node is not registered (see check nodes)")
            for n in self.cluster.nodes
            if n.name not in pinned
        ]
        rows += [Result("mesh", node, False, f"no probe pod {pod_name(node)}") for node in pinned if node not in pods]
        for node, pod in pods.items():
            ok, state = kube.pod_state(pod)
            if not ok:
                rows.append(Result("mesh", node, False, f"probe not running yet: {state}"))
        if rows:
            return rows
        addresses = {node: pod.get("status", {}).get("podIP", "") for node, pod in pods.items()}

        def row(node: str) -> tuple[list[Cell], list[Result]]:
            others = {n: a for n, a in addresses.items() if n != node}
            script = sweep_script(others, service_ip, self.cluster.api_service_ip)
            command = f"{self.kubectl} exec {pod_name(node)} --namespace={NAMESPACE} -- sh -c {shlex.quote(script)}"
            # The script bounds itself (SCRIPT_SECONDS); cut short by the run's deadline, it would say nothing.
            result = remote(self.conn(), command, max(deadline, time.monotonic() + SCRIPT_SECONDS))
            output = result.stdout if result.ok else f"{result.stdout}\n{result.stderr}"
            return sweep_results(self.cluster, node, others, service_ip, output)

        cells: list[Cell] = []
        services: list[Result] = []
        with ThreadPoolExecutor(max_workers=len(pods)) as pool:
            for node, future in [(node, pool.submit(row, node)) for node in pods]:
                try:
                    mine, service = future.result()
                except Exception as err:  # this row's failure, not the others'
                    rows.append(Result("mesh", node, False, f"cannot run the probe's script: {describe(err)}"))
                    continue
                cells += mine
                services += service
        order = [n.name for n in self.cluster.nodes]
        cells.sort(key=lambda c: (order.index(c.source), order.index(c.target)))
        services.sort(key=lambda r: order.index(r.node))
        self.cells = cells
        return rows + [cell_result(c, self.cluster) for c in cells] + services

    def remove(self) -> None:
        """Delete the probes and their Service."""
        key, value = LABEL
        self.delete(f"pods,services -l {key}={value} --namespace={NAMESPACE}", "the probes")

    def delete(self, args: str, what: str) -> None:
        """`kubectl delete ARGS`; a failure is said on stderr (with the command), not raised: the results stand."""
        from tasks import ui

        command = f"{self.kubectl} delete {args}"
        try:
            result = remote(self.conn(), command, time.monotonic() + 60)
            failed = result.failed and "not found" not in result.stderr and last_line(result.stderr or result.stdout)
        except Exception as err:
            failed = str(err)
        if failed:
            ui.progress(f"warning: {what} left on the cluster ({failed}); remove them with `{command}`")

    def table(self) -> tuple[str, tuple[str, ...], list[tuple[str, ...]]]:
        columns, rows = matrix(self.cluster, self.cells)
        return "Pod network: ICMP and TCP from each node's probe (rows) to each other's (columns)", columns, rows


class Policy:
    """The policy check of one run (stack current), in a scratch namespace of its own, removed afterwards.

    A client pod on the first node and a target pod on the second (pinned, as the probes): the target
    answers; a default-deny NetworkPolicy makes it unreachable, then an allow rule for the client makes it
    reachable again, each within POLICY_SECONDS. Another try of the check starts over from no policy.
    """

    def __init__(self, mesh: Mesh):
        import secrets

        self.mesh = mesh
        self.namespace = f"net-policy-{secrets.token_hex(4)}"  # a fresh one per run: no wait for an old one to go
        self.created = False

    def _reach(self, address: str, deadline: float) -> Outcome:
        job = script([("target tcp", fetch(f"http://{address}:{PORT}/"))])
        command = f"{self.mesh.kubectl} exec client --namespace={self.namespace} -- sh -c {shlex.quote(job)}"
        result = remote(self.mesh.conn(), command, max(deadline, time.monotonic() + SCRIPT_SECONDS))
        found = parse_sweep(result.stdout)
        if ("target", "tcp") not in found:
            raise CheckError(f"cannot exec in {self.namespace}/client: {last_line(result.stderr or result.stdout)}")
        return wget_outcome(*found[("target", "tcp")])

    def _until(self, reachable: bool, address: str, deadline: float) -> Phase:
        started = time.monotonic()
        while True:
            last = self._reach(address, deadline)
            took = time.monotonic() - started
            if last.ok == reachable:
                return Phase(True, took, last)
            if took >= POLICY_SECONDS:
                return Phase(False, POLICY_SECONDS, last)
            time.sleep(0.5)

    def check(self, deadline: float) -> list[Result]:
        mesh = self.mesh
        deadline = max(deadline, time.monotonic() + TRY_SECONDS)
        nodes = registered(mesh.cluster, kubectl_json(mesh.conn(), mesh.kubectl, "get nodes", deadline))
        if not nodes:
            return [Result("policy", mesh.cluster.master.name, False, "no node registered (see check nodes)")]
        client_at, target_at = (list(nodes.values()) * 2)[:2]
        target_node = next(n for n, where in nodes.items() if where == target_at)
        if not self.created:
            key, value = POLICY_LABEL
            mesh.delete(f"namespaces -l {key}={value} --wait=false", "namespaces of earlier runs")
            self.created = True
            mesh.create(policy_manifests(self.namespace, client_at, target_at, mesh.image), deadline)
        listing = kubectl_json(mesh.conn(), mesh.kubectl, f"get pods --namespace={self.namespace}", deadline)
        pods = {p["metadata"]["name"]: p for p in listing.get("items") or []}
        waiting = [kube.pod_state(p)[1] for p in pods.values() if not kube.pod_state(p)[0]]
        if len(pods) < 2 or waiting:
            why = "; ".join(waiting) or "client or target missing"
            return [Result("policy", target_node, False, f"policy pods not running yet: {why}")]
        key, value = POLICY_LABEL
        mesh.delete(f"networkpolicies -l {key}={value} --namespace={self.namespace}", "policies of an earlier try")
        address = pods["target"].get("status", {}).get("podIP", "")
        baseline = self._reach(address, deadline)
        deny = allow = None
        if baseline.ok:
            mesh.create([deny_all(self.namespace)], deadline)
            deny = self._until(False, address, deadline)
            if deny.held:
                mesh.create([allow_client(self.namespace)], deadline)
                allow = self._until(True, address, deadline)
        return policy_results(target_node, self.namespace, baseline, deny, allow)

    def remove(self) -> None:
        if self.created:
            self.mesh.delete(f"namespace {self.namespace} --wait=false", f"namespace {self.namespace}")

"""kubectl on the master, shared by `inv addons` and `inv verify`.

Pure: the workloads the addon manifests run, and kubectl's JSON turned into
`Result` rows. Effects: a bounded remote command, `kubectl ... -o json`, and
checks polled in parallel against one deadline.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import StepError, UsageError
from tasks.settings import Cluster, Project
from tasks.ui import last_line

Probe = Callable[[float], list["Result"]]  # deadline -> rows


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
    kind: str  # one of WORKLOAD_KINDS
    selector: tuple = ()  # controllers: sorted (label, value) pairs their pods carry

    def owns(self, pod: dict) -> bool:
        meta = pod.get("metadata", {})
        if meta.get("namespace", "default") != self.namespace:
            return False
        if self.kind == "Pod":
            return meta.get("name") == self.name
        labels = meta.get("labels") or {}
        return all(labels.get(k) == v for k, v in self.selector)

    def __str__(self) -> str:
        return f"{WORKLOAD_KINDS[self.kind]} {self.namespace}/{self.name}"


class CheckError(Exception):
    """A command whose failure is the check's result (shown as its detail)."""


# -- pure ------------------------------------------------------------------------


def seconds(value, default, flag: str = "--timeout") -> float:
    """A task's timeout flag (a string when given, None when not) or the configured default."""
    raw = default if value is None else value
    try:
        number = float(raw)
    except (TypeError, ValueError):
        number = -1
    if not 0 <= number < math.inf:  # also refuses nan, which would never reach a deadline
        raise UsageError(f"{flag} {raw!r}: expected a number of seconds, 0 or more")
    return number


def documents(project: Project) -> dict[str, list[dict]]:
    """The addon manifests (addons.manifests, in that order) as their YAML documents.

    Read from the rendered output, which `inv copy` put on the master: what
    kubectl creates there is what is expected here. A kustomize folder's
    resources are its rendered files, or downloaded artifacts (Calico's
    release manifest); its patches add no object.
    """
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # calico.yaml is large
    out = {}
    for name in project.addons.manifests:
        path = project.output_dir / "manifests" / name
        if path.is_dir():
            files = [_resource(project, path, r) for r in _kustomization(path).get("resources") or []]
        elif path.is_file():
            files = [path]
        else:
            raise StepError(f"{path} is missing: run `inv render` first")
        out[name] = [d for f in files for d in yaml.load_all(f.read_text(), Loader=loader) if d]
    return out


def _kustomization(folder: Path) -> dict:
    import yaml

    from tasks.stack import KUSTOMIZATION

    try:
        return yaml.safe_load((folder / KUSTOMIZATION).read_text()) or {}
    except FileNotFoundError:
        raise StepError(f"{folder / KUSTOMIZATION} is missing: run `inv render` first") from None


def _resource(project: Project, folder: Path, name: str) -> Path:
    """A kustomization's resource: rendered beside it, or the downloaded artifact of that name."""
    if (folder / name).is_file():
        return folder / name
    artifact = next((a for a in project.download.artifacts if a.name == name), None)
    if artifact is None:
        raise StepError(f"{folder.name}: resource {name} is neither rendered nor a download.artifacts entry")
    if not artifact.path.is_file():
        raise StepError(f"downloaded file {artifact.path} is missing: run `inv download` first")
    return artifact.path


# Workload kinds -> how their pods are found: by name (a bare pod) or by the labels their selector names.
WORKLOAD_KINDS = {
    "Pod": "pod",
    "ReplicationController": "replication controller",
    "Deployment": "deployment",
    "DaemonSet": "daemon set",
}


def workloads(project: Project) -> list[Workload]:
    """The pods the addon manifests run: bare pods, and the pods of controllers (by their selector)."""
    found = []
    for docs in documents(project).values():
        for doc in docs:
            kind = doc.get("kind")
            if kind not in WORKLOAD_KINDS:
                continue
            meta = doc.get("metadata", {})
            ns = meta.get("namespace", "default")
            if kind == "Pod":
                found.append(Workload(ns, meta["name"], "Pod"))
                continue
            spec = doc.get("spec") or {}
            selector = spec.get("selector") or spec["template"]["metadata"]["labels"]
            selector = selector.get("matchLabels", selector) if kind != "ReplicationController" else selector
            found.append(Workload(ns, meta["name"], kind, tuple(sorted(selector.items()))))
    return found


def node_name(cluster: Cluster, registered: str) -> str:
    """The cluster's name for a kubelet's registration name (its address)."""
    for node in cluster.nodes:
        if registered in (node.ip, node.name):
            return node.name
    return registered or "-"


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
        problems.append(
            f"{c.get('name')} not ready ({how}{': ' + reason if reason else ''}"
            f"{', restarts ' + str(c['restartCount']) if c.get('restartCount') else ''})"
        )
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


def table_rows(results: list[Result]) -> list[tuple]:
    return [(r.check, r.node, "ok" if r.ok else "FAILED", r.detail) for r in results]


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


def guarded(check: str, node: str, probe: Probe) -> Probe:
    """The probe, with a failing command or connection turned into a failed row."""
    from tasks.nodes import describe

    def run(deadline: float) -> list[Result]:
        try:
            return probe(deadline)
        except CheckError as err:
            return [Result(check, node, False, str(err))]
        except Exception as err:  # SSH and command errors are this check's result, not a crash
            return [Result(check, node, False, f"cannot run the check: {describe(err)}")]

    return run


def run_checks(checks: list[Probe], timeout: float, interval: float, every: float = 15.0) -> list[Result]:
    """Every probe polled at once until it passes or `timeout` seconds are over; rows in check order.

    While some still fail, says every `every` seconds on stderr what is awaited:
    pulling images and starting pods takes minutes, and silence looks like a hang.
    """
    from concurrent.futures import ThreadPoolExecutor, wait

    from tasks import ui
    from tasks.waiting import until

    started = time.monotonic()
    deadline = started + timeout
    latest: dict = {}

    def poll(probe: Probe) -> list[Result]:
        def attempt():
            latest[probe] = probe(deadline)
            return latest[probe]

        return until(attempt, deadline, interval, done=lambda rows: all(r.ok for r in rows))

    with ThreadPoolExecutor(max_workers=len(checks)) as pool:
        futures = [pool.submit(poll, probe) for probe in checks]
        while wait(futures, timeout=every).not_done:
            failing = [r for rows in list(latest.values()) for r in rows if not r.ok]
            if failing:
                ui.progress(
                    f"waiting {time.monotonic() - started:.0f}/{timeout:g} s for "
                    + "; ".join(f"{r.check} on {r.node}: {r.detail}" for r in failing)
                )
    return [row for f in futures for row in f.result()]

"""`inv addons`: the cluster's addons created with kubectl on the master, then their pods awaited.

The manifests are the rendered ones `inv copy` put in the master's home.
The seed's kubectl 1.1 has no `apply`: it does `kubectl create -f`, and
re-creating an object fails with "already exists", which counts as done.
Stacks with `apply` (current) use `kubectl apply -f FILE` or, for a
kustomize folder (Calico's release manifest with this cluster's settings
patched in), `kubectl apply -k FOLDER`. Either way a re-run changes nothing.
"""

from __future__ import annotations

import re
import shlex
import time

from invoke import task

from tasks import kube, settings
from tasks.errors import StepError, exits
from tasks.kube import Result, Workload, remote
from tasks.settings import Cluster
from tasks.ui import last_line

EXISTS = re.compile(r'(\w+) "([^"]+)" already exists')
# `kubectl apply`: "deployment.apps/headlamp created" (configured, unchanged, ...).
APPLIED = re.compile(r"(\S+/\S+) (created|configured|unchanged|serverside-applied)")
# What kubectl says while the cluster is still starting: worth asking again.
STARTING = re.compile(
    r"was refused|connection refused|No API token found|couldn't read version|timed? ?out|ServiceUnavailable|"
    r"not yet ready|Unable to connect to the server|ensure CRDs are installed first",
    re.I,
)


# -- pure --------------------------------------------------------------------------


def create_outcome(stdout: str, stderr: str, exited: int) -> tuple[list[str], list[str], list[str]]:
    """kubectl 1.1 `create -f` output -> (created, already existing, errors).

    kubectl goes on after a failed object and prints one error a line, so an
    existing object shows as `Error from server: ... namespaces "x" already exists`.
    """
    created = [
        line.strip()[: -len(" created")].replace('"', "")
        for line in stdout.splitlines()
        if line.strip().endswith(" created")
    ]
    existing, errors = [], []
    for line in stderr.splitlines():
        line = line.strip()
        if not line:
            continue
        match = EXISTS.search(line)
        if match:
            # The error names the plural resource ("namespaces"); show it as `created` lines do.
            existing.append(f"{match.group(1).removesuffix('s')} {match.group(2)}")
        else:
            errors.append(line)
    if exited and not errors and not existing:
        errors.append(f"kubectl exited {exited}: {last_line(stdout)}")
    return created, existing, errors


def apply_outcome(stdout: str, stderr: str, exited: int) -> tuple[list[tuple[str, str]], list[str]]:
    """`kubectl apply` output -> ([(object, what happened)], errors): one line per object, errors on stderr."""
    done = [(m[1], m[2]) for line in stdout.splitlines() if (m := APPLIED.fullmatch(line.strip()))]
    errors = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("Warning:")]
    if exited and not errors:
        errors.append(f"kubectl exited {exited}: {last_line(stdout)}")
    return done, errors


def outcome_rows(verb: str, name: str, result) -> tuple[list[tuple], list[str]]:
    """One manifest's kubectl run -> (table rows, errors)."""
    if verb == "create":
        created, existing, failed = create_outcome(result.stdout, result.stderr, result.exited)
        rows = [(name, what, "created") for what in created] + [(name, what, "already there") for what in existing]
    else:
        done, failed = apply_outcome(result.stdout, result.stderr, result.exited)
        rows = [(name, what, how) for what, how in done]
    return rows + [(name, why, "FAILED") for why in failed], [f"{name}: {why}" for why in failed]


# -- effects --------------------------------------------------------------------------


def create_all(
    conn, kubectl: str, files: list[str], deadline: float, verb: str = "create", folders: frozenset = frozenset()
) -> tuple[list, list]:
    """`kubectl create -f` (or `apply -f`; `apply -k` for `folders`) each manifest in the home folder, in order.

    Returns (table rows, errors).
    """
    listed = " ".join(shlex.quote(f) for f in files)
    missing = remote(conn, f'for f in {listed}; do [ -e "$f" ] || echo "$f"; done', deadline).stdout.split()
    if missing:
        raise StepError(f"{', '.join(missing)} not in the master's home folder: run `inv copy` first")
    rows, errors = [], []
    for name in files:
        how = "-k" if name in folders else "-f"
        result = remote(conn, f"{kubectl} {verb} {how} {shlex.quote(name)}", deadline)
        more_rows, more_errors = outcome_rows(verb, name, result)
        rows += more_rows
        errors += more_errors
    return rows, errors


def create_until(
    conn,
    kubectl: str,
    files: list[str],
    deadline: float,
    interval: float,
    verb: str = "create",
    folders: frozenset = frozenset(),
) -> tuple[list[tuple], list[str]]:
    """`create_all` again, while its errors are those of a starting cluster, until the deadline.

    Right after `inv up` the API server is still starting (connection refused)
    and service-account tokens do not exist yet; both pass within minutes.
    A pass with no such error but others (a bad manifest, no kubectl) is final at once.
    """
    from tasks import ui
    from tasks.waiting import until

    done: dict[tuple, str] = {}
    said = [0.0]

    def attempt():
        rows, errors = create_all(conn, kubectl, files, deadline, verb, folders)
        for manifest, what, result in rows:
            if result != "FAILED":
                done.setdefault((manifest, what), result)  # "created" on an earlier try stays created
        return rows, errors

    def starting(outcome) -> bool:
        # One error of a starting cluster makes the rest of the pass suspect too (a namespace
        # refused early is "not found" later), so the whole pass is asked again.
        return any(STARTING.search(e) for e in outcome[1])

    def waiting(outcome) -> None:
        if time.monotonic() - said[0] >= 15:
            said[0] = time.monotonic()
            ui.progress(f"the cluster is still starting, asking again until the timeout: {outcome[1][0]}")

    rows, errors = until(
        attempt, deadline, interval, done=lambda outcome: not outcome[1], again=starting, waiting=waiting
    )
    failed = [row for row in rows if row[2] == "FAILED"]
    return [(manifest, what, result) for (manifest, what), result in done.items()] + failed, errors


def wait_pods(
    conn, cluster: Cluster, kubectl: str, expected: list[Workload], timeout: float, interval: float
) -> list[Result]:
    """Poll the pods of `expected` until all run with every container ready, or `timeout`."""
    namespaces = list(dict.fromkeys(w.namespace for w in expected))

    def probe(deadline):
        rows = []
        for ns in namespaces:
            listing = kube.kubectl_json(conn, kubectl, f"get pods --namespace={ns}", deadline)
            mine = [w for w in expected if w.namespace == ns]
            pods = [p for p in listing.get("items") or [] if any(w.owns(p) for w in mine)]
            rows += kube.pod_results(ns, cluster, pods, mine)
        return rows

    return kube.run_checks([kube.guarded("pods", cluster.master.name, probe)], timeout, interval)


@task(
    help={
        "timeout": "Seconds to wait for the API server to accept the objects and for the addon pods "
        "to run (default addons.timeout)."
    }
)
@exits
def addons(c, timeout=None):
    """Create the cluster addons on the master and wait until their pods run.

    The manifests in addons.manifests, from the master's home folder where
    `inv copy` put them: `kubectl create -f` for the seed (kube-system
    namespace and DNS, kube-ui, busybox; objects that already exist are
    fine), `kubectl apply` for the current stack (Calico, Headlamp,
    busybox). An API server that is still starting is asked again until
    the timeout.
    """
    from tasks import ui
    from tasks.nodes import Nodes

    project = settings.load(c)
    project.stack.check_step("addons")
    verb = "apply" if project.stack.apply else "create"
    folders = frozenset(n for n in project.addons.manifests if (project.output_dir / "manifests" / n).is_dir())
    cluster = project.cluster
    wait = kube.seconds(timeout, project.addons.timeout)
    interval = float(project.verify.interval)
    files = list(project.addons.manifests)
    expected = kube.workloads(project)
    kubectl = shlex.quote(project.artifact("kubectl").target)
    master = cluster.master.name
    deadline = time.monotonic() + wait
    with Nodes(c, project, names=[master]) as group:
        rows, errors = group.run(
            lambda name, conn: create_until(conn, kubectl, files, deadline, interval, verb, folders), what="addons"
        )[master]
        ui.table(f"kubectl {verb} on {master}", ("manifest", "object", "result"), rows)
        if errors:
            raise StepError(f"addons: kubectl {verb} failed on {master}: " + "; ".join(errors))
        results = wait_pods(group[master], cluster, kubectl, expected, max(0.0, deadline - time.monotonic()), interval)
    ui.table("Addon pods", ("namespace", "node", "result", "pod"), kube.table_rows(results))
    bad = [r for r in results if not r.ok]
    if bad:
        raise StepError(
            f"addons: pods not running after {wait:g} s: " + "; ".join(f"{r.detail} (on {r.node})" for r in bad)
        )
    ui.say(f"Addons running: {len(results)} pod(s).")


TASKS = (addons,)

"""Time `inv copy` of real-size binaries to 1, 3 and 6 local OpenSSH nodes, and against rsync on 3.

    python benchmarks/copy_nodes.py [--runs N]   (default 5: min / median / max of N runs)

Random files with the sizes of the Kubernetes v1.1.7 / Calico v0.15 artifacts
(about 210 MB in all), recorded in a lock file as `inv download` would, stand
in for the downloads; the nodes are real sshd processes on 127.0.0.1..6
(tests/sshnodes.py, needs root). The bytes each node of the 3-node cluster
gets on a cold copy (what its role needs) are printed first. Each time is the
whole `inv copy` command, as a user runs it.

The baseline, measured in the same rounds: three `rsync -a -e ssh` processes
at once, each sending its node exactly the files `inv copy` sends it (the same
bytes, into the SSH user's home: rsync has no root's atomic install), over
the same sshd nodes; then again, unchanged. Needs rsync (Debian/Ubuntu:
apt-get install rsync).

Goals: 3 nodes <= 1.0 x rsync for the same bytes (median of the paired
ratios); 3 nodes <= 1.3 x 1 node; an unchanged re-run on 3 nodes <= 1.5 s.
Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from benchmarks.artifact_sizes import generate  # noqa: E402
from conftest import ARTIFACTS, project  # noqa: E402
from sshnodes import USER, SSHNodes  # noqa: E402
from standin_cluster import lock_downloads  # noqa: E402


def busy_seconds() -> float:
    """CPU time used by the whole machine so far (client, sshd, sftp-server, install, ...)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def client_seconds() -> float:
    """CPU time of this benchmark's finished children and theirs: `inv` and its ssh, or the rsync and ssh clients."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def inv_copy(config_file: Path) -> tuple[float, float, float]:
    """(wall seconds, machine CPU seconds, client CPU seconds) of one `inv copy`."""
    os.sync()  # the previous step's writes are flushed now, not during this measurement
    started, cpu, client = time.perf_counter(), busy_seconds(), client_seconds()
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "-f", str(config_file), "copy"], cwd=ROOT, capture_output=True, text=True
    )
    elapsed, cpu = time.perf_counter() - started, busy_seconds() - cpu
    if done.returncode != 0:
        raise SystemExit(f"inv copy failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed, cpu, client_seconds() - client


def rsync_all(stages: dict[str, Path], nodes) -> tuple[float, float, float]:
    """(wall seconds, machine and client CPU seconds) of one rsync per node at once, each sending its staged files."""
    os.sync()
    started, cpu, client = time.perf_counter(), busy_seconds(), client_seconds()
    procs = []
    for name, stage in stages.items():
        ssh = (
            f"ssh -i {nodes.key_file(name)} -p {nodes.port} -o BatchMode=yes -o StrictHostKeyChecking=no "
            "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
        )
        target = f"{USER}@{nodes.addresses[name]}:/home/{USER}/rsync/"
        procs.append(subprocess.Popen(["rsync", "-aL", "-e", ssh, f"{stage}/", target], stderr=subprocess.PIPE))
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"rsync failed ({proc.returncode}): {err.decode(errors='replace').strip()}")
    return time.perf_counter() - started, busy_seconds() - cpu, client_seconds() - client


def staged(proj, base: Path) -> dict[str, Path]:
    """Node name -> a folder of links to exactly the files `inv copy` sends it, under their target paths."""
    from tasks import copy

    stages = {}
    for name, items in copy.plan(proj).items():
        stages[name] = base / "rsync" / name
        for item in items:
            if not item.is_dir:
                link = stages[name] / item.target.lstrip("/")
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(item.file.resolve())
    return stages


def spread(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in (min(values), statistics.median(values), max(values)))


def bytes_per_node(proj) -> dict[str, int]:
    """Node name -> bytes a cold `inv copy` sends it (its files from copy.plan)."""
    from tasks import copy

    return {name: sum(i.file.stat().st_size for i in items if not i.is_dir) for name, items in copy.plan(proj).items()}


def main() -> None:
    import yaml

    from tasks import render

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement (default 5)")
    runs = parser.parse_args().runs
    if not shutil.which("rsync"):
        raise SystemExit("rsync is not installed (Debian/Ubuntu: apt-get install rsync)")
    base = Path(tempfile.mkdtemp(prefix="bench-copy-"))
    try:
        with SSHNodes(base / "nodes", count=6) as nodes:
            config = nodes.make_config(base)
            downloads = generate(base / "downloads", [a["name"] for a in ARTIFACTS])
            lock_downloads(config)  # `inv copy` sends only downloads its lock file vouches for
            total = sum(f.stat().st_size for f in downloads.values())
            print(f"{total / 1e6:.0f} MB of binaries, {os.cpu_count()} CPUs")
            files, sent = {}, {}
            for count in (1, 3, 6):
                config["cluster"]["hosts"] = nodes.hosts()[:count]
                config["paths"]["output"] = str(base / f"out-{count}")
                render.render_all(project(config))
                files[count] = base / f"config-{count}.yaml"
                files[count].write_text(yaml.safe_dump(config))
                sent[count] = bytes_per_node(project(config))
            print("bytes per node on a cold copy to 3 nodes (each gets what its role needs):")
            for name, size in sent[3].items():
                print(f"  {name:<12}{size / 1e6:>8.1f} MB")
            print(f"  {'all':<12}{sum(sent[3].values()) / 1e6:>8.1f} MB")
            stages = staged(project(yaml.safe_load(files[3].read_text())), base)
            nodes.reset()
            inv_copy(files[1])  # warm-up: page cache, Python's bytecode cache
            samples: dict = {1: [], 3: [], 6: [], "unchanged": [], "rsync": [], "rsync unchanged": []}
            for _ in range(runs):  # rounds, so slow phases of the machine hit every case alike
                for count in (1, 3, 6):
                    nodes.reset()
                    samples[count].append(inv_copy(files[count]))
                    if count == 3:
                        samples["unchanged"].append(inv_copy(files[count]))
                        nodes.reset()
                        samples["rsync"].append(rsync_all(stages, nodes))
                        samples["rsync unchanged"].append(rsync_all(stages, nodes))
            cpus = os.cpu_count() or 1
            medians = {case: statistics.median(v[0] for v in values) for case, values in samples.items()}
            one = medians[1]
            print(
                f"seconds, min / median / max of {runs} runs; CPU s (medians): of the whole machine, and of the "
                "client processes alone (`inv` with its ssh processes; the rsync and ssh processes)"
            )
            print(f"{'case':<24}{'seconds':>20}{'x 1 node':>10}{'MB/s':>8}{'CPU s':>8}{'client':>8}")
            for case in (1, 3, 6, "unchanged", "rsync", "rsync unchanged"):
                walls = [v[0] for v in samples[case]]
                cpu = statistics.median(v[1] for v in samples[case])
                client = statistics.median(v[2] for v in samples[case])
                size = sum(sent[3 if isinstance(case, str) else case].values())
                rate = f"{size / medians[case] / 1e6:>8.0f}" if "unchanged" not in str(case) else f"{'':>8}"
                label = {3: "3 nodes (inv copy)", "unchanged": "3 nodes, unchanged", "rsync": "3 x rsync -e ssh"}.get(
                    case, f"{case} node(s)" if isinstance(case, int) else "3 x rsync, unchanged"
                )
                print(f"{label:<24}{spread(walls):>20}{medians[case] / one:>10.2f}{rate}{cpu:>8.2f}{client:>8.2f}")
            ratios = [a[0] / b[0] for a, b in zip(samples[3], samples["rsync"], strict=True)]
            print(
                f"inv copy / rsync, 3 nodes, same bytes: {spread(ratios)} (goal median <= 1.0: "
                f"{'met' if statistics.median(ratios) <= 1.0 else 'NOT met'})"
            )
            three_cpu = statistics.median(v[1] for v in samples[3])
            print(
                f"goal 3 nodes <= 1.3 x 1 node: {'met' if medians[3] <= 1.3 * one else 'NOT met'}"
                f" ({medians[3] / one:.2f}; the CPU the 3-node copy needs, spread over {cpus} CPUs,"
                f" already takes {three_cpu / cpus / one:.2f} x the 1-node time)"
            )
            print(
                f"goal unchanged re-run <= 1.5 s: {'met' if medians['unchanged'] <= 1.5 else 'NOT met'}"
                f" ({medians['unchanged']:.2f} s median)"
            )
            nodes.reset()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Time `inv copy` of real-size binaries to 1, 3 and 6 local OpenSSH nodes.

    python benchmarks/copy_nodes.py [--runs N]   (default 3; the best of N is kept)

Random files with the sizes of the Kubernetes v1.1.7 / Calico v0.15 artifacts
(about 210 MB in all), recorded in a lock file as `inv download` would, stand
in for the downloads; the nodes are real sshd processes on 127.0.0.1..6
(tests/sshnodes.py, needs root). The bytes each node of the 3-node cluster
gets on a cold copy (what its role needs) are printed first. Each time is the
whole `inv copy` command, as a user runs it. Goals: 3 nodes <= 1.3 x 1 node;
an unchanged re-run on 3 nodes <= 1.5 s. Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from benchmarks.artifact_sizes import generate  # noqa: E402
from conftest import ARTIFACTS, project  # noqa: E402
from sshnodes import SSHNodes  # noqa: E402
from standin_cluster import lock_downloads  # noqa: E402


def busy_seconds() -> float:
    """CPU time used by the whole machine so far (client, sshd, sftp-server, install, ...)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def inv_copy(config_file: Path) -> tuple[float, float]:
    """(wall seconds, machine CPU seconds) of one `inv copy`."""
    os.sync()  # the previous step's writes are flushed now, not during this measurement
    started, cpu = time.perf_counter(), busy_seconds()
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "-f", str(config_file), "copy"], cwd=ROOT, capture_output=True, text=True
    )
    elapsed, cpu = time.perf_counter() - started, busy_seconds() - cpu
    if done.returncode != 0:
        raise SystemExit(f"inv copy failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed, cpu


def bytes_per_node(proj) -> dict[str, int]:
    """Node name -> bytes a cold `inv copy` sends it (its files from copy.plan)."""
    from tasks import copy

    return {name: sum(i.file.stat().st_size for i in items if not i.is_dir) for name, items in copy.plan(proj).items()}


def main() -> None:
    import yaml

    from tasks import render

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement; the best is kept")
    runs = parser.parse_args().runs
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
            nodes.reset()
            inv_copy(files[1])  # warm-up: page cache, Python's bytecode cache
            samples: dict = {1: [], 3: [], 6: [], "unchanged": []}
            for _ in range(runs):  # rounds, so slow phases of the machine hit every case alike
                for count in (1, 3, 6):
                    nodes.reset()
                    samples[count].append(inv_copy(files[count]))
                    if count == 3:
                        samples["unchanged"].append(inv_copy(files[count]))
            times = {case: min(values) for case, values in samples.items()}
            one = times[1][0]
            cpus = os.cpu_count() or 1
            print(f"{'case':<22}{'seconds':>9}{'x 1 node':>10}{'MB/s':>8}{'CPU s':>8}{'CPU-bound floor s':>19}")
            for case in (1, 3, 6, "unchanged"):
                wall, cpu = times[case]
                rate = f"{sum(sent[case].values()) / wall / 1e6:>8.0f}" if case != "unchanged" else f"{'':>8}"
                label = f"{case} node(s)" if case != "unchanged" else "3 nodes, unchanged"
                print(f"{label:<22}{wall:>9.2f}{wall / one:>10.2f}{rate}{cpu:>8.2f}{cpu / cpus:>19.2f}")
            print(
                f"goal 3 nodes <= 1.3 x 1 node: {'met' if times[3][0] <= 1.3 * one else 'NOT met'}"
                f" ({times[3][0] / one:.2f}; the CPU the 3-node copy needs, spread over {cpus} CPUs,"
                f" already takes {times[3][1] / cpus / one:.2f} x the 1-node time)"
            )
            print(
                f"goal unchanged re-run <= 1.5 s: {'met' if times['unchanged'][0] <= 1.5 else 'NOT met'}"
                f" ({times['unchanged'][0]:.2f} s)"
            )
            nodes.reset()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Time `inv verify` on a healthy 3-node stand-in cluster (goal: at most 3 s).

Three real OpenSSH nodes (tests/sshnodes.py) with the stand-in kubectl and
calicoctl installed by the real `inv copy` and the addons created by the real
`inv addons` (tests/standin_cluster.py). The baseline, measured in the same
run, is `inv --list`: Invoke's own start-up, which every `inv` run pays.
Run as root: `python benchmarks/verify.py [--runs N]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from conftest import run_inv  # noqa: E402
from sshnodes import SSHNodes  # noqa: E402
from standin_cluster import Scenario, UIServer, install, prepare  # noqa: E402

GOAL = 3.0


def timed(tmp: Path, config: dict, *args: str) -> float:
    start = time.perf_counter()
    done = run_inv(tmp, *args, config=config)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"`inv {' '.join(args)}` failed: {done.stdout}{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each command (median reported)")
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp_name, UIServer() as ui:
        tmp = Path(tmp_name)
        with SSHNodes(tmp / "nodes", count=3) as nodes:
            config = nodes.make_config(tmp, verify={"api_url": ui.url})
            prepare(config)
            install(nodes, config, tmp)
            Scenario(nodes, config).write()
            timed(tmp, config, "addons", "--timeout", "10")
            baseline = statistics.median(timed(tmp, config, "--list") for _ in range(runs))
            verify = statistics.median(timed(tmp, config, "verify", "--timeout", "10") for _ in range(runs))
    print(f"inv --list (baseline):        {baseline:6.2f} s")
    print(f"inv verify, 3 healthy nodes:  {verify:6.2f} s   ratio to baseline {verify / baseline:5.2f}")
    print(f"goal verify <= {GOAL:g} s: {'met' if verify <= GOAL else 'NOT met'}")


if __name__ == "__main__":
    main()

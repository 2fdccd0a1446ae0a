"""Benchmark `inv download` against aria2c, in the same run, on two network profiles.

Generates files of the seed's artifacts at their (assumed, see benchmarks/artifact_sizes.py) real
sizes, about 210 MB, in a temporary folder, and serves them from a local
server (tests/test_download.py's FileServer) that gives each connection a
fixed bandwidth and a first-byte latency, like a distant release server. The
Kubernetes files get .sha1/.md5 files beside them, as their release bucket
has; the GitHub ones get none (those look-ups answer 404, as on GitHub).

Profiles: `lan` (20 MB/s per connection, 50 ms, the real sizes) and
`throttled`, a cross-border link that throttles each connection (2 MB/s,
200 ms, the sizes scaled by 0.1 so a run stays under a minute).

For each profile, paired runs (the order alternates), each from nothing:
  1. `aria2c -j10 -x8 -s8 -k2M` on the same URLs (what an experienced user runs instead);
  2. `inv download --trust-first-use`, cold (a real process: Python's start included), and its peak memory;
then `inv download` again with everything in place (must make no request).
With `--against DIR` (another checkout of this project, e.g. `git worktree add /tmp/base main`), that checkout's
`inv download` runs in the same paired runs too, cold and re-run: a before/after measured in the same conditions.
Each command's CPU time (user + system, its children included) is shown beside its wall time. Both checkouts'
modules are compiled to bytecode first, as an installed project runs (PYTHONDONTWRITEBYTECODE would otherwise
have every run compile them again).

Goals: cold <= 1.0 x aria2c in both profiles; re-run <= 0.3 s with 0 requests; peak memory <= 100 MB.
Needs aria2c (Debian/Ubuntu: apt-get install aria2).
Run: python benchmarks/download.py [--runs 5] [--profile lan --profile throttled] [--against DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import argparse  # noqa: E402
import hashlib  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import yaml  # noqa: E402

import tasks  # noqa: E402,F401  (makes tasks/ the package, as under inv)
from benchmarks.artifact_sizes import generate  # noqa: E402
from conftest import ARTIFACTS, artifacts, make_config, project  # noqa: E402
from tasks import download  # noqa: E402
from test_download import FileServer, url_path  # noqa: E402

PROFILES = {  # MB/s per connection, seconds of first-byte latency, fraction of the real sizes
    "lan": (20.0, 0.05, 1.0),
    "throttled": (2.0, 0.2, 0.1),
}
ARIA2 = ["aria2c", "-j10", "-x8", "-s8", "-k2M"]
ALGOS = ("sha256", "sha512", "sha1", "md5")


def digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# Starts a command from a small process and prints its peak memory: a child forked from this (large) process
# would count this process's pages as its own until it execs.
LAUNCHER = """import os, sys
pid = os.posix_spawnp(sys.argv[1], sys.argv[1:], os.environ)
_, status, usage = os.wait4(pid, 0)
print(usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_child(command: list[str], **kwargs) -> tuple[float, int, float]:
    """(wall seconds, peak resident memory in bytes, CPU seconds) of a command; exits when it fails."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, *command], capture_output=True, **kwargs)
    seconds = time.monotonic() - started
    if done.returncode:
        sys.exit(f"{' '.join(command[:5])} ... failed ({done.returncode}):\n{(done.stdout + done.stderr).decode()}")
    cpu, rss = done.stderr.decode().split()[-2:]
    return seconds, int(rss), float(cpu)


def inv(config_file: Path, *args: str, root: Path = ROOT) -> tuple[float, int, float]:
    return run_child([sys.executable, "-m", "invoke", "-f", str(config_file), "download", *args], cwd=root)


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """min / median / max."""
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def profile(work: Path, name: str, runs: int, against: Path | None = None, connections: int = 0) -> dict:
    rate, latency, scale = PROFILES[name]
    files = generate(work / "served", scale=scale)
    total = sum(p.stat().st_size for p in files.values())
    with FileServer(rate=rate * 1e6, latency=latency) as server:
        server.httpd.handle_error = lambda *args: None  # a connection closed before its end is expected
        mirrors = {"https://storage.googleapis.com/": server.base + "/", "https://github.com/": server.base + "/"}
        entries = [dict(a, sha256="") for a in ARTIFACTS]
        # Loopback http, and files that publish no digest: both allowed here, as a user would allow them.
        lock = work / "downloads.lock"
        config = make_config(
            work, download={"mirrors": mirrors, "artifacts": entries, "lock_file": str(lock), "allow_http": True}
        )
        if connections:
            config["download"]["connections"] = connections
        urls = []
        for art in artifacts(config):
            path = url_path(art.url)
            server.files[path] = files[art.name]
            if "kubernetes-release" in path:
                for algo in ("sha1", "md5"):
                    server.files[f"{path}.{algo}"] = digest(files[art.name], algo).encode()
            urls.append(art.url)
        config_file = work / "config.yaml"
        config_file.write_text(yaml.safe_dump(config))
        against_file = work / "config-against.yaml"  # without the keys the other checkout does not know yet
        if against:
            known = yaml.safe_load((against / "invoke.yaml").read_text())
            older = {
                section: {k: v for k, v in values.items() if k in known.get(section, {})}
                if isinstance(values, dict)
                else values
                for section, values in config.items()
            }
            against_file.write_text(yaml.safe_dump(older))
        (work / "urls.txt").write_text("".join(u + "\n" for u in urls))
        downloads = work / "downloads"
        aria_folder = work / "aria2"

        def aria2() -> tuple[float, int, float]:
            shutil.rmtree(aria_folder, ignore_errors=True)
            return run_child([*ARIA2, "-q", "-d", str(aria_folder), "-i", str(work / "urls.txt")])

        def cold(root: Path = ROOT) -> tuple[float, int, float]:
            shutil.rmtree(downloads, ignore_errors=True)
            lock.unlink(missing_ok=True)
            os.sync()  # the previous run's writes are not flushed during this one
            before = len(server.log)
            result = inv(against_file if root != ROOT else config_file, "--trust-first-use", root=root)
            if root == ROOT:
                requests.append(len(server.log) - before)
            return result

        def cold_against() -> tuple[float, int, float]:
            assert against is not None
            return cold(against)

        requests: list[int] = []
        steps = [aria2, cold] + ([cold_against] if against else [])
        results: dict = {step: [] for step in steps}
        for n in range(runs):  # each contender first, second, ... in turn
            for step in steps[n % len(steps) :] + steps[: n % len(steps)]:
                results[step].append(step())
        aria, ours, theirs = results[aria2], results[cold], results.get(cold_against, [])
        for name_, path in files.items():
            assert digest(downloads / name_, "sha256") == digest(path, "sha256"), name_
        before = len(server.log)
        rerun, rerun_against = [], []
        for _ in range(runs):
            rerun.append(inv(config_file)[0])
            if against:
                rerun_against.append(inv(against_file, root=against)[0])
        rerun_requests = len(server.log) - before
        floor = [run_child([sys.executable, "-m", "invoke", "--list"], cwd=ROOT)[0] for _ in range(3)]
        started = time.monotonic()
        assert not download.fetch_all(project(config)).downloaded and len(server.log) == before + rerun_requests
        in_process = time.monotonic() - started
        hashing = hash_costs(files)
    shutil.rmtree(work / "served")
    return {
        "name": name,
        "files": len(files),
        "total": total,
        "rate": rate,
        "latency": latency,
        "ratios": [o[0] / a[0] for o, a in zip(ours, aria, strict=True)],
        "aria": [a[0] for a in aria],
        "ours": [o[0] for o in ours],
        "aria_cpu": [a[2] for a in aria],
        "cpu": [o[2] for o in ours],
        "against": {
            "ratios": [t[0] / a[0] for t, a in zip(theirs, aria, strict=True)],
            "cold": [t[0] for t in theirs],
            "cpu": [t[2] for t in theirs],
            "rss": [t[1] for t in theirs],
            "rerun": rerun_against,
        }
        if against
        else None,
        "aria_rss": [a[1] for a in aria],
        "rss": [o[1] for o in ours],
        "requests": requests,
        "rerun": rerun,
        "rerun_requests": rerun_requests,
        "floor": min(floor),
        "in_process": in_process,
        "hashing": hashing,
    }


def hash_costs(files: dict[str, Path]) -> tuple[float, float]:
    """CPU seconds to hash every file (from the page cache) as `inv download` does, once complete: sha256 and
    the published .sha1 of the Kubernetes files; and as hashing the pieces in order while they come would
    until the look-up ends: every algorithm a digest file may use (sha256, sha512, sha1, md5)."""
    once = every = 0.0
    for name, path in files.items():
        data = path.read_bytes()
        for algos, kind in ((("sha256", "sha1") if name.startswith("kube") else ("sha256",), 0), (ALGOS, 1)):
            started = time.process_time()
            for algo in algos:
                hashlib.new(algo, data).hexdigest()
            spent = time.process_time() - started
            once, every = (once + spent, every) if kind == 0 else (once, every + spent)
    return once, every


def report(r: dict, runs: int) -> None:
    print(
        f"\n[{r['name']}] {r['files']} files, {r['total'] / 1e6:.1f} MB; {r['rate']:g} MB/s per connection, "
        f"{r['latency'] * 1000:g} ms first-byte latency; {runs} paired runs (min / median / max)"
    )
    aria_mb = [v / 1e6 for v in r["aria_rss"]]
    print(
        f"  aria2c -j10 -x8 -s8 -k2M        {spread(r['aria'])} s   (peak memory {spread(aria_mb, '{:.0f}')} MB; "
        f"CPU {spread(r['aria_cpu'])} s)"
    )
    print(
        f"  inv download, cold              {spread(r['ours'])} s   ({spread(r['requests'], '{:.0f}')} requests; "
        f"CPU {spread(r['cpu'])} s)"
    )
    ratio = statistics.median(r["ratios"])
    print(
        f"  ratio inv / aria2c              {spread(r['ratios'])}     "
        f"(goal median <= 1.0: {'met' if ratio <= 1.0 else 'MISSED'})"
    )
    mb = [v / 1e6 for v in r["rss"]]
    print(
        f"  inv download peak memory        {spread(mb, '{:.0f}')} MB   "
        f"(goal <= 100 MB: {'met' if max(mb) <= 100 else 'MISSED'})"
    )
    met = statistics.median(r["rerun"]) <= 0.3 and not r["rerun_requests"]
    print(
        f"  inv download, re-run            {spread(r['rerun'])} s   {r['rerun_requests']} requests "
        f"(goal <= 0.3 s, 0 requests: {'met' if met else 'MISSED'})"
    )
    print(f"    of which Python + Invoke start {r['floor']:.2f} s  (`inv --list`, best of 3)")
    if r["against"]:
        a = r["against"]
        print("  --against checkout, same runs:")
        print(f"    inv download, cold            {spread(a['cold'])} s   (CPU {spread(a['cpu'])} s)")
        print(f"    ratio inv / aria2c            {spread(a['ratios'])}")
        print(f"    peak memory                   {spread([v / 1e6 for v in a['rss']], '{:.0f}')} MB")
        print(f"    inv download, re-run          {spread(a['rerun'])} s")
    print(f"    fetch_all in process           {r['in_process']:.3f} s")
    once, every = r["hashing"]
    print(
        f"  hashing, CPU s: once complete (chosen) {once:.2f}; in order, every algorithm until the look-up ends "
        f"up to {every:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="paired runs per profile (default 5)")
    parser.add_argument("--profile", action="append", choices=sorted(PROFILES), help="default: both")
    parser.add_argument("--against", type=Path, help="another checkout of this project to measure in the same runs")
    parser.add_argument("--connections", type=int, default=0, help="download.connections (default: invoke.yaml's)")
    args = parser.parse_args()
    if not shutil.which("aria2c"):
        sys.exit("aria2c is not installed (Debian/Ubuntu: apt-get install aria2)")
    against = args.against.resolve() if args.against else None
    for root in filter(None, (ROOT, against)):  # bytecode, as an installed project has it
        subprocess.run([sys.executable, "-m", "compileall", "-q", "tasks", "tasks.py"], cwd=root, check=True)
    print(f"{os.cpu_count()} CPUs; download.connections = {make_config(Path('.'))['download']['connections']}")
    print(f"load average at the start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for name in args.profile or list(PROFILES):
        work = Path(tempfile.mkdtemp(prefix="bench-download-"))
        try:
            report(profile(work, name, args.runs, against, args.connections), args.runs)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"  load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()

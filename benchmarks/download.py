"""Benchmark `inv download` against the seed's sequential wget, in the same run.

Generates files of the seed's artifacts at their (assumed, see benchmarks/artifact_sizes.py) real
sizes, about 210 MB, in a temporary folder, and serves them from a local
server (tests/test_download.py's FileServer) that gives each connection a
fixed bandwidth and a first-byte latency, like a distant release server. The
Kubernetes files get .sha1/.md5 files beside them, as their release bucket
has; the GitHub ones get none (those look-ups answer 404, as on GitHub).

  1. the seed's method: one `wget` after another, one connection each;
  2. `inv download`, cold (a real subprocess: startup included);
  3. `inv download` again, everything in place (must make no request).

Goals: cold <= 0.40 x sequential, re-run <= 0.5 s.
Run: python benchmarks/download.py [--rate MB/s] [--latency s] [--scale 0.1]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import argparse  # noqa: E402
import hashlib  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import yaml  # noqa: E402

import tasks  # noqa: E402,F401  (makes tasks/ the package, as under inv)
from benchmarks.artifact_sizes import SIZES, generate  # noqa: E402
from conftest import ARTIFACTS, artifacts, make_config, project  # noqa: E402
from tasks import download  # noqa: E402
from test_download import FileServer, url_path  # noqa: E402


def digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sequential(urls: list[str], folder: Path) -> tuple[float, str]:
    """The seed's way: one download after another, each its own process and connection."""
    folder.mkdir()
    started = time.monotonic()
    if shutil.which("wget"):
        for url in urls:
            subprocess.run(["wget", "-q", "-O", str(folder / url.rsplit("/", 1)[1]), url], check=True)
        return time.monotonic() - started, "wget"
    import urllib.request

    for url in urls:
        with urllib.request.urlopen(url) as response, open(folder / url.rsplit("/", 1)[1], "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    return time.monotonic() - started, "urllib (no wget here)"


def inv(config_file: Path, *args: str) -> float:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "-f", str(config_file), *(args or ["download"])],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.monotonic() - started
    if result.returncode:
        sys.exit(f"inv download failed:\n{result.stdout}{result.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="MB/s per connection (default 20)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds before each response (default 0.05)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the real sizes (default 1)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-download-"))
    try:
        run(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, args) -> None:
    files = generate(work / "served", scale=args.scale)
    total = sum(p.stat().st_size for p in files.values())
    with FileServer(rate=args.rate * 1e6, latency=args.latency) as server:
        mirrors = {"https://storage.googleapis.com/": server.base + "/", "https://github.com/": server.base + "/"}
        entries = [dict(a, sha256="") for a in ARTIFACTS]
        # Loopback http, and files that publish no digest: both allowed here, as a user would allow them.
        config = make_config(
            work,
            download={
                "mirrors": mirrors,
                "artifacts": entries,
                "lock_file": str(work / "downloads.lock"),
                "allow_http": True,
            },
        )
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

        seq, tool = sequential(urls, work / "sequential")
        shutil.rmtree(work / "sequential")
        cold = inv(config_file, "download", "--trust-first-use")
        requests_cold = len(server.log)
        rerun = inv(config_file)
        floor = inv(config_file, "--list")  # Python and Invoke starting, the tasks loading: no download code
        started = time.monotonic()
        outcome = download.fetch_all(project(config))
        in_process = time.monotonic() - started
        assert len(outcome.present) == len(SIZES) and len(server.log) == requests_cold, "re-run made requests"
    for name, path in files.items():
        assert digest(work / "downloads" / name, "sha256") == digest(path, "sha256"), name

    print(
        f"{len(files)} files, {total / 1e6:.1f} MB; {args.rate:g} MB/s per connection, "
        f"{args.latency * 1000:g} ms first-byte latency; download.parallel = {config['download']['parallel']}"
    )
    print(f"sequential ({tool}, one connection each): {seq:6.2f} s")
    print(
        f"inv download, cold:                       {cold:6.2f} s  ratio {cold / seq:.2f}  "
        f"(goal <= 0.40: {'met' if cold <= 0.40 * seq else 'MISSED'}); {requests_cold} requests"
    )
    print(
        f"inv download, re-run (process):           {rerun:6.2f} s  "
        f"(goal <= 0.5 s: {'met' if rerun <= 0.5 else 'MISSED'}); 0 requests"
    )
    print(f"  of which starting Python + Invoke:      {floor:6.2f} s  (`inv --list`)")
    print(f"fetch_all, re-run (in process):           {in_process:6.3f} s")


if __name__ == "__main__":
    main()

"""Shared test helpers: the project's default configuration and a real `inv` run."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# The seed procedure and its reference files sit beside the checkout (as in CI), not in it.
SEED = ROOT.parent / "shared" / "seed"


def seed_file(*parts: str):
    """A file of the seed; where the seed is not beside this checkout the test is skipped, saying why.

    Under CI (CI=true) it fails instead: there the seed is always laid beside
    the checkout, so a missing one is a broken setup, not a reason to test less.
    """
    path = SEED.joinpath(*parts)
    if not path.exists():
        message = f"{path} is not there: the seed procedure must sit beside this checkout"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


DEFAULTS = yaml.safe_load((ROOT / "invoke.yaml").read_text())
# What the seed stack fills in where invoke.yaml leaves a key to the stack.
SEED_DEFAULTS = yaml.safe_load((ROOT / "tasks" / "stacks" / "seed.yaml").read_text())["defaults"]
ARTIFACTS = SEED_DEFAULTS["download"]["artifacts"]


def project(config: dict):
    """The checked project of a configuration mapping, as a task builds it."""
    from tasks import settings

    return settings.build(config)


def artifacts(config: dict) -> list:
    """The configuration's artifacts, checked, with their final URLs."""
    return list(project(config).download.artifacts)


def make_config(tmp_path: Path, **sections) -> dict:
    """The defaults from invoke.yaml with the seed's stack, outputs under tmp_path, sections updated key by key.

    Most tests exercise the seed's procedure, which the stand-ins reproduce in
    most detail; tests of the current stack (the default) set `stack` themselves.
    """
    config = copy.deepcopy(DEFAULTS)
    config["stack"] = "seed"
    config["paths"] = {"output": str(tmp_path / "out"), "downloads": str(tmp_path / "downloads")}
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config


def run_inv(
    tmp_path: Path,
    *args: str,
    config: dict | None = None,
    timeout: float = 300,
    env: dict | None = None,
    process: bool = False,
) -> subprocess.CompletedProcess:
    """Run `inv -f CONFIG ARGS` on the project, with `config` as its `-f` file: (exit status, stdout, stderr).

    By default in this process: the same `Program` that `inv` runs, with its
    output captured, `env` (when given) as the whole environment, no standard
    input, and a fresh start for what a run remembers (`ui.note_once`). That
    saves a Python start and the imports of every library per call. With
    `process=True` it is a real `python -m invoke` process (bounded by
    `timeout`): for what only a process shows (exec, signals, start-up).
    """
    overrides = tmp_path / "test-config.yaml"
    overrides.write_text(yaml.safe_dump(config if config is not None else make_config(tmp_path)))
    argv = ["-f", str(overrides), *args]
    if process:
        return subprocess.run(
            [sys.executable, "-m", "invoke", *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
        )
    return _run_in_process(argv, env)


def _run_in_process(argv: list[str], env: dict | None) -> subprocess.CompletedProcess:
    import contextlib
    import io
    import os

    import invoke
    from invoke import Program

    from tasks import ui

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd, saved_stdin = dict(os.environ), os.getcwd(), sys.stdin
    code = 0
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        os.chdir(ROOT)
        sys.stdin = io.StringIO("")
        ui._NOTED.clear()  # each run is a new `inv`
        program = Program(name="Invoke", binary="inv[oke]", binary_names=["invoke", "inv"], version=invoke.__version__)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                program.run(["inv", *argv])
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        sys.stdin = saved_stdin
    return subprocess.CompletedProcess(["inv", *argv], code, out.getvalue(), err.getvalue())


def start_inv(config: dict, tmp_path: Path, *args: str) -> subprocess.Popen:
    """A real `inv -f CONFIG ARGS` process that a test can interrupt with SIGINT, as Ctrl-C does.

    SIGINT is set back to its default in the child: a test run started with it
    ignored (a background job of a non-interactive shell) passes that on, and
    Python then never raises KeyboardInterrupt.
    """
    import signal

    config_file = tmp_path / "process-config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", "-f", str(config_file), *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def run_inv_on_terminal(
    tmp_path: Path, *args: str, config: dict, env: dict | None = None, raw: bool = False
) -> tuple[int, str]:
    """Run the real `inv` with its output on a pseudo-terminal, as a user sees it: (exit status, screen text).

    `env`: added to the environment; `raw`: the screen with its escape sequences, not without."""
    import pty
    import re

    overrides = tmp_path / "terminal-config.yaml"
    overrides.write_text(yaml.safe_dump(config))
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "-f", str(overrides), *args],
        cwd=ROOT,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=dict(os.environ, COLUMNS="140", TERM="xterm", **(env or {})),
    )
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal closed with the process
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    code = proc.wait(timeout=120)
    text = screen.decode(errors="replace")
    return code, text if raw else re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


_KEYS: list = []  # RSA keys this test process has made, reused by the next tests


@pytest.fixture(autouse=True)
def reused_keys(monkeypatch):
    """Real 2048-bit RSA keys, but made once per test process: each costs ~50 ms of CPU, and hundreds of renders
    make three. Within one test every key is a new one (a second CA differs from the first)."""
    from tasks import pki

    made = pki._new_key
    used = [0]

    def next_key():
        if used[0] == len(_KEYS):
            _KEYS.append(made())
        used[0] += 1
        return _KEYS[used[0] - 1]

    monkeypatch.setattr(pki, "_new_key", next_key)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty home folder: no known_hosts or ssh config of this machine's user in the way."""
    folder = tmp_path / "home"
    (folder / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(folder))
    return folder


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path)


# Fixtures that start real sshd nodes, which need root (tests/sshnodes.py).
NODE_FIXTURES = {"ssh_nodes", "ssh_cluster"}


def pytest_collection_modifyitems(items):
    """Mark `nodes` every test that uses the sshd nodes, directly or through another fixture."""
    for item in items:
        if NODE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.nodes)


from sshnodes import ssh_cluster, ssh_nodes  # noqa: E402,F401  (real sshd nodes, see tests/sshnodes.py)

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
    """The defaults from invoke.yaml, outputs under tmp_path, sections updated key by key."""
    config = copy.deepcopy(DEFAULTS)
    config["paths"] = {"output": str(tmp_path / "out"), "downloads": str(tmp_path / "downloads")}
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config


def run_inv(
    tmp_path: Path, *args: str, config: dict | None = None, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the real `inv` on the project with `config` as its `-f` file."""
    overrides = tmp_path / "test-config.yaml"
    overrides.write_text(yaml.safe_dump(config if config is not None else make_config(tmp_path)))
    return subprocess.run(
        [sys.executable, "-m", "invoke", "-f", str(overrides), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def run_inv_on_terminal(tmp_path: Path, *args: str, config: dict) -> tuple[int, str]:
    """Run the real `inv` with its output on a pseudo-terminal, as a user sees it: (exit status, screen text)."""
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
        env=dict(os.environ, COLUMNS="140", TERM="xterm"),
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
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))


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

"""Every unit embedded in the rendered cloud-configs passes `systemd-analyze verify`.

CoreOS's own etcd2.service, fleet.service and docker.service, and the
binaries under /opt/bin, cannot exist here: the fake root holds stand-ins for
them (a unit with an ExecStart, an executable shell script), which is all
`systemd-analyze verify` looks at. Everything else is the host's systemd.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import make_config, project
from seedfiles import parse_unit
from tasks import render

SYSTEMD_UNITS = Path("/usr/lib/systemd/system")
COREOS_UNITS = ("etcd2.service", "fleet.service", "docker.service")

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")


def stand_in(root: Path, program: str) -> None:
    path = root / program.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)


def fake_root(tmp_path: Path, units: dict[str, str]) -> Path:
    root = tmp_path / "root"
    shutil.copytree(SYSTEMD_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    for name in COREOS_UNITS:
        stand_in(root, f"/usr/bin/{name.split('.')[0]}")
        (root / "usr/lib/systemd/system" / name).write_text(
            f"[Unit]\nDescription=stand-in for CoreOS {name}\n[Service]\nExecStart=/usr/bin/{name.split('.')[0]}\n"
        )
    for name, content in units.items():
        (root / "etc/systemd/system").mkdir(parents=True, exist_ok=True)
        (root / "etc/systemd/system" / name).write_text(content)
        for key, values in parse_unit(content).get("Service", {}).items():
            if key.startswith("Exec"):
                for value in values:
                    stand_in(root, shlex.split(value)[0].lstrip("-@+!"))
    return root


def verify(root: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", name], capture_output=True, text=True, timeout=60
    )


def rendered_units(tmp_path, count=3) -> dict[str, dict[str, str]]:
    render.render_all(project(make_config(tmp_path, cluster={"num_instances": count})))
    result = {}
    for path in sorted((tmp_path / "out" / "nodes").iterdir()):
        config = yaml.safe_load(path.read_text())
        result[path.stem] = {u["name"]: u["content"] for u in config["coreos"]["units"] if "content" in u}
    return result


@pytest.mark.parametrize("node", ["calico-01", "calico-02"])
def test_rendered_units_verify_cleanly(tmp_path, node):
    units = rendered_units(tmp_path)[node]
    assert len(units) == (7 if node == "calico-01" else 4)
    root = fake_root(tmp_path, units)
    for name in units:
        result = verify(root, name)
        assert result.returncode == 0 and result.stderr == "", f"{name}: {result.stderr}"


def test_verify_reports_a_broken_unit(tmp_path):
    """The check can fail: an unknown key and a missing binary both show on stderr."""
    units = rendered_units(tmp_path)["calico-02"]
    units["kubelet.service"] = units["kubelet.service"].replace("Restart=always", "Restart=always\nRestrat=10")
    root = fake_root(tmp_path, units)
    assert "Unknown key 'Restrat'" in verify(root, "kubelet.service").stderr
    (root / "opt/bin/kube-proxy").unlink()
    result = verify(root, "kube-proxy.service")
    assert result.returncode != 0 and "/opt/bin/kube-proxy" in result.stderr

"""The project's Vagrantfile, run by the real `vagrant` CLI on the rendered description.

VirtualBox cannot run here: a stand-in `VBoxManage` that only answers
`--version` lets Vagrant load its VirtualBox provider, so `vagrant validate`
checks the provider block too and `vagrant status` lists the machines.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import ROOT, make_config, project
from tasks import render

pytestmark = pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed")


@pytest.fixture
def vagrant_env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "VBoxManage"
    fake.write_text("#!/bin/sh\n# stand-in: VirtualBox cannot run here\necho 7.0.14r161095\n")
    fake.chmod(0o755)
    env = dict(
        os.environ,
        VAGRANT_HOME=str(tmp_path / "vagrant-home"),
        VAGRANT_CHECKPOINT_DISABLE="1",
        VAGRANT_NO_PLUGINS="1",  # none is needed to read the Vagrantfile: a faster start
        VAGRANT_DOTFILE_PATH=str(tmp_path / "dot-vagrant"),
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        CLUSTER_DESCRIPTION=str(tmp_path / "out" / "cluster.json"),
    )
    return env


def vagrant(env, *args):
    return subprocess.run(["vagrant", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("stack,count", [("seed", 3), ("seed", 5), ("current", 3)])
def test_validate_and_status_list_the_machines(tmp_path, vagrant_env, stack, count):
    config = make_config(tmp_path, cluster={"num_instances": count})
    config["stack"] = stack
    render.render_all(project(config))
    result = vagrant(vagrant_env, "validate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Vagrantfile validated successfully" in result.stdout
    status = vagrant(vagrant_env, "status", "--machine-readable")
    assert status.returncode == 0, status.stderr
    machines = [line.split(",")[1] for line in status.stdout.splitlines() if ",state," in line]
    assert machines == [f"calico-{i:02d}" for i in range(1, count + 1)]


def test_validate_catches_a_bad_setting(tmp_path, vagrant_env):
    """Real validation: a hostname Vagrant rejects fails `vagrant validate`."""
    import json

    render.render_all(project(make_config(tmp_path)))
    path = tmp_path / "out" / "cluster.json"
    description = json.loads(path.read_text())
    description["nodes"][0]["name"] = "not_a_hostname"
    path.write_text(json.dumps(description))
    result = vagrant(vagrant_env, "validate")
    assert result.returncode != 0
    assert "not_a_hostname" in result.stdout + result.stderr
    assert "hostname" in result.stdout + result.stderr


def test_missing_description_says_to_render(tmp_path, vagrant_env):
    result = vagrant(vagrant_env, "validate")
    assert result.returncode != 0
    assert "cluster.json is missing: run `inv render` first" in result.stderr


def test_vagrantfile_has_no_synced_folder_or_shell_outs():
    text = (ROOT / "Vagrantfile").read_text()
    code = "\n".join(line.split("#")[0] for line in text.splitlines() if not line.lstrip().startswith("#"))
    code = code.replace("`inv render`", "")  # inside the message for a missing description
    for shell_out in ("system", "sed ", "`", "%x", "exec", "spawn"):
        assert shell_out not in code, shell_out
    assert "synced_folder '.', '/vagrant', disabled: true" in text
    assert "config.ssh.insert_key = false" in text

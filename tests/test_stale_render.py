"""A configuration changed since `inv render` stops every task on the machines, in one line; `destroy` deletes
what was rendered (the real `vagrant` with a stand-in `VBoxManage`, tests/test_vm.py's `vagrant_env`)."""

from __future__ import annotations

import copy

import pytest

import test_vm
from conftest import make_config, project, run_inv
from tasks import render

vagrant_env = test_vm.vagrant_env  # the fixture: the default cluster rendered, a stand-in VBoxManage


def test_render_changes(tmp_path):
    rendered = {"stack": "seed", "provider": "vagrant", **render.description(project(make_config(tmp_path)).cluster)}
    same = project(make_config(tmp_path))
    assert render.changes(rendered, same) == []
    assert render.changes(rendered, project(make_config(tmp_path, cluster={"num_instances": 5}))) == [
        "3 node(s) rendered, 5 configured"
    ]
    moved = project(make_config(tmp_path, cluster={"first_ip": "172.18.18.11"}))
    assert render.changes(rendered, moved) == [
        f"calico-0{i} at 172.18.18.10{i} rendered, 172.18.18.1{i} configured" for i in (1, 2, 3)
    ]
    renamed = project(make_config(tmp_path, cluster={"instance_name_prefix": "k8s"}))
    assert render.changes(rendered, renamed)[0] == "node calico-01 rendered, k8s-01 configured"
    assert render.changes(dict(rendered, stack="current"), same) == ["stack current rendered, seed configured"]
    assert render.changes(dict(rendered, stack=None), same) == []  # rendered before the stack was recorded


@pytest.mark.parametrize(
    "args",
    [
        ("up", "--no-copy"),
        ("copy",),
        ("addons",),
        ("verify",),
        ("status",),
        ("ssh", "calico-01"),
        ("accept-host-key", "calico-01", "SHA256:" + "A" * 43),
    ],
)
def test_tasks_on_the_machines_refuse_a_configuration_changed_since_render(vagrant_env, tmp_path, args):
    from standin_cluster import prepare

    five = make_config(tmp_path, cluster={"num_instances": 5})
    prepare(five)  # rendered and downloaded for 5 nodes
    three = copy.deepcopy(five)
    three["cluster"]["num_instances"] = 3
    done = run_inv(tmp_path, *args, config=three, env=vagrant_env[1])
    assert (done.returncode, done.stderr.strip()) == (
        1,
        "the configuration changed since `inv render` (5 node(s) rendered, 3 configured): run `inv render` first",
    )
    assert not (tmp_path / "dot-vagrant").exists()


def test_a_stack_changed_since_render_is_refused(tmp_path):
    config = make_config(tmp_path)
    render.render_all(project(config))
    description = render.last_render(tmp_path / "out")
    assert description is not None and description["stack"] == "seed"
    manifest = tmp_path / "out" / render.MANIFEST
    manifest.write_text(manifest.read_text().replace('"seed"', '"current"'))
    done = run_inv(tmp_path, "status", config=config)
    assert done.stderr.strip() == (
        "the configuration changed since `inv render` (stack current rendered, seed configured): run `inv render` first"
    )


def test_destroy_deletes_the_rendered_vms_when_the_configuration_changed(vagrant_env, tmp_path):
    """Real Vagrant: it deletes what the Vagrantfile lists, the rendered 3 VMs; the note says so."""
    config, env, _ = vagrant_env  # rendered: 3 nodes
    config["cluster"]["num_instances"] = 2
    done = run_inv(tmp_path, "destroy", "--yes", config=config, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == (
        "note: the configuration changed since `inv render` (3 node(s) rendered, 2 configured): deleting the VMs "
        "rendered then, calico-01, calico-02, calico-03; run `inv render` afterwards"
    )
    assert "calico-03: VM not created. Moving on..." in done.stdout

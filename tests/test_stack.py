"""Stacks as data: `stack: seed` renders exactly what it rendered before stacks existed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from conftest import DEFAULTS, make_config
from tasks import render, settings, stack

# sha256 of every file (but the PKI, which is random) that `inv render` wrote for
# these cases (case_config below) on main at 76a62f4, before stacks existed.
GOLDEN = json.loads((Path(__file__).parent / "golden" / "seed-render.json").read_text())
# The one planned difference: the header comment names the template's new folder.
MOVED = {
    f"from cloud-config/{name}.": f"from cloud-config/seed/{name}."
    for name in ("master.yaml.j2", "node.yaml.j2", "network-environment.j2")
}


def case_config(tmp_path: Path, case: str) -> dict:
    """The configuration of a golden case: `vagrant-N` or `hosts-N` (N nodes)."""
    provider, count = case.split("-")
    n = int(count)
    if provider == "vagrant":
        return make_config(tmp_path, cluster={"num_instances": n})
    hosts = [
        {
            "name": f"node-{i:02d}",
            "address": f"10.1.0.{i}",
            "ip": f"172.18.18.{100 + i}",
            **({"port": 2222, "user": "admin"} if i == 2 else {}),
        }
        for i in range(1, n + 1)
    ]
    return make_config(tmp_path, cluster={"provider": "hosts", "hosts": hosts})


def before_the_move(data: bytes) -> bytes:
    text = data.decode()
    for new_place_old, new in MOVED.items():
        text = text.replace(new, new_place_old)
    return text.encode()


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_seed_renders_byte_identical_files(tmp_path, case):
    files = render.plan(settings.build(case_config(tmp_path, case)))
    got = {name: hashlib.sha256(before_the_move(data)).hexdigest() for name, data in files.items()}
    assert got.keys() == GOLDEN[case].keys()
    assert [name for name in got if got[name] != GOLDEN[case][name]] == []


def test_the_only_difference_is_the_template_folder_in_headers(tmp_path):
    files = render.plan(settings.build(case_config(tmp_path, "vagrant-3")))
    changed = [name for name, data in files.items() if before_the_move(data) != data]
    assert sorted(changed) == [
        "network-environment",
        "nodes/calico-01.yaml",
        "nodes/calico-02.yaml",
        "nodes/calico-03.yaml",
    ]
    assert all(
        b"cloud-config/seed/" in files[name].splitlines()[1] or b"cloud-config/seed/" in files[name].splitlines()[0]
        for name in changed
    )


def test_invoke_yaml_leaves_exactly_the_stack_keys_to_the_stack():
    """A key some stack defines is null in invoke.yaml, and every null key is some stack's, or a list no stack
    gives (null there so that INVOKE_* can set it: Invoke refuses to replace a list from the environment)."""
    nulls = {
        (s, k)
        for s, keys in DEFAULTS.items()
        if isinstance(keys, dict)
        for k, v in keys.items()
        # A stack's mapping is {}: Invoke cannot merge a -f file's mapping over null.
        if v is None or (v == {} and k in stack.stack_keys().get(s, ()))
    }
    defined = {(s, k) for s, keys in stack.stack_keys().items() for k in keys}
    empty_lists = {(s, k) for s, keys in settings.SCHEMA.items() for k, kind in keys.items() if kind is list}
    assert defined <= nulls
    assert nulls - defined <= empty_lists
    assert ("cluster", "hosts") in nulls - defined


def test_every_stack_file_names_folders_and_templates_that_exist():
    for name in stack.names():
        s = stack.load(name)
        assert s.name == name
        assert (s.templates / s.node_templates["master"]).is_file()
        assert (s.templates / s.node_templates["node"]).is_file()
        assert all((s.templates / t).is_file() for t in s.cluster_templates.values())
        assert set(s.defaults["addons"]["manifests"]) <= set(s.manifest_names())


def test_a_setting_only_another_stack_uses_is_refused_naming_the_stack(tmp_path, monkeypatch):
    """With two stacks, a key only the other one defines is an error naming the chosen stack."""
    seed = stack.load("seed")
    other = stack.Stack(
        name="other",
        description="",
        templates=seed.templates,
        manifests=seed.manifests,
        node_templates=seed.node_templates,
        cluster_templates=seed.cluster_templates,
        defaults={k: dict(v) for k, v in seed.defaults.items()},
    )
    del other.defaults["kubernetes"]["pause_image"]
    monkeypatch.setattr(stack, "names", lambda: ["other", "seed"])
    monkeypatch.setattr(stack, "load", lambda name: {"seed": seed, "other": other}[name])
    config = make_config(tmp_path, kubernetes={"pause_image": "mine/pause:1"})
    config["stack"] = "other"
    with pytest.raises(settings.ConfigError) as err:
        settings.build(config)
    assert str(err.value) == (
        "invalid configuration: kubernetes.pause_image = 'mine/pause:1': expected no value: "
        "stack other has no use for it (leave it null)"
    )
    config["kubernetes"]["pause_image"] = None
    assert settings.build(config).cluster.pause_image == ""


def test_stack_defaults_are_overridden_key_by_key(tmp_path):
    config = make_config(tmp_path, versions={"kubernetes": "v1.1.8"})
    project = settings.build(config)
    assert project.cluster.versions["kubernetes"] == "v1.1.8"
    assert project.cluster.versions["calicoctl"] == "v0.15.0"
    assert project.values["versions"]["kubernetes"] == "v1.1.8"
    assert yaml.safe_load((stack.FOLDER / "seed.yaml").read_text())["defaults"]["versions"]["kubernetes"] == "v1.1.7"

"""`inv render`: seed equivalence, any number of nodes, stable and atomic output."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from conftest import make_config, project, run_inv
from seedfiles import normalized_unit, seed_config
from tasks import render

# The one addition to the seed's units: the configured Calico pool is created
# before calico-node starts (the seed had this line commented out).
POOL_ADD = ("-/opt/bin/calicoctl", ("--nat-outgoing", "192.168.0.0/16", "add", "pool"))


def rendered(out, name):
    return yaml.safe_load((out / "nodes" / f"{name}.yaml").read_text())


def assert_equivalent(mine: dict, seed: dict) -> None:
    assert mine["hostname"] == seed["hostname"]
    mine_files = {f["path"]: f for f in mine["write_files"]}
    seed_files = {f["path"]: f for f in seed["write_files"]}
    assert mine_files.keys() == seed_files.keys()
    for path, theirs in seed_files.items():
        ours = mine_files[path]
        assert ours["content"] == theirs["content"], path
        assert ours["owner"] == theirs["owner"], path
        assert ours["permissions"] & ~theirs["permissions"] == 0, f"{path}: permissions loosened"
    for key in ("etcd2", "fleet", "update"):
        assert mine["coreos"][key] == seed["coreos"][key], key
    ours_units, seed_units = mine["coreos"]["units"], seed["coreos"]["units"]
    assert [u["name"] for u in ours_units] == [u["name"] for u in seed_units]
    for ours, theirs in zip(ours_units, seed_units, strict=True):
        assert ours["command"] == theirs["command"], ours["name"]
        assert ("content" in ours) == ("content" in theirs), ours["name"]
        if "content" not in theirs:
            continue
        got, want = normalized_unit(ours["content"]), normalized_unit(theirs["content"])
        if ours["name"] == "calico-node.service" and "ExecStartPre" in got["Service"]:
            assert got["Service"].pop("ExecStartPre") == [POOL_ADD]
        assert got == want, ours["name"]


def test_default_render_is_equivalent_to_the_seed(tmp_path):
    config = make_config(tmp_path)
    render.render_all(project(config))
    out = tmp_path / "out"
    assert_equivalent(rendered(out, "calico-01"), seed_config("master", "calico-01", "172.18.18.101"))
    for i in (2, 3):
        name, ip = f"calico-0{i}", f"172.18.18.10{i}"
        assert_equivalent(rendered(out, name), seed_config("node", name, ip))
    assert sorted(p.name for p in (out / "nodes").iterdir()) == ["calico-01.yaml", "calico-02.yaml", "calico-03.yaml"]


def test_equivalence_check_catches_a_changed_flag(tmp_path):
    """The comparison itself must fail on a real difference, or it proves nothing."""
    render.render_all(project(make_config(tmp_path)))
    mine = rendered(tmp_path / "out", "calico-02")
    unit = next(u for u in mine["coreos"]["units"] if u["name"] == "kubelet.service")
    unit["content"] = unit["content"].replace("--cluster-dns=10.100.0.10", "--cluster-dns=10.100.0.11")
    with pytest.raises(AssertionError):
        assert_equivalent(mine, seed_config("node", "calico-02", "172.18.18.102"))


def test_render_starts_with_cloud_config_header(tmp_path):
    render.render_all(project(make_config(tmp_path)))
    for path in (tmp_path / "out" / "nodes").iterdir():
        assert path.read_text().startswith("#cloud-config\n"), path


@pytest.mark.parametrize("count", [1, 3, 20])
def test_any_number_of_nodes(tmp_path, count):
    config = make_config(tmp_path, cluster={"num_instances": count, "first_ip": "10.9.8.7", "network": "10.9.8.0/24"})
    render.render_all(project(config))
    out = tmp_path / "out"
    names = [f"calico-{i:02d}" for i in range(1, count + 1)]
    assert sorted(p.stem for p in (out / "nodes").iterdir()) == names
    master = rendered(out, "calico-01")
    assert master["coreos"]["fleet"]["metadata"] == "role=master"
    assert master["coreos"]["etcd2"]["advertise-client-urls"] == "http://10.9.8.7:2379"
    for i, name in enumerate(names[1:], start=1):
        node = rendered(out, name)
        ip = f"10.9.8.{7 + i}"
        assert node["hostname"] == name
        assert node["coreos"]["etcd2"] == {
            "proxy": True,
            "listen-client-urls": "http://localhost:2379",
            "initial-cluster": "etcdserver=http://10.9.8.7:2380",
        }
        units = {u["name"]: u.get("content", "") for u in node["coreos"]["units"]}
        assert "ETCD_AUTHORITY=10.9.8.7:2379" in units["calico-node.service"]
        assert f"--ip={ip} " in units["calico-node.service"]
        assert "--api-servers=http://10.9.8.7:8080" in units["kubelet.service"]
        assert f"--hostname-override={ip}" in units["kubelet.service"]
        assert "kube-apiserver.service" not in units
    description = json.loads((out / "cluster.json").read_text())
    assert [n["name"] for n in description["nodes"]] == names
    assert [n["role"] for n in description["nodes"]] == ["master"] + ["node"] * (count - 1)
    assert description["nodes"][-1]["ip"] == f"10.9.8.{7 + count - 1}"


def test_description_carries_vm_settings(tmp_path):
    config = make_config(tmp_path, vm={"memory": 1024, "cpus": 1, "box": "mybox", "images": ["nginx:1"]})
    render.render_all(project(config))
    description = json.loads((tmp_path / "out" / "cluster.json").read_text())
    node = description["nodes"][1]
    assert (node["memory"], node["cpus"], node["box"], node["ip"]) == (1024, 1, "mybox", "172.18.18.102")
    assert description["images"] == ["nginx:1", "shenshouer/pause:0.8.0", "calico/node:v0.15.0"]
    assert description["timezone"] == "Asia/Shanghai"


def test_values_follow_the_configuration(tmp_path):
    config = make_config(
        tmp_path,
        kubernetes={
            "service_range": "10.32.0.0/24",
            "dns_ip": "10.32.0.53",
            "domain": "k8s.example",
            "pause_image": "pause:9",
        },
    )
    render.render_all(project(config))
    units = {u["name"]: u.get("content", "") for u in rendered(tmp_path / "out", "calico-01")["coreos"]["units"]}
    assert "--service-cluster-ip-range=10.32.0.0/24" in units["kube-apiserver.service"]
    assert "--cluster-dns=10.32.0.53" in units["kubelet.service"]
    assert "--cluster-domain=k8s.example" in units["kubelet.service"]
    assert '--pod-infra-container-image="pause:9"' in units["kubelet.service"]


def test_network_environment(tmp_path):
    render.render_all(project(make_config(tmp_path, cluster={"first_ip": "172.18.18.50"})))
    text = (tmp_path / "out" / "network-environment").read_text()
    assert "KUBERNETES_MASTER=172.18.18.50\n" in text
    assert "ETCD_AUTHORITY=172.18.18.50:2379\n" in text
    assert "KUBE_API_ROOT=http://172.18.18.50:8080/api/v1/\n" in text
    assert "CALICO_IPAM=true\n" in text


def snapshot(folder):
    return {
        p: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_render_twice_changes_nothing(tmp_path):
    config = make_config(tmp_path)
    render.render_all(project(config))
    before = snapshot(tmp_path / "out")
    changed, pki_changed = render.render_all(project(config))
    assert (changed, pki_changed) == ([], [])
    assert snapshot(tmp_path / "out") == before


def test_fewer_nodes_removes_stale_cloud_configs(tmp_path):
    render.render_all(project(make_config(tmp_path, cluster={"num_instances": 5})))
    render.render_all(project(make_config(tmp_path, cluster={"num_instances": 2})))
    assert sorted(p.stem for p in (tmp_path / "out" / "nodes").iterdir()) == ["calico-01", "calico-02"]


def test_a_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    """Atomic writes: an error in the middle of writing keeps the previous file, and no temp file."""
    config = make_config(tmp_path)
    render.render_all(project(config))
    target = tmp_path / "out" / "nodes" / "calico-02.yaml"
    before = target.read_bytes()
    config["kubernetes"]["domain"] = "other.local"

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        render.render_all(project(config))
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert not [p for p in (tmp_path / "out").rglob("*.tmp")]


def test_inv_render_prints_a_table_and_is_quiet_on_rerun(tmp_path):
    config = make_config(tmp_path)
    first = run_inv(tmp_path, "render", config=config)
    assert first.returncode == 0, first.stderr
    assert "calico-01\tmaster\t172.18.18.101\tnodes/calico-01.yaml" in first.stdout
    assert "calico-03\tnode\t172.18.18.103" in first.stdout
    assert "pki/server.cert" in first.stdout
    second = run_inv(tmp_path, "render", config=config)
    assert second.returncode == 0, second.stderr
    assert "Nothing changed" in second.stdout


def test_user_data_paths_in_description_exist(tmp_path):
    config = make_config(tmp_path)
    cluster = project(config).cluster
    render.render_all(project(config))
    description = json.loads((tmp_path / "out" / "cluster.json").read_text())
    for node in description["nodes"]:
        assert (tmp_path / "out" / node["user_data"]).is_file()
    assert description["master"] == cluster.master.name == "calico-01"
    assert project(config).output_dir == tmp_path / "out"

"""The test kit itself: seed files under CI, the `nodes` marker."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pytest

import conftest


@pytest.fixture
def no_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "SEED", tmp_path / "missing-seed")
    return tmp_path / "missing-seed" / "post.txt"


def test_a_missing_seed_file_skips_outside_ci(no_seed, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        conftest.seed_file("post.txt")
    assert str(skipped.value) == f"{no_seed} is not there: the seed procedure must sit beside this checkout"


@pytest.mark.parametrize("value", ["", "false", "1"])
def test_only_ci_true_counts_as_ci(no_seed, monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception):
        conftest.seed_file("post.txt")


def test_a_missing_seed_file_fails_under_ci(no_seed, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception) as failed:
        conftest.seed_file("post.txt")
    assert str(failed.value) == f"{no_seed} is not there: the seed procedure must sit beside this checkout"


def test_a_present_seed_file_is_returned_under_ci(tmp_path, monkeypatch):
    (tmp_path / "post.txt").write_text("seed")
    monkeypatch.setattr(conftest, "SEED", tmp_path)
    monkeypatch.setenv("CI", "true")
    assert conftest.seed_file("post.txt") == tmp_path / "post.txt"


def test_tests_using_the_sshd_nodes_are_marked_nodes():
    def item(*fixtures):
        marks: list = []
        return SimpleNamespace(fixturenames=list(fixtures), marks=marks, add_marker=marks.append)

    direct, indirect, other = item("tmp_path", "ssh_nodes"), item("installed", "ssh_cluster"), item("config")
    conftest.pytest_collection_modifyitems([direct, indirect, other])
    assert [[m.name for m in i.marks] for i in (direct, indirect, other)] == [["nodes"], ["nodes"], []]


def on_node(nodes, name: str, command: str) -> subprocess.CompletedProcess:
    """`command` as root on node `name`, through its real sshd."""
    return subprocess.run(
        ["ssh", "-i", str(nodes.key_file(name)), "-p", str(nodes.port), "-o", "StrictHostKeyChecking=no"]
        + ["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"core@{nodes.addresses[name]}"]
        + [f"sudo sh -c '{command}'"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_nodes_have_folders_of_their_own_and_share_the_pretend_clusters(ssh_nodes):
    written = on_node(
        ssh_nodes,
        "calico-01",
        "echo unit > /etc/systemd/system/kubelet.service && echo etcd > /var/lib/etcd/member"
        " && echo cluster > /var/lib/standin-cluster/cluster.json",
    )
    assert written.returncode == 0, written.stderr

    assert ssh_nodes.path("calico-01", "/etc/systemd/system/kubelet.service").read_text() == "unit\n"
    assert ssh_nodes.path("calico-01", "/var/lib/etcd/member").read_text() == "etcd\n"
    assert (
        ssh_nodes.path("calico-03", "/var/lib/standin-cluster/cluster.json") == ssh_nodes.shared_dir() / "cluster.json"
    )
    seen = on_node(
        ssh_nodes, "calico-02", "cat /var/lib/standin-cluster/cluster.json; ls /etc/systemd/system /var/lib/etcd"
    )
    assert (seen.returncode, seen.stdout) == (0, "cluster\n/etc/systemd/system:\n\n/var/lib/etcd:\n")


def test_reset_empties_the_shared_folder_too(ssh_cluster):
    (ssh_cluster.shared_dir() / "cluster.json").write_text("{}")
    ssh_cluster.reset()
    assert list(ssh_cluster.shared_dir().iterdir()) == []

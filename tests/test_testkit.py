"""The test kit itself: seed files under CI, the `nodes` marker."""

from __future__ import annotations

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

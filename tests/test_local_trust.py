"""Local files and configuration: nothing half-written, nothing foreign touched, every bad source one line.

`-f FILE` and INVOKE_* are read by Invoke itself, before any task runs, so
those tests run the real `inv` as a process.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, make_config, project, run_inv, start_inv
from tasks import errors, files, render, settings


def inv_process(*args: str, env: dict | None = None):
    """A real `inv ARGS` process in the project folder, with no test configuration file of its own."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env
    )


def one_line(done) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


# -- -f FILE and INVOKE_* ------------------------------------------------------------


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("broken.yaml", "cluster: [1,\n", "invalid configuration file {path}: "),
        ("list.yaml", "- cluster\n", "invalid configuration file {path}: expected a mapping of settings"),
        ("notes.txt", "cluster: {}\n", "invalid configuration file {path}: expected a .yaml, .yml, .json or .py file"),
    ],
)
def test_a_bad_f_file_is_one_line_and_exit_2(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    done = inv_process("-f", str(path), "config")
    assert done.returncode == 2
    assert one_line(done).startswith(message.format(path=path))
    assert done.stdout == ""


def test_a_missing_f_file_is_refused_not_ignored(tmp_path):
    missing = tmp_path / "nope.yaml"
    done = inv_process("-f", str(missing), "config")
    assert done.returncode == 2
    assert one_line(done) == f"invalid configuration: -f = '{missing}': expected an existing configuration file"


def test_an_f_path_that_is_a_folder_is_one_line(tmp_path):
    done = inv_process("-f", str(tmp_path), "config")
    assert done.returncode == 2
    assert one_line(done).startswith(f"invalid configuration file {tmp_path}")


@pytest.mark.parametrize(
    "variable,value,message",
    [
        (
            "INVOKE_CLUSTER_NUM_INSTANCES",
            "three",
            "invalid configuration: INVOKE_CLUSTER_NUM_INSTANCES = 'three': expected a whole number",
        ),
        (
            "INVOKE_DOWNLOAD_ALLOW_HTTP",
            "false",  # Invoke would read it as true
            "invalid configuration: INVOKE_DOWNLOAD_ALLOW_HTTP = 'false': expected 1 (true) or 0 (false)",
        ),
        (
            "INVOKE_CLUSTER_NUMINSTANCES",
            "4",
            "invalid configuration: INVOKE_CLUSTER_NUMINSTANCES = '4': expected INVOKE_<SECTION>_<KEY> naming a key of "
            "invoke.yaml, like INVOKE_CLUSTER_NUM_INSTANCES",
        ),
    ],
)
def test_bad_environment_variables_are_one_line_and_exit_2(tmp_path, variable, value, message):
    env = dict(os.environ, **{variable: value})
    done = run_inv(tmp_path, "render", config=make_config(tmp_path), env=env, process=True)
    assert done.returncode == 2
    assert one_line(done).startswith(message)
    assert not (tmp_path / "out").exists()


def test_a_list_a_file_sets_is_refused_from_the_environment_not_ignored(tmp_path):
    config = {"paths": make_config(tmp_path)["paths"], "cluster": {"hosts": [{"name": "a", "address": "127.0.0.1"}]}}
    env = dict(os.environ, INVOKE_CLUSTER_HOSTS="[]")
    done = run_inv(tmp_path, "config", config=config, env=env, process=True)
    assert done.returncode == 2
    assert one_line(done) == (
        "invalid configuration: INVOKE_CLUSTER_HOSTS = '[]': expected no value: "
        "a configuration file sets cluster.hosts: change it there"
    )


def test_a_mapping_a_file_sets_is_refused_from_the_environment_not_ignored(tmp_path):
    config = {"paths": make_config(tmp_path)["paths"], "download": {"mirrors": {"https://a.example/": "https://b/"}}}
    env = dict(os.environ, INVOKE_DOWNLOAD_MIRRORS="{}")
    done = run_inv(tmp_path, "config", config=config, env=env)
    assert done.returncode == 2
    assert one_line(done) == (
        "invalid configuration: INVOKE_DOWNLOAD_MIRRORS = '{}': expected no value: "
        "a configuration file sets download.mirrors: change it there"
    )


def test_every_list_and_mapping_is_read_from_the_environment_as_yaml(tmp_path):
    env = dict(
        os.environ,
        INVOKE_CLUSTER_PROVIDER="hosts",
        INVOKE_CLUSTER_HOSTS="[{name: calico-01, address: 127.0.0.1, port: 2222}]",
        INVOKE_DOWNLOAD_MIRRORS="{'https://github.com/': 'https://mirror.example/gh/'}",
        INVOKE_ADDONS_MANIFESTS="[busybox.yaml]",
    )
    done = run_inv(tmp_path, "config", config={"paths": make_config(tmp_path)["paths"]}, env=env)
    assert done.returncode == 0, done.stderr
    values = yaml.safe_load(done.stdout)
    assert values["cluster"]["hosts"] == [{"name": "calico-01", "address": "127.0.0.1", "port": 2222}]
    assert values["download"]["mirrors"] == {"https://github.com/": "https://mirror.example/gh/"}
    assert values["addons"]["manifests"] == ["busybox.yaml"]


@pytest.mark.parametrize(
    "variable,value,message",
    [
        ("INVOKE_DOWNLOAD_MIRRORS", "[https://a/]", "download.mirrors = ['https://a/']: expected a mapping"),
        ("INVOKE_DOWNLOAD_MIRRORS", "{a: [", "download.mirrors = '{a: [': expected a YAML mapping"),
        ("INVOKE_CLUSTER_HOSTS", "[{name: a, adress: b}]", "cluster.hosts[0].adress = 'b': expected one of name"),
        ("INVOKE_VM_IMAGES", "busybox", "vm.images = 'busybox': expected a list"),
    ],
)
def test_lists_and_mappings_from_the_environment_are_checked_like_a_file(tmp_path, variable, value, message):
    env = dict(os.environ, **{variable: value})
    config = {"stack": "seed", "paths": make_config(tmp_path)["paths"]}  # the stack with vm.images
    done = run_inv(tmp_path, "render", config=config, env=env)
    assert done.returncode == 2
    assert one_line(done).startswith(f"invalid configuration: {message}")
    assert not (tmp_path / "out").exists()


def test_an_environment_value_a_f_file_overrides_is_said(tmp_path):
    config = make_config(tmp_path)
    env = dict(os.environ, INVOKE_CLUSTER_NUM_INSTANCES="5")
    done = run_inv(tmp_path, "config", config=config, env=env)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["cluster"]["num_instances"] == 3
    assert done.stderr == (
        f"note: INVOKE_CLUSTER_NUM_INSTANCES is not used: -f {tmp_path / 'test-config.yaml'} "
        "sets cluster.num_instances, and a -f file comes first\n"
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (("download", "--parallel", "abc"), "--parallel 'abc': expected a whole number"),
        (("download", "--parallel=2.5"), "--parallel '2.5': expected a whole number"),
        (("download", "-p", "x"), "--parallel 'x': expected a whole number"),
        (("up", "--timeout", "abc"), "--timeout 'abc': expected a number of seconds, 0 or more"),
        (("addons", "--timeout", "-1"), "--timeout '-1': expected a number of seconds, 0 or more"),
        (("verify", "--timeout", "soon"), "--timeout 'soon': expected a number of seconds, 0 or more"),
    ],
)
def test_a_bad_flag_value_is_one_line_and_exit_2(tmp_path, args, message):
    # A real process: Invoke casts a flag's value while parsing the command line, before any task.
    done = run_inv(tmp_path, *args, config=make_config(tmp_path), process=True)
    assert done.returncode == 2
    assert one_line(done) == message
    assert done.stdout == ""
    assert not (tmp_path / "out").exists()


def test_a_list_over_a_null_default_is_read_as_yaml(tmp_path):
    env = dict(os.environ, INVOKE_VM_IMAGES="[busybox:latest, nginx:1.9]")
    config = {"stack": "seed", "paths": make_config(tmp_path)["paths"]}  # the stack with vm.images
    done = run_inv(tmp_path, "config", config=config, env=env)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["vm"]["images"] == ["busybox:latest", "nginx:1.9"]


def test_a_loading_error_elsewhere_is_not_taken_for_a_configuration_error():
    try:
        raise ValueError("something else")
    except ValueError as err:
        assert errors.loading_problem(err) is None


# -- where output goes ------------------------------------------------------------


@pytest.mark.parametrize("value", ["/", str(ROOT), str(ROOT.parent), "."])
def test_output_may_not_be_the_project_a_folder_above_or_root(tmp_path, value):
    config = make_config(tmp_path)
    config["paths"]["output"] = value
    with pytest.raises(
        settings.ConfigError, match=r"^invalid configuration: paths\.output = .*: expected a folder of its own"
    ):
        settings.build(config)


def test_downloads_apart_from_output(tmp_path):
    config = make_config(tmp_path)
    config["paths"]["downloads"] = str(tmp_path / "out" / "downloads")
    with pytest.raises(settings.ConfigError, match="paths.downloads = .*: expected a folder apart from paths.output"):
        settings.build(config)


def test_render_refuses_a_folder_of_other_files_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    done = run_inv(tmp_path, "render", config=make_config(tmp_path))
    assert done.returncode == 1
    assert one_line(done) == (
        f"paths.output {out} holds files `inv render` did not write (thesis.tex): choose a new or empty folder"
    )
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_render_removes_only_what_it_wrote(tmp_path):
    config = make_config(tmp_path, cluster={"num_instances": 3})
    render.render_all(project(config))
    out = tmp_path / "out"
    (out / "nodes" / "notes.yaml").write_text("mine")
    config["cluster"]["num_instances"] = 2
    changed, _ = render.render_all(project(config))
    assert "nodes/calico-03.yaml (removed)" in changed
    assert (out / "nodes" / "notes.yaml").read_text() == "mine"
    assert "nodes/calico-03.yaml" not in json.loads((out / render.MANIFEST).read_text())["files"]


def test_a_folder_rendered_before_manifests_is_still_ours(tmp_path):
    config = make_config(tmp_path, cluster={"num_instances": 3})
    render.render_all(project(config))
    (tmp_path / "out" / render.MANIFEST).unlink()
    config["cluster"]["num_instances"] = 2
    changed, _ = render.render_all(project(config))
    assert "nodes/calico-03.yaml (removed)" in changed


# -- one run at a time ----------------------------------------------------------------


def test_a_second_run_waits_for_the_first(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    holder = os.open(folder / files.LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    threading.Timer(0.5, os.close, args=(holder,)).start()
    started = time.monotonic()
    done = run_inv(tmp_path, "render", "--quiet", config=make_config(tmp_path))
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started >= 0.5
    assert (folder / "cluster.json").is_file()


def test_a_second_run_gives_up_naming_the_first(tmp_path):
    folder = tmp_path / "out"
    with files.folder_lock(folder, "render"):
        with pytest.raises(errors.StepError) as err, files.folder_lock(folder, "render", wait=0.3):
            pass
    assert str(err.value) == (
        f"{folder} is in use by `inv render` (process {os.getpid()}): wait until it ends, or stop it, "
        "and run `inv render` again"
    )


# -- certificates ---------------------------------------------------------------------


def test_a_ca_key_that_does_not_match_its_certificate_stops_render(tmp_path):
    config = make_config(tmp_path)
    render.render_all(project(config))
    pki = tmp_path / "out" / "pki"
    other = make_config(tmp_path / "other")
    render.render_all(project(other))
    (pki / "ca.key").write_bytes((tmp_path / "other" / "out" / "pki" / "ca.key").read_bytes())
    before = {p.name: p.read_bytes() for p in pki.iterdir()}
    done = run_inv(tmp_path, "render", config=config)
    assert done.returncode == 1
    assert one_line(done).startswith(f"{pki / 'ca.key'} does not match {pki / 'ca.crt'}: restore the pair")
    assert {p.name: p.read_bytes() for p in pki.iterdir()} == before


# -- configured words -----------------------------------------------------------------


@pytest.mark.parametrize(
    "section,key,value",
    [
        ("versions", "kubernetes", "v1.1.7\n"),
        ("versions", "kubernetes", "v1.1.7; rm -rf /"),
        ("vm", "box", "coreos-alpha-928.0.0\n"),
        ("vm", "timezone", "Asia/Shanghai\n"),
        ("kubernetes", "domain", "cluster.local\n"),
        ("cluster", "user_data_path", "/var/lib/user data"),
        ("cluster", "user_data_path", "/var/lib/user-data\n"),
        ("kubernetes", "pause_image", "shenshouer/pause:0.8.0\n"),
    ],
)
def test_a_word_with_a_newline_or_shell_characters_never_passes(tmp_path, section, key, value):
    config = make_config(tmp_path, **{section: {key: value}})
    with pytest.raises(settings.ConfigError, match=rf"^invalid configuration: {section}\.{key} = "):
        settings.build(config)


def test_time_zones_are_checked_without_a_time_zone_database(tmp_path, monkeypatch):
    monkeypatch.setattr(settings.zoneinfo, "available_timezones", lambda: set())
    assert settings.build(make_config(tmp_path, vm={"timezone": "America/Argentina/Buenos_Aires"}))
    for bad in ("../../etc/passwd", "Asia/Shanghai\n", "Asia Shanghai"):
        with pytest.raises(settings.ConfigError, match="vm.timezone"):
            settings.build(make_config(tmp_path, vm={"timezone": bad}))


# -- Ctrl-C -----------------------------------------------------------------------------


def test_ctrl_c_in_a_task_is_one_line_and_exit_130():
    from invoke import Exit

    @errors.exits
    def download(c):
        raise KeyboardInterrupt

    with pytest.raises(Exit) as err:
        download(None)
    assert (err.value.code, err.value.message) == (130, "download: interrupted; run `inv download` again to resume")


def test_ctrl_c_during_a_real_download_exits_130_and_keeps_nothing_half_written(tmp_path):
    """A real `inv download` process, interrupted with SIGINT while a slow loopback server sends a file."""
    import signal

    from test_download import FileServer, url_path

    with FileServer() as srv:
        config = make_config(tmp_path)
        config["download"].update(
            {
                "artifacts": [
                    {"name": "kubectl", "url": "https://example.invalid/k/kubectl", "dest": "/opt/bin", "mode": "0755"}
                ],
                "mirrors": {"https://example.invalid/": srv.base + "/"},
                "lock_file": str(tmp_path / "downloads.lock"),
                "retries": 1,
                "allow_http": True,
            }
        )
        srv.files[url_path("https://example.invalid/k/kubectl")] = b"x" * 4_000_000
        srv.rate = 200_000  # bytes per second: the download takes 20 s
        proc = start_inv(config, tmp_path, "download", "--trust-first-use")
        downloads = tmp_path / "downloads"
        deadline = time.monotonic() + 20
        while not list(downloads.glob("kubectl.*.part")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "download: interrupted; run `inv download` again to resume"
    assert "Traceback" not in stderr
    assert not (downloads / "kubectl").exists()
    assert list(downloads.glob("kubectl.*.part"))  # kept: the next run resumes it


def test_lock_file_written_by_the_run_holds_its_name(tmp_path):
    folder = tmp_path / "x"
    with files.folder_lock(folder, "download"):
        assert (folder / files.LOCK).read_text() == f"`inv download` (process {os.getpid()})\n"
    assert Path(folder / files.LOCK).exists()


def test_download_refuses_a_folder_of_other_files(tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "holiday.jpg").write_bytes(b"mine")
    done = run_inv(tmp_path, "download", config=make_config(tmp_path))
    assert done.returncode == 1
    assert one_line(done) == (
        f"paths.downloads {downloads} holds files `inv download` did not write (holiday.jpg): "
        "choose a new or empty folder"
    )
    assert sorted(p.name for p in downloads.iterdir()) == ["holiday.jpg"]


def test_files_of_artifacts_no_longer_configured_stay_ours(tmp_path):
    from tasks import download

    config = make_config(tmp_path)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "old-tool").write_bytes(b"x")
    (downloads / download.CACHE).write_text(json.dumps({"old-tool": [1, 2, 3, "0" * 64]}))
    (downloads / "kubectl.0123abcd.part").write_bytes(b"half")
    assert download.strangers(project(config)) == []
    (downloads / "notes.txt").write_text("mine")
    assert download.strangers(project(config)) == ["notes.txt"]

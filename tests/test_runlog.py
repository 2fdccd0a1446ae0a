"""The run log, `<paths.output>/inv.log`: every command with where it ran, its exit status and output, secrets redacted.

Remote commands run on the real sshd nodes of tests/sshnodes.py through the
`Nodes` group every task uses; `vagrant` is the real Vagrant CLI (VirtualBox
is not installed here, so it fails with its own message).
"""

from __future__ import annotations

import os

import pytest
from invoke import UnexpectedExit

from conftest import ROOT, make_config, project, run_inv
from tasks import render, runlog
from test_nodes import context, group

KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----"
)
TOKEN = "abcdef.0123456789abcdef"


def test_every_remote_command_is_logged_with_its_node_exit_status_and_output(ssh_nodes):
    config = ssh_nodes.config
    with group(context(config)) as conns:
        conns.run(lambda name, conn: conn.run("echo out; echo err >&2; exit 3", hide=True, warn=True))
        with pytest.raises(UnexpectedExit):
            conns.conn("calico-02").run("echo failing >&2; false", hide=True)
    log = (project(config).output_dir / runlog.LOG).read_text()
    assert log.startswith("=== ")
    for name in ssh_nodes.names:
        where = f"{name} ({ssh_nodes.addresses[name]}:{ssh_nodes.port}): exit 3"
        assert f"{where}\n$ echo out; echo err >&2; exit 3\nstdout:\n  out\nstderr:\n  err\n" in log
    assert f"calico-02 ({ssh_nodes.addresses['calico-02']}:{ssh_nodes.port}): exit 1\n$ echo failing" in log
    assert log.count("\n--- ") == 4


def test_a_command_that_does_not_finish_is_logged_with_why(ssh_nodes):
    config = ssh_nodes.config
    ssh_nodes.stop("calico-03")
    with group(context(config), ["calico-03"]) as conns:
        conns.attempt(lambda name, conn: conn.run("hostname", hide=True))
    log = (project(config).output_dir / runlog.LOG).read_text()
    assert ": not finished: connection refused (is sshd running?)\n$ hostname\n" in log


def test_secrets_never_reach_the_log(ssh_nodes):
    config = ssh_nodes.config
    printed = f"printf '%s\\n' '{KEY}' 'token: s3cr3t-value' 'client-key-data: LS0tLS1CRUdJTg=='"
    with group(context(config), ["calico-01"]) as conns:
        conns.run(
            lambda name, conn: conn.run(f"{printed}; kubeadm join --token {TOKEN} 2>/dev/null", warn=True, hide=True)
        )
    log = (project(config).output_dir / runlog.LOG).read_text()
    for secret in ("b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ", "s3cr3t-value", "LS0tLS1CRUdJTg==", TOKEN):
        assert secret not in log
    assert "token: [redacted]" in log and "client-key-data: [redacted]" in log
    assert "--token [redacted]" in log


def test_redact_keeps_everything_else():
    text = f"ok line\n{KEY}\nnode calico-02 Ready\n--token={TOKEN}\npassword=hunter2 done"
    assert (
        runlog.redact(text) == "ok line\n[redacted]\nnode calico-02 Ready\n--token=[redacted]\npassword=[redacted] done"
    )


def test_vagrant_commands_are_logged_with_vagrants_message(tmp_path):
    config = make_config(tmp_path)
    render.render_all(project(config))
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "vagrant.d"), VAGRANT_CHECKPOINT_DISABLE="1")
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if not os.path.exists(os.path.join(p, "VBoxManage")))
    done = run_inv(tmp_path, "status", config=config, env=env)
    assert done.returncode == 1
    log = (tmp_path / "out" / runlog.LOG).read_text()
    assert f"host: exit 1\n$ cd {ROOT} && vagrant status --machine-readable\nstdout:\n" in log
    assert "No usable default provider could be found" in log
    # The folder is still render's: the log is one of the files render expects there.
    assert run_inv(tmp_path, "render", config=config).returncode == 0


def test_a_long_log_is_moved_aside_when_a_run_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(runlog, "MAX_BYTES", 100)
    monkeypatch.setattr(runlog, "_started", set())
    (tmp_path / runlog.LOG).write_text("old\n" * 100)
    runlog.record(tmp_path, "host", "true", "exit 0")
    runlog.record(tmp_path, "host", "false", "exit 1")
    assert (tmp_path / runlog.OLD).read_text() == "old\n" * 100
    log = (tmp_path / runlog.LOG).read_text()
    assert log.startswith("=== ") and log.count("=== ") == 1 and log.count("\n--- ") == 2


def test_a_log_that_cannot_be_written_is_noted_and_the_work_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runlog, "_started", set())
    (tmp_path / runlog.LOG).mkdir()  # a folder where the file should be
    runlog.record(tmp_path, "host", "true", "exit 0")
    assert "cannot be written" in capsys.readouterr().err


def test_a_real_inv_run_logs_its_command_line_and_commands(ssh_nodes, tmp_path):
    done = run_inv(tmp_path, "status", config=ssh_nodes.config, process=True)
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "out" / runlog.LOG).read_text()
    assert log.startswith("=== ") and f"inv -f {tmp_path / 'test-config.yaml'} status (process " in log.splitlines()[0]
    assert log.count(": exit 0\n$ true\n") == 3

"""`inv up`, `status`, `ssh`, `destroy` through the real `inv`.

Provider `hosts` runs against the real OpenSSH nodes of tests/sshnodes.py.
Provider `vagrant` cannot start VirtualBox VMs here, so two stand-ins are used:
the real Vagrant with a stand-in `VBoxManage` that only answers `--version`
(enough for `vagrant status` and `vagrant destroy` on machines not created), and,
where VMs must exist, a stand-in `vagrant` program that logs its arguments and
answers `ssh-config` with the sshd nodes' details (tests/test_nodes.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, make_config, project, run_inv
from tasks import providers, render
from test_nodes import known_entry, known_hosts_file, logins, ssh_fingerprint, stand_in_vagrant

MACHINE_READABLE = """\
1795838515,calico-01,metadata,provider,virtualbox
1795838515,calico-01,provider-name,virtualbox
1795838515,calico-01,state,running
1795838515,calico-01,state-human-short,running
1795838515,calico-02,state,poweroff
1795838515,calico-03,state,not_created
1795838515,calico-03,state-human-long,The environment has not yet been created. Run `vagrant up` to\\ncreate
1795838515,,ui,info,Current machine states:\\n\\ncalico-01                 running (virtualbox)
"""


@pytest.fixture
def vagrant_env(tmp_path):
    """Render the default (vagrant) cluster into tmp_path; PATH with a stand-in VBoxManage."""
    config = make_config(tmp_path)
    render.render_all(project(config))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "VBoxManage").write_text("#!/bin/sh\necho 7.0.14r161095\n")
    (bin_dir / "VBoxManage").chmod(0o755)
    # VirtualBox 6.1.28+ takes the seed's 172.18.18.0/24 for a host-only network once networks.conf lists it.
    (tmp_path / "networks.conf").write_text("* 172.18.18.0/24 192.168.56.0/21\n")
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        VAGRANT_HOME=str(tmp_path / "vagrant.d"),
        VAGRANT_CHECKPOINT_DISABLE="1",
        VAGRANT_DOTFILE_PATH=str(tmp_path / "dot-vagrant"),
        INV_VBOX_NETWORKS_CONF=str(tmp_path / "networks.conf"),
    )
    return config, env, bin_dir


def table_rows(stdout: str) -> dict[str, list[str]]:
    return {
        line.split("\t")[0]: line.split("\t")[1:]
        for line in stdout.splitlines()
        if line.startswith("calico-") and "\t" in line
    }


def test_up_with_hosts_waits_for_every_node(ssh_nodes, tmp_path):
    done = run_inv(tmp_path, "up", "--timeout", "20", "--no-copy", config=ssh_nodes.config)
    assert done.returncode == 0, done.stderr
    assert "3 node(s) answer over SSH: calico-01, calico-02, calico-03" in done.stdout


def test_up_copies_to_every_node_by_default(ssh_nodes, tmp_path):
    """`inv download render up` leaves each node with its files and its cloud-config, as the seed's provisioners did."""
    from standin_cluster import prepare

    prepare(ssh_nodes.config)
    done = run_inv(tmp_path, "up", "--timeout", "20", config=ssh_nodes.config)
    assert done.returncode == 0, done.stderr
    for name in ("calico-01", "calico-02", "calico-03"):
        assert ssh_nodes.path(name, "/opt/bin/kubelet").is_file()
        user_data = ssh_nodes.path(name, "/var/lib/coreos-vagrant/vagrantfile-user-data").read_text()
        assert f"hostname: {name}" in user_data


def test_up_checks_render_and_download_before_starting_anything(ssh_nodes, tmp_path):
    render.render_all(project(ssh_nodes.config))
    done = run_inv(tmp_path, "up", "--timeout", "20", config=ssh_nodes.config)
    assert done.returncode == 1
    assert "is missing: run `inv download` first" in done.stderr
    assert "answer over SSH" not in done.stdout


def test_up_times_out_naming_the_node_that_does_not_answer(ssh_nodes, tmp_path):
    ssh_nodes.stop("calico-03")
    done = run_inv(tmp_path, "up", "--timeout", "2", "--no-copy", config=ssh_nodes.config)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "waiting 2 s for SSH failed on 1 node(s):",
        f"  calico-03 (127.0.0.3:{ssh_nodes.port}): connection refused (is sshd running?)",
    ]


def test_up_with_vagrant_starts_the_vms_then_waits_for_ssh(ssh_nodes, vagrant_env, tmp_path):
    config, env, bin_dir = vagrant_env
    calls = stand_in_vagrant(bin_dir, ssh_nodes)
    done = run_inv(tmp_path, "up", "--no-copy", config=config, env=env)
    assert done.returncode == 0, done.stderr
    assert "vagrant up: stand-in output" in done.stdout  # Vagrant's output streams through
    log = calls.read_text().splitlines()
    assert [line for line in log if not line.startswith("CLUSTER_DESCRIPTION=")] == [
        "up",
        "ssh-config calico-01 calico-02 calico-03",
    ]
    assert f"CLUSTER_DESCRIPTION={tmp_path / 'out' / 'cluster.json'}" in log


def test_up_reports_a_failed_vagrant_up(ssh_nodes, vagrant_env, tmp_path):
    config, env, bin_dir = vagrant_env
    stand_in_vagrant(bin_dir, ssh_nodes, exit_code=1)
    done = run_inv(tmp_path, "up", "--no-copy", config=config, env=env)
    assert done.returncode == 1
    assert done.stderr.strip() == "`vagrant up` failed (its output is above)"


def test_up_without_vagrant_says_what_to_install(vagrant_env, tmp_path):
    config, env, bin_dir = vagrant_env
    env["PATH"] = str(bin_dir)  # VBoxManage only
    done = run_inv(tmp_path, "up", "--no-copy", config=config, env=env)
    assert done.returncode == 1
    assert done.stderr.strip() == providers.VAGRANT_INSTALL


def test_up_without_virtualbox_says_what_to_install(vagrant_env, tmp_path):
    config, env, bin_dir = vagrant_env
    (bin_dir / "VBoxManage").unlink()
    done = run_inv(tmp_path, "up", "--no-copy", config=config, env=env)
    assert done.returncode == 1
    assert done.stderr.strip() == providers.VIRTUALBOX_INSTALL


def test_up_without_render_says_run_render(tmp_path):
    done = run_inv(tmp_path, "up", config=make_config(tmp_path))
    assert done.returncode == 1
    assert done.stderr.strip() == f"{tmp_path / 'out' / 'cluster.json'} is missing: run `inv render` first"


def test_status_with_hosts_shows_each_node(ssh_nodes, tmp_path):
    ssh_nodes.stop("calico-02")
    done = run_inv(tmp_path, "status", config=ssh_nodes.config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == "node\tvm\tssh\trole\taddress"
    assert table_rows(done.stdout) == {
        "calico-01": ["-", "yes", "master", "127.0.0.1"],
        "calico-02": ["-", "no: connection refused (is sshd running?)", "node", "127.0.0.2"],
        "calico-03": ["-", "yes", "node", "127.0.0.3"],
    }


def test_status_with_vagrant_shows_machines_not_created(vagrant_env, tmp_path):
    """Real Vagrant reading the project's Vagrantfile; only VBoxManage is a stand-in."""
    config, env, _ = vagrant_env
    done = run_inv(tmp_path, "status", config=config, env=env)
    assert done.returncode == 0, done.stderr
    assert table_rows(done.stdout) == {
        "calico-01": ["not_created", "no: VM not running", "master", "172.18.18.101"],
        "calico-02": ["not_created", "no: VM not running", "node", "172.18.18.102"],
        "calico-03": ["not_created", "no: VM not running", "node", "172.18.18.103"],
    }


def test_status_shows_vagrants_whole_message_when_virtualbox_is_missing(vagrant_env, tmp_path):
    """Real Vagrant with no VirtualBox at all: its multi-line error reaches the user whole, commas and all
    (with --machine-readable Vagrant prints it escaped on stdout, not on stderr)."""
    config, env, bin_dir = vagrant_env
    (bin_dir / "VBoxManage").unlink()
    done = run_inv(tmp_path, "status", config=config, env=env)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[:2] == [
        "`vagrant status` failed; Vagrant says:",
        "  No usable default provider could be found for your system.",
    ]
    assert "  environments. Examples are VirtualBox, VMware, Hyper-V." in lines
    assert lines[-1] == "  error message for that particular provider."
    assert all(line.startswith("  ") and line.strip() for line in lines[1:])  # indented, no blank lines


@pytest.mark.parametrize("step", ["addons", "verify"])
def test_steps_on_the_nodes_show_vagrants_whole_message_when_the_vms_are_not_created(vagrant_env, tmp_path, step):
    """Real Vagrant, VirtualBox's VBoxManage a stand-in: `vagrant ssh-config` of machines never created."""
    config, env, _ = vagrant_env
    done = run_inv(tmp_path, step, config=config, env=env)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "`vagrant ssh-config` failed (are the VMs up? run `inv up`); Vagrant says:",
        "  The provider for this Vagrant-managed machine is reporting that it",
        "  is not yet ready for SSH. Depending on your provider this can carry",
        "  different meanings. Make sure your machine is created and running and",
        "  try again. Additionally, check the output of `vagrant status` to verify",
        "  that the machine is in the state that you expect. If you continue to",
        "  get this error message, please view the documentation for the provider",
        "  you're using.",
    ]


def test_vagrant_says_reads_the_machine_readable_error_exit():
    stdout = (
        "1795863223,,ui,error,ignored\n"
        "1795863223,,error-exit,Vagrant::Errors::Example,First line%!(VAGRANT_COMMA) still first.\\n\\nSecond line.\n"
    )
    assert providers.vagrant_says(stdout, "") == "First line, still first.\n\nSecond line."
    assert providers.vagrant_says("", "  plain text\n") == "plain text"


def test_parse_status_reads_each_machine_state():
    assert providers.parse_status(MACHINE_READABLE) == {
        "calico-01": "running",
        "calico-02": "poweroff",
        "calico-03": "not_created",
    }


def test_ssh_runs_a_command_on_the_node_and_passes_its_exit_status(ssh_nodes, tmp_path):
    # A real process: `inv ssh` replaces itself with ssh.
    done = run_inv(tmp_path, "ssh", "calico-02", "--command", "hostname; id -un", config=ssh_nodes.config, process=True)
    assert (done.returncode, done.stdout) == (0, "calico-02\ncore\n"), done.stderr
    failed = run_inv(tmp_path, "ssh", "calico-03", "-c", "exit 3", config=ssh_nodes.config, process=True)
    assert failed.returncode == 3


def test_ssh_logs_in_with_the_port_and_user_of_ssh_config_where_the_hosts_entry_leaves_them_out(
    ssh_nodes, home, tmp_path
):
    from test_nodes import ssh_config_hosts

    config = ssh_config_hosts(ssh_nodes, home, "nobody")  # nobody's shell refuses: proof of the user
    env = dict(os.environ, HOME=str(home))
    done = run_inv(tmp_path, "ssh", "calico-02", "-c", "id -un", config=config, env=env, process=True)
    assert done.returncode == 1
    assert "This account is currently not available." in done.stdout + done.stderr
    config = ssh_config_hosts(ssh_nodes, home, "core")
    done = run_inv(tmp_path, "ssh", "calico-02", "-c", "id -un", config=config, env=env, process=True)
    assert (done.returncode, done.stdout) == (0, "core\n"), done.stderr


def test_ssh_without_a_node_lists_the_nodes_and_how_to_log_in(tmp_path):
    config = make_config(tmp_path)
    config["cluster"].update(
        provider="hosts",
        hosts=[
            {"name": "m1", "address": "10.0.0.5", "ip": "172.18.18.101"},
            {"name": "w1", "address": "w1.example", "ip": "172.18.18.102"},
        ],
    )
    done = run_inv(tmp_path, "ssh", config=config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "Nodes (hosts): log in with inv ssh NODE",
        "node\trole\taddress\tcommand",
        "m1\tmaster\t10.0.0.5\tinv ssh m1",
        "w1\tnode\tw1.example\tinv ssh w1",
    ]
    assert done.stderr == ""


def test_ssh_with_a_command_and_no_node_is_one_line_and_exit_2(tmp_path):
    done = run_inv(tmp_path, "ssh", "--command", "hostname", config=make_config(tmp_path))
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == "--command 'hostname': expected a NODE to run it on, e.g. inv ssh calico-01 --command ..."
    )


def test_ssh_names_an_unknown_node_and_the_known_ones(ssh_nodes, tmp_path):
    done = run_inv(tmp_path, "ssh", "calico-09", config=ssh_nodes.config)
    assert done.returncode == 2
    assert done.stderr.strip() == "unknown node 'calico-09': the nodes are calico-01, calico-02, calico-03"


def test_ssh_with_vagrant_hands_over_to_vagrant_ssh(ssh_nodes, vagrant_env, tmp_path):
    config, env, bin_dir = vagrant_env
    calls = stand_in_vagrant(bin_dir, ssh_nodes)
    done = run_inv(tmp_path, "ssh", "calico-01", "-c", "uptime", config=config, env=env, process=True)
    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines()[0] == "ssh calico-01 -c uptime"


def test_destroy_refuses_hosts(ssh_nodes, tmp_path):
    done = run_inv(tmp_path, "destroy", "--yes", config=ssh_nodes.config)
    assert done.returncode == 1
    assert "with cluster.provider hosts the machines are not ours to delete" in done.stderr
    assert all(ssh_nodes.procs[n].poll() is None for n in ssh_nodes.names)


def answering(tmp_path, answer: str, config: dict, env: dict) -> subprocess.CompletedProcess:
    """`inv destroy` (as run_inv runs it) with `answer` on its stdin."""
    overrides = tmp_path / "test-config.yaml"
    overrides.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "invoke", "-f", str(overrides), "destroy"],
        cwd=ROOT,
        input=answer,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize("answer", ["", "n\n", "whatever\n"])
def test_destroy_asks_and_does_nothing_unless_told_yes(ssh_nodes, vagrant_env, tmp_path, answer):
    config, env, bin_dir = vagrant_env
    calls = stand_in_vagrant(bin_dir, ssh_nodes)
    done = answering(tmp_path, answer, config, env)
    assert done.returncode == 1
    assert "Delete the VMs calico-01, calico-02, calico-03 and everything on them? [y/N]" in done.stdout
    assert done.stderr.strip() == "not deleted: answer y, or pass --yes"
    assert not calls.exists()


def test_destroy_goes_ahead_when_the_answer_is_yes(ssh_nodes, vagrant_env, tmp_path):
    config, env, bin_dir = vagrant_env
    calls = stand_in_vagrant(bin_dir, ssh_nodes)
    done = answering(tmp_path, "y\n", config, env)
    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines()[0] == "destroy -f"


def test_destroy_with_yes_runs_vagrant_destroy(vagrant_env, tmp_path):
    """Real Vagrant on machines not created: it says so and succeeds."""
    config, env, _ = vagrant_env
    done = run_inv(tmp_path, "destroy", "--yes", config=config, env=env)
    assert done.returncode == 0, done.stderr
    assert "calico-01: VM not created. Moving on..." in done.stdout


# -- host keys (tests/test_nodes.py has those of the connections themselves) ------


def test_copy_sends_nothing_to_a_node_whose_host_key_changed(ssh_nodes, tmp_path, home):
    from standin_cluster import prepare

    prepare(ssh_nodes.config)
    assert run_inv(tmp_path, "status", config=ssh_nodes.config).returncode == 0  # first contact: keys recorded
    old = ssh_fingerprint(ssh_nodes, "calico-02")
    ssh_nodes.new_host_key("calico-02")
    new = ssh_fingerprint(ssh_nodes, "calico-02")
    before = logins(ssh_nodes, "calico-02")
    done = run_inv(tmp_path, "copy", config=ssh_nodes.config)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "copy failed on 1 node(s):",
        f"  calico-02 (127.0.0.2:{ssh_nodes.port}): host key of [127.0.0.2]:{ssh_nodes.port} changed: "
        f"recorded {old} ({known_hosts_file(tmp_path)}), now {new}; if the machine was reinstalled, "
        f"check {new} on it and accept it with `inv accept-host-key calico-02 {new}`",
    ]
    assert ssh_nodes.path("calico-01", "/opt/bin/kubelet").is_file()
    assert not ssh_nodes.path("calico-02", "/opt/bin/kubelet").exists()
    assert not any(ssh_nodes.root("calico-02").glob("*/*"))  # no file, no folder: nothing reached it
    assert logins(ssh_nodes, "calico-02") == before


def test_accept_host_key_records_only_the_key_with_the_given_fingerprint(ssh_nodes, tmp_path, home):
    assert run_inv(tmp_path, "status", config=ssh_nodes.config).returncode == 0
    ssh_nodes.new_host_key("calico-02")
    new = ssh_fingerprint(ssh_nodes, "calico-02")
    other = ssh_fingerprint(ssh_nodes, "calico-01")
    recorded = known_hosts_file(tmp_path).read_text()

    wrong = run_inv(tmp_path, "accept-host-key", "calico-02", other, config=ssh_nodes.config)
    assert wrong.returncode == 1
    assert wrong.stderr.strip().splitlines()[1] == (
        f"  calico-02 (127.0.0.2:{ssh_nodes.port}): host key of [127.0.0.2]:{ssh_nodes.port} is {new}, "
        f"not the {other} given: nothing recorded"
    )
    assert known_hosts_file(tmp_path).read_text() == recorded
    known = run_inv(tmp_path, "accept-host-key", "calico-01", new, config=ssh_nodes.config)  # calico-01's is known
    assert (known.returncode, known.stderr.strip()) == (
        1,
        f"calico-01: its host key is {other}, known already, not {new}: nothing recorded",
    )
    assert known_hosts_file(tmp_path).read_text() == recorded
    malformed = run_inv(tmp_path, "accept-host-key", "calico-02", "SHA256:abc", config=ssh_nodes.config)
    assert (malformed.returncode, malformed.stderr.strip()) == (
        2,
        "fingerprint 'SHA256:abc': expected SHA256: and 43 characters, as ssh prints it",
    )

    done = run_inv(tmp_path, "accept-host-key", "calico-02", new, config=ssh_nodes.config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"calico-02: host key {new} recorded in {known_hosts_file(tmp_path)}"
    assert sorted(known_hosts_file(tmp_path).read_text().splitlines()) == sorted(
        known_entry(ssh_nodes, n) for n in ssh_nodes.names
    )
    status = run_inv(tmp_path, "status", config=ssh_nodes.config)
    assert [row[1] for row in table_rows(status.stdout).values()] == ["yes", "yes", "yes"], status.stdout


def test_off_warns_on_stderr_and_checks_no_key(ssh_nodes, tmp_path, home):
    assert run_inv(tmp_path, "status", config=ssh_nodes.config).returncode == 0
    recorded = known_hosts_file(tmp_path).read_text()
    ssh_nodes.new_host_key("calico-03")
    config = ssh_nodes.make_config(tmp_path, cluster={"host_key_policy": "off"})
    done = run_inv(tmp_path, "status", config=config)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "warning: cluster.host_key_policy is off: the nodes' SSH host keys are not checked"
    assert [row[1] for row in table_rows(done.stdout).values()] == ["yes", "yes", "yes"]
    assert known_hosts_file(tmp_path).read_text() == recorded  # off records nothing either
    login = run_inv(tmp_path, "ssh", "calico-03", "-c", "hostname", config=config, process=True)
    assert (login.returncode, login.stdout) == (0, "calico-03\n"), login.stderr
    assert "warning: cluster.host_key_policy is off" in login.stderr


def test_ssh_uses_the_recorded_key_and_refuses_a_changed_one(ssh_nodes, tmp_path, home):
    assert run_inv(tmp_path, "status", config=ssh_nodes.config).returncode == 0  # records the keys
    done = run_inv(tmp_path, "ssh", "calico-02", "-c", "hostname", config=ssh_nodes.config, process=True)
    assert (done.returncode, done.stdout) == (0, "calico-02\n"), done.stderr
    ssh_nodes.new_host_key("calico-02")
    before = logins(ssh_nodes, "calico-02")
    refused = run_inv(tmp_path, "ssh", "calico-02", "-c", "hostname", config=ssh_nodes.config, process=True)
    assert (refused.returncode, refused.stdout) == (255, "")
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr
    assert "Host key verification failed." in refused.stderr
    assert logins(ssh_nodes, "calico-02") == before


def test_ssh_records_a_first_contact_where_the_tasks_find_it(ssh_nodes, tmp_path, home):
    """ssh's accept-new writes to the project's file, quoted for ssh (a space, a %), and strict tasks then pass."""
    from tasks import nodes

    config = ssh_nodes.config
    config["paths"]["output"] = str(tmp_path / "out put %h")
    done = run_inv(tmp_path, "ssh", "calico-01", "-c", "hostname", config=config, process=True)
    assert (done.returncode, done.stdout) == (0, "calico-01\n"), done.stderr
    known = tmp_path / "out put %h" / "known_hosts"
    keys = nodes.known_keys([known], f"[127.0.0.1]:{ssh_nodes.port}")  # ssh may hash the name (HashKnownHosts)
    assert [key.get_base64() for _, key in keys] == [ssh_nodes.host_key("calico-01").split()[1]]
    config["cluster"]["host_key_policy"] = "strict"
    status = run_inv(tmp_path, "status", config=config)
    assert table_rows(status.stdout)["calico-01"][1] == "yes"
    assert table_rows(status.stdout)["calico-02"][1].startswith("no: host key of [127.0.0.2]")


def test_ssh_with_strict_refuses_an_unknown_node(ssh_nodes, tmp_path, home):
    config = ssh_nodes.make_config(tmp_path, cluster={"host_key_policy": "strict"})
    done = run_inv(tmp_path, "ssh", "calico-03", "-c", "hostname", config=config, process=True)
    assert (done.returncode, done.stdout) == (255, "")
    assert "Host key verification failed." in done.stderr
    assert not known_hosts_file(tmp_path).exists()


def test_ssh_takes_a_configured_address_as_a_host_name_never_as_an_option(ssh_nodes, tmp_path, home):
    marker = tmp_path / "ran"
    hosts = ssh_nodes.hosts()
    hosts[0].update(address=f"-oProxyCommand=touch {marker}", ip="10.0.0.5")
    config = make_config(tmp_path, cluster={"provider": "hosts", "hosts": hosts})
    done = run_inv(tmp_path, "ssh", "calico-01", "-c", "hostname", config=config, process=True)
    assert done.returncode == 255  # ssh: "hostname contains invalid characters"
    assert not marker.exists()


def test_up_with_vagrant_records_the_vms_keys_and_later_tasks_check_them(ssh_nodes, vagrant_env, tmp_path, home):
    from standin_cluster import prepare

    config, env, bin_dir = vagrant_env
    stand_in_vagrant(bin_dir, ssh_nodes)
    env["HOME"] = str(home)
    prepare(config)
    done = run_inv(tmp_path, "up", "--no-copy", config=config, env=env)
    assert done.returncode == 0, done.stderr
    known = known_hosts_file(tmp_path)
    assert sorted(known.read_text().splitlines()) == sorted(known_entry(ssh_nodes, n) for n in ssh_nodes.names)

    old = ssh_fingerprint(ssh_nodes, "calico-02")
    ssh_nodes.new_host_key("calico-02")  # the VM re-created behind `inv up`'s back
    new = ssh_fingerprint(ssh_nodes, "calico-02")
    copied = run_inv(tmp_path, "copy", config=config, env=env)
    assert copied.returncode == 1
    assert f"calico-02 (127.0.0.2:{ssh_nodes.port}): host key of [127.0.0.2]:{ssh_nodes.port} changed: " in (
        copied.stderr
    )
    assert f"recorded {old} ({known}), now {new};" in copied.stderr
    assert not ssh_nodes.path("calico-02", "/opt/bin/kubelet").exists()

    again = run_inv(tmp_path, "up", "--no-copy", config=config, env=env)  # `inv up` records the new key
    assert again.returncode == 0, again.stderr
    assert (
        f"note: calico-02: host key of [127.0.0.2]:{ssh_nodes.port} changed from {old} to {new}: "
        "recorded, as `inv up` started the VM"
    ) in again.stderr
    assert sorted(known.read_text().splitlines()) == sorted(known_entry(ssh_nodes, n) for n in ssh_nodes.names)
    assert run_inv(tmp_path, "copy", config=config, env=env).returncode == 0


def test_vagrant_tasks_refuse_vms_whose_keys_inv_up_did_not_record(ssh_nodes, vagrant_env, tmp_path, home):
    from standin_cluster import prepare

    config, env, bin_dir = vagrant_env
    stand_in_vagrant(bin_dir, ssh_nodes)
    prepare(config)
    done = run_inv(tmp_path, "copy", config=config, env=env)
    assert done.returncode == 1
    fingerprint = ssh_fingerprint(ssh_nodes, "calico-01")
    assert (
        f"  calico-01 (127.0.0.1:{ssh_nodes.port}): host key of [127.0.0.1]:{ssh_nodes.port} is not known "
        f"(`inv up` records the VMs' keys): it is {fingerprint}; check it, then run "
        f"`inv accept-host-key calico-01 {fingerprint}`"
    ) in done.stderr.splitlines()
    assert not known_hosts_file(tmp_path).exists()
    assert not ssh_nodes.path("calico-01", "/opt/bin/kubelet").exists()

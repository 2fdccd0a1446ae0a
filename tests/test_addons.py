"""`inv addons` on three real OpenSSH nodes, through the real `inv`.

Kubernetes 1.1 cannot run here: the master's `kubectl` is the stand-in in
tests/standins/kubectl (kubectl 1.1's syntax, output and errors, objects kept
in /var/lib/standin), installed by the real `inv copy` as the downloaded
kubectl; see tests/standin_cluster.py.
"""

from __future__ import annotations

import json

import pytest

from conftest import ARTIFACTS, make_config, project, run_inv
from standin_cluster import Scenario, forget_objects, install, prepare
from tasks import addons, kube, render


@pytest.fixture(scope="module")
def installed(ssh_cluster, tmp_path_factory):
    """Nodes with everything `inv copy` puts there, once for the module."""
    base = tmp_path_factory.mktemp("addons")
    config = ssh_cluster.make_config(base, verify={"interval": 1})
    prepare(config)
    install(ssh_cluster, config, base)
    return config


@pytest.fixture
def scenario(ssh_cluster, installed):
    """A healthy stand-in cluster with no objects created yet."""
    forget_objects(ssh_cluster)
    healthy = Scenario(ssh_cluster, installed)
    healthy.write()
    return healthy


def objects(ssh_cluster) -> dict[str, dict]:
    state = json.loads(ssh_cluster.path("calico-01", "/var/lib/standin/kubectl.json").read_text())
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in state["objects"]}


def table(stdout: str) -> list[list[str]]:
    return [line.split("\t") for line in stdout.splitlines() if line.count("\t") == 2]


def test_addons_twice_creates_then_finds_everything_there(ssh_cluster, installed, scenario, tmp_path):
    first = run_inv(tmp_path, "addons", "--timeout", "5", config=installed)
    assert first.returncode == 0, first.stdout + first.stderr
    created = [row for row in table(first.stdout) if row[2] == "created"]
    assert [row[:2] for row in created] == [
        ["skydns.yaml", "namespace kube-system"],
        ["skydns.yaml", "service kube-dns"],
        ["skydns.yaml", "replicationcontroller kube-dns-v9"],
        ["kube-ui-rc.yaml", "replicationcontroller kube-ui-v5"],
        ["kube-ui-svc.yaml", "service kube-ui"],
        ["busybox.yaml", "pod busybox"],
    ]
    made = objects(ssh_cluster)
    assert made["Service/kube-dns"]["spec"]["clusterIP"] == "10.100.0.10"
    assert "Addons running: 3 pod(s)." in first.stdout

    again = run_inv(tmp_path, "addons", "--timeout", "5", config=installed)
    assert again.returncode == 0, again.stdout + again.stderr
    rows = [row for row in table(again.stdout) if row[0].endswith(".yaml")]
    assert rows == [[manifest, what, "already there"] for manifest, what, _ in created]
    assert objects(ssh_cluster).keys() == made.keys()  # nothing created twice


def test_addons_waits_for_pods_that_start_late(ssh_cluster, installed, scenario, tmp_path):
    scenario.kubernetes["pod_start_after"] = 1.5
    scenario.write()
    done = run_inv(tmp_path, "addons", "--timeout", "10", config=installed)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Addons running: 3 pod(s)." in done.stdout


def test_a_pod_that_never_gets_ready_fails_naming_it(ssh_cluster, installed, scenario, tmp_path):
    scenario.kubernetes["pods"] = {
        "kube-dns-v9": {"not_ready": ["skydns"], "waiting": "CrashLoopBackOff", "restarts": 4}
    }
    scenario.write()
    done = run_inv(tmp_path, "addons", "--timeout", "2", config=installed)
    assert done.returncode == 1
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("addons: pods not running after 2 s: kube-dns-v9-")
    assert "3/4 Running; skydns not ready (waiting: CrashLoopBackOff, restarts 4)" in message
    assert "busybox" not in message  # the pods that run are not blamed


def test_an_api_server_that_refuses_fails_with_kubectls_message(ssh_cluster, installed, scenario, tmp_path):
    scenario.kubernetes["apiserver"] = "down"
    scenario.write()
    done = run_inv(tmp_path, "addons", "--timeout", "2", config=installed)
    assert done.returncode == 1
    assert (
        "kubectl create failed on calico-01: skydns.yaml: The connection to the server localhost:8080 "
        "was refused" in done.stderr
    )
    assert not ssh_cluster.path("calico-01", "/var/lib/standin/kubectl.json").exists()


def test_addons_waits_for_an_api_server_that_is_starting(ssh_cluster, installed, scenario, tmp_path):
    """Right after `inv up` the API server refuses connections for a while: addons asks again."""
    scenario.kubernetes["apiserver_up_after"] = 2
    scenario.write()
    done = run_inv(tmp_path, "addons", "--timeout", "20", config=installed)
    assert done.returncode == 0, done.stdout + done.stderr
    created = sorted(row[1] for row in table(done.stdout) if row[2] == "created")
    assert created == [
        "namespace kube-system",
        "pod busybox",
        "replicationcontroller kube-dns-v9",
        "replicationcontroller kube-ui-v5",
        "service kube-dns",
        "service kube-ui",
    ]
    assert "FAILED" not in done.stdout
    assert "the cluster is still starting, asking again until the timeout: " in done.stderr


@pytest.mark.timeout(120)  # a regression would ask again for the 600 s below
def test_an_error_that_never_heals_is_not_asked_again(ssh_cluster, installed, scenario, tmp_path):
    config = json.loads(json.dumps(installed))
    config["download"]["artifacts"] = json.loads(json.dumps(ARTIFACTS))
    for artifact in config["download"]["artifacts"]:
        if artifact["name"] == "kubectl":
            artifact["dest"] = "/opt/elsewhere"
    done = run_inv(tmp_path, "addons", "--timeout", "600", config=config)
    assert done.returncode == 1
    assert "kubectl create failed on calico-01: skydns.yaml:" in done.stderr
    assert "/opt/elsewhere/kubectl" in done.stderr


@pytest.mark.parametrize(
    "message,starting",
    [
        ("The connection to the server localhost:8080 was refused - did you specify the right host or port?", True),
        (
            'Error from server: error when creating "busybox.yaml": pods "busybox" is forbidden: '
            "no API token found for service account default/default, retry after the token is automatically created "
            "and added to the service account",
            True,
        ),
        ('error validating "skydns.yaml": error validating data: found invalid field nme for v1.ObjectMeta', False),
        ("sh: 1: /opt/bin/kubectl: not found", False),
    ],
)
def test_errors_of_a_starting_cluster_are_told_apart(message, starting):
    assert bool(addons.STARTING.search(message)) is starting


def test_missing_manifests_say_run_copy(ssh_cluster, installed, scenario, tmp_path):
    home = ssh_cluster.path("calico-01", "/home/core/kube-ui-svc.yaml")
    saved = home.read_bytes()
    home.unlink()
    try:
        done = run_inv(tmp_path, "addons", "--timeout", "2", config=installed)
    finally:
        home.write_bytes(saved)
    assert done.returncode == 1
    assert "kube-ui-svc.yaml not in the master's home folder: run `inv copy` first" in done.stderr
    assert not ssh_cluster.path("calico-01", "/var/lib/standin/kubectl.json").exists()


def test_bad_timeout_and_unknown_manifest_are_one_line_errors(installed, tmp_path):
    done = run_inv(tmp_path, "addons", "--timeout", "soon", config=installed)
    assert (done.returncode, done.stderr.strip()) == (2, "--timeout 'soon': expected a number of seconds, 0 or more")
    config = dict(installed, addons={"manifests": ["skydns.yaml", "dashboard.yaml"], "timeout": 5})
    done = run_inv(tmp_path, "addons", config=config)
    assert done.returncode == 2
    assert done.stderr.strip().startswith(
        "invalid configuration: addons.manifests[1] = 'dashboard.yaml': expected one of busybox.yaml, kube-ui-rc.yaml"
    )


# -- pure parts ----------------------------------------------------------------


def test_create_outcome_counts_already_exists_as_done():
    stdout = 'service "kube-ui" created\n'
    stderr = (
        'Error from server: error when creating "skydns.yaml": namespaces "kube-system" already exists\n'
        'Error from server: error when creating "skydns.yaml": services "kube-dns" already exists\n'
    )
    assert addons.create_outcome(stdout, stderr, 1) == (
        ["service kube-ui"],
        ["namespace kube-system", "service kube-dns"],
        [],
    )


def test_create_outcome_keeps_other_errors_next_to_existing_ones():
    stderr = (
        'Error from server: error when creating "skydns.yaml": namespaces "kube-system" already exists\n'
        'Error from server: error when creating "kube-ui-rc.yaml": namespaces "kube-system" not found\n'
    )
    created, existing, errors = addons.create_outcome("", stderr, 1)
    assert existing == ["namespace kube-system"]
    assert errors == ['Error from server: error when creating "kube-ui-rc.yaml": namespaces "kube-system" not found']
    # A failure with nothing on stderr is still a failure.
    assert addons.create_outcome("", "", 1)[2] == ["kubectl exited 1: no output"]


def test_workloads_follow_the_manifests(tmp_path):
    config = make_config(tmp_path)
    render.render_all(project(config))
    found = kube.workloads(project(config))
    assert [(w.namespace, w.name, w.kind) for w in found] == [
        ("kube-system", "kube-dns-v9", "ReplicationController"),
        ("kube-system", "kube-ui-v5", "ReplicationController"),
        ("default", "busybox", "Pod"),
    ]
    dns = found[0]
    assert dns.owns(
        {
            "metadata": {
                "namespace": "kube-system",
                "name": "kube-dns-v9-qd8i3",
                "labels": {"k8s-app": "kube-dns", "version": "v9"},
            }
        }
    )
    assert not dns.owns(
        {
            "metadata": {
                "namespace": "kube-system",
                "name": "kube-ui-v5-8spea",
                "labels": {"k8s-app": "kube-ui", "version": "v5"},
            }
        }
    )

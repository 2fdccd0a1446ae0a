"""`stack: current` rendered: kubeadm configurations, units, containerd, the CA and the host's kubeconfig.

Flatcar, kubeadm and the API server cannot run here: the kubeadm documents are
checked against the fields of the upstream API types (tasks/kubeadm.py), the
units with the real `systemd-analyze verify` in a fake root holding stand-ins
for /opt/bin/kubelet and /usr/bin/containerd, containerd's configuration with a
TOML parser, and the admin kubeconfig with the real `kubectl` against a small
TLS server that requires a client certificate of the rendered CA.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import tomllib

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from test_kubeadm import APIServer
from test_units import fake_root, verify

from conftest import make_config, project, run_inv
from tasks import kubeadm, render, settings


def current_config(tmp_path, **sections) -> dict:
    config = make_config(tmp_path, **sections)
    config["stack"] = "current"
    return config


@pytest.fixture
def rendered(tmp_path):
    config = current_config(tmp_path)
    render.render_all(project(config))
    return config, tmp_path / "out"


def documents(path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_each_node_gets_its_kubeadm_configuration(rendered):
    _, out = rendered
    init = documents(out / "nodes" / "calico-01.yaml")
    assert [d["kind"] for d in init] == ["InitConfiguration", "ClusterConfiguration", "KubeletConfiguration"]
    token = (out / "pki" / "bootstrap-token").read_text().strip()
    assert kubeadm.TOKEN.fullmatch(token)
    assert init[0]["bootstrapTokens"][0]["token"] == token
    assert init[0]["nodeRegistration"]["kubeletExtraArgs"] == [{"name": "node-ip", "value": "192.168.56.101"}]
    assert init[1]["networking"] == {
        "serviceSubnet": "10.96.0.0/12",
        "podSubnet": "10.244.0.0/16",
        "dnsDomain": "cluster.local",
    }
    assert init[1]["kubernetesVersion"] == "v1.36.4"
    # Flatcar's /usr is read-only: volume plugins live under /opt.
    plugins = "/opt/libexec/kubernetes/kubelet-plugins/volume/exec/"
    assert init[2]["volumePluginDir"] == plugins
    assert {"name": "flex-volume-plugin-dir", "value": plugins} in init[1]["controllerManager"]["extraArgs"]
    ca = x509.load_pem_x509_certificate((out / "pki" / "ca.crt").read_bytes())
    for name, ip in (("calico-02", "192.168.56.102"), ("calico-03", "192.168.56.103")):
        (join,) = documents(out / "nodes" / f"{name}.yaml")
        assert join["kind"] == "JoinConfiguration"
        assert join["discovery"]["bootstrapToken"] == {
            "apiServerEndpoint": "192.168.56.101:6443",
            "token": token,
            "caCertHashes": [kubeadm.discovery_hash(ca)],
        }
        assert join["nodeRegistration"]["kubeletExtraArgs"] == [{"name": "node-ip", "value": ip}]
    for path in (out / "nodes").glob("*.yaml"):
        for doc in documents(path):
            kubeadm.validate(doc)


def test_a_rerender_keeps_the_token_the_ca_and_every_file(rendered):
    config, out = rendered
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    changed, pki_changed = render.render_all(project(config))
    assert (changed, pki_changed) == ([], [])
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_secrets_are_for_the_owner_only_and_no_seed_certificates_are_made(rendered):
    _, out = rendered
    pki = out / "pki"
    for name in ("ca.key", "admin.key", "admin.conf", "bootstrap-token"):
        assert stat.S_IMODE((pki / name).stat().st_mode) == 0o600, name
    assert sorted(p.name for p in pki.iterdir()) == sorted(
        ["ca.crt", "ca.key", "admin.crt", "admin.key", "admin.conf", "bootstrap-token"]
    )


@pytest.mark.skipif(not shutil.which("kubectl"), reason="no kubectl on PATH (the machine image ships one)")
def test_the_host_kubeconfig_works_with_the_real_kubectl(rendered, tmp_path):
    _, out = rendered
    pki = out / "pki"
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    config = yaml.safe_load((pki / "admin.conf").read_text())
    assert config["clusters"][0]["cluster"]["server"] == "https://192.168.56.101:6443"
    folder = tmp_path / "server"
    folder.mkdir()
    with APIServer(ca_cert, ca_key, folder) as server:
        config["clusters"][0]["cluster"]["server"] = server.url  # the stand-in listens on loopback
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(config))
        done = subprocess.run(
            ["kubectl", "--kubeconfig", str(path), "version", "-o", "json"], capture_output=True, text=True, timeout=60
        )
    assert json.loads(done.stdout)["serverVersion"]["gitVersion"] == "v1.36.4", done.stderr
    assert dict(pair[0] for pair in server.subjects[-1]) == {
        "organizationName": "system:masters",
        "commonName": "kubernetes-admin",
    }


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_kubelet_and_containerd_units_verify_cleanly(rendered, tmp_path):
    _, out = rendered
    root = fake_root(tmp_path, {"kubelet.service": (out / "kubelet.service").read_text()})
    dropins = {
        "kubelet.service.d/10-kubeadm.conf": out / "10-kubeadm.conf",
        "containerd.service.d/10-use-custom-config.conf": out / "10-use-custom-config.conf",
    }
    for name, source in dropins.items():
        (root / "etc/systemd/system" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "etc/systemd/system" / name).write_text(source.read_text())
    (root / "usr/lib/systemd/system/containerd.service").write_text(
        "[Unit]\nDescription=stand-in for Flatcar's containerd\n[Service]\nExecStart=/usr/bin/containerd --config x\n"
    )
    for program in ("/usr/bin/containerd", "/opt/bin/kubelet"):
        path = root / program.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    for unit in ("kubelet.service", "containerd.service"):
        done = verify(root, unit)
        assert (done.returncode, done.stderr) == (0, ""), unit


def test_containerd_uses_systemd_cgroups_mirrors_folder_and_the_sandbox_image(rendered):
    _, out = rendered
    config = tomllib.loads((out / "containerd-config.toml").read_text())
    assert config["version"] == 3
    plugins = config["plugins"]
    assert plugins["io.containerd.cri.v1.images"]["registry"]["config_path"] == "/etc/containerd/certs.d"
    assert plugins["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"] == "registry.k8s.io/pause:3.10.2"
    runc = plugins["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"]
    assert runc["options"]["SystemdCgroup"] is True


def test_a_document_with_an_unknown_field_names_the_rendered_file():
    text = "apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\ndiscovery: {bootstrapToken: {tokn: x}}\n"
    with pytest.raises(
        kubeadm.InvalidDocument, match=r"^nodes/w1.yaml: JoinConfiguration.discovery.bootstrapToken.tokn"
    ):
        kubeadm.check_rendered("nodes/w1.yaml", text)


def test_inv_kubeconfig_prints_the_export_line(rendered, tmp_path):
    config, out = rendered
    done = run_inv(tmp_path, "kubeconfig", config=config)
    assert (done.returncode, done.stdout) == (0, f"export KUBECONFIG={out / 'pki' / 'admin.conf'}\n"), done.stderr


def test_inv_kubeconfig_before_render_and_for_the_seed_says_why_not(tmp_path):
    done = run_inv(tmp_path, "kubeconfig", config=current_config(tmp_path))
    assert done.returncode == 1
    assert done.stderr.strip() == f"{tmp_path / 'out' / 'pki' / 'admin.conf'} is missing: run `inv render` first"
    seed = run_inv(tmp_path, "kubeconfig", config=make_config(tmp_path))
    assert seed.returncode == 1
    assert seed.stderr.strip().startswith("stack seed has no kubeconfig for this machine: its API server answers")


def test_settings_of_the_seed_alone_are_refused_with_the_current_stack(tmp_path):
    config = current_config(tmp_path, versions={"calicoctl": "v0.15.0"})
    done = run_inv(tmp_path, "config", config=config)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "invalid configuration: versions.calicoctl = 'v0.15.0': expected no value: stack current has no use for it "
        "(leave it null)"
    )


def fake_downloads(config: dict) -> None:
    """Files where the downloads go, recorded in a lock (what `inv copy` checks before it sends anything)."""
    from standin_cluster import lock_downloads

    folder = project(config).downloads_dir
    folder.mkdir(parents=True, exist_ok=True)
    for artifact in project(config).download.artifacts:
        artifact.path.write_bytes(b"stand-in " + artifact.name.encode())
    lock_downloads(config)


def test_copy_sends_each_role_its_files_and_the_kubeadm_configuration_last(tmp_path):
    from tasks import copy

    config = current_config(tmp_path, images={"mirrors": {"docker.io": "https://hub.mirror.example"}})
    render.render_all(project(config))
    fake_downloads(config)
    wanted = copy.plan(project(config))
    out = tmp_path / "out"
    master = {i.target: i for i in wanted["calico-01"]}
    worker = {i.target: i for i in wanted["calico-02"]}
    for targets in (master, worker):
        assert list(targets)[-1] == "/etc/kubernetes/kubeadm.yaml"
        assert targets["/etc/kubernetes/kubeadm.yaml"].mode == 0o600  # it holds the bootstrap token
        for common in (
            "/opt/bin/kubeadm",
            "/opt/bin/kubelet",
            "/etc/systemd/system/kubelet.service",
            "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
            "/etc/containerd/config.toml",
            "/etc/systemd/system/containerd.service.d/10-use-custom-config.conf",
            "/etc/sysctl.d/90-kubernetes.conf",
            "/etc/modules-load.d/kubernetes.conf",
            "/etc/flatcar/update.conf",
            "/etc/containerd/certs.d/docker.io/hosts.toml",
        ):
            assert common in targets
    assert master["/opt/inv/activate.sh"].source == out / "activate-master.sh"
    assert worker["/opt/inv/activate.sh"].source == out / "activate-node.sh"
    assert master["/opt/inv/activate.sh"].mode == 0o755
    # The CA and its key, and the admin kubeconfig: the master's alone, for its owner alone.
    assert (master["/etc/kubernetes/inv/ca.key"].mode, master["/etc/kubernetes/inv/ca.key"].owner) == (0o600, "root")
    assert (master["~/.kube/config"].mode, master["~/.kube/config"].owner) == (0o600, "user")
    assert master["~/.kube"].is_dir and master["~/.kube"].owner == "user"
    assert not any("ca.key" in t or "ca.crt" in t or ".kube" in t for t in worker)
    # Calico's release manifest beside the kustomization that patches it, in the master's home.
    for name in ("calico/calico.yaml", "calico/kustomization.yaml", "calico/calico-node.yaml"):
        assert master[f"~/{name}"].owner == "user"
        assert f"~/{name}" not in worker
    # The seed's folders are the seed's.
    assert "/opt/kubernetes/manifests" not in master


def test_a_stack_file_sending_a_secret_beyond_the_master_is_refused(tmp_path, monkeypatch):
    import dataclasses

    from tasks import copy

    config = current_config(tmp_path)
    render.render_all(project(config))
    fake_downloads(config)
    built = project(config)
    leaky = [dict(f, roles=None) if f["source"] == "pki/ca.key" else f for f in built.stack.files]
    leaking = dataclasses.replace(built, stack=dataclasses.replace(built.stack, files=tuple(leaky)))
    with pytest.raises(copy.StepError, match="pki/ca.key is a secret: send it to the master only, mode 0600"):
        copy.plan(leaking)


def test_the_activation_scripts_are_valid_shell_and_run_kubeadm_once(rendered):
    _, out = rendered
    for name, command in (
        ("activate-master.sh", "kubeadm init --config"),
        ("activate-node.sh", "kubeadm join --config"),
    ):
        text = (out / name).read_text()
        assert subprocess.run(["sh", "-n", str(out / name)]).returncode == 0
        assert text.count(command) == 1
        assert "kubeadm reset --force" in text  # what an unfinished attempt left goes first


def test_each_image_mirror_becomes_a_hosts_toml_containerd_reads(tmp_path):
    mirrors = {"registry.k8s.io": "https://k8s.mirror.example", "docker.io": "https://hub.mirror.example/"}
    config = current_config(tmp_path, images={"mirrors": mirrors})
    render.render_all(project(config))
    out = tmp_path / "out" / "containerd-certs.d"
    k8s = tomllib.loads((out / "registry.k8s.io" / "hosts.toml").read_text())
    assert k8s == {
        "server": "https://registry.k8s.io",
        "host": {"https://k8s.mirror.example": {"capabilities": ["pull", "resolve"]}},
    }
    hub = tomllib.loads((out / "docker.io" / "hosts.toml").read_text())
    assert hub["server"] == "https://registry-1.docker.io" and list(hub["host"]) == ["https://hub.mirror.example/"]
    # A mirror dropped from the configuration: its file goes with the next render.
    config["images"]["mirrors"] = {"docker.io": "https://hub.mirror.example/"}
    changed, _ = render.render_all(project(config))
    assert "containerd-certs.d/registry.k8s.io/hosts.toml (removed)" in changed
    assert not (out / "registry.k8s.io" / "hosts.toml").exists()


@pytest.mark.parametrize(
    "mirrors,message",
    [
        (
            {"registry.k8s.io\n": "https://m.example"},
            "images.mirrors['registry.k8s.io\\n'] = 'registry.k8s.io\\n': expected a registry host name",
        ),
        (
            {"quay.io": "quay.mirror.example"},
            "images.mirrors['quay.io'] = 'quay.mirror.example': expected the mirror's http(s) URL",
        ),
    ],
)
def test_a_bad_mirror_is_named(tmp_path, mirrors, message):
    with pytest.raises(settings.ConfigError) as err:
        settings.build(current_config(tmp_path, images={"mirrors": mirrors}))
    assert str(err.value).startswith(f"invalid configuration: {message}")


def test_the_seed_has_no_use_for_image_mirrors(tmp_path):
    with pytest.raises(
        settings.ConfigError, match="images.mirrors = .*: expected no value: stack seed has no use for it"
    ):
        settings.build(make_config(tmp_path, images={"mirrors": {"docker.io": "https://hub.mirror.example"}}))


def test_kubectl_apply_output_is_read_line_by_line():
    from tasks import addons

    out = "configmap/calico-config unchanged\ndaemonset.apps/calico-node configured\npod/busybox created\n"
    err = (
        "Warning: resource daemonsets/calico-node is missing the kubectl.kubernetes.io/last-applied-configuration "
        'annotation\nError from server (NotFound): error when creating "busybox.yaml": namespaces "x" not found\n'
    )
    done, errors = addons.apply_outcome(out, err, 1)
    assert done == [
        ("configmap/calico-config", "unchanged"),
        ("daemonset.apps/calico-node", "configured"),
        ("pod/busybox", "created"),
    ]
    assert errors == ['Error from server (NotFound): error when creating "busybox.yaml": namespaces "x" not found']
    assert addons.apply_outcome("", "", 2)[1] == ["kubectl exited 2: no output"]
    refused = "The connection to the server 192.168.56.101:6443 was refused - did you specify the right host or port?"
    assert addons.STARTING.search(refused)


def test_the_addon_workloads_include_calico_from_the_downloaded_release_manifest(rendered):
    from standin_cluster import STANDINS
    from tasks import kube

    config, _ = rendered
    fake_downloads(config)
    shutil.copyfile(STANDINS / "calico.yaml", project(config).artifact("calico.yaml").path)
    found = {(w.kind, w.namespace, w.name): w.selector for w in kube.workloads(project(config))}
    assert found == {
        ("DaemonSet", "kube-system", "calico-node"): (("k8s-app", "calico-node"),),
        ("Deployment", "kube-system", "calico-kube-controllers"): (("k8s-app", "calico-kube-controllers"),),
        ("Deployment", "kube-system", "headlamp"): (("k8s-app", "headlamp"),),
        ("Pod", "default", "busybox"): (),
    }
    project(config).artifact("calico.yaml").path.unlink()
    with pytest.raises(kube.StepError, match="calico.yaml is missing: run `inv download` first"):
        kube.workloads(project(config))


def test_busybox_1_36_nslookup_and_calicoctl_v3_node_status_are_read(rendered):
    from tasks import verify

    config, _ = rendered
    cluster = project(config).cluster
    name = "kubernetes.default.svc.cluster.local"
    answer = f"Server:\t\t10.96.0.10\nAddress:\t10.96.0.10:53\n\n\nName:\t{name}\nAddress: 10.96.0.1\n\n"
    assert verify.dns_result(cluster, answer, "calico-01", name).ok
    nx = f"Server:\t\t10.96.0.10\nAddress:\t10.96.0.10:53\n\n** server can't find {name}: NXDOMAIN\n\n"
    result = verify.dns_result(cluster, nx, "calico-01", name)
    assert not result.ok and f"** server can't find {name}: NXDOMAIN (server 10.96.0.10)" in result.detail
    down = ";; connection timed out; no servers could be reached\n\ncommand terminated with exit code 1"
    assert not verify.dns_result(cluster, down, "calico-01", name).ok
    table = (
        "Calico process is running.\n\nIPv4 BGP status\n"
        "+----------------+-------------------+-------+----------+-------------+\n"
        "|  PEER ADDRESS  |     PEER TYPE     | STATE |  SINCE   |    INFO     |\n"
        "+----------------+-------------------+-------+----------+-------------+\n"
        "| 192.168.56.102 | node-to-node mesh | up    | 09:53:43 | Established |\n"
        "| 10.0.2.15      | node-to-node mesh | start | 09:53:43 | Connect     |\n"
        "+----------------+-------------------+-------+----------+-------------+\n\n"
        "IPv6 BGP status\nNo IPv6 peers found.\n"
    )
    remedy = project(config).stack.checks["nat_remedy"]
    rows = verify.bgp_results(cluster, "calico-01", table, remedy)
    assert [r.ok for r in rows] == [True, False, False]
    assert "peer calico-03 (192.168.56.103): no BGP session" in rows[1].detail
    assert rows[2].detail.endswith(
        "its IP_AUTODETECTION_METHOD must be kubernetes-internal-ip and its kubelet's node-ip the node's address "
        "(manifests/current/calico/calico-node.yaml, the kubeadm configuration; run `inv render copy addons`)"
    )


def test_a_configuration_file_sets_image_mirrors_over_the_default(tmp_path):
    """invoke.yaml's `mirrors: {}` takes a file's mapping (Invoke merges no mapping over null)."""
    config = current_config(tmp_path, images={"mirrors": {"docker.io": "https://hub.mirror.example"}})
    done = run_inv(tmp_path, "render", config=config)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "containerd-certs.d" / "docker.io" / "hosts.toml").is_file()


def test_the_current_stack_pulls_no_image_with_docker_and_refuses_vm_images(tmp_path):
    """containerd pulls its own images (through images.mirrors): `vagrant up` runs no Docker provisioner."""
    config = current_config(tmp_path)
    render.render_all(project(config))
    assert json.loads((tmp_path / "out" / "cluster.json").read_text())["images"] == []
    config["vm"]["images"] = ["busybox:latest"]
    with pytest.raises(settings.ConfigError, match="vm.images .*stack current has no use for it"):
        project(config)


def test_a_dns_address_kubeadm_would_not_give_coredns_is_refused(tmp_path):
    config = current_config(tmp_path, kubernetes={"service_range": "10.96.0.0/12", "dns_ip": "10.96.0.53"})
    done = run_inv(tmp_path, "render", config=config)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "invalid configuration: kubernetes.dns_ip = '10.96.0.53': expected 10.96.0.10: kubeadm gives CoreDNS "
        "the tenth address of the service range"
    )
    assert not (tmp_path / "out").exists()

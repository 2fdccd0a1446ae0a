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


@pytest.mark.parametrize("step", ["up", "copy", "addons", "verify"])
def test_steps_not_done_yet_for_the_current_stack_say_so_and_fail(rendered, tmp_path, step):
    config, _ = rendered
    done = run_inv(tmp_path, step, config=config)
    assert done.returncode == 1
    assert done.stderr.strip().startswith(
        f"stack current: `inv {step}` does not handle it yet (it does: download, render"
    )


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

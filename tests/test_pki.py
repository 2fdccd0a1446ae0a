"""The PKI made by `inv render`: real chain verification, SANs, modes, reuse, re-issue."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import subprocess
import threading

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from conftest import make_config, project, run_inv
from tasks import pki, render


@pytest.fixture
def rendered(tmp_path):
    config = make_config(tmp_path)
    render.render_all(project(config))
    return config, tmp_path / "out" / "pki"


def load(folder, name):
    return x509.load_pem_x509_certificate((folder / name).read_bytes())


def test_files_and_modes(rendered):
    _, folder = rendered
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["ca.crt", "ca.key", "server.cert", "server.key", "kubecfg.crt", "kubecfg.key"]
    )
    assert folder.stat().st_mode & 0o777 == 0o700
    for key in ("ca.key", "server.key", "kubecfg.key"):
        assert (folder / key).stat().st_mode & 0o777 == 0o600, key
        assert (folder / key).read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")
    for cert in ("ca.crt", "server.cert", "kubecfg.crt"):
        assert (folder / cert).stat().st_mode & 0o777 == 0o644, cert


def test_server_certificate_names_and_chain(rendered):
    _, folder = rendered
    server = load(folder, "server.cert")
    assert server.subject.rfc4514_string() == "CN=kubernetes-master"
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("172.18.18.101"),
        ipaddress.ip_address("10.100.0.1"),
    ]
    assert sans.get_values_for_type(x509.DNSName) == [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    store = Store([load(folder, "ca.crt")])
    for name in ("kubernetes.default.svc.cluster.local", "kubernetes"):
        verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(name))
        verifier.verify(server, [])
    verifier = PolicyBuilder().store(store).build_server_verifier(x509.IPAddress(ipaddress.ip_address("172.18.18.101")))
    verifier.verify(server, [])
    wrong = PolicyBuilder().store(store).build_server_verifier(x509.DNSName("example.com"))
    with pytest.raises(VerificationError):
        wrong.verify(server, [])


def test_openssl_verifies_both_certificates(rendered):
    _, folder = rendered
    for cert in ("server.cert", "kubecfg.crt"):
        result = subprocess.run(
            ["openssl", "verify", "-CAfile", str(folder / "ca.crt"), str(folder / cert)], capture_output=True, text=True
        )
        assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), result.stdout + result.stderr


def test_mutual_tls_handshake(rendered):
    """A real TLS connection: the server presents server.cert, the client kubecfg.crt, both trust ca.crt."""
    _, folder = rendered
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(folder / "server.cert", folder / "server.key")
    server_ctx.load_verify_locations(folder / "ca.crt")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(folder / "ca.crt"))
    client_ctx.load_cert_chain(folder / "kubecfg.crt", folder / "kubecfg.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen = {}

    def serve():
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            seen["client"] = dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve)
    thread.start()
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with client_ctx.wrap_socket(raw, server_hostname="kubernetes.default") as tls:
            assert tls.recv(2) == b"ok"
    thread.join(5)
    listener.close()
    assert seen["client"] == "kubecfg"


def test_reused_across_renders(rendered):
    config, folder = rendered
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    render.render_all(project(config))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.parametrize(
    "change",
    [
        {"cluster": {"first_ip": "172.18.18.150"}},
        {"kubernetes": {"domain": "corp.local"}},
        {"kubernetes": {"service_range": "10.32.0.0/16", "dns_ip": "10.32.0.10"}},
    ],
)
def test_server_certificate_reissued_from_same_ca(rendered, change):
    config, folder = rendered
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for section, values in change.items():
        config[section].update(values)
    _, written = render.render_all(project(config))
    assert written == ["pki/server.cert"]
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    for same in ("ca.crt", "ca.key", "kubecfg.crt", "kubecfg.key", "server.key"):
        assert after[same] == before[same], same
    server = load(folder, "server.cert")
    server.verify_directly_issued_by(load(folder, "ca.crt"))
    sans = [str(v) for v in server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value]
    if "first_ip" in change.get("cluster", {}):
        assert "<IPAddress(value=172.18.18.150)>" in sans
    if "domain" in change.get("kubernetes", {}):
        assert "<DNSName(value='kubernetes.default.svc.corp.local')>" in sans
    if "service_range" in change.get("kubernetes", {}):
        assert "<IPAddress(value=10.32.0.1)>" in sans


def test_leaf_signed_by_another_ca_is_reissued(rendered, tmp_path):
    config, folder = rendered
    other = make_config(tmp_path / "other")
    render.render_all(project(other))
    (folder / "kubecfg.crt").write_bytes((tmp_path / "other" / "out" / "pki" / "kubecfg.crt").read_bytes())
    _, written = render.render_all(project(config))
    assert "pki/kubecfg.crt" in written
    load(folder, "kubecfg.crt").verify_directly_issued_by(load(folder, "ca.crt"))


def test_damaged_ca_stops_render_and_writes_nothing(tmp_path):
    config = make_config(tmp_path)
    render.render_all(project(config))
    folder = tmp_path / "out" / "pki"
    (folder / "ca.crt").write_text("not a certificate")
    config["cluster"]["first_ip"] = "172.18.18.120"
    before = (tmp_path / "out" / "nodes" / "calico-01.yaml").read_bytes()
    result = run_inv(tmp_path, "render", config=config)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot read the CA in" in lines[0] and "ca.crt" in lines[0], result.stderr
    assert (tmp_path / "out" / "nodes" / "calico-01.yaml").read_bytes() == before
    assert (folder / "ca.crt").read_text() == "not a certificate"


def test_missing_ca_key_is_an_error_not_a_new_ca(rendered):
    config, folder = rendered
    (folder / "ca.key").unlink()
    with pytest.raises(pki.PKIError, match="ca.key"):
        render.render_all(project(config))


def test_loose_key_permissions_are_tightened(rendered):
    config, folder = rendered
    (folder / "server.key").chmod(0o664)
    render.render_all(project(config))
    assert (folder / "server.key").stat().st_mode & 0o777 == 0o600


def test_a_render_cut_short_after_the_ca_key_is_completed(rendered):
    """Keys are written first; a crash before ca.crt leaves only the key, and the next render goes on from it."""
    config, folder = rendered
    (folder / "ca.crt").unlink()
    _, written = render.render_all(project(config))
    assert written == ["pki/ca.crt"]
    ca = load(folder, "ca.crt")
    for leaf in ("server.cert", "kubecfg.crt"):
        load(folder, leaf).verify_directly_issued_by(ca)  # the leaves made before still verify


def test_an_output_path_that_cannot_be_a_folder_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    config = make_config(tmp_path)
    config["paths"]["output"] = str(blocker / "out")
    result = run_inv(tmp_path, "render", config=config)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("render: cannot write ") and "Not a directory" in lines[0]

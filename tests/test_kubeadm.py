"""The current stack's kubeadm side: token, CA pin, kubeconfig, strict documents.

The kubeconfig is proven with the real `kubectl` client this machine image
ships, against a small TLS server that requires a client certificate signed by
the CA (a stand-in for the API server, which cannot run here). The CA pin is
compared with what `openssl` computes from the certificate.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import shutil
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tasks import kubeadm, pki


def pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def pem_cert(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def ca():
    return pki.make_ca(datetime.datetime.now(datetime.UTC))


def test_tokens_have_kubeadms_form_and_differ():
    tokens = {kubeadm.new_token() for _ in range(20)}
    assert len(tokens) == 20
    assert all(kubeadm.TOKEN.fullmatch(t) for t in tokens)


def test_the_ca_pin_is_what_openssl_computes(ca, tmp_path):
    cert, _ = ca
    path = tmp_path / "ca.crt"
    path.write_bytes(pem_cert(cert))
    spki = subprocess.run(
        ["openssl", "x509", "-in", str(path), "-noout", "-pubkey"], capture_output=True, check=True
    ).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=spki, capture_output=True, check=True)
    digest = subprocess.run(["openssl", "dgst", "-sha256", "-hex"], input=der.stdout, capture_output=True, check=True)
    assert kubeadm.discovery_hash(cert) == "sha256:" + digest.stdout.decode().split()[-1]


class APIServer:
    """A TLS server on 127.0.0.1 that, like the API server, answers /version only to a client certificate of the CA.

    It records the client certificate's subject, so a test can check the user and group kubectl presented.
    """

    def __init__(self, ca_cert, ca_key, folder: Path):
        key = pki._new_key()
        cert = pki.issue(
            ca_cert,
            ca_key,
            "kube-apiserver",
            key,
            ExtendedKeyUsageOID.SERVER_AUTH,
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        )
        (folder / "server.crt").write_bytes(pem_cert(cert))
        (folder / "server.key").write_bytes(pem_key(key))
        (folder / "ca.crt").write_bytes(pem_cert(ca_cert))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(folder / "server.crt", folder / "server.key")
        context.load_verify_locations(folder / "ca.crt")
        context.verify_mode = ssl.CERT_REQUIRED
        self.subjects: list = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                owner.subjects.append(self.connection.getpeercert()["subject"])
                body = json.dumps({"major": "1", "minor": "36", "gitVersion": "v1.36.4", "platform": "linux/amd64"})
                self.send_response(200 if self.path.startswith("/version") else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def admin_kubeconfig(ca, server: str) -> str:
    ca_cert, ca_key = ca
    key = pki._new_key()
    cert = pki.issue(ca_cert, ca_key, "kubernetes-admin", key, ExtendedKeyUsageOID.CLIENT_AUTH, org="system:masters")
    return kubeadm.kubeconfig(server, pem_cert(ca_cert), pem_cert(cert), pem_key(key), "kubernetes", "kubernetes-admin")


@pytest.mark.skipif(not shutil.which("kubectl"), reason="no kubectl on PATH (the machine image ships one)")
def test_the_real_kubectl_reaches_the_api_server_with_the_admin_kubeconfig(ca, tmp_path):
    with APIServer(*ca, tmp_path) as server:
        path = tmp_path / "admin.conf"
        path.write_text(admin_kubeconfig(ca, server.url))
        done = subprocess.run(
            ["kubectl", "--kubeconfig", str(path), "version", "-o", "json"], capture_output=True, text=True, timeout=60
        )
    assert json.loads(done.stdout)["serverVersion"]["gitVersion"] == "v1.36.4", done.stderr
    subject = dict(pair[0] for pair in server.subjects[-1])
    assert subject == {"organizationName": "system:masters", "commonName": "kubernetes-admin"}


@pytest.mark.skipif(not shutil.which("kubectl"), reason="no kubectl on PATH (the machine image ships one)")
def test_kubectl_refuses_an_api_server_of_another_ca(ca, tmp_path):
    other = pki.make_ca(datetime.datetime.now(datetime.UTC))
    with APIServer(*other, tmp_path) as server:
        path = tmp_path / "admin.conf"
        path.write_text(admin_kubeconfig(ca, server.url))
        done = subprocess.run(
            ["kubectl", "--kubeconfig", str(path), "version", "-o", "json"], capture_output=True, text=True, timeout=60
        )
    assert done.returncode != 0
    assert "certificate" in done.stderr and server.subjects == []


def test_the_kubeconfig_names_its_server_and_user(ca):
    doc = yaml.safe_load(admin_kubeconfig(ca, "https://192.168.56.101:6443"))
    assert doc["clusters"][0]["cluster"]["server"] == "https://192.168.56.101:6443"
    assert doc["current-context"] == "kubernetes-admin@kubernetes"
    cert = x509.load_pem_x509_certificate(base64.b64decode(doc["users"][0]["user"]["client-certificate-data"]))
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"


INIT = """\
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
nodeRegistration:
  name: m1
  kubeletExtraArgs: [{name: node-ip, value: 192.168.56.101}]
"""


def test_documents_of_the_upstream_types_pass():
    kubeadm.validate(yaml.safe_load(INIT))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"nodeRegistration": {"nodeIP": "x"}}, "InitConfiguration.nodeRegistration.nodeIP: unknown field"),
        ({"nodeRegistration": {"kubeletExtraArgs": {"node-ip": "x"}}}, "kubeletExtraArgs: expected a list"),
        ({"localAPIEndpoint": {"bindPort": "6443"}}, "localAPIEndpoint.bindPort: expected a whole number"),
        ({"kind": "InitConfig"}, "kind 'InitConfig' is none of"),
        ({"apiVersion": "kubeadm.k8s.io/v1beta3"}, "apiVersion 'kubeadm.k8s.io/v1beta3'"),
    ],
)
def test_a_field_the_type_does_not_have_is_refused(change, message):
    doc = yaml.safe_load(INIT)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    with pytest.raises(kubeadm.InvalidDocument, match=message.replace("[", r"\[")):
        kubeadm.validate(doc)


def test_a_kubelet_configuration_field_is_known_by_name():
    doc = {"apiVersion": kubeadm.KUBELET_API, "kind": "KubeletConfiguration", "maxPods": 110, "cgroupDriver": "systemd"}
    kubeadm.validate(doc)
    doc["cgroupDriverr"] = "systemd"
    with pytest.raises(kubeadm.InvalidDocument, match="KubeletConfiguration.cgroupDriverr: unknown field"):
        kubeadm.validate(doc)

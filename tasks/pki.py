"""The cluster's certificates, made once on the host with `cryptography`.

Replaces the seed's make-ca-cert.sh (easy-rsa run on every node, each node
with a CA of its own): one CA, the API server's certificate `kubernetes-master`
and the client certificate `kubecfg`, under the seed's file names. The CA is
made on the first render and kept; a certificate is re-issued from it only
when what it must say changed (the master address, the service range, the
domain) or it no longer verifies.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tasks.errors import StepError
from tasks.files import write_atomic

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.cert", "server.key"
CLIENT_CERT, CLIENT_KEY = "kubecfg.crt", "kubecfg.key"
# Files that go to /srv/kubernetes on the nodes; the CA key stays on the host.
NODE_FILES = (CA_CERT, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY)
VALIDITY = datetime.timedelta(days=3650)


class PKIError(StepError):
    """A certificate file exists but cannot be used; the message is one line."""


@dataclass(frozen=True)
class Want:
    """What the server certificate must name."""

    master_ip: str
    service_ip: str
    domain: str

    def sans(self) -> list[x509.GeneralName]:
        names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc", f"kubernetes.default.svc.{self.domain}"]
        return [
            x509.IPAddress(ipaddress.ip_address(self.master_ip)),
            x509.IPAddress(ipaddress.ip_address(self.service_ip)),
            *(x509.DNSName(n) for n in names),
        ]


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key) -> bytes:
    # PKCS#1 ("RSA PRIVATE KEY"), as easy-rsa wrote it and Kubernetes 1.1 reads it.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str, org: str = "") -> x509.Name:
    """CN, and O where given: Kubernetes reads a client certificate's O as its group."""
    org_part = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []
    return x509.Name([*org_part, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject: str, issuer: x509.Name, public_key, now: datetime.datetime, org: str = ""):
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject, org))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(**allowed: bool) -> x509.KeyUsage:
    """A KeyUsage extension allowing only the usages named."""
    names = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**{name: allowed.get(name, False) for name in names})


def make_ca(now: datetime.datetime, key=None) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A self-signed CA certificate, for a new key or for `key`."""
    key = key or _new_key()
    cert = (
        _builder("kubernetes-ca", _name("kubernetes-ca"), key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(ca_cert, ca_key, cn: str, key, usage, sans=None, now=None, org: str = "") -> x509.Certificate:
    """A leaf certificate for `key`, signed by the CA."""
    now = now or datetime.datetime.now(datetime.UTC)
    builder = (
        _builder(cn, ca_cert.subject, key.public_key(), now, org)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _load_key(path: Path):
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        return err


def _load(folder: Path, cert_name: str, key_name: str):
    """(cert, key) from disk, or None when neither exists."""
    cert_path, key_path = folder / cert_name, folder / key_name
    if not cert_path.exists() and not key_path.exists():
        return None
    key = _load_key(key_path)
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as err:
        return err
    return key if isinstance(key, Exception) else (cert, key)


def _still_good(pair, ca_cert, want_sans=None) -> bool:
    if pair is None or isinstance(pair, Exception):
        return False
    cert, key = pair
    try:
        cert.verify_directly_issued_by(ca_cert)
    except Exception:  # wrong issuer, bad signature, unsupported key: all mean re-issue
        return False
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        return False
    if cert.not_valid_after_utc < datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30):
        return False
    if want_sans is not None:
        try:
            have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        return sorted(map(str, have)) == sorted(map(str, want_sans))
    return True


def _check_ca(folder: Path, cert, key) -> None:
    """The CA's key must be the one its certificate names, and the certificate must sign itself."""
    try:
        matches = cert.public_key().public_numbers() == key.public_key().public_numbers()
        cert.verify_directly_issued_by(cert)
    except Exception:  # wrong signature, another key type: the pair cannot be used either way
        matches = False
    if not matches:
        raise PKIError(
            f"{folder / CA_KEY} does not match {folder / CA_CERT}: restore the pair that belongs together, "
            f"or delete {folder} to make a new CA (every node then needs `inv copy`)"
        )


# The seed's leaves: the API server's certificate and the client certificate `kubecfg` (easy-rsa's names).
SEED_LEAVES = (
    {"cert": SERVER_CERT, "key": SERVER_KEY, "cn": "kubernetes-master", "usage": "server", "sans": "apiserver"},
    {"cert": CLIENT_CERT, "key": CLIENT_KEY, "cn": "kubecfg", "usage": "client"},
)


def plan(folder: Path, want: Want, leaves=SEED_LEAVES) -> dict[str, tuple[bytes, int]]:
    """The PKI files to write (name -> (bytes, mode)); empty when all are current.

    Raises PKIError when the CA on disk is damaged or half there: a new CA
    would silently orphan every node that trusts the old one.
    """
    now = datetime.datetime.now(datetime.UTC)
    out: dict[str, tuple[bytes, int]] = {}
    ca = _load(folder, CA_CERT, CA_KEY)
    if isinstance(ca, Exception) and not (folder / CA_CERT).exists():
        # A first render cut short after the key was written: the certificate follows from the key.
        key = _load_key(folder / CA_KEY)
        if isinstance(key, rsa.RSAPrivateKey):
            ca = make_ca(now, key)
            out[CA_CERT] = (_cert_pem(ca[0]), 0o644)
    if isinstance(ca, Exception):
        raise PKIError(
            f"cannot read the CA in {folder} ({CA_CERT}, {CA_KEY}): {ca}; "
            f"restore both files, or delete the folder to make a new CA"
        )
    if ca is None:
        ca = make_ca(now)
        out[CA_CERT], out[CA_KEY] = (_cert_pem(ca[0]), 0o644), (_key_pem(ca[1]), 0o600)
    ca_cert, ca_key = ca
    _check_ca(folder, ca_cert, ca_key)
    usages = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}
    for leaf in leaves:
        cert_name, key_name, cn, org = leaf["cert"], leaf["key"], leaf["cn"], leaf.get("org", "")
        usage, sans = usages[leaf["usage"]], (want.sans() if leaf.get("sans") == "apiserver" else None)
        pair = _load(folder, cert_name, key_name)
        if _still_good(pair, ca_cert, sans):
            continue
        # Keep a readable RSA key: only what the certificate says has changed.
        reuse = pair and not isinstance(pair, Exception) and isinstance(pair[1], rsa.RSAPrivateKey)
        key = pair[1] if reuse else _new_key()
        out[cert_name] = (_cert_pem(issue(ca_cert, ca_key, cn, key, usage, sans, now, org)), 0o644)
        if not reuse:
            out[key_name] = (_key_pem(key), 0o600)
    return out


def write(folder: Path, files: dict[str, tuple[bytes, int]]) -> None:
    """Write what `plan` returned; keys first, so a certificate always has its key."""
    for name in sorted(files, key=lambda n: not n.endswith(".key")):
        data, mode = files[name]
        write_atomic(folder / name, data, mode)
    for name in (CA_KEY, SERVER_KEY, CLIENT_KEY):
        # A key copied in by hand with loose permissions is tightened, never left readable.
        if (folder / name).exists():
            (folder / name).chmod(0o600)

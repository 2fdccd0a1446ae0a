"""kubeadm's side of the current stack, decided on the host: bootstrap token, CA pin, kubeconfig, strict checks.

Pure. The kubeadm and kubelet configuration documents are checked against the
fields of their upstream API types (kubeadm.k8s.io/v1beta4,
kubelet.config.k8s.io/v1beta1, as of Kubernetes 1.36): a field those types do
not have is an error, as it is for `kubeadm init --config` in strict mode.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import string

from tasks.errors import StepError

TOKEN = re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}")
KUBEADM_API = "kubeadm.k8s.io/v1beta4"
KUBELET_API = "kubelet.config.k8s.io/v1beta1"


class InvalidDocument(StepError):
    """A configuration document with a field its API type does not have, or a value of the wrong kind."""


def new_token() -> str:
    """A bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}` as kubeadm expects."""
    alphabet = string.ascii_lowercase + string.digits
    return (
        "".join(secrets.choice(alphabet) for _ in range(6)) + "." + "".join(secrets.choice(alphabet) for _ in range(16))
    )


def discovery_hash(ca_cert) -> str:
    """`sha256:<hex>` of the CA's DER SubjectPublicKeyInfo: what `kubeadm join` pins the CA by."""
    from cryptography.hazmat.primitives import serialization

    spki = ca_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def kubeconfig(server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, cluster: str, user: str) -> str:
    """A kubeconfig with the certificates inline, as `kubeadm` writes admin.conf."""
    import yaml

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    context = f"{user}@{cluster}"
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": context, "context": {"cluster": cluster, "user": user}}],
        "current-context": context,
        "preferences": {},
    }
    return yaml.safe_dump(document, sort_keys=False)


# -- the API types' fields ----------------------------------------------------------
# A type is a mapping of field -> type; a type is str, int, bool, dict (a map of
# strings), a nested mapping, or a one-item list [type] for a list of them.

ARG = {"name": str, "value": str}
TAINT = {"key": str, "value": str, "effect": str, "timeAdded": str}
ENV = {"name": str, "value": str, "valueFrom": dict}
API_ENDPOINT = {"advertiseAddress": str, "bindPort": int}
COMPONENT = {
    "extraArgs": [ARG],
    "extraVolumes": [{"name": str, "hostPath": str, "mountPath": str, "readOnly": bool, "pathType": str}],
    "extraEnvs": [ENV],
}
NODE_REGISTRATION = {
    "name": str,
    "criSocket": str,
    "taints": [TAINT],
    "kubeletExtraArgs": [ARG],
    "ignorePreflightErrors": [str],
    "imagePullPolicy": str,
    "imagePullSerial": bool,
}
TIMEOUTS = dict.fromkeys(
    (
        "controlPlaneComponentHealthCheck",
        "kubeletHealthCheck",
        "kubernetesAPICall",
        "etcdAPICall",
        "tlsBootstrap",
        "discovery",
        "upgradeManifests",
    ),
    str,
)
COMMON = {"apiVersion": str, "kind": str}
TYPES: dict[tuple[str, str], dict] = {
    (KUBEADM_API, "InitConfiguration"): {
        **COMMON,
        "bootstrapTokens": [
            {"token": str, "description": str, "ttl": str, "expires": str, "usages": [str], "groups": [str]}
        ],
        "dryRun": bool,
        "nodeRegistration": NODE_REGISTRATION,
        "localAPIEndpoint": API_ENDPOINT,
        "certificateKey": str,
        "skipPhases": [str],
        "patches": {"directory": str},
        "timeouts": TIMEOUTS,
    },
    (KUBEADM_API, "ClusterConfiguration"): {
        **COMMON,
        "etcd": {
            "local": {
                "imageRepository": str,
                "imageTag": str,
                "dataDir": str,
                "extraArgs": [ARG],
                "extraEnvs": [ENV],
                "serverCertSANs": [str],
                "peerCertSANs": [str],
            },
            "external": {"endpoints": [str], "caFile": str, "certFile": str, "keyFile": str},
        },
        "networking": {"serviceSubnet": str, "podSubnet": str, "dnsDomain": str},
        "kubernetesVersion": str,
        "controlPlaneEndpoint": str,
        "apiServer": {**COMPONENT, "certSANs": [str]},
        "controllerManager": COMPONENT,
        "scheduler": COMPONENT,
        "dns": {"imageRepository": str, "imageTag": str, "disabled": bool},
        "proxy": {"disabled": bool},
        "certificatesDir": str,
        "imageRepository": str,
        "featureGates": dict,
        "clusterName": str,
        "encryptionAlgorithm": str,
        "certificateValidityPeriod": str,
        "caCertificateValidityPeriod": str,
    },
    (KUBEADM_API, "JoinConfiguration"): {
        **COMMON,
        "dryRun": bool,
        "nodeRegistration": NODE_REGISTRATION,
        "caCertPath": str,
        "discovery": {
            "bootstrapToken": {
                "token": str,
                "apiServerEndpoint": str,
                "caCertHashes": [str],
                "unsafeSkipCAVerification": bool,
            },
            "file": {"kubeConfigPath": str},
            "tlsBootstrapToken": str,
        },
        "controlPlane": {"localAPIEndpoint": API_ENDPOINT, "certificateKey": str},
        "skipPhases": [str],
        "patches": {"directory": str},
        "timeouts": TIMEOUTS,
    },
    (KUBELET_API, "KubeletConfiguration"): {
        **COMMON,
        # The fields the rendered documents use, with their types; every other field of the type is known by name.
        "cgroupDriver": str,
        "clusterDNS": [str],
        "clusterDomain": str,
        "containerRuntimeEndpoint": str,
        "failSwapOn": bool,
        "rotateCertificates": bool,
        "serverTLSBootstrap": bool,
        "authentication": {
            "x509": {"clientCAFile": str},
            "webhook": {"enabled": bool, "cacheTTL": str},
            "anonymous": {"enabled": bool},
        },
        "authorization": {"mode": str, "webhook": {"cacheAuthorizedTTL": str, "cacheUnauthorizedTTL": str}},
        **dict.fromkeys(
            """enableServer staticPodPath podLogsDir syncFrequency fileCheckFrequency httpCheckFrequency
            staticPodURL staticPodURLHeader address port readOnlyPort tlsCertFile tlsPrivateKeyFile tlsCipherSuites
            tlsCurvePreferences tlsMinVersion registryPullQPS registryBurst imagePullCredentialsVerificationPolicy
            preloadedImagesVerificationAllowlist eventRecordQPS eventBurst enableDebuggingHandlers
            enableContentionProfiling healthzPort healthzBindAddress oomScoreAdj streamingConnectionIdleTimeout
            nodeStatusUpdateFrequency nodeStatusReportFrequency nodeLeaseDurationSeconds imageMinimumGCAge
            imageMaximumGCAge imageGCHighThresholdPercent imageGCLowThresholdPercent volumeStatsAggPeriod
            kubeletCgroups systemCgroups cgroupRoot cgroupsPerQOS cpuManagerPolicy singleProcessOOMKill
            cpuManagerPolicyOptions cpuManagerReconcilePeriod memoryManagerPolicy topologyManagerPolicy
            topologyManagerScope topologyManagerPolicyOptions qosReserved runtimeRequestTimeout hairpinMode maxPods
            podCIDR podPidsLimit resolvConf runOnce cpuCFSQuota cpuCFSQuotaPeriod nodeStatusMaxImages maxOpenFiles
            contentType kubeAPIQPS kubeAPIBurst serializeImagePulls maxParallelImagePulls evictionHard evictionSoft
            evictionSoftGracePeriod evictionPressureTransitionPeriod evictionMaxPodGracePeriod
            evictionMinimumReclaim mergeDefaultEvictionSettings podsPerCore enableControllerAttachDetach
            protectKernelDefaults makeIPTablesUtilChains iptablesMasqueradeBit iptablesDropBit featureGates
            memorySwap containerLogMaxSize containerLogMaxFiles containerLogMaxWorkers containerLogMonitorInterval
            configMapAndSecretChangeDetectionStrategy systemReserved kubeReserved reservedSystemCPUs
            showHiddenMetricsForVersion systemReservedCgroup kubeReservedCgroup enforceNodeAllocatable
            allowedUnsafeSysctls volumePluginDir providerID kernelMemcgNotification logging enableSystemLogHandler
            enableSystemLogQuery shutdownGracePeriod shutdownGracePeriodCriticalPods
            shutdownGracePeriodByPodPriority crashLoopBackOff reservedMemory enableProfilingHandler
            enableDebugFlagsHandler seccompDefault memoryThrottlingFactor memoryReservationPolicy
            registerWithTaints registerNode tracing localStorageCapacityIsolation imageServiceEndpoint
            failCgroupV1 userNamespaces""".split(),
            object,
        ),
    },
}


def validate(document: dict) -> None:
    """Check one document against its API type; InvalidDocument names the first unknown field or bad value."""
    if not isinstance(document, dict):
        raise InvalidDocument(f"a document is {type(document).__name__}, not a mapping")
    kind = (document.get("apiVersion"), document.get("kind"))
    if kind not in TYPES:
        known = ", ".join(f"{api} {k}" for api, k in TYPES)
        raise InvalidDocument(f"apiVersion {kind[0]!r} kind {kind[1]!r} is none of: {known}")
    _check(document, TYPES[kind], kind[1])


def _check(value, kind, where: str) -> None:
    if kind is object:
        return
    if isinstance(kind, list):
        if not isinstance(value, list):
            raise InvalidDocument(f"{where}: expected a list, got {value!r}")
        for i, item in enumerate(value):
            _check(item, kind[0], f"{where}[{i}]")
        return
    if isinstance(kind, dict):
        if not isinstance(value, dict):
            raise InvalidDocument(f"{where}: expected a mapping, got {value!r}")
        for key, inner in value.items():
            if key not in kind:
                raise InvalidDocument(f"{where}.{key}: unknown field (strict decoding would refuse it)")
            _check(inner, kind[key], f"{where}.{key}")
        return
    if kind is dict:
        if not isinstance(value, dict):
            raise InvalidDocument(f"{where}: expected a mapping, got {value!r}")
        return
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidDocument(f"{where}: expected a whole number, got {value!r}")
    if kind is not int and not isinstance(value, kind):
        raise InvalidDocument(f"{where}: expected {kind.__name__}, got {value!r}")


TOKEN_FILE, KUBECONFIG_FILE = "bootstrap-token", "admin.conf"


def host_files(pki_dir, planned: dict, master_ip: str) -> tuple[dict, dict]:
    """(template context, PKI files to write) of a kubeadm stack, beside what `pki.plan` planned.

    The bootstrap token is made once and kept (`pki/bootstrap-token`, 0600);
    the CA pin and the admin kubeconfig (`pki/admin.conf`, 0600, server
    https://MASTER:6443) follow the CA and the admin certificate, planned or on disk.
    """
    from cryptography import x509

    def current(name: str) -> bytes:
        return planned[name][0] if name in planned else (pki_dir / name).read_bytes()

    def unless_same(name: str, data: bytes) -> dict:
        try:
            same = (pki_dir / name).read_bytes() == data
        except OSError:
            same = False
        return {} if same else {name: (data, 0o600)}

    try:
        token = (pki_dir / TOKEN_FILE).read_text().strip()
    except OSError:
        token = ""
    if not TOKEN.fullmatch(token):
        token = new_token()
    ca_pem = current("ca.crt")
    config = kubeconfig(
        f"https://{master_ip}:6443",
        ca_pem,
        current("admin.crt"),
        current("admin.key"),
        "kubernetes",
        "kubernetes-admin",
    )
    files = unless_same(TOKEN_FILE, (token + "\n").encode()) | unless_same(KUBECONFIG_FILE, config.encode())
    return {"token": token, "ca_hash": discovery_hash(x509.load_pem_x509_certificate(ca_pem))}, files


def check_rendered(name: str, text: str) -> None:
    """Every document of a rendered kubeadm configuration against its API type; InvalidDocument names the file."""
    import yaml

    for document in yaml.safe_load_all(text):
        if document is not None:
            try:
                validate(document)
            except InvalidDocument as err:
                raise InvalidDocument(f"{name}: {err}") from None

"""Every configuration key has a bad value that `settings.build` names in one line.

The table below holds at least one bad value for every key of `settings.SCHEMA`,
for the keys of a `cluster.hosts` and a `download.artifacts` entry, and for the
top-level `stack`. Together with the BAD table of tests/test_settings.py it must
cover every key: `test_every_key_has_a_bad_value` fails when a key is added
without a case.

Each case gives the key, the value and, where the wording is settled, a short
fragment of what is expected; the message must read
`invalid configuration: <key> = <repr(value)>: expected <fragment>...` on one line.
"""

from __future__ import annotations

import re

import invoke
import pytest
from invoke.exceptions import Exit
from test_settings import BAD

from conftest import ARTIFACTS, DEFAULTS, SEED_DEFAULTS, make_config, run_inv
from tasks import render, settings

PREFIX = "invalid configuration: "
HOST_KEYS = getattr(settings, "HOST_KEYS", None) or ("name", "address", "port", "user", "key_file", "ip")
ARTIFACT_KEYS = getattr(settings, "ARTIFACT_KEYS", None) or ("name", "url", "dest", "mode", "sha256")


def artifact(index: int, **changes) -> dict:
    """download.artifacts as in invoke.yaml, with entry `index` changed."""
    entries = [dict(a) for a in ARTIFACTS]
    entries[index].update(changes)
    return {"download": {"artifacts": entries}}


def host(index: int = 0, **changes) -> dict:
    """provider=hosts with two good entries, entry `index` changed."""
    entries = [{"name": "m1", "address": "10.0.0.10"}, {"name": "w1", "address": "10.0.0.11"}]
    entries[index].update(changes)
    return {"cluster": {"provider": "hosts", "hosts": entries}}


def case(change: dict, key: str, value, fragment: str = ""):
    """A bad configuration change, the key and value the message names, and a fragment of the expectation.

    A key ending in "[" is a prefix: the index in the message is not fixed by this table.
    """
    return change, key, value, fragment


CASES = [
    # --- stack (new top-level key; only "seed" for now) ---
    case({"stack": "coreos"}, "stack", "coreos", "one of current, seed"),
    case({"stack": ""}, "stack", "", "one of current, seed"),
    # A key only the other stack uses: refused, naming the stack in use.
    case({"versions": {"calico": "v3.31.7"}}, "versions.calico", "v3.31.7", "no value: stack seed has no use for it"),
    # --- cluster ---
    case({"cluster": {"num_instances": True}}, "cluster.num_instances", True, "a whole number"),
    case(
        {"cluster": {"instance_name_prefix": "-calico"}}, "cluster.instance_name_prefix", "-calico", "a hostname prefix"
    ),
    case({"cluster": {"instance_name_prefix": 7}}, "cluster.instance_name_prefix", 7, "a string"),
    case(
        {"cluster": {"first_ip": "172.18.18.0"}},
        "cluster.first_ip",
        "172.18.18.0",
        "a host address inside cluster.network 172.18.18.0/24",
    ),
    case(
        {"cluster": {"first_ip": "172.18.18.255"}},
        "cluster.first_ip",
        "172.18.18.255",
        "a host address inside cluster.network 172.18.18.0/24",
    ),
    case(
        {"cluster": {"network": "172.18.18.0/40"}}, "cluster.network", "172.18.18.0/40", "an IPv4 network in CIDR form"
    ),
    case({"cluster": {"provider": ""}}, "cluster.provider", "", "one of vagrant, hosts"),
    case(
        {"cluster": {"hosts": {"name": "m1", "address": "10.0.0.10"}}},
        "cluster.hosts",
        {"name": "m1", "address": "10.0.0.10"},
        "a list",
    ),
    case(
        {"cluster": {"provider": "hosts", "hosts": ["10.0.0.10"]}},
        "cluster.hosts[0]",
        "10.0.0.10",
        "a mapping with keys",
    ),
    case({"cluster": {"user_data_path": ""}}, "cluster.user_data_path", "", "an absolute path"),
    case(
        {"cluster": {"activate_command": ["coreos-cloudinit"]}},
        "cluster.activate_command",
        ["coreos-cloudinit"],
        "a string",
    ),
    case({"cluster": {"ssh_timeout": 0}}, "cluster.ssh_timeout", 0),
    case({"cluster": {"ssh_timeout": -10}}, "cluster.ssh_timeout", -10),
    case({"cluster": {"ssh_timeout": "10"}}, "cluster.ssh_timeout", "10", "a whole number"),
    case({"cluster": {"host_key_policy": "ask"}}, "cluster.host_key_policy", "ask", "one of accept-new, strict, off"),
    case({"cluster": {"host_key_policy": ""}}, "cluster.host_key_policy", "", "one of accept-new, strict, off"),
    case(
        {"cluster": {"host_key_policy": False}},
        "cluster.host_key_policy",
        False,
        "one of accept-new, strict, off ('off' in quotes: YAML reads a bare off as false)",
    ),
    case({"cluster": {"host_key_policy": ["strict"]}}, "cluster.host_key_policy", ["strict"], "one of accept-new"),
    # --- cluster.hosts[i] entries ---
    case(host(0, name=""), "cluster.hosts[0].name", "", "a non-empty string"),
    case(host(1, address=""), "cluster.hosts[1].address", "", "a non-empty string"),
    case(host(0, ip="10.0.0"), "cluster.hosts[0].ip", "10.0.0", "an IPv4 address"),
    case(host(1, ip="10.0.0.10"), "cluster.hosts[1].ip", "10.0.0.10", "an address no other host has"),
    case(host(0, port=0), "cluster.hosts[0].port", 0, "a TCP port from 1 to 65535"),
    case(host(1, port=65536), "cluster.hosts[1].port", 65536, "a TCP port from 1 to 65535"),
    case(host(0, port="22"), "cluster.hosts[0].port", "22", "a whole number"),
    case(host(0, user="-root"), "cluster.hosts[0].user", "-root"),
    case(host(1, user="ad min"), "cluster.hosts[1].user", "ad min"),
    case(host(0, user="core@m1"), "cluster.hosts[0].user", "core@m1"),
    case(host(0, user=1000), "cluster.hosts[0].user", 1000, "a string"),
    case(host(0, key_file=["~/.ssh/id_ed25519"]), "cluster.hosts[0].key_file", ["~/.ssh/id_ed25519"], "a string"),
    # --- vm ---
    case({"vm": {"box": ""}}, "vm.box", "", "a Vagrant box name"),
    case({"vm": {"box": 928}}, "vm.box", 928, "a string"),
    case(
        {"vm": {"box_url": "ftp://alpha.release.core-os.net/coreos_production_vagrant.json"}},
        "vm.box_url",
        "ftp://alpha.release.core-os.net/coreos_production_vagrant.json",
    ),
    case({"vm": {"box_url": "coreos_production_vagrant.json"}}, "vm.box_url", "coreos_production_vagrant.json"),
    case({"vm": {"memory": "2G"}}, "vm.memory", "2G", "a whole number"),
    case({"vm": {"cpus": 0}}, "vm.cpus", 0, "a whole number of at least 1"),
    case({"vm": {"cpus": 1.5}}, "vm.cpus", 1.5, "a whole number"),
    case({"vm": {"timezone": 8}}, "vm.timezone", 8, "a string"),
    case({"vm": {"images": "busybox:latest"}}, "vm.images", "busybox:latest", "a list"),
    case({"vm": {"images": ["busy box:latest"]}}, "vm.images[0]", "busy box:latest", "a docker image name"),
    case({"vm": {"images": ["busybox:latest", ""]}}, "vm.images[1]", "", "a docker image name"),
    case({"vm": {"images": [5]}}, "vm.images[0]", 5, "a docker image name"),
    # --- kubernetes ---
    case(
        {"kubernetes": {"service_range": "10.100.0.0/31"}},
        "kubernetes.service_range",
        "10.100.0.0/31",
        "a network of at least 4 addresses",
    ),
    case(
        {"kubernetes": {"dns_ip": "10.100.255.255"}},
        "kubernetes.dns_ip",
        "10.100.255.255",
        "an address inside kubernetes.service_range 10.100.0.0/16",
    ),
    case({"kubernetes": {"dns_ip": "dns"}}, "kubernetes.dns_ip", "dns", "an IPv4 address"),
    case({"kubernetes": {"domain": "Cluster.Local"}}, "kubernetes.domain", "Cluster.Local", "a DNS domain"),
    case({"kubernetes": {"domain": ""}}, "kubernetes.domain", "", "a DNS domain"),
    case({"kubernetes": {"pause_image": ""}}, "kubernetes.pause_image", "", "a docker image name"),
    case({"kubernetes": {"pause_image": "shenshouer/pause 0.8.0"}}, "kubernetes.pause_image", "shenshouer/pause 0.8.0"),
    # --- calico ---
    case({"calico": {"pool": "192.168.0.0/33"}}, "calico.pool", "192.168.0.0/33", "an IPv4 network in CIDR form"),
    case(
        {"calico": {"pool": "172.18.0.0/16"}},
        "calico.pool",
        "172.18.0.0/16",
        "a network that does not overlap cluster.network 172.18.18.0/24",
    ),
    # --- versions ---
    *[
        case(
            {"versions": {key: ""}, **({} if key in SEED_DEFAULTS["versions"] else {"stack": "current"})},
            f"versions.{key}",
            "",
            "a non-empty version",
        )
        for key in DEFAULTS["versions"]
    ],
    case({"versions": {"kubernetes": 1.1}}, "versions.kubernetes", 1.1, "a string"),
    # --- images (the current stack's) ---
    case(
        {"stack": "current", "images": {"mirrors": ["https://m.example"]}},
        "images.mirrors",
        ["https://m.example"],
        "a mapping",
    ),
    case(
        {"stack": "current", "images": {"mirrors": {"docker.io": "hub.mirror.example"}}},
        "images.mirrors['docker.io']",
        "hub.mirror.example",
        "the mirror's http(s) URL",
    ),
    # --- paths ---
    case({"paths": {"output": ""}}, "paths.output", ""),
    case({"paths": {"downloads": ""}}, "paths.downloads", ""),
    case({"paths": {"output": 5}}, "paths.output", 5, "a string"),
    # --- download ---
    case({"download": {"parallel": 0}}, "download.parallel", 0, "a whole number of at least 1"),
    case({"download": {"parallel": -2}}, "download.parallel", -2, "a whole number of at least 1"),
    case({"download": {"parallel": "4"}}, "download.parallel", "4", "a whole number"),
    case({"download": {"connections": 0}}, "download.connections", 0, "a whole number of at least 1"),
    case({"download": {"connections": "8"}}, "download.connections", "8", "a whole number"),
    case({"download": {"timeout": 0}}, "download.timeout", 0, "a whole number of at least 1"),
    case({"download": {"connect_timeout": 0}}, "download.connect_timeout", 0, "a whole number of at least 1"),
    case({"download": {"retries": 0}}, "download.retries", 0, "a whole number of at least 1"),
    case({"download": {"lock_file": ""}}, "download.lock_file", "", "a file path"),
    case({"download": {"lock_file": 5}}, "download.lock_file", 5, "a string"),
    case(
        {"download": {"mirrors": {"ftp://x/": "https://mirror.example/k8s/"}}},
        "download.mirrors['ftp://x/']",
        "ftp://x/",
        "a URL prefix to replace",
    ),
    case(
        {"download": {"mirrors": {"storage.googleapis.com/": "https://mirror.example/k8s/"}}},
        "download.mirrors['storage.googleapis.com/']",
        "storage.googleapis.com/",
        "a URL prefix to replace",
    ),
    case(
        {"download": {"mirrors": {"https://storage.googleapis.com/": "mirror.example/k8s/"}}},
        "download.mirrors['https://storage.googleapis.com/']",
        "mirror.example/k8s/",
        "a replacement URL prefix",
    ),
    case(
        {"download": {"mirrors": ["https://mirror.example/k8s/"]}},
        "download.mirrors",
        ["https://mirror.example/k8s/"],
        "a mapping",
    ),
    case({"download": {"artifacts": {"name": "kubectl"}}}, "download.artifacts", {"name": "kubectl"}, "a list"),
    case({"download": {"allow_http": "yes"}}, "download.allow_http", "yes", "true or false"),
    case({"download": {"allow_http": 1}}, "download.allow_http", 1, "true or false"),
    case({"download": {"allow_http": None}}, "download.allow_http", None, "true or false"),
    case(
        {"download": {"mirrors": {"https://github.com/": "http://mirror.example/gh/"}}},
        "download.mirrors['https://github.com/']",
        "http://mirror.example/gh/",
        "an https:// replacement URL prefix (plain http only with download.allow_http: true)",
    ),
    # --- download.artifacts[i] entries ---
    case({"download": {"artifacts": ["kubectl"]}}, "download.artifacts[0]", "kubectl", "a mapping with keys"),
    case(artifact(0, sha="ab"), "download.artifacts[0].sha", "ab", "one of name, url"),
    case(artifact(0, name="kube ctl"), "download.artifacts[0].name", "kube ctl", "a file name of letters"),
    case(artifact(1, name=""), "download.artifacts[1].name", "", "a file name of letters"),
    case(artifact(3, name="kubelet"), "download.artifacts[3].name", "kubelet", "a name no other artifact has"),
    case(
        artifact(2, url="https://storage.googleapis.com/{nope}/kube-proxy"),
        "download.artifacts[2].url",
        "https://storage.googleapis.com/{nope}/kube-proxy",
        "an http(s) URL whose placeholders are among",
    ),
    case(
        artifact(6, url="ftp://github.com/{calicoctl}/calicoctl"),
        "download.artifacts[6].url",
        "ftp://github.com/{calicoctl}/calicoctl",
        "an http:// or https:// URL",
    ),
    case(
        artifact(7, url="github.com/projectcalico/calico"),
        "download.artifacts[7].url",
        "github.com/projectcalico/calico",
        "an http:// or https:// URL",
    ),
    case(
        artifact(7, url="http://github.com/projectcalico/calico-cni/releases/download/{calico_cni}/calico"),
        "download.artifacts[7].url",
        "http://github.com/projectcalico/calico-cni/releases/download/{calico_cni}/calico",
        "an https:// URL (plain http only with download.allow_http: true)",
    ),
    case(artifact(7, dest="bin"), "download.artifacts[7].dest", "bin", "an absolute folder"),
    case(artifact(0, mode="999"), "download.artifacts[0].mode", "999", "an octal file mode"),
    case(artifact(8, mode="75"), "download.artifacts[8].mode", "75", "an octal file mode"),
    case(artifact(0, mode=493), "download.artifacts[0].mode", 493, "a string"),
    case(artifact(9, sha256="abc"), "download.artifacts[9].sha256", "abc", "64 hexadecimal digits"),
    case(artifact(0, sha256="g" * 64), "download.artifacts[0].sha256", "g" * 64, "64 hexadecimal digits"),
    case(artifact(9, sha256="ab" * 31 + "a"), "download.artifacts[9].sha256", "ab" * 31 + "a", "64 hexadecimal digits"),
    case(artifact(3, roles="master"), "download.artifacts[3].roles", "master", "a list"),
    case(
        artifact(3, roles=["worker"]),
        "download.artifacts[3].roles",
        ["worker"],
        "a list of node roles among master, node",
    ),
    case(artifact(1, roles=[]), "download.artifacts[1].roles", [], "a list of node roles among master, node"),
    # --- addons ---
    case({"addons": {"manifests": ["skydns.yaml", "nope.yaml"]}}, "addons.manifests[", "nope.yaml", "one of"),
    case({"addons": {"manifests": ["../../etc/passwd"]}}, "addons.manifests[", "../../etc/passwd", "one of"),
    case({"addons": {"manifests": "skydns.yaml"}}, "addons.manifests", "skydns.yaml", "a list"),
    case({"addons": {"timeout": "600s"}}, "addons.timeout", "600s", "a whole number"),
    # --- verify ---
    case({"verify": {"timeout": -1}}, "verify.timeout", -1, "a number of seconds, 0 or more"),
    case({"verify": {"interval": 2.5}}, "verify.interval", 2.5, "a whole number"),
    case({"verify": {"api_url": "127.0.0.1:8080"}}, "verify.api_url", "127.0.0.1:8080"),
    case({"verify": {"api_url": "ftp://127.0.0.1:8080"}}, "verify.api_url", "ftp://127.0.0.1:8080"),
    case({"verify": {"api_url": ""}}, "verify.api_url", ""),
    case(
        {"verify": {"ui_path": "api/v1/proxy/namespaces/kube-system/services/kube-ui/"}},
        "verify.ui_path",
        "api/v1/proxy/namespaces/kube-system/services/kube-ui/",
    ),
    case({"verify": {"ui_path": ""}}, "verify.ui_path", ""),
]


def case_id(key: str, value) -> str:
    return f"{key}={value!r}"


IDS = [case_id(key, value) for _, key, value, _ in CASES]


def configured(tmp_path, change: dict) -> dict:
    """make_config with `change`: sections updated key by key, top-level values (stack) set."""
    sections = {k: v for k, v in change.items() if isinstance(v, dict)}
    config = make_config(tmp_path, **sections)
    config.update({k: v for k, v in change.items() if not isinstance(v, dict)})
    return config


def assert_names(message: str, key: str, value, fragment: str) -> None:
    assert "\n" not in message, message
    if key.endswith("["):
        assert message.startswith(PREFIX + key), message
        expected = f"] = {value!r}: expected {fragment}".rstrip()
        assert expected in message, message
    else:
        assert message.startswith(f"{PREFIX}{key} = {value!r}: expected {fragment}".rstrip()), message


@pytest.mark.parametrize("change, key, value, fragment", CASES, ids=IDS)
def test_bad_value_is_named_in_one_line(tmp_path, change, key, value, fragment):
    with pytest.raises(settings.ConfigError) as err:
        settings.build(configured(tmp_path, change))
    assert_names(str(err.value), key, value, fragment)


def _covered(key: str) -> str:
    """The key a case is for: entry keys as cluster.hosts[].port, indexed values as their list or mapping."""
    key = re.sub(r"\[[^\]]*\]", "[]", key).rstrip("[")
    for entries in ("cluster.hosts[].", "download.artifacts[]."):
        if key.startswith(entries):
            return entries + key[len(entries) :].split("[")[0]
    return key.split("[")[0]


def required_keys() -> set[str]:
    keys = {"stack"}
    for section, names in settings.SCHEMA.items():
        if hasattr(names, "items"):
            keys |= {f"{section}.{name}" for name in names}
        else:  # a top-level key of its own
            keys.add(section)
    keys |= {f"cluster.hosts[].{name}" for name in HOST_KEYS}
    keys |= {f"download.artifacts[].{name}" for name in ARTIFACT_KEYS}
    return keys


def test_every_key_has_a_bad_value():
    covered = {_covered(key) for _, key, _, _ in CASES}
    covered |= {_covered(message.split(" =")[0]) for _, message in BAD}
    missing = sorted(required_keys() - covered)
    assert not missing, f"keys without a bad-value case here or in test_settings.BAD: {missing}"


def test_no_case_repeats_one_of_test_settings():
    repeated = [case_id(key, value) for change, key, value, _ in CASES if any(change == c for c, _ in BAD)]
    assert not repeated, repeated
    assert len(set(IDS)) == len(IDS), "two cases of the table are the same"


# The `config` task, called in-process: exit 2, the one line naming the key, nothing printed.
TASK_CASES = [
    "download.parallel=0",
    "download.mirrors['ftp://x/']='ftp://x/'",
    "download.mirrors['https://storage.googleapis.com/']='mirror.example/k8s/'",
    "download.artifacts[8].mode='75'",
    "download.allow_http='yes'",
    "stack='coreos'",
    "cluster.first_ip='172.18.18.0'",
    "cluster.hosts[1].port=65536",
    "verify.api_url='127.0.0.1:8080'",
]


@pytest.mark.parametrize("which", TASK_CASES)
def test_config_task_exits_2_naming_the_key(tmp_path, capsys, which):
    change, key, value, fragment = CASES[IDS.index(which)]
    # lazy: no /etc/invoke.yaml or ~/.invoke.yaml of this machine in the way.
    ctx = invoke.Context(invoke.Config(overrides=configured(tmp_path, change), lazy=True))
    with pytest.raises(Exit) as err:
        render.show_config(ctx)
    assert err.value.code == 2
    assert_names(str(err.value.message), key, value, fragment)
    assert capsys.readouterr().out == ""


def test_inv_config_rejects_download_parallel_0(tmp_path):
    done = run_inv(tmp_path, "config", config=make_config(tmp_path, download={"parallel": 0}))
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{PREFIX}download.parallel = 0: expected"), done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""

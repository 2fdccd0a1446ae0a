"""Configuration checks: every bad value gives one line naming it, exit 2, no file."""

from __future__ import annotations

import pytest
import yaml

from conftest import ARTIFACTS, DEFAULTS, ROOT, make_config, run_inv
from tasks import settings

BAD = [
    ({"cluster": {"num_instances": 0}}, "cluster.num_instances = 0: expected a whole number of at least 1"),
    ({"cluster": {"num_instances": "three"}}, "cluster.num_instances = 'three': expected a whole number"),
    ({"cluster": {"first_ip": "172.18.18.300"}}, "cluster.first_ip = '172.18.18.300': expected an IPv4 address"),
    (
        {"cluster": {"first_ip": "10.0.0.5"}},
        "cluster.first_ip = '10.0.0.5': expected a host address inside cluster.network 172.18.18.0/24",
    ),
    (
        {"cluster": {"network": "172.18.18.1/24"}},
        "cluster.network = '172.18.18.1/24': expected an IPv4 network in CIDR form",
    ),
    ({"cluster": {"num_instances": 200}}, "cluster.num_instances = 200: expected at most 154 nodes from 172.18.18.101"),
    (
        {"cluster": {"instance_name_prefix": "Calico_"}},
        "cluster.instance_name_prefix = 'Calico_': expected a hostname prefix",
    ),
    ({"cluster": {"provider": "virtualbox"}}, "cluster.provider = 'virtualbox': expected one of vagrant, hosts"),
    (
        {
            "cluster": {
                "provider": "hosts",
                "hosts": [{"name": "a", "address": "127.0.0.1"}, {"name": "a", "address": "127.0.0.2"}],
            }
        },
        "cluster.hosts[1].name = 'a': expected a name no other host has",
    ),
    (
        {"cluster": {"provider": "hosts", "hosts": [{"name": "bad_name", "address": "127.0.0.1"}]}},
        "cluster.hosts[0].name = 'bad_name': expected a hostname",
    ),
    (
        {"cluster": {"provider": "hosts", "hosts": [{"name": "a", "address": "host.example"}]}},
        "cluster.hosts[0].address = 'host.example': expected an IPv4 address",
    ),
    (
        {"cluster": {"provider": "hosts", "hosts": [{"name": "a", "address": "10.0.0.1", "adress": "x"}]}},
        "cluster.hosts[0].adress = 'x': expected one of name, address",
    ),
    ({"cluster": {"provider": "hosts", "hosts": []}}, "cluster.hosts = []: expected at least one"),
    (
        {"kubernetes": {"service_range": "10.100.0.0/33"}},
        "kubernetes.service_range = '10.100.0.0/33': expected an IPv4 network",
    ),
    (
        {"kubernetes": {"dns_ip": "10.200.0.10"}},
        "kubernetes.dns_ip = '10.200.0.10': expected an address inside kubernetes.service_range 10.100.0.0/16",
    ),
    (
        {"kubernetes": {"dns_ip": "10.100.0.1"}},
        "kubernetes.dns_ip = '10.100.0.1': expected an address inside kubernetes.service_range 10.100.0.0/16 other than 10.100.0.1",
    ),
    ({"kubernetes": {"domain": "cluster..local"}}, "kubernetes.domain = 'cluster..local': expected a DNS domain"),
    (
        {"calico": {"pool": "10.100.0.0/24"}},
        "calico.pool = '10.100.0.0/24': expected a network that does not overlap kubernetes.service_range",
    ),
    ({"vm": {"memory": -1}}, "vm.memory = -1: expected a whole number of at least 1"),
    (
        {"kubernetes": {"service_range": "172.18.0.0/16", "dns_ip": "172.18.0.10"}},
        "kubernetes.service_range = '172.18.0.0/16': expected a network that does not overlap cluster.network 172.18.18.0/24",
    ),
    (
        {"cluster": {"provider": "hosts", "hosts": [{"name": "a", "address": "192.168.1.10"}]}},
        "calico.pool = '192.168.0.0/16': expected a network that does not contain node a's address 192.168.1.10",
    ),
    ({"verify": {"interval": 0}}, "verify.interval = 0: expected a whole number of at least 1"),
    ({"cluster": {"user_data_path": "user-data"}}, "cluster.user_data_path = 'user-data': expected an absolute path"),
    ({"addons": {"timeout": -5}}, "addons.timeout = -5: expected a number of seconds, 0 or more"),
    ({"vm": {"timezone": "Mars/Olympus"}}, "vm.timezone = 'Mars/Olympus': expected a time zone name"),
    ({"cluster": {"num_instancs": 3}}, "cluster.num_instancs = 3: expected a known key of cluster"),
    ({"clustr": {"num_instances": 3}}, "clustr = '...': expected one of the sections"),
]


@pytest.mark.parametrize("change,message", BAD, ids=[m.split(" =")[0] for _, m in BAD])
def test_bad_value_is_named(tmp_path, change, message):
    config = make_config(tmp_path)
    for section, values in change.items():
        config.setdefault(section, {}).update(values)
    with pytest.raises(settings.ConfigError) as err:
        settings.build(config)
    assert str(err.value).startswith(f"invalid configuration: {message}")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("change,message", [BAD[0], BAD[4], BAD[14], BAD[-2], BAD[-1]])
def test_inv_render_rejects_bad_config_without_writing(tmp_path, change, message):
    config = make_config(tmp_path)
    for section, values in change.items():
        config.setdefault(section, {}).update(values)
    result = run_inv(tmp_path, "render", config=config)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"invalid configuration: {message}"), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_environment_variable_overrides_a_key(tmp_path):
    import os

    env = dict(os.environ, INVOKE_CLUSTER_NUM_INSTANCES="0")
    # Only the paths in the -f file: it ranks above environment variables.
    result = run_inv(tmp_path, "render", config={"paths": make_config(tmp_path)["paths"]}, env=env)
    assert result.returncode == 2
    assert "cluster.num_instances = 0" in result.stderr


def test_schema_lists_exactly_the_keys_of_invoke_yaml():
    assert set(DEFAULTS) == {"stack", *settings.SCHEMA}
    for section, keys in settings.SCHEMA.items():
        assert set(DEFAULTS[section]) == set(keys), section


def test_defaults_build_the_seed_cluster(tmp_path):
    cluster = settings.build(make_config(tmp_path)).cluster
    assert [(n.name, n.ip, n.role) for n in cluster.nodes] == [
        ("calico-01", "172.18.18.101", "master"),
        ("calico-02", "172.18.18.102", "node"),
        ("calico-03", "172.18.18.103", "node"),
    ]
    assert cluster.api_service_ip == "10.100.0.1"
    assert cluster.images == ["busybox:latest", "shenshouer/pause:0.8.0", "calico/node:v0.15.0"]


def test_hosts_provider_uses_entries(tmp_path):
    hosts = [
        {"name": "m1", "address": "203.0.113.10", "ip": "10.0.0.10", "port": 2222, "user": "admin"},
        {"name": "w1", "address": "10.0.0.11"},
    ]
    cluster = settings.build(make_config(tmp_path, cluster={"provider": "hosts", "hosts": hosts})).cluster
    m1, w1 = cluster.nodes
    assert (m1.name, m1.ip, m1.address, m1.port, m1.user, m1.role) == (
        "m1",
        "10.0.0.10",
        "203.0.113.10",
        2222,
        "admin",
        "master",
    )
    assert (w1.ip, w1.address, w1.port, w1.user, w1.role) == ("10.0.0.11", "10.0.0.11", 22, "core", "node")


def test_invoke_yaml_is_the_project_config():
    assert yaml.safe_load((ROOT / "invoke.yaml").read_text()) == DEFAULTS


def test_inv_config_prints_the_effective_values(tmp_path):
    config = make_config(tmp_path, cluster={"num_instances": 5}, vm={"memory": 1024})
    done = run_inv(tmp_path, "config", config=config)
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["cluster"]["num_instances"] == 5 and shown["vm"]["memory"] == 1024
    assert shown["download"]["artifacts"] == ARTIFACTS
    config["cluster"]["first_ip"] = "nope"
    bad = run_inv(tmp_path, "config", config=config)
    assert bad.returncode == 2 and "cluster.first_ip = 'nope'" in bad.stderr and bad.stdout == ""


def test_a_large_network_is_checked_without_listing_it(tmp_path):
    """A /12 holds a million addresses: the checks compare numbers instead of listing them."""
    cluster = settings.build(
        make_config(tmp_path, cluster={"network": "172.16.0.0/12", "first_ip": "172.16.0.10", "num_instances": 2})
    ).cluster
    assert [n.ip for n in cluster.nodes] == ["172.16.0.10", "172.16.0.11"]
    with pytest.raises(settings.ConfigError, match="at most 5 nodes"):
        settings.build(
            make_config(tmp_path, cluster={"network": "10.0.0.0/29", "first_ip": "10.0.0.2", "num_instances": 6})
        )


def test_settings_the_provider_ignores_are_named_once(tmp_path):
    """With provider hosts, changed vm.* settings do nothing: said once on stderr, even for several tasks."""
    hosts = [{"name": "m1", "address": "10.0.0.10"}]
    config = make_config(tmp_path, cluster={"provider": "hosts", "hosts": hosts}, vm={"memory": 4096, "cpus": 4})
    done = run_inv(tmp_path, "config", "config", config=config)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["note: cluster.provider hosts ignores vm.memory, vm.cpus"]
    assert settings.build(config).ignored == ("vm.memory", "vm.cpus")
    assert settings.build(make_config(tmp_path, cluster={"provider": "hosts", "hosts": hosts})).ignored == ()
    vagrant = make_config(tmp_path, cluster={"hosts": hosts})
    assert settings.build(vagrant).ignored == ("cluster.hosts",)


def test_config_names_every_invalid_value_at_once(tmp_path):
    config = make_config(
        tmp_path,
        cluster={"num_instances": 0, "first_ip": "1.2.3", "ssh_timeout": "x"},
        vm={"memory": -1},
        download={"parallel": 0},
        verify={"ui_path": "nope"},
    )
    done = run_inv(tmp_path, "config", config=config)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "invalid configuration: cluster.ssh_timeout = 'x': expected a whole number",
        "invalid configuration: cluster.num_instances = 0: expected a whole number of at least 1",
        "invalid configuration: cluster.first_ip = '1.2.3': expected an IPv4 address like 172.18.18.101",
        "invalid configuration: vm.memory = -1: expected a whole number of at least 1",
        "invalid configuration: download.parallel = 0: expected a whole number of at least 1",
        "invalid configuration: verify.ui_path = 'nope': expected a URL path starting with /",
    ]


def test_every_task_names_every_invalid_value_and_writes_nothing(tmp_path):
    config = make_config(tmp_path, vm={"cpus": 0}, verify={"interval": 0})
    import os

    env = dict(os.environ, INVOKE_CLUSTR_NUM_INSTANCES="2")
    done = run_inv(tmp_path, "render", config=config, env=env)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "invalid configuration: INVOKE_CLUSTR_NUM_INSTANCES = '2': expected INVOKE_<SECTION>_<KEY> naming a key of "
        "invoke.yaml, like INVOKE_CLUSTER_NUM_INSTANCES",
        "invalid configuration: vm.cpus = 0: expected a whole number of at least 1",
        "invalid configuration: verify.interval = 0: expected a whole number of at least 1",
    ]
    assert not (tmp_path / "out").exists()


def test_a_value_that_clashes_with_a_default_is_named_once(tmp_path):
    """calico.pool is named for its overlap; put back to its default it overlaps still: said once, not again."""
    config = make_config(tmp_path, kubernetes={"service_range": "192.168.0.0/16", "dns_ip": "192.168.0.10"})
    assert [str(p) for p in settings.problems(config)] == [
        "invalid configuration: calico.pool = '192.168.0.0/16': expected a network that does not overlap "
        "kubernetes.service_range 192.168.0.0/16"
    ]
    assert settings.problems(make_config(tmp_path)) == []

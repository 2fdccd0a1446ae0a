"""The addon manifests: the seed's objects, valid Kubernetes, values following the configuration.

kubernetes-validate's schemas start at Kubernetes 1.25; v1 Namespace, Service,
ReplicationController and Pod are unchanged there, so validating against 1.25
(strict: unknown fields fail) is the closest check available for 1.1.
"""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from conftest import SEED_DEFAULTS, make_config, project, seed_file
from tasks import render, stack


def manifests(config) -> dict[str, list[dict]]:
    files = render.plan(project(config))
    return {
        name.split("/", 1)[1]: [d for d in yaml.safe_load_all(text) if d]
        for name, text in files.items()
        if name.startswith("manifests/")
    }


def container(docs, rc: str, name: str) -> dict:
    spec = next(d for d in docs if d["metadata"]["name"] == rc)["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)


def test_default_manifests_are_the_seeds_objects(tmp_path):
    mine = manifests(make_config(tmp_path))
    reference = seed_file("reference", "manifests")
    assert sorted(mine) == sorted(p.name for p in reference.glob("*.yaml"))
    for name, docs in mine.items():
        seed = [d for d in yaml.safe_load_all((reference / name).read_text()) if d]
        assert docs == seed, name


def test_addons_create_every_manifest_namespace_first(tmp_path):
    config = make_config(tmp_path)
    order = project(config).addons.manifests
    assert order == tuple(SEED_DEFAULTS["addons"]["manifests"])
    assert sorted(order) == sorted(manifests(config))
    first = manifests(config)[order[0]][0]
    assert (first["kind"], first["metadata"]["name"]) == ("Namespace", "kube-system")


@pytest.mark.parametrize("name", stack.load("seed").manifest_names())
def test_rendered_manifests_are_valid_kubernetes(tmp_path, name):
    for doc in manifests(make_config(tmp_path))[name]:
        kubernetes_validate.validate(doc, "1.25", strict=True)


def test_validation_catches_a_broken_manifest(tmp_path):
    """The check above must be able to fail, or it proves nothing."""
    (doc,) = manifests(make_config(tmp_path))["busybox.yaml"]
    doc["spec"]["containers"][0]["commands"] = ["sleep"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, "1.25", strict=True)


def test_dns_address_and_domain_follow_the_configuration(tmp_path):
    config = make_config(
        tmp_path, kubernetes={"service_range": "10.32.0.0/16", "dns_ip": "10.32.0.53", "domain": "k8s.example"}
    )
    docs = manifests(config)["skydns.yaml"]
    service = next(d for d in docs if d["kind"] == "Service")
    assert (service["metadata"]["name"], service["spec"]["clusterIP"]) == ("kube-dns", "10.32.0.53")
    assert "-domain=k8s.example" in container(docs, "kube-dns-v9", "kube2sky")["args"]
    assert "-domain=k8s.example." in container(docs, "kube-dns-v9", "skydns")["args"]
    assert (
        "-cmd=nslookup kubernetes.default.svc.k8s.example localhost >/dev/null"
        in container(docs, "kube-dns-v9", "healthz")["args"]
    )
    text = render.plan(project(config))["manifests/skydns.yaml"].decode()
    assert "cluster.local" not in text and "10.100.0.10" not in text

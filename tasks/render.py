"""`inv render`: per-node cloud-config, certificates and the cluster description.

Replaces the seed's hand-edited templates and the `sed` calls its Vagrantfile
ran: everything is rendered in memory from the configuration first, then
written atomically, so a bad value writes nothing and a re-run changes nothing.
"""
from __future__ import annotations

import json
from pathlib import Path

from invoke import Exit, task

from tasks import settings
from tasks.files import write_atomic
from tasks.settings import Cluster

TEMPLATES = settings.ROOT / "cloud-config"
MANIFESTS = settings.ROOT / "manifests"
DESCRIPTION = "cluster.json"
NODES_DIR = "nodes"
PKI_DIR = "pki"


def _environment(folder: Path):
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)), undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)


def user_data_name(node_name: str) -> str:
    return f"{NODES_DIR}/{node_name}.yaml"


def description(cluster: Cluster) -> dict:
    """What the Vagrantfile and the later steps read about the machines."""
    vm = cluster.vm
    return {
        "provider": cluster.provider,
        "master": cluster.master.name,
        "timezone": vm["timezone"],
        "images": cluster.images,
        "user_data_path": cluster.user_data_path,
        "nodes": [
            {"name": n.name, "role": n.role, "ip": n.ip, "memory": vm["memory"], "cpus": vm["cpus"],
             "box": vm["box"], "box_url": vm["box_url"], "user_data": user_data_name(n.name)}
            for n in cluster.nodes
        ],
    }


def plan(cluster: Cluster) -> dict[str, bytes]:
    """Every rendered file but the PKI: relative path -> contents."""
    env = _environment(TEMPLATES)
    files: dict[str, bytes] = {}
    for node in cluster.nodes:
        template = env.get_template("master.yaml.j2" if node.is_master else "node.yaml.j2")
        text = template.render(cluster=cluster, node=node, master=cluster.master)
        files[user_data_name(node.name)] = text.encode()
    base = {"cluster": cluster, "master": cluster.master}
    files["network-environment"] = env.get_template("network-environment.j2").render(base).encode()
    manifests = _environment(MANIFESTS)
    for name in sorted(manifests.list_templates(filter_func=lambda n: n.endswith(".yaml"))):
        files[f"manifests/{name}"] = manifests.get_template(name).render(base).encode()
    files[DESCRIPTION] = (json.dumps(description(cluster), indent=2) + "\n").encode()
    return files


def write(out: Path, files: dict[str, bytes]) -> list[str]:
    """Write the planned files; remove node and manifest files no longer planned."""
    changed = [name for name, data in sorted(files.items()) if write_atomic(out / name, data)]
    for folder in (NODES_DIR, "manifests"):
        for stale in sorted((out / folder).glob("*.yaml")):
            if f"{folder}/{stale.name}" not in files:
                stale.unlink()
                changed.append(f"{folder}/{stale.name} (removed)")
    return changed


def render_all(config) -> tuple[Cluster, list[str], list[str]]:
    """Check the configuration, then render files and PKI; for tasks and tests."""
    from tasks import pki

    cluster = settings.build(config)
    files = plan(cluster)  # may raise on a template error: before anything is written
    out = settings.path(config, "output")
    want = pki.Want(cluster.master.ip, cluster.api_service_ip, cluster.domain)
    pki_dir = out / PKI_DIR
    pki_files = pki.plan(pki_dir, want)
    # Certificates first: cloud-configs naming a new master never stand beside old certificates.
    pki_dir.mkdir(parents=True, exist_ok=True)
    pki_dir.chmod(0o700)
    pki.write(pki_dir, pki_files)
    changed = write(out, files)
    return cluster, changed, [f"{PKI_DIR}/{n}" for n in sorted(pki_files)]


@task(help={"quiet": "Print nothing but errors."})
def render(c, quiet=False):
    """Render each node's cloud-config, the PKI and the cluster description.

    Output goes to paths.output (cloud-config/out): nodes/<name>.yaml,
    network-environment, manifests/, pki/, cluster.json. Re-running with the
    same configuration rewrites nothing.
    """
    from tasks import pki, ui

    try:
        cluster, changed, pki_changed = render_all(c.config)
    except settings.ConfigError as err:
        raise Exit(str(err), code=2) from None
    except pki.PKIError as err:
        raise Exit(str(err), code=1) from None
    except OSError as err:
        raise Exit(f"render: cannot write {err.filename}: {err.strerror}", code=1) from None
    if quiet:
        return
    out = settings.path(c.config, "output")
    rows = [(n.name, n.role, n.ip, user_data_name(n.name)) for n in cluster.nodes]
    ui.table(f"Rendered into {out}", ("node", "role", "address", "files"), rows)
    written = changed + pki_changed
    ui.say(f"{len(written)} file(s) written: {', '.join(written)}" if written
           else "Nothing changed: every file was already up to date.")


@task(name="config")
def show_config(c):
    """Check the configuration and print its effective values (after -f files, env vars)."""
    import yaml

    def plain(value):  # Invoke's config proxies -> dicts and lists YAML can write
        if hasattr(value, "items"):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, list) else value

    settings.cluster_from(c)
    effective = {section: plain(c.config[section]) for section in settings.SCHEMA}
    print(yaml.safe_dump(effective, sort_keys=False, width=120), end="")


TASKS = (render, show_config)

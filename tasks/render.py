"""`inv render`: per-node cloud-config, certificates and the cluster description.

Replaces the seed's hand-edited templates and the `sed` calls its Vagrantfile
ran: everything is rendered in memory from the configuration first, then
written atomically, so a bad value writes nothing and a re-run changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from invoke import task

from tasks import settings
from tasks.errors import StepError, exits
from tasks.files import LOCK, folder_lock, write_atomic
from tasks.settings import Cluster, Project

DESCRIPTION = "cluster.json"
MANIFEST = ".inv-render.json"  # what render wrote: only those files are ever removed
NODES_DIR = "nodes"
PKI_DIR = "pki"
# What else may stand in the output folder: the PKI, the lock of a run, the nodes' host keys.
OTHERS = {MANIFEST, PKI_DIR, LOCK, "known_hosts", "inv.log", "inv.log.1"}  # and the run log (runlog.py)


def _environment(folder: Path):
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


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
            {
                "name": n.name,
                "role": n.role,
                "ip": n.ip,
                "memory": vm["memory"],
                "cpus": vm["cpus"],
                "box": vm["box"],
                "box_url": vm["box_url"],
                "user_data": user_data_name(n.name),
            }
            for n in cluster.nodes
        ],
    }


def plan(project: Project, context: dict | None = None) -> dict[str, bytes]:
    """Every rendered file but the PKI: relative path -> contents, from the stack's templates.

    `context` adds to what templates see (a kubeadm stack's token and CA pin).
    """
    from tasks import kubeadm

    cluster, stack = project.cluster, project.stack
    env = _environment(stack.templates)
    base = {"cluster": cluster, "master": cluster.master, "sandbox_image": cluster.pause_image, **(context or {})}
    files: dict[str, bytes] = {}
    for node in cluster.nodes:
        name = user_data_name(node.name)
        text = env.get_template(stack.node_templates[node.role]).render(base, node=node)
        if stack.kubeadm:
            kubeadm.check_rendered(name, text)
        files[name] = text.encode()
    for name, template_name in stack.cluster_templates.items():
        files[name] = env.get_template(template_name).render(base).encode()
    for registry, mirror in cluster.mirrors.items() if stack.mirror_template else ():
        # Docker Hub's registry answers at its own host name; every other one at its name.
        upstream = "https://registry-1.docker.io" if registry == "docker.io" else f"https://{registry}"
        text = env.get_template(stack.mirror_template).render(base, registry=registry, upstream=upstream, mirror=mirror)
        files[f"containerd-certs.d/{registry}/hosts.toml"] = text.encode()
    manifests = _environment(stack.manifests)
    for name in stack.manifest_names():
        folder = stack.manifests / name
        for template in [f"{name}/{p.name}" for p in sorted(folder.iterdir())] if folder.is_dir() else [name]:
            files[f"manifests/{template}"] = manifests.get_template(template).render(base).encode()
    files[DESCRIPTION] = (json.dumps(description(cluster), indent=2) + "\n").encode()
    return files


def previous(out: Path) -> list[str]:
    """What the last render wrote into `out` (its manifest); StepError when `out` holds files no render wrote."""
    try:
        listed = json.loads((out / MANIFEST).read_text())["files"]
        if isinstance(listed, list) and all(isinstance(name, str) for name in listed):
            return listed
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError):
        pass  # a damaged manifest: judged by what is in the folder, below
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OTHERS) if out.is_dir() else []
    if not foreign:
        return []  # a new or empty folder
    if (out / DESCRIPTION).is_file() and (out / PKI_DIR).is_dir():
        # Rendered before manifests were kept: its node and manifest files are ours.
        return sorted(
            f"{folder}/{p.name}" for folder in (NODES_DIR, "manifests") for p in (out / folder).glob("*.yaml")
        )
    raise StepError(
        f"paths.output {out} holds files `inv render` did not write ({', '.join(foreign[:3])}"
        f"{', ...' if len(foreign) > 3 else ''}): choose a new or empty folder"
    )


def write(out: Path, files: dict[str, bytes], before: list[str], stack: str = "") -> list[str]:
    """Write the planned files and the manifest of them (and of `stack`); remove what the last render (`before`)
    wrote, this one not."""
    changed = [name for name, data in sorted(files.items()) if write_atomic(out / name, data)]
    for stale in before:
        if stale not in files and (out / stale).is_file():
            (out / stale).unlink()
            changed.append(f"{stale} (removed)")
    record = {"files": sorted(files), **({"stack": stack} if stack else {})}
    write_atomic(out / MANIFEST, (json.dumps(record, indent=1) + "\n").encode())
    return changed


def last_render(out: Path) -> dict | None:
    """What the last `inv render` into `out` described (cluster.json, with "stack" from its manifest when it
    names one); None when nothing readable was rendered there."""
    try:
        described = json.loads((out / DESCRIPTION).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(described, dict) or not isinstance(described.get("nodes"), list):
        return None
    try:
        stack = json.loads((out / MANIFEST).read_text()).get("stack")
    except (OSError, ValueError, AttributeError):
        stack = None
    return dict(described, stack=stack)


def changes(rendered: dict, project: Project) -> list[str]:
    """What differs between the last render's machines and the configuration's (pure): [] when nothing does.

    The machines are the stack, the provider, and each node's name and address in order (the first is the master).
    """
    found = []
    for key, now in (("stack", project.stack.name), ("provider", project.cluster.provider)):
        if rendered.get(key) and rendered[key] != now:
            found.append(f"{key} {rendered[key]} rendered, {now} configured")
    before = [(n.get("name"), n.get("ip")) for n in rendered["nodes"] if isinstance(n, dict)]
    now_nodes = [(n.name, n.ip) for n in project.cluster.nodes]
    if len(before) != len(now_nodes):
        found.append(f"{len(before)} node(s) rendered, {len(now_nodes)} configured")
        return found
    for (old_name, old_ip), (name, ip) in zip(before, now_nodes, strict=True):
        if old_name != name:
            found.append(f"node {old_name} rendered, {name} configured")
        elif old_ip != ip:
            found.append(f"{name} at {old_ip} rendered, {ip} configured")
    return found if len(found) <= 3 else [*found[:3], "..."]


def check_current(project: Project) -> None:
    """StepError, in one line, when the machines of the configuration are not those `inv render` last described:
    the tasks would act on other nodes than the rendered files (and the Vagrantfile) name."""
    rendered = last_render(project.output_dir)
    found = changes(rendered, project) if rendered is not None else []
    if found:
        raise StepError(f"the configuration changed since `inv render` ({'; '.join(found)}): run `inv render` first")


def render_all(project: Project) -> tuple[list[str], list[str]]:
    """Render files and PKI into the output folder: (files changed, PKI files changed); for tasks and tests."""
    from tasks import kubeadm, pki

    cluster = project.cluster
    out = project.output_dir
    before = previous(out)
    want = pki.Want(cluster.master.ip, cluster.api_service_ip, cluster.domain)
    pki_dir = out / PKI_DIR
    pki_files = pki.plan(pki_dir, want, project.stack.pki_leaves or pki.SEED_LEAVES)
    context: dict = {}
    if project.stack.kubeadm:
        context, extra = kubeadm.host_files(pki_dir, pki_files, cluster.master.ip)
        pki_files |= extra
    files = plan(project, context)  # may raise on a template or document error: before anything is written
    # Certificates first: cloud-configs naming a new master never stand beside old certificates.
    pki_dir.mkdir(parents=True, exist_ok=True)
    pki_dir.chmod(0o700)
    pki.write(pki_dir, pki_files)
    changed = write(out, files, before, project.stack.name)
    return changed, [f"{PKI_DIR}/{n}" for n in sorted(pki_files)]


@task(help={"quiet": "Print nothing but errors."})
@exits
def render(c, quiet=False):
    """Render each node's cloud-config, the PKI and the cluster description.

    Output goes to paths.output (cloud-config/out): nodes/<name>.yaml,
    network-environment, manifests/, pki/, cluster.json. Re-running with the
    same configuration rewrites nothing.
    """
    from tasks import ui

    project = settings.load(c)
    previous(project.output_dir)  # a folder of other files: refused before even the lock file is put there
    try:
        with folder_lock(project.output_dir, "render"):
            changed, pki_changed = render_all(project)
    except OSError as err:
        raise StepError(f"render: cannot write {err.filename}: {err.strerror}") from None
    if quiet:
        return
    cluster = project.cluster
    rows = [(n.name, n.role, n.ip, user_data_name(n.name)) for n in cluster.nodes]
    ui.table(f"Rendered into {project.output_dir}", ("node", "role", "address", "files"), rows)
    written = changed + pki_changed
    ui.say(
        f"{len(written)} file(s) written: {', '.join(written)}"
        if written
        else "Nothing changed: every file was already up to date."
    )


@task(name="config")
@exits
def show_config(c):
    """Check the configuration and print its effective values (after the stack, -f files, env vars)."""
    import yaml

    project = settings.load(c)
    print(yaml.safe_dump(project.values, sort_keys=False, width=120), end="")


@task
@exits
def kubeconfig(c):
    """Print how kubectl on this machine reaches the cluster: `eval "$(inv kubeconfig)"`.

    The admin kubeconfig `inv render` writes for kubeadm stacks (paths.output/pki/admin.conf).
    """
    import shlex

    from tasks import kubeadm

    project = settings.load(c)
    master = project.cluster.master
    if not project.stack.kubeadm:
        raise StepError(
            f"stack {project.stack.name} has no kubeconfig for this machine: its API server answers without "
            f"authentication on http://{master.ip}:8080; use kubectl on the master (`inv ssh {master.name}`)"
        )
    path = project.output_dir / PKI_DIR / kubeadm.KUBECONFIG_FILE
    if not path.is_file():
        raise StepError(f"{path} is missing: run `inv render` first")
    print(f"export KUBECONFIG={shlex.quote(str(path))}")


TASKS = (render, show_config, kubeconfig)

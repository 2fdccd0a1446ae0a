"""`inv up`, `inv status`, `inv ssh`, `inv destroy`: the machines themselves.

Replaces the seed's `vagrant up` / `vagrant ssh calico-01`, for both
providers: with `vagrant` the VMs are VirtualBox machines from the
Vagrantfile, with `hosts` they are existing machines, which `up` only waits for
and `destroy` refuses to touch.
"""
from __future__ import annotations

import os
import shutil
import sys

from invoke import Exit, task

from tasks import nodes, settings
from tasks.settings import Cluster
from tasks.ui import last_line

VIRTUALBOX_INSTALL = ("VirtualBox is not installed (no VBoxManage on PATH): install VirtualBox "
                      "(https://www.virtualbox.org/wiki/Downloads), which `vagrant up` needs")


def _node(cluster: Cluster, name: str):
    try:
        return cluster.node(name)
    except KeyError:
        known = ", ".join(n.name for n in cluster.nodes)
        raise Exit(f"unknown node {name!r}: the nodes are {known}", code=2) from None


def parse_status(text: str) -> dict[str, str]:
    """`vagrant status --machine-readable` -> {machine: state}, e.g. running, poweroff, not_created."""
    states = {}
    for line in text.splitlines():
        fields = line.split(",", 3)
        if len(fields) >= 4 and fields[2] == "state" and fields[1]:
            states[fields[1]] = fields[3]
    return states


def _rendered(config) -> None:
    from tasks import render

    description = settings.path(config, "output") / render.DESCRIPTION
    if not description.is_file():
        raise Exit(f"{description} is missing: run `inv render` first", code=1)


@task(help={"timeout": "Seconds to wait, after the VMs are started, until every node answers over SSH "
                       "(default 300).",
            "copy": "Then copy binaries, certificates and cloud-configs to the nodes, as `inv copy` "
                    "(default; --no-copy to only start the machines)."})
def up(c, timeout=300, copy=True):
    """Start the VMs (`vagrant up`), wait until every node answers over SSH, then `inv copy`.

    With cluster.provider hosts there is nothing to start: only the wait and the copy.
    """
    from tasks import copy as copy_step

    cluster = settings.cluster_from(c)
    if cluster.provider == "vagrant":
        _rendered(c.config)
    # A missing render or download stops us before a long boot.
    wanted = copy_step.plan(c.config, cluster) if copy else None
    if cluster.provider == "vagrant":
        if not shutil.which("vagrant"):
            raise Exit(nodes.VAGRANT_INSTALL, code=1)
        if not shutil.which("VBoxManage"):
            raise Exit(VIRTUALBOX_INSTALL, code=1)
        # Vagrant's own output streams through: box download, boot, provisioners.
        if nodes.vagrant(c, "up", warn=True).failed:
            raise Exit("`vagrant up` failed (its output is above)", code=1)
    from tasks import ui

    conns = nodes.connections(c, cluster)
    try:
        nodes.wait_ready(conns, float(timeout))
        ui.say(f"{len(conns)} node(s) answer over SSH: {', '.join(conns)}")
        if wanted:
            copy_step.copy_all(cluster, wanted, conns)  # over the connections just opened
    finally:
        nodes.close_all(conns)


def _vm_states(c, cluster: Cluster) -> dict[str, str]:
    if cluster.provider != "vagrant":
        return {n.name: "-" for n in cluster.nodes}
    result = nodes.vagrant(c, "status --machine-readable", hide=True, warn=True)
    if result.failed:
        why = last_line(result.stderr)
        raise Exit(f"`vagrant status` failed: {why}", code=1)
    return parse_status(result.stdout)


@task
def status(c):
    """Each node: VM state, whether SSH answers, role and address, as a table."""
    from tasks import ui

    cluster = settings.cluster_from(c)
    states = _vm_states(c, cluster)
    reachable = [n.name for n in cluster.nodes if states.get(n.name) in ("running", "-")]
    conns = nodes.connections(c, cluster, reachable)
    try:
        results, failures = nodes.attempt(conns, lambda name, conn: conn.run("true", hide=True))
    finally:
        nodes.close_all(conns)
    rows = []
    for n in cluster.nodes:
        if n.name in results:
            ssh = "yes"
        elif n.name in failures:
            ssh = f"no: {failures[n.name].reason}"
        else:
            ssh = "no: VM not running"
        rows.append((n.name, states.get(n.name, "unknown"), ssh, n.role, n.ip))
    ui.table(f"Cluster ({cluster.provider})", ("node", "vm", "ssh", "role", "address"), rows)


@task(help={"node": "The node to log in to, e.g. calico-01.",
            "command": "Run this command instead of an interactive shell."})
def ssh(c, node, command=""):
    """Log in to NODE over SSH (an interactive shell, or --command)."""
    cluster = settings.cluster_from(c)
    _node(cluster, node)
    if cluster.provider == "vagrant":
        argv = ["vagrant", "ssh", node] + (["-c", command] if command else [])
        if not shutil.which("vagrant"):
            raise Exit(nodes.VAGRANT_INSTALL, code=1)
        os.chdir(settings.ROOT)
        env = dict(os.environ, **nodes.vagrant_env(c.config))
    else:
        d = nodes.details(c, cluster, [node])[node]
        argv = ["ssh", "-p", str(d["port"]), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", f"ConnectTimeout={c.config.cluster.ssh_timeout}"]
        for key in d["key_files"]:
            argv += ["-i", key, "-o", "IdentitiesOnly=yes"]
        if command and sys.stdin.isatty():
            argv.append("-t")
        argv += [f"{d['user']}@{d['host']}"] + ([command] if command else [])
        env = dict(os.environ)
    if not shutil.which(argv[0]):
        raise Exit(f"{argv[0]} is not installed: install the OpenSSH client", code=1)
    sys.stdout.flush()
    sys.stderr.flush()
    # Replace this process: ssh gets the terminal itself, and its exit status is ours.
    os.execvpe(argv[0], argv, env)


@task(help={"yes": "Do not ask for confirmation."})
def destroy(c, yes=False):
    """Delete the cluster's VMs (`vagrant destroy`); asks first unless --yes."""
    cluster = settings.cluster_from(c)
    if cluster.provider != "vagrant":
        raise Exit("inv destroy only deletes Vagrant VMs; with cluster.provider hosts the machines are "
                   "not ours to delete", code=1)
    _rendered(c.config)
    names = ", ".join(n.name for n in cluster.nodes)
    if not yes:
        try:
            answer = input(f"Delete the VMs {names} and everything on them? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            raise Exit("not deleted: answer y, or pass --yes", code=1)
    if nodes.vagrant(c, "destroy -f", warn=True).failed:
        raise Exit("`vagrant destroy` failed (its output is above)", code=1)


TASKS = (up, status, ssh, destroy)

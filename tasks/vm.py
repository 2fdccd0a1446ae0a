"""`inv up`, `inv status`, `inv ssh`, `inv destroy`: the machines themselves.

Replaces the seed's `vagrant up` / `vagrant ssh calico-01`. What each does
depends on cluster.provider (tasks/providers.py): with `vagrant` the VMs are
VirtualBox machines from the Vagrantfile, with `hosts` they are existing
machines, which `up` only waits for and `destroy` refuses to touch.
"""

from __future__ import annotations

import os
import re
import shutil
import sys

from invoke import task

from tasks import providers, settings
from tasks.errors import StepError, UsageError, exits


@task(
    help={
        "timeout": "Seconds to wait, after the VMs are started, until every node answers over SSH (default 300).",
        "copy": "Then copy binaries, certificates and cloud-configs to the nodes, as `inv copy` "
        "(default; --no-copy to only start the machines).",
    }
)
@exits
def up(c, timeout=300, copy=True):
    """Start the VMs (`vagrant up`), wait until every node answers over SSH, then `inv copy`.

    With cluster.provider hosts there is nothing to start: only the wait and the copy.
    """
    from tasks import copy as copy_step
    from tasks import kube, ui
    from tasks.nodes import Nodes

    project = settings.load(c)
    project.stack.check_step("up")
    wait = kube.seconds(timeout, 300)
    provider = providers.of(project, c)
    provider.check_start()
    # A missing render or download stops us before a long boot.
    wanted = copy_step.plan(project) if copy else None
    provider.start()
    with Nodes(c, project, starting=True) as group:
        group.wait_ready(wait)
        ui.say(f"{len(group.names)} node(s) answer over SSH: {', '.join(group.names)}")
        if wanted:
            copy_step.copy_all(project.cluster, wanted, group)  # over the connections just opened


@task
@exits
def status(c):
    """Each node: VM state, whether SSH answers, role and address, as a table."""
    from tasks import ui
    from tasks.nodes import Nodes

    project = settings.load(c)
    cluster = project.cluster
    states = providers.of(project, c).states()
    reachable = [n.name for n in cluster.nodes if states.get(n.name) in ("running", "-")]
    with Nodes(c, project, reachable) as group:
        results, failures = group.attempt(lambda name, conn: conn.run("true", hide=True))
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


@task(
    help={
        "node": "The node to log in to, e.g. calico-01.",
        "command": "Run this command instead of an interactive shell.",
    }
)
@exits
def ssh(c, node, command=""):
    """Log in to NODE over SSH (an interactive shell, or --command)."""
    project = settings.load(c)
    project.cluster.node(node)
    argv, env, folder = providers.of(project, c).login(node, command)
    if not shutil.which(argv[0]):
        raise StepError(f"{argv[0]} is not installed: install the OpenSSH client")
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(folder)
    # Replace this process: ssh gets the terminal itself, and its exit status is ours.
    os.execvpe(argv[0], argv, env)


@task(
    help={
        "node": "The node whose host key was refused, e.g. calico-02.",
        "fingerprint": "The new key's fingerprint as the refusal named it (SHA256:...), once checked on the machine.",
    }
)
@exits
def accept_host_key(c, node, fingerprint):
    """Record NODE's SSH host key in the project's known_hosts, if its fingerprint is FINGERPRINT.

    For a key that was refused: changed (a reinstalled machine, a re-created
    VM) or unknown with cluster.host_key_policy strict. Check the fingerprint
    on the machine first (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`
    on its console). A key with another fingerprint is refused, and nothing is recorded.
    """
    from tasks import nodes, ui
    from tasks.nodes import Nodes

    project = settings.load(c)
    project.cluster.node(node)
    if not re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", fingerprint):
        raise UsageError(f"fingerprint {fingerprint!r}: expected SHA256: and 43 characters, as ssh prints it")
    with Nodes(c, project, [node], accept=fingerprint) as group:
        group.run(lambda name, conn: group.conn(name), what="accepting the host key")
        if not group.rule.recorded:  # it shows a key that is known already, and not this one
            shown = nodes.fingerprint(group[node].transport.get_remote_server_key())
            raise StepError(f"{node}: its host key is {shown}, known already, not {fingerprint}: nothing recorded")
    ui.say(f"{node}: host key {fingerprint} recorded in {group.rule.project_file}")


@task(help={"yes": "Do not ask for confirmation."})
@exits
def destroy(c, yes=False):
    """Delete the cluster's VMs (`vagrant destroy`); asks first unless --yes."""

    def ask(question: str) -> bool:
        if yes:
            return True
        try:
            answer = input(question)
        except EOFError:
            answer = ""
        return answer.strip().lower() in ("y", "yes")

    # The VMs the last render described, even when the configuration changed since: those are the ones that exist.
    providers.of(settings.load(c), c, stale_ok=True).destroy(ask)


TASKS = (up, status, ssh, accept_host_key, destroy)

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
from types import FrameType

from invoke import Argument, Task, task

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
def up(c, timeout=None, copy=True):
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


class _OptionalPositional(Argument):
    """A positional argument that may be left out, which Invoke's parser does not know.

    The parser asks `value is None` both to take the next word as the value
    and, when the task's words end, to refuse a missing one: only to the
    second question (asked in `ParserContext.missing_positional_args` from
    `Parser.complete_context`) does this answer "given".
    """

    @property
    def value(self):
        if self._value is None:
            frame: FrameType | None = sys._getframe(1)
            for _ in range(3):  # the property's list comprehension, the property, complete_context
                if frame is not None and frame.f_code.co_name == "complete_context":
                    return ""
                frame = frame.f_back if frame is not None else None
        return self._value if self._value is not None else self.default

    @value.setter
    def value(self, arg) -> None:
        self.set_value(arg, cast=True)


class _NodeOptional(Task):
    """A task whose `node` argument may be left out: `inv ssh` alone lists the nodes."""

    def get_arguments(self, ignore_unknown_help=None):
        arguments = super().get_arguments(ignore_unknown_help)
        for argument in arguments:
            if argument.name == "node":
                argument.__class__ = _OptionalPositional
        return arguments


@task(
    klass=_NodeOptional,
    positional=["node"],
    help={
        "node": "The node to log in to, e.g. calico-01; without it, the nodes are listed.",
        "command": "Run this command instead of an interactive shell.",
    },
)
@exits
def ssh(c, node=None, command=""):
    """Log in to NODE over SSH (an interactive shell, or --command); without NODE, list the nodes."""
    from tasks import ui

    project = settings.load(c)
    if not node and command:
        raise UsageError(f"--command {command!r}: expected a NODE to run it on, e.g. inv ssh calico-01 --command ...")
    if not node:
        cluster = project.cluster
        rows = [(n.name, n.role, n.address or n.ip, f"inv ssh {n.name}") for n in cluster.nodes]
        ui.table(f"Nodes ({cluster.provider}): log in with inv ssh NODE", ("node", "role", "address", "command"), rows)
        return
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

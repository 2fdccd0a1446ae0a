"""Stacks: the software a cluster runs, as data (tasks/stacks/<name>.yaml).

A stack gives the defaults of the settings invoke.yaml leaves null, the
folders of its templates and addon manifests, which template each node role
gets and which certificates and keys each role's units read. `apply` fills a
configuration with a stack's defaults and refuses a setting that only other
stacks use.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path

from tasks.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
FOLDER = Path(__file__).resolve().parent / "stacks"
KUSTOMIZATION = "kustomization.yaml"


@dataclass(frozen=True)
class Stack:
    name: str
    description: str
    templates: Path  # Jinja2 templates of the nodes' configuration
    manifests: Path  # addon manifests (Jinja2 templates too)
    node_templates: dict = field(hash=False)  # role -> template
    cluster_templates: dict = field(hash=False)  # output file name -> template
    defaults: dict = field(hash=False)  # section -> key -> value
    # role -> the rendered PKI files (names in <output>/pki) that role's units read; `inv copy` sends only those
    pki_files: dict = field(default_factory=dict, hash=False)
    # The certificates issued from the CA besides it (pki.plan); the seed's when a stack names none.
    pki_leaves: tuple = ()
    # kubeadm stacks: a bootstrap token and the CA's pin for the templates, an admin kubeconfig for the host.
    kubeadm: bool = False
    # Rendered once per images.mirrors entry into containerd-certs.d/<registry>/hosts.toml ("": none).
    mirror_template: str = ""
    # The steps that work for this stack; empty: all of them.
    steps: tuple = ()
    # The nodes run Docker: `vagrant up` pre-pulls vm.images, the pause and calico/node images with it.
    docker: bool = False
    # Run as root on the master before `inv copy` touches any node, when it names a script that is there
    # ({path}: cluster.user_data_path): the current stack makes the workers' bootstrap token again.
    before_copy: str = ""
    # The mode of each node's configuration at cluster.user_data_path (0600: it holds a bootstrap token).
    user_data_mode: int = 0o644
    # Empty folders `inv copy` makes on every node (root's, 0755).
    folders: tuple = ()
    # Rendered files `inv copy` sends besides the node's configuration, each a mapping of source
    # (relative to the output folder), dest (on the node; ~/ is the SSH user's home), mode, roles, owner.
    files: tuple = ()
    # Where the mirror_template's files go on the nodes: <mirror_dest>/<registry>/hosts.toml.
    mirror_dest: str = ""
    # `inv addons`: `kubectl apply` (declarative, a re-run reports "unchanged") instead of the seed's `create`.
    apply: bool = False
    # How `inv verify` asks: see the `checks` section of tasks/stacks/seed.yaml.
    checks: dict = field(default_factory=dict, hash=False)

    def check_step(self, step: str) -> None:
        """StepError when `inv STEP` cannot do its work for this stack yet: never a success over nothing done."""
        from tasks.errors import StepError

        if self.steps and step not in self.steps:
            raise StepError(
                f"stack {self.name}: `inv {step}` does not handle it yet (it does: {', '.join(self.steps)}); "
                f"use stack seed for the whole procedure"
            )

    def manifest_names(self) -> list[str]:
        """The addon manifests: YAML files, and folders with a kustomization.yaml (`kubectl apply -k`)."""
        return sorted(p.name for p in self.manifests.iterdir() if p.suffix == ".yaml" or (p / KUSTOMIZATION).is_file())


def names() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.yaml"))


@functools.cache
def _data(name: str) -> dict:
    """A stack file, read once per run: every task and test builds a Project from it."""
    from tasks import yamltext

    return yamltext.load((FOLDER / f"{name}.yaml").read_text())


def load(name: str) -> Stack:
    """The stack called `name`; ConfigError naming the known ones otherwise."""
    if not isinstance(name, str) or name not in names():
        raise ConfigError("stack", name, f"one of {', '.join(names())}")
    data = copy.deepcopy(_data(name))
    return Stack(
        name=data["name"],
        description=data["description"],
        templates=ROOT / data["templates"],
        manifests=ROOT / data["manifests"],
        node_templates=data["node_templates"],
        cluster_templates=data["cluster_templates"],
        defaults=data["defaults"],
        pki_files={role: tuple(files or ()) for role, files in (data.get("pki_files") or {}).items()},
        pki_leaves=tuple(data.get("pki_leaves") or ()),
        kubeadm=bool(data.get("kubeadm")),
        steps=tuple(data.get("steps") or ()),
        mirror_template=data.get("mirror_template", ""),
        files=tuple(data.get("files") or ()),
        folders=tuple(data.get("folders") or ()),
        docker=bool(data.get("docker")),
        user_data_mode=int(data.get("user_data_mode", "0644"), 8),
        before_copy=data.get("before_copy", ""),
        mirror_dest=data.get("mirror_dest", ""),
        apply=bool(data.get("apply")),
        checks=data.get("checks") or {},
    )


def stack_keys() -> dict[str, set[str]]:
    """Every key some stack gives a default for, by section: the keys invoke.yaml leaves to the stack."""
    keys: dict[str, set[str]] = {}
    for name in names():
        for section, values in load(name).defaults.items():
            keys.setdefault(section, set()).update(values)
    return keys


def apply(stack: Stack, config: dict) -> dict:
    """`config` (plain dicts) with `stack`'s defaults where it leaves a key null.

    A key set that only other stacks use is an error naming this stack; a key
    that applies to no stack in use stays null and is left out.
    """
    merged = copy.deepcopy(config)
    for section, keys in stack_keys().items():
        values = merged.get(section)
        if not isinstance(values, dict):
            continue  # the section's type is checked with the rest
        mine = stack.defaults.get(section, {})
        for key in keys:
            # An empty mapping is unset too: invoke.yaml gives `{}`, as Invoke cannot merge a file's mapping over null.
            unset = values.get(key) is None or values.get(key) == {}
            if key in mine and unset:
                values[key] = copy.deepcopy(mine[key])
            elif key not in mine and not unset:
                raise ConfigError(
                    f"{section}.{key}", values[key], f"no value: stack {stack.name} has no use for it (leave it null)"
                )
    return merged

"""YAML's safe subset, read by libyaml when PyYAML has it: 20 to 50 times faster than PyYAML's Python reader,
which would otherwise take most of a short task's time (invoke.yaml, the -f file and the stack files)."""

from __future__ import annotations

from typing import Any


def load(source) -> Any:
    """`yaml.safe_load(source)` (text or an open file), through libyaml when it is there; the same errors."""
    import yaml

    return yaml.load(source, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 (a safe loader)


def read_with_libyaml(self, path) -> Any:
    """In place of Invoke's `Config._load_yaml`, which reads with its own copy of PyYAML's Python reader."""
    with open(path) as fd:
        return load(fd)

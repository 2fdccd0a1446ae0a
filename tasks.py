"""Bring up a Kubernetes cluster with Calico networking on CoreOS VMs.

Invoke's root collection. The step modules live in the `tasks/` folder, which
this module makes its package (see docs/design.md), so `tasks.render` etc.
import the same way under `inv` and under pytest.
"""
from pathlib import Path

from invoke import Collection

__path__ = [str(Path(__file__).resolve().parent / "tasks")]

from tasks import render  # noqa: E402  (needs __path__ above)

ns = Collection()
for module in (render,):
    for task in module.TASKS:
        ns.add_task(task)

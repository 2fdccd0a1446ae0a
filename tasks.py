"""Bring up a Kubernetes cluster with Calico networking on CoreOS VMs.

Invoke's root collection. The step modules live in the `tasks/` folder, which
this module makes its package (see docs/design.md), so `tasks.render` etc.
import the same way under `inv` and under pytest.
"""

import importlib
from pathlib import Path

from invoke import Collection

__path__ = [str(Path(__file__).resolve().parent / "tasks")]

# Step modules, in the order of the procedure; each exports TASKS.
STEPS = ("render", "download", "vm", "copy", "addons", "verify")

ns = Collection()
for step in STEPS:
    for t in importlib.import_module(f"tasks.{step}").TASKS:
        ns.add_task(t)

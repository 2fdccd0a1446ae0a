"""Bring up a Kubernetes cluster with Calico networking on CoreOS VMs.

Invoke's root collection. The step modules live in the `tasks/` folder, which
this module makes its package (see docs/design.md), so `tasks.render` etc.
import the same way under `inv` and under pytest.
"""

import importlib
import sys
from pathlib import Path

from invoke import Collection

__path__ = [str(Path(__file__).resolve().parent / "tasks")]

from tasks import errors  # noqa: E402  (after __path__: tasks/ is this module's package)

# Invoke reads `-f FILE` and INVOKE_* after this module and outside every task: one line, not a traceback.
sys.excepthook = errors.one_line_loading_errors(sys.excepthook)

# Step modules, in the order of the procedure; each exports TASKS.
STEPS = ("doctor", "render", "download", "vm", "copy", "addons", "verify")

ns = Collection()
for step in STEPS:
    for t in importlib.import_module(f"tasks.{step}").TASKS:
        ns.add_task(t)

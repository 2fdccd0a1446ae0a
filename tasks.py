"""Bring up a Kubernetes cluster with Calico networking on Flatcar (or, for study, CoreOS) VMs or existing machines.

Invoke's root collection. The step modules live in the `tasks/` folder, which
this module makes its package (see docs/design.md), so `tasks.render` etc.
import the same way under `inv` and under pytest.
"""

import importlib
import sys
from pathlib import Path

import invoke.config
from invoke import Collection

__path__ = [str(Path(__file__).resolve().parent / "tasks")]

from tasks import errors, yamltext  # noqa: E402  (after __path__: tasks/ is this module's package)

# Invoke reads `-f FILE` and INVOKE_* after this module and outside every task: one line, not a traceback.
sys.excepthook = errors.one_line_loading_errors(sys.excepthook)
# Invoke reads invoke.yaml and the -f file after this module, with its own copy of PyYAML's Python reader: libyaml
# reads them 20 times faster (tasks/yamltext.py), a good part of a short task's time.
invoke.config.Config._load_yaml = invoke.config.Config._load_yml = yamltext.read_with_libyaml  # type: ignore[method-assign]

# Step modules, in the order of the procedure; each exports TASKS.
STEPS = ("doctor", "render", "download", "vm", "copy", "addons", "verify")

ns = Collection()
for step in STEPS:
    for t in importlib.import_module(f"tasks.{step}").TASKS:
        ns.add_task(t)

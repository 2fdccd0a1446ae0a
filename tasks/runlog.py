"""The run log, `<paths.output>/inv.log`: every command run for the cluster, for bug reports.

Each run that runs a command appends a header (time, the `inv` command line,
process id), then one record per command: where it ran (a node, or `host` for
`vagrant`), the command, its exit status or why it did not finish, and its
whole output. Secrets are redacted first: private keys, kubeadm bootstrap
tokens, and the values of key, token and password fields. Past 5 MB the log
is moved to `inv.log.1` (replacing the one before) when a run starts.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from pathlib import Path

LOG = "inv.log"
OLD = "inv.log.1"
MAX_BYTES = 5 << 20
REDACTED = "[redacted]"
SECRETS = (
    re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S),
    re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b"),  # a kubeadm bootstrap token: id.secret
)
# The value of a field that holds a secret (YAML, JSON, flags): client-key-data: ..., "token": "...", --token=...
SECRET_FIELDS = re.compile(
    r"""((?:client-key-data|key-data|private[-_]key|token|password|secret)["']?\s*[:=]\s*["']?)[^\s"',]+""", re.I
)

_lock = threading.Lock()  # the threads of one run write records to the same file
_started: set[Path] = set()  # logs this process has written its header to


def redact(text: str) -> str:
    """`text` with every secret it holds replaced by [redacted]."""
    for pattern in SECRETS:
        text = pattern.sub(REDACTED, text)
    return SECRET_FIELDS.sub(lambda m: m.group(1) + REDACTED, text)


def _block(name: str, text: str) -> list[str]:
    lines = (text or "").rstrip("\n").splitlines()
    return [f"{name}:", *(f"  {line}" for line in lines)] if lines else []


def record(folder: Path, where: str, command: str, outcome: str, stdout: str = "", stderr: str = "") -> None:
    """Append one command to `folder`'s log: `outcome` is "exit N" or why it did not finish.

    A log that cannot be written is not a reason to fail the work it records: that is noted once, on stderr.
    """
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    lines = [f"--- {stamp} {where}: {outcome}", f"$ {command}", *_block("stdout", stdout), *_block("stderr", stderr)]
    text = redact("\n".join(lines) + "\n")
    path = folder / LOG
    with _lock:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if path not in _started:
                _started.add(path)
                if path.exists() and path.stat().st_size > MAX_BYTES:
                    os.replace(path, folder / OLD)
                argv = " ".join(["inv", *sys.argv[1:]])
                text = redact(f"=== {stamp} {argv} (process {os.getpid()})\n") + text
            with open(path, "a", encoding="utf-8", errors="replace") as log:
                log.write(text)
        except OSError as err:
            from tasks import ui

            ui.note_once(f"the run log {path} cannot be written ({err.strerror or err}): commands are not recorded")


def record_result(folder: Path, where: str, result) -> None:
    """Record an Invoke/Fabric Result (also the one an UnexpectedExit carries)."""
    record(folder, where, result.command, f"exit {result.exited}", result.stdout, result.stderr)

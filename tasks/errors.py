"""The errors steps raise, and the one place that turns them into exit statuses.

Helpers raise ordinary exceptions: `UsageError` for bad input (a flag, a
node name), its kind `ConfigError` for a setting that cannot be used, and
`StepError` for anything else that stops a step. `@exits` on a task turns them
into `invoke.Exit`: 2 for bad input, 1 otherwise, with the message as it is
(one line per problem).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


class UsageError(ValueError):
    """Bad input (a task flag, a node name); the message is one line and says what is expected."""


class ConfigError(UsageError):
    """A configuration value that cannot be used; the message names the key, the value and what is expected."""

    def __init__(self, key: str, value: Any, expected: str):
        super().__init__(f"invalid configuration: {key} = {value!r}: expected {expected}")


class StepError(Exception):
    """A step cannot go on (a missing file, a failed node, a failed check); the message says why."""


def exits(task_body: Callable) -> Callable:
    """Run a task body, turning the errors above (and file errors) into `invoke.Exit`."""

    @functools.wraps(task_body)
    def run(*args, **kwargs):
        from invoke import Exit

        try:
            return task_body(*args, **kwargs)
        except UsageError as err:
            raise Exit(str(err), code=2) from None
        except StepError as err:
            raise Exit(str(err), code=1) from None
        except OSError as err:
            where = f"{err.filename}: " if err.filename else ""
            raise Exit(f"{task_body.__name__}: {where}{err.strerror or err}", code=1) from None

    return run

"""The errors steps raise, and the one place that turns them into exit statuses.

Helpers raise ordinary exceptions: `UsageError` for bad input (a flag, a
node name), its kind `ConfigError` for a setting that cannot be used, and
`StepError` for anything else that stops a step. `@exits` on a task turns them
into `invoke.Exit`: 2 for bad input, 1 otherwise, with the message as it is
(one line per problem).
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any


class UsageError(ValueError):
    """Bad input (a task flag, a node name); the message is one line and says what is expected."""


class ConfigError(UsageError):
    """A configuration value that cannot be used; the message names the key, the value and what is expected."""

    def __init__(self, key: str, value: Any, expected: str):
        self.key, self.value = key, value
        super().__init__(f"invalid configuration: {key} = {value!r}: expected {expected}")


class ConfigErrors(UsageError):
    """Several unusable configuration values: one line per ConfigError, in the order they were found."""

    def __init__(self, problems: list[ConfigError]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


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
        except KeyboardInterrupt:
            # What was finished is kept (verified downloads, installed files); the next run goes on from there.
            name = task_body.__name__.replace("show_", "")
            raise Exit(f"{name}: interrupted; run `inv {name}` again to resume", code=130) from None

    return run


NOT_A_MAPPING = "expected a mapping of settings, like the sections of invoke.yaml"


def loading_problem(error: BaseException) -> str | None:
    """One line for an error Invoke raised while reading `-f FILE`, INVOKE_* variables or a task flag's value
    (`--parallel abc`); None for any other.

    Invoke reads them after loading the tasks and before running any, outside
    every task: without this, a typo there ends in a traceback.
    """
    for frame, _ in traceback.walk_tb(error.__traceback__):
        code, where = frame.f_code, frame.f_code.co_filename.replace(os.sep, "/")
        if code.co_name == "_merge_file" and where.endswith("invoke/config.py"):
            if frame.f_locals.get("name") == "runtime":
                path = getattr(frame.f_locals.get("self"), "_runtime_path", "")
                return f"invalid configuration file {path}: {NOT_A_MAPPING}"
        if code.co_name == "_load_file" and where.endswith("invoke/config.py"):
            path = frame.f_locals.get("filepath")
            if hasattr(error, "problem_mark"):  # a YAML error (Invoke has its own copy of PyYAML)
                mark = getattr(error, "problem_mark", None)
                at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
                why = f"{getattr(error, 'problem', None) or 'not YAML'}{at}"
            elif type(error).__name__ == "UnknownFileType":
                why = "expected a .yaml, .yml, .json or .py file"
            elif isinstance(error, OSError):
                why = f"cannot read it: {error.strerror or error}"
            else:
                why = NOT_A_MAPPING
            return f"invalid configuration file {path}: {why}"
        if code.co_name == "_path_set" and where.endswith("invoke/env.py"):
            key_path, value, old = (frame.f_locals.get(k) for k in ("key_path", "value", "old"))
            name = "INVOKE_" + "_".join(key_path or []).upper()
            if isinstance(old, (list, tuple, dict)):
                # invoke.yaml leaves lists and mappings null (read as YAML then); a file set this one.
                expected = f"no value: a configuration file sets {'.'.join(key_path or [])}: change it there"
            elif isinstance(old, int):
                expected = "a whole number"
            else:
                expected = f"a value like {old!r}"
            return f"invalid configuration: {name} = {value!r}: expected {expected}"
        if code.co_name == "set_value" and where.endswith("invoke/parser/argument.py"):
            # A task flag Invoke casts to the type of its default (int, float) while parsing the command line.
            argument, value = frame.f_locals.get("self"), frame.f_locals.get("value")
            names = getattr(argument, "names", None) or ("?",)
            flag = "--" + max(names, key=len).replace("_", "-")
            kind = getattr(argument, "kind", None)
            expected = "a whole number" if kind is int else "a number" if kind is float else "a value"
            return f"{flag} {value!r}: expected {expected}"
        if type(error).__name__ == "AmbiguousEnvVar":
            return f"invalid configuration: {error}"
    return None


def one_line_loading_errors(previous: Callable) -> Callable:
    """A `sys.excepthook` printing `loading_problem`'s line and exiting 2, or else passing on to `previous`."""

    def hook(kind, error, tb):
        message = loading_problem(error)
        if message is None:
            return previous(kind, error, tb)
        sys.stdout.flush()
        print(message, file=sys.stderr, flush=True)
        os._exit(2)  # sys.exit would be an error inside an excepthook

    return hook

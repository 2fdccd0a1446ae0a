"""The one polling loop: try until done, until a result not worth another try, or the deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

R = TypeVar("R")


def until(
    attempt: Callable[[], R],
    deadline: float,
    interval: float,
    *,
    done: Callable[[R], bool],
    again: Callable[[R], bool] = lambda result: True,
    waiting: Callable[[R], None] | None = None,
) -> R:
    """Call `attempt()` every `interval` seconds until `done(result)`, or `again(result)` is false,
    or another try would start after `deadline` (time.monotonic()); returns the last result.

    `waiting(result)` is called before each pause: for progress messages.
    """
    while True:
        result = attempt()
        if done(result) or not again(result) or time.monotonic() + interval > deadline:
            return result
        if waiting is not None:
            waiting(result)
        time.sleep(interval)

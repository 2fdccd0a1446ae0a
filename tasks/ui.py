"""Output for people: tables and one-line messages, plain when not on a terminal."""

from __future__ import annotations

import sys


def console(stderr: bool = False):
    from rich.console import Console

    # highlight=False: addresses and versions are printed as they are, not recoloured.
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def table(title: str, columns, rows) -> None:
    try:
        out = console()
    except ImportError:  # rich is missing (`inv doctor` says so): plain
        out = None
    if out is None or not out.is_terminal:
        # Plain, tab-separated, one row a line: easy to read in CI logs and to grep.
        print(title)
        print("\t".join(columns))
        for row in rows:
            print("\t".join(str(v) for v in row))
        sys.stdout.flush()
        return
    from rich.table import Table

    grid = Table(title=title, title_justify="left")
    for column in columns:
        grid.add_column(column)
    for row in rows:
        grid.add_row(*(str(v) for v in row))
    out.print(grid)


def transfer_bars():
    """A live display of byte transfers (bar, bytes, speed, time left) for the terminal."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    return Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console(),
    )


def last_line(text: str) -> str:
    """The last non-empty line of a command's output: usually its error message."""
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def progress(message: str) -> None:
    """A note on long work, on stderr: stdout stays the result (tables, JSON)."""
    print(message, file=sys.stderr, flush=True)


_NOTED: set[str] = set()


def note_once(message: str) -> None:
    """A note on stderr, said once per run even when several tasks run (`inv render up ...`)."""
    if message not in _NOTED:
        _NOTED.add(message)
        progress(f"note: {message}")


def say(message: str) -> None:
    print(message, flush=True)

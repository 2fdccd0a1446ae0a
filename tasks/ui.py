"""Output for people: tables and one-line messages, plain when not on a terminal."""

from __future__ import annotations

import sys


def console(stderr: bool = False):
    """The rich console every table and bar goes through: no styles at all when NO_COLOR is set (no-color.org)."""
    import os

    from rich.console import Console

    plain = bool(os.environ.get("NO_COLOR"))
    # highlight=False: addresses and versions are printed as they are, not recoloured.
    return Console(stderr=stderr, highlight=False, soft_wrap=True, color_system=None if plain else "auto")


def on_terminal() -> bool:
    """Whether the console() writes to a terminal, without importing rich (60 ms) when stdout is plainly not one:
    not a tty and none of the variables that make rich say it is (TTY_COMPATIBLE, FORCE_COLOR)."""
    import os

    if not sys.stdout.isatty() and not {"TTY_COMPATIBLE", "FORCE_COLOR"} & set(os.environ):
        return False
    return console().is_terminal


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
    from rich import filesize
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
    from rich.text import Text

    class Speed(TransferSpeedColumn):
        """Rich's recent speed, else the average since the start: rich forgets its samples whenever a task's
        total changes (the total bar's grows as each file starts), and would show `?` until new ones come."""

        def render(self, task):
            speed = task.finished_speed or task.speed
            if speed is None and task.elapsed and task.completed:
                speed = task.completed / task.elapsed
            if speed is None:
                return Text("?", style="progress.data.speed")
            return Text(f"{filesize.decimal(int(speed))}/s", style="progress.data.speed")

    return Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        DownloadColumn(),
        Speed(),
        TimeRemainingColumn(),
        console=console(),
    )


# Lines programs print after their error that say nothing about it (kubeadm's, kubectl's).
HINTS = ("To see the stack trace of this error", "Run 'kubectl ", "tar: Exiting with failure status")


def last_line(text: str) -> str:
    """The last non-empty line of a command's output that is not a generic hint: usually its error message."""
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    telling = [line for line in lines if not line.strip().startswith(HINTS)] or lines
    return telling[-1].strip() if telling else "no output"


def indented(text: str) -> str:
    """A program's whole message, to follow a line of ours: each line indented, blank lines left out."""
    lines = [f"  {line.rstrip()}" for line in (text or "").splitlines() if line.strip()]
    return "\n".join(lines) if lines else "  (no output)"


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

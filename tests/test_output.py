"""Output for people honours NO_COLOR (no-color.org) and a stdout that is not a terminal.

Real `inv` processes on a pseudo-terminal, as a user's shell runs them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, make_config, run_inv, run_inv_on_terminal

STYLE = re.compile(r"\x1b\[[0-9;]*m")  # SGR: colours, bold, italic


@pytest.mark.parametrize("no_color", [False, True])
def test_tables_on_a_terminal_have_no_styles_with_no_color(tmp_path, no_color):
    env = {"NO_COLOR": "1"} if no_color else {}
    code, screen = run_inv_on_terminal(tmp_path, "ssh", config=make_config(tmp_path), env=env, raw=True)
    assert code == 0, screen
    assert "┃" in screen and "calico-01" in screen  # a table drawn for the terminal
    assert bool(STYLE.search(screen)) is not no_color, screen


def test_progress_bars_have_no_styles_with_no_color():
    """The transfer bars of `inv download` and `inv copy`, drawn on a terminal."""
    import pty

    script = (
        "from tasks import ui\n"
        "with ui.transfer_bars() as bars:\n"
        "    bars.update(bars.add_task('kubectl', total=100), completed=50)\n"
    )
    leader, follower = pty.openpty()
    env = dict(os.environ, TERM="xterm", COLUMNS="100", NO_COLOR="1")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    assert proc.wait(timeout=60) == 0, screen
    text = screen.decode()
    assert "kubectl" in text and "━" in text and "50/100 bytes" in text
    assert not STYLE.search(text), text


def test_output_that_is_not_a_terminal_is_plain_text(tmp_path):
    done = run_inv(tmp_path, "ssh", config=make_config(tmp_path))
    assert done.returncode == 0
    assert "\x1b" not in done.stdout and "┃" not in done.stdout
    assert done.stdout.splitlines()[2] == "calico-01\tmaster\t172.18.18.101\tinv ssh calico-01"

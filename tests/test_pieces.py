"""`inv download` of a large file over several connections (Range pieces), against the real test server.

The pieces are made smaller here (MIN_PIECE, CHUNK) so that files of a few
hundred kB are split as a 40 MB one is; the server sends each connection at
a fixed rate, so the first connection is still busy when the others start.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import pytest

from conftest import ARTIFACTS, artifacts, run_inv, start_inv
from tasks import download, ui
from test_download import K8S, FileServer, failures, fetch, mirrored, publish, sha

SIZE = 600_000
PIECE = 50_000
KUBECTL = K8S + "kubectl"


@pytest.fixture
def small_pieces(monkeypatch):
    monkeypatch.setattr(download, "MIN_PIECE", PIECE)
    monkeypatch.setattr(download, "CHUNK", 8_192)


@pytest.fixture
def slow():
    """A server sending each connection 1 MB/s: a 600 kB file takes 0.6 s over one connection."""
    with FileServer(rate=1_000_000) as srv:
        yield srv


class Counted(download.Quiet):
    """Counts the bytes written into parts."""

    count = 0
    lock = threading.Lock()  # advanced() is called from every connection's thread

    def advanced(self, art, count):
        with Counted.lock:
            Counted.count += count


def one(tmp_path, srv, **keys) -> dict:
    """A configuration of kubectl alone, mirrored to `srv`, four connections."""
    return mirrored(tmp_path, srv, artifacts=[ARTIFACTS[0]], connections=4, **keys)


def ranges(srv, path=KUBECTL) -> list:
    return [r for _, _, r in srv.gets(path)]


def closed(srv, path=KUBECTL) -> list[tuple[int, int]]:
    """The (first, last) byte of each request for a piece with an end."""
    found = (re.fullmatch(r"bytes=(\d+)-(\d+)", r or "") for r in ranges(srv, path))
    return [(int(m[1]), int(m[2])) for m in found if m]


def test_a_large_file_comes_over_several_connections_and_is_verified(tmp_path, slow, small_pieces):
    config = one(tmp_path, slow)
    contents = publish(slow, config, size=SIZE)
    slow.files[KUBECTL + ".sha256"] = sha(contents["kubectl"]).encode()
    outcome = fetch(config, trust_first_use=False)
    assert not outcome.failed
    assert (tmp_path / "downloads" / "kubectl").read_bytes() == contents["kubectl"]
    assert not download.read_lock(tmp_path / "downloads.lock")["kubectl"].trusted  # the .sha256 vouched
    asked = ranges(slow)
    assert asked[0] is None and 3 <= len(asked)  # the file, then pieces of it
    assert all(second - first + 1 >= PIECE for first, second in closed(slow))
    assert sorted(os.listdir(tmp_path / "downloads")) == [download.CACHE, "kubectl"]


def test_connections_stay_within_download_connections(tmp_path, slow, small_pieces):
    config = mirrored(tmp_path, slow, artifacts=ARTIFACTS[:3], connections=3, parallel=2)
    contents = publish(slow, config, size=SIZE)
    busy, most = [0], [0]
    sending = slow._handler().do_GET  # count the bodies being sent at once

    def counted(handler):
        with slow._lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        try:
            sending(handler)
        finally:
            with slow._lock:
                busy[0] -= 1

    slow.httpd.RequestHandlerClass.do_GET = counted
    outcome = fetch(config, parallel=2)
    assert not outcome.failed and len(outcome.downloaded) == 3
    for name, data in contents.items():
        assert (tmp_path / "downloads" / name).read_bytes() == data
    # Three connections for bodies at most, and the digest look-ups beside them (as many workers).
    assert 3 <= most[0] <= 3 + 3


def test_a_server_without_ranges_sends_the_file_over_one_connection(tmp_path, small_pieces):
    with FileServer(ranges=False) as srv:
        config = one(tmp_path, srv)
        contents = publish(srv, config, size=SIZE)
        assert not fetch(config).failed
        assert ranges(srv) == [None]
        assert srv.sent[KUBECTL] == SIZE + len("kubectl") + len(artifacts(config)[0].upstream)
    assert (tmp_path / "downloads" / "kubectl").read_bytes() == contents["kubectl"]


@pytest.mark.parametrize("expires", [False, True])
def test_a_redirect_is_resolved_once_and_again_only_when_its_target_expires(tmp_path, slow, small_pieces, expires):
    config = one(tmp_path, slow)
    contents = publish(slow, config, size=SIZE)
    slow.files["/signed/kubectl"] = slow.files.pop(KUBECTL)
    slow.redirects[KUBECTL] = "/signed/kubectl"
    if expires:  # the first piece asked for: the signature has expired
        slow.hook("/signed/kubectl", ("",), ("status", 403))
    assert not fetch(config).failed
    assert len(ranges(slow)) == 1 + expires  # the artifact's URL again only for a new target
    assert len(ranges(slow, "/signed/kubectl")) >= 3 and closed(slow, "/signed/kubectl")  # the pieces
    assert (tmp_path / "downloads" / "kubectl").read_bytes() == contents["kubectl"]


def test_a_piece_cut_short_is_resumed_where_it_stopped(tmp_path, slow, small_pieces):
    config = one(tmp_path, slow)
    contents = publish(slow, config, size=SIZE)
    slow.hook(KUBECTL, ("",), ("cut", 30_000))  # the second request: the first piece of another connection
    assert not fetch(config).failed
    starts = [int(re.match(r"bytes=(\d+)-", r)[1]) for r in ranges(slow)[1:]]
    assert starts[0] + 30_000 in starts[1:]  # that piece again, from where it stopped
    assert (tmp_path / "downloads" / "kubectl").read_bytes() == contents["kubectl"]


def test_a_piece_that_keeps_failing_fails_the_file_and_a_later_run_resumes_every_piece(tmp_path, slow, small_pieces):
    config = one(tmp_path, slow, retries=2)
    contents = publish(slow, config, size=SIZE)
    slow.hook(KUBECTL, ("",), ("cut", 30_000), *[("status", 503)] * 20)  # every later piece's tries fail
    outcome = fetch(config)
    assert failures(outcome) == {"kubectl": "HTTP 503 Service Unavailable (tried 2 times)"}
    slow.hooks.clear()
    art = artifacts(config)[0]
    part = download.part_path(art)
    assert not art.path.exists() and part.exists()
    meta = json.loads(download.meta_path(part).read_text())
    assert meta["size"] == len(contents["kubectl"]) and meta["todo"]
    todo = meta["todo"]
    assert sum(end - pos for pos, end in todo) < len(contents["kubectl"])  # what the others had was kept
    asked = len(slow.gets(KUBECTL))
    Counted.count = 0
    assert not fetch(config, progress=Counted).failed
    assert art.path.read_bytes() == contents["kubectl"]
    again = [r for _, _, r in slow.gets(KUBECTL)[asked:]]
    assert again[0] == f"bytes={todo[0][0]}-"  # each piece from where it stopped
    assert {int(re.match(r"bytes=(\d+)-", r)[1]) for r in again} >= {pos for pos, _ in todo}
    assert Counted.count == sum(end - pos for pos, end in todo)  # nothing written twice


def test_a_file_that_changes_on_the_server_between_pieces_is_refused_and_not_kept(tmp_path, slow, small_pieces):
    config = one(tmp_path, slow)
    contents = publish(slow, config, size=SIZE)
    slow.hook(KUBECTL, ("",), ("body", contents["kubectl"][::-1]))  # a new ETag: If-Range sends it all
    outcome = fetch(config)
    assert failures(outcome) == {
        "kubectl": "the file changed on the server during the download (If-Range): run `inv download` again"
    }
    assert os.listdir(tmp_path / "downloads") == []  # neither the file, nor its part


def test_ctrl_c_keeps_the_pieces_and_the_next_run_resumes_each(tmp_path):
    """A real `inv download` interrupted with SIGINT while four connections fill an 8 MB file."""
    with FileServer(rate=1_000_000) as srv:
        config = one(tmp_path, srv)
        contents = publish(srv, config, size=8_000_000)
        art = artifacts(config)[0]
        part = download.part_path(art)
        proc = start_inv(config, tmp_path, "download", "--trust-first-use")
        deadline = time.monotonic() + 20
        while len({p for _, p, r in srv.log if r}) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # until a second connection asks for a piece
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 130, stderr
        assert not art.path.exists()
        todo = json.loads(download.meta_path(part).read_text())["todo"]
        assert len(todo) >= 2  # a piece per connection
        srv.rate = 4_000_000
        asked = len(srv.gets(KUBECTL))
        Counted.count = 0
        assert not fetch(config, progress=Counted).failed
        assert art.path.read_bytes() == contents["kubectl"]
        again = {int(re.match(r"bytes=(\d+)-", r)[1]) for _, _, r in srv.gets(KUBECTL)[asked:]}
        assert again >= {pos for pos, _ in todo}
        left = sum(end - pos for pos, end in todo)
        assert Counted.count == left < len(contents["kubectl"]) - 1_000_000  # what came before was kept


def test_a_bad_download_connections_is_one_line_and_exit_2(tmp_path, slow):
    config = mirrored(tmp_path, slow, connections=0)
    done = run_inv(tmp_path, "download", config=config)
    assert done.returncode == 2
    assert (
        done.stderr.strip() == "invalid configuration: download.connections = 0: expected a whole number of at least 1"
    )
    assert not slow.log


def test_the_speed_of_a_bar_survives_a_change_of_its_total():
    """Rich forgets a task's speed samples when its total changes, as the total bar's does when a file starts."""
    bars = ui.transfer_bars()
    task = bars.add_task("total", total=100)
    bars.advance(task, 50)
    bars.update(task, total=200)
    speed = bars.columns[3]
    assert speed.render(bars.tasks[0]).plain.endswith("/s")

"""`inv download` when no host answers: one line naming the cause and what to do, soon, nothing half-written.

Each cause is made by a real component on this machine, never the internet: a closed port (refused), a
listening socket whose queue is full and that never accepts (a firewall that drops packets: the connect
timeout), a `.invalid` name (DNS: resolvers must fail it, RFC 6761), a multicast address TCP cannot connect to
(no route), https spoken to a plain http server (TLS) and a proxy that does not answer (HTTPS_PROXY).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from conftest import ARTIFACTS, make_config, run_inv, run_inv_on_terminal
from tasks import download
from test_download import FileServer

PROXIES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "all_proxy", "no_proxy")
FIX = "set a proxy with HTTPS_PROXY; then `inv download --check`"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent():
    """A port that takes no connection and answers nothing: a listening socket that never accepts, its queue full,
    so the kernel drops every new SYN, as a firewall does."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = []
    for _ in range(3):  # a queue of 0 holds one; the rest wait in SYN-SENT
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        queued.append(s)
    yield port
    for s in queued:
        s.close()
    listener.close()


def offline(tmp_path, base: str, **keys) -> dict:
    """The default artifacts, both upstream hosts mapped to `base`; a short connect timeout, a long read timeout."""
    settings = {
        "lock_file": str(tmp_path / "downloads.lock"),
        "timeout": 60,
        "connect_timeout": 1,
        "retries": 3,
        "artifacts": [dict(a, sha256="") for a in ARTIFACTS],
        "mirrors": {"https://storage.googleapis.com/": base, "https://github.com/": base},
        "allow_http": base.startswith("http:"),
    }
    settings.update(keys)
    return make_config(tmp_path, download=settings)


def environment(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in PROXIES}
    return {**env, **extra}


def one_line(tmp_path, config, env=None) -> str:
    """Runs `inv download --trust-first-use`: it fails, with one line on stderr (besides notes), and writes nothing."""
    done = run_inv(tmp_path, "download", "--trust-first-use", config=config, env=env or environment())
    assert done.returncode == 1, done
    lines = [line for line in done.stderr.splitlines() if not line.startswith("note:")]
    assert len(lines) == 1, done.stderr
    folder = Path(config["paths"]["downloads"])
    assert not [p.name for p in folder.iterdir() if not p.name.startswith(".")] if folder.is_dir() else True
    return lines[0]


def test_refused_is_one_line_with_the_fix(tmp_path):
    line = one_line(tmp_path, offline(tmp_path, f"http://127.0.0.1:{closed_port()}/"))
    assert line.startswith("download failed for 10 of 10 artifact(s): 10 got no answer from their host: ")
    assert "connection refused (127.0.0.1:" in line
    assert "download.mirrors" in line and line.endswith(FIX)


def test_a_firewall_that_drops_packets_is_found_by_the_connect_timeout(tmp_path, silent):
    # download.timeout (60 s without data) is not waited for: the connection is never made.
    line = one_line(tmp_path, offline(tmp_path, f"http://127.0.0.1:{silent}/"))
    assert f"no answer within 1 s (a firewall dropping packets?) (127.0.0.1:{silent})" in line
    assert line.endswith(FIX)


def test_a_name_that_does_not_resolve_is_dns(tmp_path):
    line = one_line(tmp_path, offline(tmp_path, "http://mirror.invalid/"))
    assert "10 got no answer from their host: DNS: the name does not resolve (mirror.invalid)" in line
    assert line.endswith(FIX)


def test_an_address_with_no_route_is_no_route(tmp_path):
    # TCP to a multicast address: the kernel has no route for it (ENETUNREACH), at once.
    line = one_line(tmp_path, offline(tmp_path, "http://224.0.0.1:9/"))
    assert "no route to the host (224.0.0.1:9)" in line
    assert line.endswith(FIX)


def test_https_to_a_server_that_does_not_speak_it_is_tls(tmp_path):
    with FileServer() as plain:
        line = one_line(tmp_path, offline(tmp_path, f"https://127.0.0.1:{plain.port}/"))
    assert "TLS failed: " in line and f"(127.0.0.1:{plain.port})" in line
    assert "REQUESTS_CA_BUNDLE" in line and line.endswith("then `inv download --check`")


def test_a_proxy_that_does_not_answer_is_named(tmp_path):
    # The real upstream URLs: the proxy is asked first, and never answers; nothing reaches the internet.
    config = make_config(
        tmp_path,
        download={"lock_file": str(tmp_path / "downloads.lock"), "connect_timeout": 1, "retries": 2},
    )
    proxy = f"http://127.0.0.1:{closed_port()}"
    line = one_line(tmp_path, config, environment(HTTPS_PROXY=proxy))
    assert "the proxy does not answer" in line
    assert "github.com" in line and "storage.googleapis.com" in line
    assert "check the proxy that HTTPS_PROXY (or HTTP_PROXY) names" in line


def test_only_the_artifacts_of_the_silent_host_are_summed_up(tmp_path):
    """A host that answers and one that does not: the first's files are placed, the second's said in one line."""
    with FileServer() as srv:
        config = offline(
            tmp_path,
            srv.base + "/",
            mirrors={
                "https://storage.googleapis.com/": srv.base + "/",
                "https://github.com/": "http://mirror.invalid/",
            },
        )
        for art in download.settings.build(config).download.artifacts:
            if art.url.startswith(srv.base):
                srv.files[art.url.removeprefix(srv.base)] = b"bytes of " + art.name.encode()
        done = run_inv(tmp_path, "download", "--trust-first-use", config=config, env=environment())
    assert done.returncode == 1
    assert "6 downloaded" in done.stdout
    assert done.stderr.splitlines()[-1] == (
        "download failed for 4 of 10 artifact(s): 4 got no answer from their host: DNS: the name does not resolve "
        f"(mirror.invalid); map the host to a mirror you can reach in download.mirrors, or {FIX}"
    )
    assert "FAILED" not in done.stderr


def test_a_host_that_gave_no_answer_to_as_many_requests_as_tries_is_given_up(tmp_path):
    """Whichever artifacts the requests were for: the next request fails at once, without a connection."""
    url = f"http://127.0.0.1:{closed_port()}/file"
    with download.Fetcher(timeout=60, tries=3, parallel=1, report=download.Quiet(), connect_timeout=1) as fetcher:
        for _ in range(3):
            with pytest.raises(download.Unreachable, match="^connection refused$"):
                fetcher.request(url)
        with pytest.raises(download.HostDown, match="^connection refused$"):
            fetcher.request(url + "-of-another-artifact")


def test_a_host_that_answers_again_is_not_given_up(tmp_path):
    with FileServer() as srv:
        srv.files["/file"] = b"x"
        with download.Fetcher(timeout=60, tries=2, parallel=1, report=download.Quiet()) as fetcher:
            fetcher._misses[f"127.0.0.1:{srv.port}"] = 1  # one request without an answer before
            with fetcher.request(srv.base + "/file") as response:
                assert response.status_code == 200
            assert not fetcher._misses


def test_on_a_terminal_each_artifact_shows_its_tries_then_one_line(tmp_path):
    config = offline(tmp_path, f"http://127.0.0.1:{closed_port()}/", retries=2)
    code, text = run_inv_on_terminal(tmp_path, "download", "--trust-first-use", config=config)
    assert code == 1
    assert "connection refused; try 2 of 2 soon" in text or "(failed: connection refused" in text, text
    assert "FAILED" not in text
    assert text.count("got no answer from their host") == 1

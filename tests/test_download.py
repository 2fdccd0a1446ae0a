"""`inv download` against a real HTTP server on 127.0.0.1 (no internet).

`FileServer` is a threaded HTTP/1.1 server (keep-alive, Range with If-Range,
ETag or Last-Modified) serving generated files at the paths the real release
servers use; the tests reach it through download.mirrors, which maps
https://storage.googleapis.com/ and https://github.com/ to it, exactly as a
user's mirror would (plain http on the loopback: those tests set
download.allow_http). Hooks make it redirect, cut a body short (with or
without a Content-Length), answer 5xx or 404, serve other bytes, stall, or
throttle; it counts connections and bytes sent, and logs every request. With
a TLS context it serves https.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import ipaddress
import os
import re
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import ARTIFACTS, artifacts, make_config, project, run_inv, run_inv_on_terminal
from tasks import download, pki
from tasks.settings import ConfigError

K8S = "/kubernetes-release/release/v1.1.7/bin/linux/amd64/"
CNI = "/projectcalico/calico-cni/releases/download/v1.0.0/"
SNE = "/kelseyhightower/setup-network-environment/releases/download/1.0.1/setup-network-environment"


class Backlogged(ThreadingHTTPServer):
    """A threading HTTP server whose listen queue takes a burst of connections, as a real web server's does.

    socketserver's default of 5 makes the kernel drop the SYNs of a sixth simultaneous connection, which
    then waits a second for its retransmission: a download's connect timeout would take this machine's
    test server for a firewall.
    """

    request_queue_size = 128


class FileServer:
    """Files (bytes or paths on disk) by URL path, with hooks; `rate` bytes/s and `latency` s per response.

    `validator`: what identifies a version of a file, for If-Range: "etag", "last-modified" or None.
    `ranges`: whether it answers Range requests (Accept-Ranges: bytes), else always the whole file.
    `tls`: a server-side SSL context: https instead of http.
    """

    def __init__(
        self, rate: float = 0, latency: float = 0, validator: str | None = "etag", tls=None, ranges: bool = True
    ):
        self.files: dict[str, bytes | Path] = {}
        self.hooks: dict[str, list[tuple]] = {}  # path -> actions, one used up per request
        self.redirects: dict[str, str] = {}  # path -> target path (or URL), every time
        self.types: dict[str, str] = {}  # path -> Content-Type (default application/octet-stream)
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.if_ranges: list[tuple[str, str | None]] = []  # (path, If-Range header) of every request
        self.sent: dict[str, int] = {}  # path -> body bytes written
        self.connections = 0
        self.rate, self.latency, self.validator, self.ranges = rate, latency, validator, ranges
        self._lock = threading.Lock()
        self.httpd = Backlogged(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def hook(self, path: str, *actions: tuple) -> None:
        self.hooks.setdefault(path, []).extend(actions)

    def if_range(self, path: str) -> list:
        """The If-Range header of each request for `path`."""
        return [value for asked, value in self.if_ranges if asked == path]

    def gets(self, path: str) -> list:
        return [entry for entry in self.log if entry[0] == "GET" and entry[1] == path]

    def _next_action(self, path: str):
        with self._lock:
            queue = self.hooks.get(path)
            return queue.pop(0) if queue else None

    def _handler(server):  # noqa: N805  (the handler class closes over the server)
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes

            def setup(self):
                super().setup()
                with server._lock:
                    server.connections += 1

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                path = self.path
                with server._lock:
                    server.log.append((self.command, path, self.headers.get("Range")))
                    server.if_ranges.append((path, self.headers.get("If-Range")))
                action = server._next_action(path) or ("",)
                if server.latency:
                    time.sleep(server.latency)
                if action[0] == "delay":
                    time.sleep(action[1])
                if action[0] == "status":
                    return self._empty(action[1])
                if path in server.redirects:
                    target = server.redirects[path]
                    return self._empty(302, Location=target if "://" in target else server.base + target)
                content = action[1] if action[0] == "body" else server.files.get(path)
                if content is None:
                    return self._empty(404)
                data = content if isinstance(content, bytes) else None
                size = len(data) if data is not None else content.stat().st_size
                start, status = 0, 200
                version = self._version(data, content)
                wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
                same = self.headers.get("If-Range") in (None, *version.values())  # else: the whole file
                stop = size
                if wanted and same and server.ranges and action[0] != "norange":
                    start = int(wanted.group(1))
                    if start >= size:
                        return self._empty(416, **{"Content-Range": f"bytes */{size}"})
                    stop = min(size, int(wanted.group(2)) + 1) if wanted.group(2) else size
                    status = 206
                self.send_response(status)
                self.send_header("Content-Type", server.types.get(path, "application/octet-stream"))
                if server.ranges:
                    self.send_header("Accept-Ranges", "bytes")
                for key, value in version.items():
                    self.send_header(key, value)
                if action[0] == "nolength":  # no Content-Length: the body ends when the connection does
                    stop = stop if action[1] is None else min(stop, start + action[1])
                    self.send_header("Connection", "close")
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(stop - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
                self.end_headers()
                if not body:
                    return
                if action[0] == "cut":  # promise everything, send part of it, hang up
                    stop = min(stop, start + action[1])
                    self.close_connection = True
                stall = action[1:] if action[0] == "stall" else None
                self._send(path, data, content, start, stop, stall)

            def _version(self, data, content) -> dict[str, str]:
                """The validator header of this version of the file, as the server is configured to send."""
                if data is not None:
                    tag = hashlib.sha256(data).hexdigest()[:16]
                else:
                    st = content.stat()
                    tag = f"{st.st_size:x}-{st.st_mtime_ns:x}"
                if server.validator == "etag":
                    return {"ETag": f'"{tag}"'}
                if server.validator == "last-modified":
                    seconds = 1e9 + int(hashlib.sha256(tag.encode()).hexdigest()[:7], 16)
                    return {"Last-Modified": email.utils.formatdate(seconds, usegmt=True)}
                return {}

            def _send(self, path, data, content, start, stop, stall):
                began, sent = time.monotonic(), 0
                source = None if data is not None else open(content, "rb")
                try:
                    if source:
                        source.seek(start)
                    position = start
                    while position < stop:
                        n = min(64 * 1024, stop - position, (stall[0] - position) if stall else stop)
                        chunk = data[position : position + n] if source is None else source.read(n)
                        self.wfile.write(chunk)
                        position += n
                        sent += n
                        with server._lock:
                            server.sent[path] = server.sent.get(path, 0) + n
                        if stall and position == stall[0]:  # ("stall", at, seconds): a silent pause
                            self.wfile.flush()
                            time.sleep(stall[1])
                            stall = None
                        if server.rate:
                            ahead = sent / server.rate - (time.monotonic() - began)
                            if ahead > 0:
                                time.sleep(ahead)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    self.close_connection = True
                finally:
                    if source:
                        source.close()

            def _empty(self, status, **headers):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler


def blob(name: str, size: int = 40_000) -> bytes:
    """Distinct, reproducible bytes for a file."""
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size] + name.encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def url_path(artifact_url: str) -> str:
    """The path a mirrored default URL asks the test server for."""
    return "/" + artifact_url.split("/", 3)[3]


@pytest.fixture
def server():
    with FileServer() as srv:
        yield srv


def mirrored(tmp_path, srv: FileServer, **download_keys) -> dict:
    """The default configuration, its two upstream hosts mirrored to `srv`, everything in tmp_path.

    The test server is plain http on the loopback: download.allow_http is set (unless a test says otherwise).
    """
    artifacts = [dict(a, sha256="") for a in ARTIFACTS]
    keys = {
        "lock_file": str(tmp_path / "downloads.lock"),
        "timeout": 2,
        "retries": 3,
        "artifacts": artifacts,
        "mirrors": {"https://storage.googleapis.com/": srv.base + "/", "https://github.com/": srv.base + "/"},
        "allow_http": True,
    }
    keys.update(download_keys)
    return make_config(tmp_path, download=keys)


def publish(srv: FileServer, config: dict, size: int = 40_000) -> dict[str, bytes]:
    """Generated contents for every configured artifact, served at its mirrored path."""
    contents = {}
    for art in artifacts(config):
        contents[art.name] = blob(art.name + art.upstream, size)
        srv.files[url_path(art.url)] = contents[art.name]
    return contents


def fetch(config, trust_first_use=True, **kwargs) -> download.Outcome:
    """`fetch_all` as `inv download --trust-first-use` runs it: the test server publishes no digest unless a
    test says so. The tests of what vouches for the bytes pass trust_first_use=False."""
    return download.fetch_all(project(config), backoff=0.01, trust_first_use=trust_first_use, **kwargs)


def failures(outcome) -> dict[str, str]:
    return {art.name: reason for art, reason in outcome.failed}


def assert_placed(config, contents: dict[str, bytes]) -> None:
    folder = Path(config["paths"]["downloads"])
    for name, data in contents.items():
        assert (folder / name).read_bytes() == data, name
        assert (folder / name).stat().st_mode & 0o777 == 0o755, name
    assert not list(folder.glob("*.part"))


# --- configuration (pure) -----------------------------------------------------


def test_default_artifacts_are_the_seeds_binaries_over_https(config):
    arts = {a.name: a for a in artifacts(config)}
    assert list(arts) == [
        "kubectl",
        "kubelet",
        "kube-proxy",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "calicoctl",
        "calico",
        "calico-ipam",
        "setup-network-environment",
    ]
    assert arts["kubelet"].url == (
        "https://storage.googleapis.com/kubernetes-release/release/v1.1.7/bin/linux/amd64/kubelet"
    )
    assert arts["calicoctl"].url == (
        "https://github.com/projectcalico/calico-containers/releases/download/v0.15.0/calicoctl"
    )
    assert arts["calico-ipam"].url.endswith("/calico-cni/releases/download/v1.0.0/calico-ipam")
    assert arts["setup-network-environment"].sha256 == (
        "8cd414e0d3e94bfd310a1945d69ce72ccca7d8585ea8f29df85637664a59c7c7"
    )
    assert {a.dest for a in arts.values() if a.name.startswith("calico") and a.name != "calicoctl"} == {"/opt/cni/bin"}
    assert arts["kubectl"].dest == "/opt/bin" and arts["kubectl"].mode == 0o755
    assert arts["kubectl"].path == Path(config["paths"]["downloads"]) / "kubectl"
    assert all(a.url.startswith("https://") and a.url == a.upstream for a in arts.values())


def test_versions_change_the_urls(tmp_path):
    config = make_config(tmp_path, versions={"kubernetes": "v1.2.0", "calico_cni": "v1.1.0"})
    arts = {a.name: a for a in artifacts(config)}
    assert "/release/v1.2.0/bin/" in arts["kubectl"].url
    assert "/download/v1.1.0/calico" in arts["calico"].url


def test_mirrors_replace_the_longest_matching_prefix(tmp_path):
    mirrors = {
        "https://github.com/": "https://gh.example/",
        "https://github.com/projectcalico/": "https://calico.example/m/",
        "https://storage.googleapis.com/": "https://mirror.example/k8s/",
    }
    arts = {a.name: a for a in artifacts(make_config(tmp_path, download={"mirrors": mirrors}))}
    assert arts["kubectl"].url == "https://mirror.example/k8s/kubernetes-release/release/v1.1.7/bin/linux/amd64/kubectl"
    assert arts["calico"].url == "https://calico.example/m/calico-cni/releases/download/v1.0.0/calico"
    assert arts["setup-network-environment"].url.startswith("https://gh.example/kelseyhightower/")
    assert arts["kubectl"].upstream.startswith("https://storage.googleapis.com/")


def bad_artifact(index: int, **changes) -> dict:
    arts = [dict(a) for a in ARTIFACTS]
    arts[index].update(changes)
    return {"artifacts": arts}


@pytest.mark.parametrize(
    "keys, message",
    [
        (bad_artifact(3, mode="999"), "download.artifacts[3].mode = '999': expected an octal file mode"),
        (
            bad_artifact(1, url="https://x.example/{kube}/kubelet"),
            "download.artifacts[1].url = 'https://x.example/{kube}/kubelet': "
            "expected an http(s) URL whose placeholders are among {kubernetes}, {calicoctl}",
        ),
        (bad_artifact(1, url="https://x.example/{kubernetes"), "download.artifacts[1].url"),
        (bad_artifact(0, url="ftp://x.example/kubectl"), "expected an http:// or https:// URL"),
        (
            bad_artifact(2, name="kubectl"),
            "download.artifacts[2].name = 'kubectl': expected a name no other artifact has",
        ),
        (bad_artifact(2, name="../kube-proxy"), "download.artifacts[2].name = '../kube-proxy'"),
        (bad_artifact(4, sha256="xyz"), "download.artifacts[4].sha256 = 'xyz': expected 64 hexadecimal digits"),
        (bad_artifact(5, dest="opt/bin"), "download.artifacts[5].dest = 'opt/bin': expected an absolute folder"),
        (bad_artifact(5, mode=755), "download.artifacts[5].mode = 755: expected a string"),
        (bad_artifact(5, checksum="ab"), "download.artifacts[5].checksum"),
        ({"mirrors": {"https://github.com/": "gh.example"}}, "download.mirrors['https://github.com/'] = 'gh.example'"),
        ({"parallel": 0}, "download.parallel = 0: expected a whole number of at least 1"),
        ({"lock_file": ""}, "download.lock_file = ''"),
    ],
)
def test_bad_configuration_is_one_line_naming_the_key(tmp_path, keys, message):
    with pytest.raises(ConfigError) as err:
        artifacts(make_config(tmp_path, download=keys))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_lock_file_round_trip_and_bad_line():
    entries = {
        "kubectl": download.Locked("ab" * 32, "https://storage.googleapis.com/k/kubectl", 40_000),
        "calico": download.Locked("cd" * 32, "https://github.com/p/calico", 123, trusted=True),
    }
    text = download.format_lock(entries)
    assert text.startswith("#") and text.index("calico") < text.index("kubectl")
    assert f"{'cd' * 32}  calico   https://github.com/p/calico               123  trusted-on-first-use\n" in text
    assert f"{'ab' * 32}  kubectl  https://storage.googleapis.com/k/kubectl  40000\n" in text
    assert download.parse_lock(text, "downloads.lock") == entries
    with pytest.raises(ConfigError, match=r"downloads.lock line 2 = 'nonsense here'"):
        download.parse_lock("# header\nnonsense here\n", "downloads.lock")


def test_lock_files_of_the_earlier_format_are_still_read():
    old = f"# <sha256>  <name>  <upstream URL>\n{'ab' * 32}  kubectl  https://storage.googleapis.com/k/kubectl\n"
    assert download.parse_lock(old, "downloads.lock") == {
        "kubectl": download.Locked("ab" * 32, "https://storage.googleapis.com/k/kubectl", None, trusted=False)
    }


@pytest.mark.parametrize(
    "line",
    [
        f"{'ab' * 32}  kubectl  https://h/kubectl  big",  # a size that is no number
        f"{'ab' * 32}  kubectl  https://h/kubectl  12  trusted",  # a mark that is not the one
        f"{'ab' * 32}  kubectl  https://h/kubectl  trusted-on-first-use",  # the mark without the size
        f"{'ab' * 32}  kubectl  https://h/kubectl  12  trusted-on-first-use  more",
    ],
)
def test_a_lock_line_with_a_bad_size_or_mark_is_named(line):
    with pytest.raises(ConfigError) as err:
        download.parse_lock(f"# header\n{line}\n", "downloads.lock")
    assert str(err.value) == (
        f"invalid configuration: downloads.lock line 2 = {line!r}: "
        "expected '<sha256>  <name>  <url>  <size>[  trusted-on-first-use]'"
    )


def test_digest_files_are_parsed_in_both_published_forms():
    digest = hashlib.sha1(b"x").hexdigest()
    assert download.parse_digest(digest.encode() + b"\n", "sha1") == digest
    assert download.parse_digest(digest.upper().encode() + b"  kubectl\n", "sha1") == digest
    assert download.parse_digest(b"<html>Not here</html>", "sha1") is None
    assert download.parse_digest(digest.encode(), "md5") is None  # wrong length for the algorithm
    assert download.digest_urls("https://h/r/v1/kube%2Bctl") == [
        ("sha256", "https://h/r/v1/kube%2Bctl.sha256", None),
        ("sha256", "https://h/r/v1/SHA256SUMS", "kube+ctl"),
        ("sha512", "https://h/r/v1/kube%2Bctl.sha512", None),
        ("sha1", "https://h/r/v1/kube%2Bctl.sha1", None),
        ("md5", "https://h/r/v1/kube%2Bctl.md5", None),
    ]


def test_a_sha256sums_listing_gives_the_line_of_that_file_only():
    a, b, c = (hashlib.sha256(x).hexdigest() for x in (b"a", b"b", b"c"))
    listing = f"{a}  kubectl.sig\n{b} *kubectl\n{c}  ./kubelet\nnot a line\n".encode()
    assert download.parse_digest(listing, "sha256", "kubectl") == b  # binary-mode mark, not a longer name
    assert download.parse_digest(listing, "sha256", "kubelet") == c
    assert download.parse_digest(listing, "sha256", "kube") is None
    assert download.parse_digest(listing, "sha256", "kube-proxy") is None


def test_only_names_must_exist(config):
    every = artifacts(config)
    assert [a.name for a in download.select(every, ["calico", "kubectl"])] == ["kubectl", "calico"]
    with pytest.raises(ConfigError, match=r"--only = 'kubctl': expected an artifact name"):
        download.select(every, ["kubctl"])


# --- downloading from the real server -------------------------------------------


def test_fresh_download_places_verified_executables_and_writes_the_lock(tmp_path, server):
    config = mirrored(tmp_path, server)
    contents = publish(server, config)
    outcome = fetch(config)
    assert not outcome.failed and len(outcome.downloaded) == 10 and outcome.lock_changed
    assert_placed(config, contents)
    lock = download.read_lock(tmp_path / "downloads.lock")
    size = len(contents["kubectl"])
    assert lock["kubectl"] == download.Locked(sha(contents["kubectl"]), artifacts(config)[0].upstream, size, True)
    assert lock["kubectl"].url.startswith("https://storage.googleapis.com/")  # the lock is mirror-independent
    assert len(lock) == 10 and all(entry.trusted for entry in lock.values())  # no digest published: on first use
    # Connections are reused: 10 files and their digest-file look-ups (4 each, and one SHA256SUMS for each of
    # the 4 folders) over one connection per worker (download.parallel for files, download.connections for the
    # look-ups).
    assert len(server.gets(K8S + "SHA256SUMS")) == 1
    assert len(server.log) == 10 + 40 + 4 and server.connections <= 10 + 16


def test_rerun_with_everything_in_place_makes_no_request_and_opens_no_session(tmp_path, server, monkeypatch):
    config = mirrored(tmp_path, server)
    publish(server, config)
    fetch(config)
    before = len(server.log)
    import requests

    def no_network(*args, **kwargs):
        raise AssertionError("a session was created")

    monkeypatch.setattr(requests, "Session", no_network)
    outcome = fetch(config)
    assert len(outcome.present) == 10 and not outcome.downloaded and not outcome.lock_changed
    assert len(server.log) == before


def test_rerun_without_the_stat_cache_hashes_files_and_still_stays_offline(tmp_path, server):
    config = mirrored(tmp_path, server)
    publish(server, config)
    fetch(config)
    (tmp_path / "downloads" / download.CACHE).unlink()
    before = len(server.log)
    assert len(fetch(config).present) == 10 and len(server.log) == before


def test_a_locally_changed_file_is_downloaded_again(tmp_path, server):
    config = mirrored(tmp_path, server)
    contents = publish(server, config)
    fetch(config)
    kubelet = tmp_path / "downloads" / "kubelet"
    kubelet.write_bytes(b"tampered")
    outcome = fetch(config)
    assert [a.name for a, _, _ in outcome.downloaded] == ["kubelet"]
    assert kubelet.read_bytes() == contents["kubelet"]


def test_github_redirects_are_followed(tmp_path, server):
    config = mirrored(tmp_path, server)
    contents = publish(server, config)
    for art in artifacts(config):
        if "/releases/download/" in art.url:
            target = "/objects/" + art.name
            server.files[target] = server.files.pop(url_path(art.url))
            server.redirects[url_path(art.url)] = target
    assert not fetch(config).failed
    assert_placed(config, contents)
    assert server.gets("/objects/calico")


def test_a_body_cut_short_is_resumed_with_range(tmp_path, server):
    config = mirrored(tmp_path, server)
    contents = publish(server, config)
    server.hook(K8S + "kube-apiserver", ("cut", 15_000))
    assert not fetch(config).failed
    assert_placed(config, contents)
    ranges = [r for _, _, r in server.gets(K8S + "kube-apiserver")]
    assert ranges == [None, "bytes=15000-"]


def test_a_partial_file_from_an_interrupted_run_is_resumed(tmp_path, server):
    config = mirrored(tmp_path, server, artifacts=[ARTIFACTS[0]], retries=1)
    contents = publish(server, config)
    server.hook(K8S + "kubectl", ("cut", 12_345))
    assert list(failures(fetch(config))) == ["kubectl"]  # cut short, or the connection broken: either way
    art = artifacts(config)[0]
    part = download.part_path(art)
    etag = '"' + sha(contents["kubectl"])[:16] + '"'
    assert part.stat().st_size == 12_345 and download.read_validator(part) == etag
    stale = art.path.with_name("kubectl.0123abcd.part")  # left by another version's URL, with its validator
    stale.write_bytes(b"old")
    download.meta_path(stale).write_text('{"if_range": "\\"old\\""}')
    assert not fetch(config).failed
    assert [r for _, _, r in server.gets(K8S + "kubectl")] == [None, "bytes=12345-"]
    assert server.if_range(K8S + "kubectl") == [None, etag]
    assert server.sent[K8S + "kubectl"] == len(contents["kubectl"])  # nothing sent twice
    assert art.path.read_bytes() == contents["kubectl"]
    assert sorted(os.listdir(tmp_path / "downloads")) == [download.CACHE, "kubectl"]  # no part, no meta left


def test_a_server_that_ignores_range_restarts_the_file(tmp_path, server):
    config = mirrored(tmp_path, server, artifacts=[ARTIFACTS[0]])
    contents = publish(server, config)
    server.hook(K8S + "kubectl", ("cut", 10_000), ("norange",))
    assert not fetch(config).failed
    assert (tmp_path / "downloads" / "kubectl").read_bytes() == contents["kubectl"]


def test_500_then_success_is_retried(tmp_path, server):
    config = mirrored(tmp_path, server)
    contents = publish(server, config)
    server.hook(K8S + "kubelet", ("status", 500), ("status", 503))
    assert not fetch(config).failed
    assert_placed(config, contents)
    assert len(server.gets(K8S + "kubelet")) == 3


def test_404_fails_that_artifact_only_without_retrying(tmp_path, server):
    config = mirrored(tmp_path, server)
    contents = publish(server, config)
    del server.files[CNI + "calico-ipam"]
    outcome = fetch(config)
    assert failures(outcome) == {"calico-ipam": "HTTP 404 Not Found"}
    assert len(server.gets(CNI + "calico-ipam")) == 1
    del contents["calico-ipam"]
    assert_placed(config, contents)
    assert not (tmp_path / "downloads" / "calico-ipam").exists()
    assert "calico-ipam" not in download.read_lock(tmp_path / "downloads.lock")


def test_persistent_5xx_fails_after_the_configured_tries(tmp_path, server):
    config = mirrored(tmp_path, server, retries=2)
    publish(server, config)
    server.hook(CNI + "calico", *[("status", 502)] * 5)
    outcome = fetch(config)
    assert failures(outcome) == {"calico": "HTTP 502 Bad Gateway (tried 2 times)"}
    assert len(server.gets(CNI + "calico")) == 2 and len(outcome.downloaded) == 9


def test_wrong_bytes_against_a_pin_never_reach_the_final_path(tmp_path, server):
    config = mirrored(tmp_path, server)
    contents = publish(server, config)
    config["download"]["artifacts"][9]["sha256"] = sha(b"what upstream promised")
    outcome = fetch(config)
    reason = failures(outcome)["setup-network-environment"]
    assert reason == (
        f"sha256 {sha(contents['setup-network-environment'])} does not match "
        f"{sha(b'what upstream promised')} pinned in download.artifacts"
    )
    folder = tmp_path / "downloads"
    assert not (folder / "setup-network-environment").exists() and not list(folder.glob("*.part"))
    # Pinned: no need to ask for digest files.
    assert not any(p.startswith(SNE + ".") for _, p, _ in server.log)


def test_a_matching_pin_is_accepted(tmp_path, server):
    config = mirrored(tmp_path, server)
    contents = publish(server, config)
    config["download"]["artifacts"][9]["sha256"] = sha(contents["setup-network-environment"]).upper()
    assert not fetch(config).failed


def test_changed_upstream_bytes_fail_against_the_lock_until_update_lock(tmp_path, server):
    config = mirrored(tmp_path, server)
    contents = publish(server, config)
    fetch(config)
    kubectl = tmp_path / "downloads" / "kubectl"
    kubectl.unlink()
    rebuilt = contents["kubectl"][::-1]  # as long as the locked one: only the digest tells them apart
    server.files[K8S + "kubectl"] = rebuilt
    outcome = fetch(config, trust_first_use=False)
    assert failures(outcome)["kubectl"] == (
        f"sha256 {sha(rebuilt)} does not match {sha(contents['kubectl'])} recorded in "
        "downloads.lock (run with --update-lock to accept a new upstream)"
    )
    assert not kubectl.exists()
    assert download.read_lock(tmp_path / "downloads.lock")["kubectl"].sha256 == sha(contents["kubectl"])
    # --update-lock forgets the recorded digest; something must still vouch for the new bytes.
    outcome = fetch(config, update_lock=True, only=["kubectl"], trust_first_use=False)
    assert failures(outcome)["kubectl"].startswith("refused: no digest to check it against")
    assert not kubectl.exists() and not list(kubectl.parent.glob("*.part*"))
    server.files[K8S + "kubectl.sha256"] = sha(rebuilt).encode()
    outcome = fetch(config, update_lock=True, only=["kubectl"], trust_first_use=False)
    assert not outcome.failed and outcome.lock_changed
    assert kubectl.read_bytes() == rebuilt
    lock = download.read_lock(tmp_path / "downloads.lock")
    assert lock["kubectl"] == download.Locked(sha(rebuilt), artifacts(config)[0].upstream, len(rebuilt), False)
    assert len(lock) == 10 and lock["kubelet"].trusted  # the others as they were


def test_a_new_version_is_downloaded_and_relocked(tmp_path, server):
    config = mirrored(tmp_path, server)
    publish(server, config)
    fetch(config)
    config["versions"]["calico_cni"] = "v1.1.0"
    contents = publish(server, config)
    outcome = fetch(config)
    assert sorted(a.name for a, _, _ in outcome.downloaded) == ["calico", "calico-ipam"]
    lock = download.read_lock(tmp_path / "downloads.lock")
    upstream = "https://github.com/projectcalico/calico-cni/releases/download/v1.1.0/calico"
    assert lock["calico"] == download.Locked(sha(contents["calico"]), upstream, len(contents["calico"]), True)


DIGEST_FILES = [".sha256", "SHA256SUMS", ".sha512", ".sha1", ".md5"]  # in the order they are looked for


def digest_file_path(where: str) -> str:
    return K8S + (where if where == "SHA256SUMS" else "kubectl" + where)


@pytest.mark.parametrize(
    "published, ok",
    [
        ({".sha256": lambda d: hashlib.sha256(d).hexdigest() + "  kubectl\n"}, True),
        ({"SHA256SUMS": lambda d: f"{sha(b'kubelet')}  kubelet\n{sha(d)} *kubectl\n"}, True),
        ({".sha512": lambda d: hashlib.sha512(d).hexdigest()}, True),
        ({".sha1": lambda d: hashlib.sha1(d).hexdigest()}, True),
        ({".md5": lambda d: hashlib.md5(d).hexdigest()}, True),
        ({".sha256": lambda d: "0" * 64, ".sha1": lambda d: hashlib.sha1(d).hexdigest()}, False),
        ({"SHA256SUMS": lambda d: f"{sha(d)}  kubelet\n{'0' * 64}  kubectl\n"}, False),
        ({".sha512": lambda d: "0" * 128, ".md5": lambda d: hashlib.md5(d).hexdigest()}, False),
        ({".sha1": lambda d: "0" * 40}, False),
        ({".md5": lambda d: "0" * 32}, False),
    ],
)
def test_published_digest_files_are_checked(tmp_path, server, published, ok):
    config = mirrored(tmp_path, server, artifacts=[ARTIFACTS[0]])
    contents = publish(server, config)
    for where, make in published.items():
        server.files[digest_file_path(where)] = make(contents["kubectl"]).encode()
    outcome = fetch(config, trust_first_use=False)  # the published digest alone vouches for the bytes
    assert (tmp_path / "downloads" / "kubectl").exists() == ok
    first = next(iter(published))
    if ok:
        assert not download.read_lock(tmp_path / "downloads.lock")["kubectl"].trusted
    else:
        assert failures(outcome)["kubectl"].endswith(f"published at {server.base}{digest_file_path(first)}")
    # All are asked for at once, each once; the first in the order that is found is the one used.
    asked = [p for _, p, _ in server.log if p != K8S + "kubectl"]
    assert sorted(asked) == sorted(digest_file_path(w) for w in DIGEST_FILES)


def test_a_digest_file_that_arrives_after_the_body_is_still_checked(tmp_path, server):
    config = mirrored(tmp_path, server, artifacts=[ARTIFACTS[0]])
    contents = publish(server, config)
    server.files[K8S + "kubectl.md5"] = hashlib.md5(b"other bytes").hexdigest().encode()
    server.hook(K8S + "kubectl.sha256", ("delay", 0.3))
    outcome = fetch(config)
    assert failures(outcome)["kubectl"] == (
        f"md5 {hashlib.md5(contents['kubectl']).hexdigest()} does not match "
        f"{hashlib.md5(b'other bytes').hexdigest()} published at {server.base}{K8S}kubectl.md5"
    )
    assert not (tmp_path / "downloads" / "kubectl").exists()


def test_a_server_that_stays_silent_times_out_and_a_retry_succeeds(tmp_path, server):
    config = mirrored(tmp_path, server, timeout=1)
    contents = publish(server, config)
    server.hook(K8S + "kube-proxy", ("delay", 1.6))
    server.hook(CNI + "calico", ("stall", 30_000, 1.6))
    assert not fetch(config).failed
    assert_placed(config, contents)
    assert [r for _, _, r in server.gets(CNI + "calico")] == [None, "bytes=30000-"]


def test_a_server_that_never_answers_fails_with_a_timeout(tmp_path, server):
    config = mirrored(tmp_path, server, timeout=1, retries=2, artifacts=ARTIFACTS[:2])
    publish(server, config)
    server.hook(K8S + "kubelet", ("delay", 1.5), ("delay", 1.5))
    outcome = fetch(config)
    assert failures(outcome) == {"kubelet": "timed out: no data for 1 s (tried 2 times)"}
    assert [a.name for a, _, _ in outcome.downloaded] == ["kubectl"]


def test_a_closed_port_is_a_connection_failure(tmp_path, server):
    config = mirrored(tmp_path, server, retries=1, artifacts=ARTIFACTS[:1])
    server.__exit__()
    outcome = fetch(config)
    assert failures(outcome) == {"kubectl": "connection refused"}
    assert outcome.unreachable["kubectl"].kind == download.REFUSED


def test_check_reports_status_and_size_without_downloading(tmp_path, server):
    config = mirrored(tmp_path, server)
    contents = publish(server, config, size=5000)
    del server.files[K8S + "kube-scheduler"]
    rows = {art.name: (status, size) for art, status, size, _ in download.check_all(project(config))}
    assert rows["kubectl"] == ("200 OK", len(contents["kubectl"]))
    assert rows["kube-scheduler"] == ("404 Not Found", 0)
    assert {m for m, _, _ in server.log} == {"HEAD"}
    assert not (tmp_path / "downloads").exists()


@pytest.mark.parametrize("refusal", [405, 501])  # 501 Not Implemented is final, not a 5xx to retry
def test_check_falls_back_to_get_when_head_is_refused(tmp_path, server, refusal):
    config = mirrored(tmp_path, server, artifacts=ARTIFACTS[:1])
    publish(server, config, size=5000)
    server.hook(K8S + "kubectl", ("status", refusal))
    [(art, status, size, problem)] = download.check_all(project(config))
    assert status == "200 OK" and size > 5000
    assert [m for m, _, _ in server.log] == ["HEAD", "GET"]


def test_mode_and_only_are_honoured(tmp_path, server):
    arts = [dict(a, sha256="") for a in ARTIFACTS]
    arts[7]["mode"] = "0644"
    config = mirrored(tmp_path, server, artifacts=arts)
    publish(server, config)
    outcome = fetch(config, only=["calico"], parallel=1)
    assert [a.name for a, _, _ in outcome.downloaded] == ["calico"]
    assert (tmp_path / "downloads" / "calico").stat().st_mode & 0o777 == 0o644
    assert sorted(os.listdir(tmp_path / "downloads")) == [download.CACHE, "calico"]


# --- what vouches for the bytes -------------------------------------------------


REFUSED = (
    "refused: no digest to check it against (none pinned, none in the lock file, no .sha256, SHA256SUMS, .sha512, "
    ".sha1 or .md5 published beside it); pin it with sha256: in download.artifacts, or accept it once with "
    "--trust-first-use"
)


def test_an_artifact_nothing_vouches_for_is_refused_until_trusted_on_first_use(tmp_path, server):
    config = mirrored(tmp_path, server, artifacts=[ARTIFACTS[0], ARTIFACTS[7]])
    contents = publish(server, config)
    server.files[K8S + "kubectl.sha1"] = hashlib.sha1(contents["kubectl"]).hexdigest().encode()
    folder, lockfile = tmp_path / "downloads", tmp_path / "downloads.lock"
    outcome = fetch(config, trust_first_use=False)
    assert failures(outcome) == {"calico": REFUSED}
    assert sorted(os.listdir(folder)) == [download.CACHE, "kubectl"]  # no calico, no .part, no .meta
    assert download.read_lock(lockfile) == {
        "kubectl": download.Locked(sha(contents["kubectl"]), artifacts(config)[0].upstream, len(contents["kubectl"]))
    }
    outcome = fetch(config, trust_first_use=True)
    assert [a.name for a, _, _ in outcome.downloaded] == ["calico"] and not outcome.failed
    lock = download.read_lock(lockfile)
    assert lock["calico"].trusted and not lock["kubectl"].trusted
    assert re.search(
        rf"^{sha(contents['calico'])}  calico .* {len(contents['calico'])}  trusted-on-first-use$",
        lockfile.read_text(),
        re.M,
    )
    # From now on the lock vouches: a re-run needs no flag, and a fetch again is checked against it.
    (folder / "calico").unlink()
    outcome = fetch(config, trust_first_use=False)
    assert [a.name for a, _, _ in outcome.downloaded] == ["calico"] and not outcome.failed
    assert download.read_lock(lockfile) == lock


def test_a_refusal_does_not_wait_for_the_whole_body(tmp_path):
    with FileServer(rate=500_000) as slow:  # 4 MB at 0.5 MB/s: 8 s for the whole body
        config = mirrored(tmp_path, slow, artifacts=[ARTIFACTS[0]])
        publish(slow, config, size=4_000_000)
        started = time.monotonic()
        outcome = fetch(config, trust_first_use=False)
        assert failures(outcome) == {"kubectl": REFUSED}
        assert time.monotonic() - started < 4
        assert slow.sent[K8S + "kubectl"] < 2_000_000
    assert not list((tmp_path / "downloads").glob("kubectl*"))


@pytest.mark.parametrize(
    "pinned, sent, ok",
    [
        (False, 10_000, False),  # cut, and nothing to tell: trusting it would keep a quarter of the file
        (False, None, False),  # whole, maybe: nothing can tell
        (True, None, True),  # whole: the pin says so
        (True, 10_000, False),  # cut: the pin says so
    ],
)
def test_a_body_without_content_length_is_accepted_only_by_a_digest(tmp_path, server, pinned, sent, ok):
    config = mirrored(tmp_path, server, artifacts=[ARTIFACTS[0]], retries=1)
    contents = publish(server, config)
    if pinned:
        config["download"]["artifacts"] = [dict(ARTIFACTS[0], sha256=sha(contents["kubectl"]))]
    server.hook(K8S + "kubectl", ("nolength", sent))
    outcome = fetch(config, trust_first_use=True)
    kubectl = tmp_path / "downloads" / "kubectl"
    assert kubectl.exists() == ok and sorted(os.listdir(kubectl.parent)) == [download.CACHE] * ok + ["kubectl"] * ok
    if ok:
        assert kubectl.read_bytes() == contents["kubectl"]
    elif pinned:
        assert failures(outcome)["kubectl"].startswith(f"sha256 {sha(contents['kubectl'][:10_000])} does not match")
    else:
        assert failures(outcome)["kubectl"] == (
            "refused: the server sent no Content-Length, so a cut body cannot be told from a whole one "
            "and nothing else vouches for it; pin it (sha256: in download.artifacts)"
        )


@pytest.mark.parametrize("validator", ["etag", "last-modified"])
def test_a_part_whose_file_changed_on_the_server_starts_over(tmp_path, validator):
    with FileServer(validator=validator) as server:
        config = mirrored(tmp_path, server, artifacts=[ARTIFACTS[0]], retries=1)
        contents = publish(server, config)
        server.hook(K8S + "kubectl", ("cut", 12_345))
        assert list(failures(fetch(config))) == ["kubectl"]
        part = download.part_path(artifacts(config)[0])
        recorded = download.read_validator(part)
        assert recorded and part.stat().st_size == 12_345
        rebuilt = contents["kubectl"][::-1]  # as long as the old one: a resume would splice the two
        server.files[K8S + "kubectl"] = rebuilt
        assert not fetch(config).failed
        assert (tmp_path / "downloads" / "kubectl").read_bytes() == rebuilt
        assert server.gets(K8S + "kubectl")[1][2] == "bytes=12345-"
        assert server.if_range(K8S + "kubectl") == [None, recorded]
        assert server.sent[K8S + "kubectl"] == 12_345 + len(rebuilt)  # the whole file again, after If-Range


def test_a_part_with_no_validator_recorded_starts_over(tmp_path):
    with FileServer(validator=None) as server:  # neither ETag nor Last-Modified
        config = mirrored(tmp_path, server, artifacts=[ARTIFACTS[0]], retries=2)
        contents = publish(server, config)
        server.hook(K8S + "kubectl", ("cut", 12_345))
        assert not fetch(config).failed
        assert [r for _, _, r in server.gets(K8S + "kubectl")] == [None, None]
        # A part from an older version of this program, with no .meta beside it: the same.
        art = artifacts(config)[0]
        art.path.unlink()
        download.part_path(art).write_bytes(contents["kubectl"][:5_000])
        assert not fetch(config).failed
        assert [r for _, _, r in server.gets(K8S + "kubectl")] == [None, None, None]
        assert art.path.read_bytes() == contents["kubectl"]


def test_a_long_listing_is_read_only_up_to_its_cap(tmp_path, server):
    config = mirrored(tmp_path, server, artifacts=[ARTIFACTS[0]])
    contents = publish(server, config)
    listing = tmp_path / "SHA256SUMS"  # 64 MB: the line of kubectl, then NUL bytes (a sparse file)
    with open(listing, "wb") as f:
        f.write(f"{sha(contents['kubectl'])}  kubectl\n".encode())
        f.truncate(64 << 20)
    server.files[K8S + "SHA256SUMS"] = listing
    assert not fetch(config, trust_first_use=False).failed
    assert not download.read_lock(tmp_path / "downloads.lock")["kubectl"].trusted
    assert server.sent[K8S + "SHA256SUMS"] < 32 << 20  # read no further than the cap (and what was in flight)


def test_a_content_length_other_than_the_locked_size_is_refused_at_once(tmp_path, server):
    config = mirrored(tmp_path, server, artifacts=[ARTIFACTS[0]])
    contents = publish(server, config)
    fetch(config)
    kubectl = tmp_path / "downloads" / "kubectl"
    kubectl.unlink()
    server.files[K8S + "kubectl"] = contents["kubectl"] * 2
    server.hook(K8S + "kubectl", ("stall", 1_000, 5))  # the body would take 5 s and more
    started = time.monotonic()
    outcome = fetch(config)
    assert failures(outcome) == {
        "kubectl": f"the server announces {2 * len(contents['kubectl'])} bytes, {len(contents['kubectl'])} "
        "recorded in downloads.lock (run with --update-lock to accept a new upstream)"
    }
    assert time.monotonic() - started < 2 and len(server.gets(K8S + "kubectl")) == 2  # no retry
    assert sorted(os.listdir(kubectl.parent)) == [download.CACHE]


def test_a_lock_of_the_earlier_format_still_verifies_and_gains_sizes(tmp_path, server):
    config = mirrored(tmp_path, server)
    contents = publish(server, config)
    fetch(config)
    lockfile = tmp_path / "downloads.lock"
    lock = download.read_lock(lockfile)
    lockfile.write_text("".join(f"{e.sha256}  {name}  {e.url}\n" for name, e in lock.items()))
    before = len(server.log)
    outcome = fetch(config, trust_first_use=False)
    assert len(outcome.present) == 10 and len(server.log) == before and outcome.lock_changed
    relocked = download.read_lock(lockfile)
    assert relocked["calico"] == download.Locked(lock["calico"].sha256, lock["calico"].url, len(contents["calico"]))


@pytest.fixture
def tls(tmp_path, monkeypatch):
    """A server-side TLS context for 127.0.0.1, its CA trusted by requests (REQUESTS_CA_BUNDLE)."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime.now(datetime.UTC)
    ca, ca_key = pki.make_ca(now)
    key = pki._new_key()
    cert = pki.issue(
        ca,
        ca_key,
        "127.0.0.1",
        key,
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    (tmp_path / "ca.crt").write_bytes(pki._cert_pem(ca))
    (tmp_path / "server.crt").write_bytes(pki._cert_pem(cert))
    (tmp_path / "server.key").write_bytes(pki._key_pem(key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "ca.crt"))
    return context


@pytest.mark.parametrize("allow_http", [False, True])
def test_a_redirect_from_https_to_plain_http_is_refused_unless_allowed(tmp_path, server, tls, allow_http):
    with FileServer(tls=tls) as secure:
        config = mirrored(tmp_path, secure, artifacts=[ARTIFACTS[0]], allow_http=allow_http)
        contents = publish(secure, config)
        secure.files[K8S + "kubectl.sha256"] = sha(contents["kubectl"]).encode()
        server.files["/objects/kubectl"] = secure.files.pop(K8S + "kubectl")
        secure.redirects[K8S + "kubectl"] = server.base + "/objects/kubectl"
        outcome = fetch(config, trust_first_use=False)
    kubectl = tmp_path / "downloads" / "kubectl"
    if allow_http:
        assert not outcome.failed and kubectl.read_bytes() == contents["kubectl"]
    else:
        assert failures(outcome) == {
            "kubectl": f"{secure.base}{K8S}kubectl redirects to plain http {server.base}/objects/kubectl: "
            "refused (download.allow_http is false)"
        }
        assert not server.log and not kubectl.exists()


def test_plain_http_urls_are_a_configuration_error_unless_allowed(tmp_path, server):
    config = mirrored(tmp_path, server, allow_http=False)
    done = run_inv(tmp_path, "download", config=config)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"invalid configuration: download.mirrors['https://storage.googleapis.com/'] = '{server.base}/': "
        "expected an https:// replacement URL prefix (plain http only with download.allow_http: true)"
    )
    arts = [dict(a, sha256="") for a in ARTIFACTS]
    arts[7]["url"] = "http://github.com/projectcalico/calico-cni/releases/download/{calico_cni}/calico"
    config = make_config(tmp_path, download={"artifacts": arts, "lock_file": str(tmp_path / "downloads.lock")})
    done = run_inv(tmp_path, "download", "--check", config=config)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"invalid configuration: download.artifacts[7].url = {arts[7]['url']!r}: "
        "expected an https:// URL (plain http only with download.allow_http: true)"
    )
    assert not server.log and not (tmp_path / "downloads").exists()


# --- the real `inv download` ----------------------------------------------------


def test_inv_download_then_offline_rerun(tmp_path, server):
    config = mirrored(tmp_path, server)
    publish(server, config)
    first = run_inv(tmp_path, "download", "--trust-first-use", config=config)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("note: download.allow_http is true") == 1  # said once, not once per file
    assert first.stdout.count("downloaded ") == 10
    assert re.search(r"^downloaded kube-apiserver: 40\.\d kB in \d+\.\d s \(.+/s\)$", first.stdout, re.M)
    assert "10 downloaded, 0 already present" in first.stdout
    server.__exit__()  # offline from here on
    again = run_inv(tmp_path, "download", config=config)
    assert again.returncode == 0, again.stderr
    assert "0 downloaded, 10 already present and verified" in again.stdout
    assert "downloads.lock unchanged" in again.stdout


def test_inv_download_on_a_terminal_shows_live_progress(tmp_path, server):
    """The real `inv` with its output on a pseudo-terminal, as a user sees it."""
    config = mirrored(tmp_path, server)
    publish(server, config)
    del server.files[K8S + "kubelet"]
    code, text = run_inv_on_terminal(tmp_path, "download", "--trust-first-use", config=config)
    assert code == 1
    assert re.search(r"total\s+━+ 360\.\d/360\.\d kB +[\d.]+ (bytes|[kMG]B)/s", text), text  # the total bar, with speed
    assert re.search(r"kube-apiserver\s+━+\s+40\.\d/40\.\d kB", text)
    assert f"FAILED kubelet {server.base}{K8S}kubelet: HTTP 404 Not Found" in text
    assert "download failed for 1 of 10 artifact(s): kubelet" in text
    assert "downloaded kubectl" not in text  # the bars say it; no plain lines on a terminal


def test_inv_download_failures_name_artifact_url_and_reason(tmp_path, server):
    config = mirrored(tmp_path, server)
    contents = publish(server, config)
    del server.files[K8S + "kube-proxy"]
    config["download"]["artifacts"][6]["sha256"] = "0" * 64
    result = run_inv(tmp_path, "download", "--trust-first-use", config=config)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("FAILED")]
    assert sorted(errors) == sorted(
        [
            f"FAILED kube-proxy {server.base}{K8S}kube-proxy: HTTP 404 Not Found",
            f"FAILED calicoctl {server.base}/projectcalico/calico-containers/releases/download/v0.15.0/calicoctl: "
            f"sha256 {sha(contents['calicoctl'])} does not match {'0' * 64} pinned in download.artifacts",
        ]
    )
    assert "download failed for 2 of 10 artifact(s): " in result.stderr
    assert result.stdout.count("downloaded ") == 8


def test_inv_download_check_exits_non_zero_when_something_is_missing(tmp_path, server):
    config = mirrored(tmp_path, server)
    publish(server, config, size=1000)
    del server.files[CNI + "calico"]
    result = run_inv(tmp_path, "download", "--check", config=config)
    assert result.returncode == 1
    assert f"kubectl\t{server.base}{K8S}kubectl\t200 OK\t" in result.stdout
    assert "calico (404 Not Found)" in result.stderr
    assert not (tmp_path / "downloads").exists()


def test_inv_download_refuses_what_nothing_vouches_for_and_says_how_to_accept_it(tmp_path, server):
    config = mirrored(tmp_path, server, artifacts=[dict(a, sha256="") for a in ARTIFACTS[6:8]])
    publish(server, config)
    done = run_inv(tmp_path, "download", config=config)
    assert done.returncode == 1
    assert f"FAILED calico {server.base}{CNI}calico: {REFUSED}" in done.stderr.splitlines()
    assert "download failed for 2 of 2 artifact(s): " in done.stderr
    assert not (tmp_path / "downloads.lock").exists()
    done = run_inv(tmp_path, "download", "--trust-first-use", config=config)
    assert done.returncode == 0, done.stderr
    lock = (tmp_path / "downloads.lock").read_text()
    assert lock.count("  trusted-on-first-use\n") == 2 and "# trusted-on-first-use: " in lock
    helped = run_inv(tmp_path, "--help", "download")
    assert helped.returncode == 0
    text = " ".join(helped.stdout.split())  # as wrapped to the terminal's width
    assert "--trust-first-use Accept an artifact that nothing vouches for" in text
    assert "marked trusted-on-first-use in the lock file" in text


def test_inv_download_check_flags_a_web_page_and_a_size_other_than_the_locked_one(tmp_path, server):
    config = mirrored(tmp_path, server, artifacts=[dict(a, sha256="") for a in ARTIFACTS[:3]])
    contents = publish(server, config)
    fetch(config)  # the lock now records each file's size
    server.types[K8S + "kubectl"] = "text/html; charset=utf-8"  # a login page where the binary was
    server.files[K8S + "kubelet"] = contents["kubelet"] + b"more"
    result = run_inv(tmp_path, "download", "--check", config=config)
    assert result.returncode == 1
    page = "a web page (text/html), not the file: a login or error page?"
    size = f"{len(contents['kubelet']) + 4} bytes, not the {len(contents['kubelet'])} recorded in downloads.lock"
    rows = [line.split("\t") for line in result.stdout.splitlines()[2:]]
    assert [(row[0], row[2], row[4]) for row in rows] == [
        ("kubectl", "200 OK", page),
        ("kubelet", "200 OK", size),
        ("kube-proxy", "200 OK", ""),
    ]
    assert result.stderr.strip().endswith(f"not the file, it seems: kubectl ({page}), kubelet ({size})")


def test_inv_download_rejects_bad_configuration_and_unknown_names(tmp_path):
    config = make_config(tmp_path, download=bad_artifact(3, mode="999"))
    result = run_inv(tmp_path, "download", config=config)
    assert result.returncode == 2
    assert "download.artifacts[3].mode = '999': expected an octal file mode like 0755" in result.stderr
    result = run_inv(tmp_path, "download", "--only", "kubctl", config=make_config(tmp_path))
    assert result.returncode == 2 and "--only = 'kubctl'" in result.stderr
    result = run_inv(tmp_path, "download", "--parallel", "-2", config=make_config(tmp_path))
    assert result.returncode == 2 and "--parallel = -2: expected a whole number of at least 1" in result.stderr
    assert not (tmp_path / "downloads").exists()


class Interrupt(download.Quiet):
    """A user pressing Ctrl-C once the first file is in place."""

    def finished(self, art, size, seconds):
        raise KeyboardInterrupt


def test_interrupted_download_records_what_was_verified(tmp_path, server):
    arts = [dict(a, sha256="") for a in ARTIFACTS[:3]]
    config = mirrored(tmp_path, server, artifacts=arts)
    publish(server, config)
    with pytest.raises(KeyboardInterrupt):
        fetch(config, parallel=1, progress=Interrupt)
    lock = download.read_lock(tmp_path / "downloads.lock")
    assert list(lock) == ["kubectl"]
    requests = len(server.log)
    outcome = fetch(config, parallel=1)
    assert [a.name for a in outcome.present] == ["kubectl"]
    assert sorted(a.name for a, _, _ in outcome.downloaded) == ["kube-proxy", "kubelet"]
    assert not [p for _, p, _ in server.log[requests:] if p.endswith("/kubectl")]


def test_a_downloads_path_that_cannot_be_a_folder_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    config = make_config(tmp_path)
    config["paths"]["downloads"] = str(blocker / "downloads")
    config["download"]["lock_file"] = str(tmp_path / "downloads.lock")
    done = run_inv(tmp_path, "download", "--only", "kubectl", config=config)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert str(blocker / "downloads") in lines[0] and "Not a directory" in lines[0], done.stderr

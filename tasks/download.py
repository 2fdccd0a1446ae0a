"""`inv download`: the seed's binaries, pinned, verified, cached, in parallel.

Replaces the seed's list of `wget` calls. Every artifact is configuration
(download.artifacts, URLs filled from `versions`, rewritten by
download.mirrors). Each is streamed to a `.part` file beside its final path
while its sha256 is computed, resumed with HTTP Range (and If-Range) after a
cut, checked against its pin, the lock file or the digest file published
beside it, and only then renamed into place. Nothing vouches for an artifact
with none of these: it is refused unless the user trusts it on first use. A
re-run whose files all match the lock makes no network request at all.

Planning (artifacts, URLs, lock file, what to fetch) is pure; `Fetcher` holds
every effect (HTTP sessions, the thread pool, files).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from invoke import task

from tasks import settings
from tasks.errors import ConfigError, StepError, exits
from tasks.files import LOCK, folder_lock, write_atomic
from tasks.settings import Artifact, Project, is_http

CHUNK = 256 * 1024
MIN_PIECE = 512 << 10  # a piece is split for another connection only when both halves keep this much
CHECKPOINT = 2.0  # seconds between records of the pieces still to fill (and whenever a connection stops)
BACKOFF = 0.5  # seconds before the second try; doubled before each later one
MAX_BACKOFF = 8.0
# Digest files release servers publish, in the order they are looked for (the first found is used):
# a suffix to the artifact's URL, or a listing in the same folder whose lines name the file.
DIGEST_FILES = (
    ("sha256", ".sha256"),
    ("sha256", "SHA256SUMS"),
    ("sha512", ".sha512"),
    ("sha1", ".sha1"),
    ("md5", ".md5"),
)
DIGEST_CAP = 64 * 1024  # bytes of a digest file read at most: a listing's first lines, never an endless body
# Size and times of each verified file with its sha256, so a re-run need not hash 200 MB again.
CACHE = ".verified.json"
TRUSTED = "trusted-on-first-use"  # the lock's mark of a digest that nothing vouched for but the first download
LOCK_HEADER = (
    "# sha256 of every artifact `inv download` fetched; commit this file.\n"
    f"# <sha256>  <name>  <upstream URL>  <size in bytes>  [{TRUSTED}]\n"
    f"# {TRUSTED}: no pin and no published digest vouched for the bytes when they were first fetched;\n"
    "# compare them with a source you trust, then pin them (sha256: in download.artifacts).\n"
)
HEX64 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class Locked:
    sha256: str
    url: str
    size: int | None = None  # None in lock files written before sizes were recorded
    trusted: bool = False  # trusted on first use: nothing but this entry vouches for the digest


@dataclass(frozen=True)
class Job:
    """One artifact to fetch and what its bytes must match."""

    art: Artifact
    want: str = ""  # the sha256 it must have; "" when a published digest must vouch (or the user)
    label: str = ""  # where `want` (and `size`) come from
    size: int | None = None  # the size the lock records with `want`
    trust_first_use: bool = False  # with nothing to check against, accept what the server sends
    trusted: bool = False  # `want` is a lock entry's that was trusted on first use


# --- planning (pure) -------------------------------------------------------


def select(every: list[Artifact], only) -> list[Artifact]:
    """The artifacts named in `only` (all when empty), in configured order."""
    names = {a.name for a in every}
    for name in only or ():
        if name not in names:
            raise ConfigError("--only", name, f"an artifact name: {', '.join(sorted(names))}")
    return [a for a in every if not only or a.name in only]


def parse_lock(text: str, where: str) -> dict[str, Locked]:
    """The entries of a lock file; lines of three fields (no size, no mark) are those of older lock files."""
    entries = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        size, mark = (fields[3:] + ["", ""])[:2]
        if not (
            3 <= len(fields) <= 5
            and HEX64.fullmatch(fields[0])
            and is_http(fields[2])
            and (size.isdigit() or len(fields) == 3)
            and mark in ("", TRUSTED)
        ):
            raise ConfigError(f"{where} line {number}", line, f"'<sha256>  <name>  <url>  <size>[  {TRUSTED}]'")
        entries[fields[1]] = Locked(fields[0].lower(), fields[2], int(size) if size else None, mark == TRUSTED)
    return entries


def format_lock(entries: dict[str, Locked]) -> str:
    width = max((len(n) for n in entries), default=0)
    url_width = max((len(e.url) for e in entries.values()), default=0)
    lines = []
    for name, e in sorted(entries.items()):
        extra = [str(e.size)] if e.size is not None else []
        extra += [TRUSTED] if e.trusted else []
        lines.append(f"{e.sha256}  {name:<{width}}  {e.url:<{url_width}}  {'  '.join(extra)}".rstrip() + "\n")
    return LOCK_HEADER + "".join(lines)


def wanted(
    art: Artifact, lock: dict[str, Locked], lock_name: str, update_lock: bool = False, trust_first_use: bool = False
) -> Job:
    """What the artifact's bytes must match: its pin, else its lock entry, else (want "") a published digest."""
    if art.sha256:
        return Job(art, art.sha256, "pinned in download.artifacts", trust_first_use=trust_first_use)
    entry = lock.get(art.name)
    if entry and entry.url == art.upstream and not update_lock:
        label = f"recorded in {lock_name} (run with --update-lock to accept a new upstream)"
        return Job(art, entry.sha256, label, entry.size, trust_first_use, entry.trusted)
    return Job(art, trust_first_use=trust_first_use)


def relocked(lock: dict[str, Locked], every: list[Artifact], found: dict[str, Locked]) -> dict[str, Locked]:
    """The lock with the entries found recorded and artifacts no longer configured dropped."""
    new = {a.name: found.get(a.name) or lock.get(a.name) for a in every}
    return {name: entry for name, entry in new.items() if entry}


def digest_urls(url: str) -> list[tuple[str, str, str | None]]:
    """(algorithm, URL, file name to look for in it, None for a file of one digest) of each digest file
    that may be published beside `url`."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return [
        (algo, url + where, None) if where.startswith(".") else (algo, urljoin(url, where), name)
        for algo, where in DIGEST_FILES
    ]


def parse_digest(body: bytes, algo: str, name: str | None = None) -> str | None:
    """The digest a digest file gives; None if it gives none.

    A file of one digest: the one it starts with (`HEX` or `HEX  name`). A listing (`name` given,
    SHA256SUMS): the line `HEX  name` or `HEX *name` of that file.
    """
    width = hashlib.new(algo).digest_size * 2
    if name is None:
        first = body.split(maxsplit=1)[:1]
        text = first[0].decode("ascii", "replace") if first else ""
        return text.lower() if re.fullmatch(f"[0-9a-fA-F]{{{width}}}", text) else None
    for line in body.decode("utf-8", "replace").splitlines():
        found = re.fullmatch(rf"([0-9a-fA-F]{{{width}}}) [ *](?:\./)?(.+)", line.strip())
        if found and found.group(2) == name:
            return found.group(1).lower()
    return None


def unvouched(job: Job, whole: bool) -> str | None:
    """Why bytes that no pin, lock entry or published digest vouches for are refused; None if accepted."""
    if not job.trust_first_use:
        where = ", ".join(w for _, w in DIGEST_FILES[:-1]) + f" or {DIGEST_FILES[-1][1]}"
        return (
            f"refused: no digest to check it against (none pinned, none in the lock file, no {where} published "
            "beside it); pin it with sha256: in download.artifacts, or accept it once with --trust-first-use"
        )
    if not whole:
        return (
            "refused: the server sent no Content-Length, so a cut body cannot be told from a whole one "
            "and nothing else vouches for it; pin it (sha256: in download.artifacts)"
        )
    return None


def human(size: int | None) -> str:
    if size is None:
        return "?"
    if size < 1000:
        return f"{size} bytes"
    value = float(size)
    for unit in ("kB", "MB"):
        value /= 1000
        if value < 1000:
            return f"{value:.1f} {unit}"
    return f"{value / 1000:.1f} GB"


# --- local files -------------------------------------------------------------


def _hash_into(path: Path, hashers: dict) -> int:
    count = 0
    with open(path, "rb") as f:
        while chunk := f.read(4 * CHUNK):
            for h in hashers.values():
                h.update(chunk)
            count += len(chunk)
    return count


def _stamp(st: os.stat_result) -> list[int]:
    # ctime cannot be set back by a program, so a changed file changes its stamp.
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def read_cache(folder: Path) -> dict:
    try:
        cache = json.loads((folder / CACHE).read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def local_sha256(art: Artifact, cache: dict) -> str | None:
    """The sha256 of the file already at art.path (mode fixed first), or None."""
    try:
        st = art.path.stat()
        if stat.S_IMODE(st.st_mode) != art.mode:
            os.chmod(art.path, art.mode)
            st = art.path.stat()
    except OSError:  # missing, unreadable, or not ours to chmod: fetch it again
        return None
    stamp = _stamp(st)
    known = cache.get(art.name)
    if isinstance(known, list) and known[:3] == stamp and len(known) == 4:
        return known[3]
    hashers = {"sha256": hashlib.sha256()}
    _hash_into(art.path, hashers)
    cache[art.name] = [*stamp, hashers["sha256"].hexdigest()]
    return cache[art.name][3]


def part_path(art: Artifact) -> Path:
    """The temporary name a download grows under; named after the URL so a resume never mixes versions."""
    tag = hashlib.sha256(art.url.encode()).hexdigest()[:8]
    return art.path.with_name(f"{art.name}.{tag}.part")


def strangers(project: Project) -> list[str]:
    """Files in the downloads folder that no run of `inv download` writes: the folder is someone else's."""
    folder = project.downloads_dir
    if not folder.is_dir():
        return []
    names = {a.name for a in project.download.artifacts} | set(read_cache(folder))
    parts = re.compile(r"(.+)\.[0-9a-f]{8}\.part(\.meta)?")

    def ours(name: str) -> bool:
        part = parts.fullmatch(name)
        # Parts of artifacts configured earlier are ours too: the next download removes them.
        return name in names or name in (CACHE, LOCK) or bool(part) or name.startswith(f".{CACHE}.")

    return sorted(p.name for p in folder.iterdir() if not ours(p.name))


def meta_path(part: Path) -> Path:
    """Beside a `.part`: the validator (ETag or Last-Modified) of the response it started from, as JSON."""
    return part.with_name(part.name + ".meta")


def read_validator(part: Path) -> str:
    """The If-Range value recorded when `part` started; "" if none was (then it cannot be resumed safely)."""
    try:
        value = json.loads(meta_path(part).read_text()).get("if_range")
    except (OSError, ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


def validator(headers) -> str:
    """What a later If-Range may send for this response: a strong ETag, else Last-Modified, else ""."""
    etag = headers.get("ETag", "")
    return etag if etag and not etag.startswith("W/") else headers.get("Last-Modified", "")


def discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    meta_path(part).unlink(missing_ok=True)


# --- effects: HTTP -------------------------------------------------------------


class Transient(Exception):
    """Worth another try: connection error, timeout, HTTP 5xx, a body cut short."""


class Failed(Exception):
    """Final for this artifact: HTTP 4xx, a digest that does not match, too many tries."""


class Refused(Failed):
    """Final, and the bytes fetched so far are not kept: nothing may vouch for them, or they are not the file."""


# Why a request got no answer from its host at all: the way to the host is the problem, not the file. Such a cause
# is said once for every artifact it stopped, with what to do (`offline`), not once per artifact.
DNS, REFUSED, NO_ROUTE, NO_ANSWER, TLS, PROXY = "DNS", "refused", "no route", "timeout", "TLS", "proxy"
TO_DO = {  # what to do, by cause; the others: a mirror or a proxy
    PROXY: "check the proxy that HTTPS_PROXY (or HTTP_PROXY) names, or unset it and use download.mirrors",
    TLS: "check the clock, and any proxy that inspects TLS (give its CA with REQUESTS_CA_BUNDLE); "
    "or map the host to a mirror in download.mirrors, or set a proxy with HTTPS_PROXY",
}
TO_DO_ELSE = "map the host to a mirror you can reach in download.mirrors, or set a proxy with HTTPS_PROXY"


def cause(error: BaseException, connect_timeout: float, timeout: float) -> tuple[str, str]:
    """(kind, words) of a failed request: kind DNS, REFUSED, NO_ROUTE, NO_ANSWER (connect timeout), TLS or PROXY
    when the host gave no answer at all; "" when it did (a read timeout, a body cut short) or when unknown."""
    import requests

    text = str(error)
    if isinstance(error, requests.exceptions.ProxyError):
        return PROXY, f"the proxy does not answer ({_errno(text)})"
    if isinstance(error, requests.exceptions.SSLError):
        return TLS, f"TLS failed: {_errno(text)}"
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return NO_ANSWER, f"no answer within {connect_timeout:g} s (a firewall dropping packets?)"
    if isinstance(error, requests.exceptions.Timeout):
        return "", f"connected, but no answer within {timeout:g} s"
    for words, kind, meaning in (
        (
            (
                "Name or service not known",
                "Temporary failure in name resolution",
                "No address associated with hostname",
                "nodename nor servname",
                "getaddrinfo",
                "Failed to resolve",
            ),
            DNS,
            "DNS: the name does not resolve",
        ),
        (("Connection refused",), REFUSED, "connection refused"),
        (("Network is unreachable", "No route to host"), NO_ROUTE, "no route to the host"),
    ):
        if any(word in text for word in words):
            return kind, meaning
    return "", _errno(text)


def _errno(text: str) -> str:
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    return found.group(1).strip() if found else text.splitlines()[0][:160] if text else "failed"


class Unreachable(Transient):
    """No answer from the host (`cause`): tried again, until the host is given up (`HostDown`)."""

    def __init__(self, kind: str, host: str, words: str):
        super().__init__(words)
        self.kind, self.host, self.words = kind, host, words


class HostDown(Failed):
    """Final: the host gave no answer, to this request's tries or to download.retries requests in a row."""

    def __init__(self, kind: str, host: str, words: str, note: str = ""):
        super().__init__(words + note)
        self.kind, self.host, self.words = kind, host, words


def offline(down: dict[str, HostDown]) -> str:
    """One line for the artifacts (name -> why) whose host gave no answer: each cause with its hosts, what to do."""
    hosts: dict[tuple[str, str], list[str]] = {}
    for err in down.values():
        found = hosts.setdefault((err.kind, err.words), [])
        if err.host not in found:
            found.append(err.host)
    causes = "; ".join(f"{words} ({', '.join(sorted(names))})" for (_, words), names in hosts.items())
    kinds = {kind for kind, _ in hosts}
    todo = TO_DO[kinds.pop()] if len(kinds) == 1 and kinds & TO_DO.keys() else TO_DO_ELSE
    return f"{len(down)} got no answer from their host: {causes}; {todo}; then `inv download --check`"


def _classify(err, connect_timeout: float, timeout: int, host: str = "") -> Exception:
    """A requests or urllib3 exception as a one-line Transient (Unreachable when the host gave no answer) or Failed."""
    import requests
    from urllib3.exceptions import ProtocolError, ReadTimeoutError

    if isinstance(err, ReadTimeoutError) or (err.args and isinstance(err.args[0], ReadTimeoutError)):
        return Transient(f"timed out: no data for {timeout} s")
    if isinstance(err, requests.Timeout) and not isinstance(err, requests.exceptions.ConnectTimeout):
        return Transient(f"timed out: no data for {timeout} s")
    if isinstance(err, (requests.exceptions.ChunkedEncodingError, ProtocolError)):
        return Transient("connection broken in the middle of the body")
    kind, reason = cause(err, connect_timeout, timeout)
    if kind:
        request = getattr(err, "request", None)
        return Unreachable(kind, urlsplit(request.url).netloc if request is not None else host, reason)
    if isinstance(err, requests.ConnectionError):
        return Transient(f"connection failed: {reason}")
    return Failed(f"{type(err).__name__}: {reason}")


@dataclass
class Outcome:
    downloaded: list = field(default_factory=list)  # (Artifact, size, seconds)
    present: list = field(default_factory=list)  # Artifact
    failed: list = field(default_factory=list)  # (Artifact, reason)
    unreachable: dict = field(default_factory=dict)  # name -> HostDown, for those failed because no host answered
    lock: Path = Path(".")
    lock_changed: bool = False


class Quiet:
    """Progress sink that shows nothing; `Lines` and `Bars` show it."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def started(self, art: Artifact, total: int | None, done: int) -> None:
        pass

    def advanced(self, art: Artifact, count: int) -> None:
        pass

    def finished(self, art: Artifact, size: int, seconds: float) -> None:
        pass

    def failed(self, art: Artifact, reason: str) -> None:
        pass

    def retrying(self, art: Artifact, reason: str, tried: int, tries: int) -> None:
        """A try of `art` failed for `reason`; the next one starts after a pause."""

    def unreachable(self, art: Artifact, reason: str) -> None:
        """`art` failed because its host gave no answer: said once for all such artifacts, at the end."""


class Lines(Quiet):
    """One line per finished artifact on stdout, one per failed one on stderr: for logs and pipes."""

    def finished(self, art, size, seconds):
        speed = size / seconds if seconds > 0 else 0
        print(f"downloaded {art.name}: {human(size)} in {seconds:.1f} s ({human(int(speed))}/s)", flush=True)

    def failed(self, art, reason):
        print(f"FAILED {art.name} {art.url}: {reason}", file=sys.stderr, flush=True)


class Bars(Lines):
    """A live display on a terminal: a bar per file and one for the total, with speed and ETA."""

    def __enter__(self):
        from tasks import ui

        self.progress = ui.transfer_bars()
        self.total = self.progress.add_task("total", total=0)
        self.rows: dict[str, int] = {}
        self.sizes: dict[str, int] = {}
        self.lock = threading.Lock()
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()
        return False

    def started(self, art, total, done):
        with self.lock:
            if art.name not in self.rows:
                self.rows[art.name] = self.progress.add_task(art.name, total=total)
            self.progress.update(self.rows[art.name], total=total, completed=done, description=art.name)
            self.sizes[art.name] = total or 0
            self.progress.update(
                self.total,
                total=sum(self.sizes.values()),
                completed=sum(t.completed for t in self.progress.tasks if t.id != self.total),
            )

    def advanced(self, art, count):
        self.progress.advance(self.rows[art.name], count)
        self.progress.advance(self.total, count)

    def finished(self, art, size, seconds):
        pass  # the bar says it

    def _state(self, art, state: str) -> None:
        with self.lock:
            if art.name not in self.rows:
                self.rows[art.name] = self.progress.add_task(art.name, total=None)
            self.progress.update(self.rows[art.name], description=f"{art.name} ({state})")

    def retrying(self, art, reason, tried, tries):
        self._state(art, f"{reason}; try {tried + 1} of {tries} soon")

    def unreachable(self, art, reason):
        self._state(art, f"failed: {reason}")


@dataclass
class Piece:
    """Bytes [start, end) of a file, those before `pos` written; `end` is None while the size is unknown."""

    start: int
    pos: int
    end: int | None
    busy: bool = False  # a connection is filling it

    @property
    def done(self) -> bool:
        return self.end is not None and self.pos >= self.end


def split(pieces: list[Piece], least: int | None) -> Piece | None:
    """Work for a free connection, marked busy: a piece nobody fills, else the second half of the busy piece with
    the most bytes left, when both halves keep `least` bytes (None: never split). Appends a new piece to `pieces`."""
    found = next((p for p in pieces if not p.busy and not p.done), None)
    if found is None and least is not None:
        widest = max((p for p in pieces if p.end is not None), key=lambda p: (p.end or 0) - p.pos, default=None)
        if widest is not None and widest.end is not None and widest.end - widest.pos >= 2 * least:
            middle = widest.pos + (widest.end - widest.pos) // 2
            found = Piece(middle, middle, widest.end)
            widest.end = middle  # its connection stops there
            pieces.append(found)
    if found is not None:
        found.busy = True
    return found


def read_state(part: Path) -> tuple[str, int | None, list[Piece]]:
    """What a `.part` holds, from its `.meta`: (validator, size, the pieces still to fill); ("", None, []) when it
    cannot be resumed. A `.meta` of a single stream (no pieces recorded) has the part's length done."""
    try:
        meta = json.loads(meta_path(part).read_text())
        have = part.stat().st_size
    except (OSError, ValueError):
        return "", None, []
    if not isinstance(meta, dict) or not isinstance(meta.get("if_range"), str) or not meta["if_range"]:
        return "", None, []
    size = meta.get("size")
    todo = meta.get("todo", [[have, None]])
    try:
        pieces = [Piece(int(pos), int(pos), None if end is None else int(end)) for pos, end in todo]
    except (TypeError, ValueError):
        return "", None, []
    return meta["if_range"], size if isinstance(size, int) else None, pieces


class Body:
    """A `.part` filled at the offsets of its pieces, by one connection or several, and what is known of the file.

    The pieces still to fill are recorded beside it (`.meta`) every CHECKPOINT seconds and whenever a connection
    stops, after the bytes they follow are on disk, so any later run resumes each piece where it was.
    """

    def __init__(
        self, art: Artifact, part: Path, url: str, validator: str, size: int | None, pieces: list[Piece], ranges: bool
    ):
        self.art, self.part, self.url, self.validator, self.size, self.pieces = art, part, url, validator, size, pieces
        self.ranges = ranges and bool(validator) and size is not None  # pieces may be fetched apart
        self.error: Exception | None = None  # what stopped it: every connection of it stops
        self.lock = threading.Condition()
        self.saving = threading.Lock()
        self.saved = time.monotonic()
        self.check = lambda: None  # called after each chunk: raises to stop the body (see Fetcher._download)
        fresh = pieces == [Piece(0, 0, size)]
        self.fd = os.open(part, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if fresh else 0), 0o644)

    def take(self) -> Piece | None:
        """A piece for one more connection, or None."""
        with self.lock:
            return None if self.error else split(self.pieces, MIN_PIECE if self.ranges else None)

    def left(self) -> int:
        with self.lock:
            return sum(p.end - p.pos for p in self.pieces if p.end is not None)

    def spare(self) -> bool:
        """Whether one more connection may have work here."""
        with self.lock:
            idle = any(not p.busy and not p.done for p in self.pieces)
            return not self.error and (
                idle or (self.ranges and any(p.end is not None and p.end - p.pos >= 2 * MIN_PIECE for p in self.pieces))
            )

    def write(self, piece: Piece, chunk: bytes) -> int:
        """Write what of `chunk` belongs to `piece`; returns that many bytes."""
        with self.lock:
            # Another connection takes a tail of at least MIN_PIECE > CHUNK: a write outside the lock never reaches it.
            count = len(chunk) if piece.end is None else min(len(chunk), piece.end - piece.pos)
            at = piece.pos
        view = memoryview(chunk)[:count]
        while view:
            written = os.pwrite(self.fd, view, at)
            view, at = view[written:], at + written
        with self.lock:
            piece.pos += count
        if time.monotonic() - self.saved > CHECKPOINT:
            self.checkpoint()
        return count

    def ended(self, piece: Piece, error: Exception | None = None) -> None:
        """A connection stopped filling `piece`; with `error`, the whole body stops."""
        with self.lock:
            piece.busy = False
            if piece.end is None and error is None:
                piece.end = self.size = piece.pos  # no Content-Length: the file ends where the body did
            if error is not None and self.error is None:
                self.error = error
            self.lock.notify_all()

    def restart(self, piece: Piece, headers) -> bool:
        """The server sent the whole file (changed, or Range ignored): start over, if `piece` is all of it."""
        with self.lock:
            if len(self.pieces) != 1 or piece.start != 0:
                return False
            length = headers.get("Content-Length", "")
            piece.pos, piece.end = 0, int(length) if length.isdigit() else None
            self.size, self.validator = piece.end, validator(headers)
        os.ftruncate(self.fd, 0)
        return True

    def wait(self) -> None:
        """Until no connection fills any piece."""
        with self.lock:
            while any(p.busy for p in self.pieces):
                self.lock.wait()

    def complete(self) -> bool:
        with self.lock:
            return all(p.done for p in self.pieces)

    def checkpoint(self) -> None:
        """Record the pieces still to fill, once the bytes written so far are on disk (one thread at a time)."""
        if not self.saving.acquire(blocking=False):
            return
        try:
            with self.lock:
                todo = [[p.pos, p.end] for p in self.pieces if not p.done]
            os.fdatasync(self.fd)
            meta = {"if_range": self.validator, "size": self.size, "todo": todo}
            write_atomic(meta_path(self.part), json.dumps(meta).encode())
            self.saved = time.monotonic()
        finally:
            self.saving.release()

    def close(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)


class Slots:
    """The bound on connections at once: a file's first request waits for one; a file's extra connections take a
    free one only when no file waits to start."""

    def __init__(self, count: int):
        self.free, self.waiting = count, 0
        self.lock = threading.Condition()

    def take(self, stop: threading.Event) -> None:
        with self.lock:
            self.waiting += 1
            while not self.free and not stop.is_set():
                self.lock.wait(0.1)
            self.waiting -= 1
            self.free -= 1

    def spare(self) -> bool:
        with self.lock:
            if not self.free or self.waiting:
                return False
            self.free -= 1
            return True

    def wanted(self) -> bool:
        return self.waiting > 0

    def give(self) -> None:
        with self.lock:
            self.free += 1
            self.lock.notify()


class Fetcher:
    """HTTP for many artifacts: a session per worker thread (connections reused), tries with backoff."""

    def __init__(
        self,
        timeout: int,
        tries: int,
        parallel: int,
        report: Quiet,
        backoff: float = BACKOFF,
        allow_http: bool = False,
        connections: int = 1,
        connect_timeout: float = 5,
    ):
        self.timeout, self.tries, self.parallel, self.report, self.backoff = (timeout, tries, parallel, report, backoff)
        self.connect_timeout = connect_timeout
        # Hosts that gave no answer: requests in a row without one, and those given up for this run (download.retries
        # such requests, whichever artifacts they were for: one cause, found in seconds, said once).
        self._misses: dict[str, int] = {}
        self._down: dict[str, HostDown] = {}
        self.allow_http = allow_http
        # Bodies' connections at once; each file being downloaded holds one (digest look-ups are apart).
        self.connections = max(connections, parallel)
        self.slots = Slots(self.connections)
        self.bodies: list[Body] = []  # those being downloaded, whose pieces free connections may take
        self._lookups: dict = {}  # artifact URL -> Future of its published digest
        self.stop = threading.Event()
        self._local = threading.local()
        self._sessions: list = []
        self._guard = threading.Lock()
        self._digest_files: dict = {}  # URL of a digest file -> Future of its body

    def __enter__(self):
        from concurrent.futures import ThreadPoolExecutor

        # Digest-file look-ups run beside the downloads: they are latency, not bandwidth.
        self.lookups = ThreadPoolExecutor(max_workers=self.connections, thread_name_prefix="digest")
        self.helpers = ThreadPoolExecutor(max_workers=self.connections, thread_name_prefix="piece")
        return self

    def __exit__(self, *exc):
        self.stop.set()  # (when an error left the run early)
        self.helpers.shutdown(wait=True)
        self.lookups.shutdown(wait=True, cancel_futures=True)
        for session in self._sessions:
            session.close()
        return False

    def session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = requests.Session()
            # Identity: the bytes as published, so Range offsets and digests refer to the file itself.
            session.headers.update({"Accept-Encoding": "identity", "User-Agent": "inv-download/1"})
            session.hooks["response"].append(self._no_redirect_to_http)
            self._local.session = session
            with self._guard:
                self._sessions.append(session)
        return session

    def _no_redirect_to_http(self, response, *args, **kwargs):
        """Called on every response, before a redirect is followed: one to plain http is refused."""
        if self.allow_http or not response.is_redirect:
            return response
        target = urljoin(response.url, response.headers["Location"])
        if urlsplit(target).scheme == "http":
            response.close()
            raise Failed(f"{response.url} redirects to plain http {target}: refused (download.allow_http is false)")
        return response

    def request(self, url: str, method: str = "GET", headers: dict | None = None):
        """A streamed response, redirects followed; HTTP 5xx (but 501) raises Transient, no answer Unreachable, and a
        host given up HostDown at once."""
        import requests

        host = urlsplit(url).netloc
        with self._guard:
            down = self._down.get(host)
        if down is not None:
            raise HostDown(down.kind, down.host, down.words)
        try:
            response = self.session().request(
                method,
                url,
                headers=headers,
                stream=True,
                allow_redirects=True,
                timeout=(self.connect_timeout, self.timeout),
            )
        except requests.RequestException as err:
            problem = _classify(err, self.connect_timeout, self.timeout, host)
            if isinstance(problem, Unreachable):
                with self._guard:
                    self._misses[problem.host] = self._misses.get(problem.host, 0) + 1
                    if self._misses[problem.host] >= self.tries:
                        self._down.setdefault(problem.host, HostDown(problem.kind, problem.host, problem.words))
            raise problem from None
        with self._guard:
            self._misses.pop(urlsplit(response.url).netloc, None)  # it answers
        if response.status_code >= 500 and response.status_code != 501:  # 501: method not implemented, for good
            response.close()
            raise Transient(f"HTTP {response.status_code} {response.reason}")
        return response

    def attempts(self, step, *args, art: Artifact | None = None):
        """`step(*args)`, tried again after a Transient problem, up to download.retries tries; `art`: the artifact
        whose progress shows the tries."""
        import requests
        import urllib3

        for n in itertools.count(1):
            try:
                return step(*args)
            except (requests.RequestException, urllib3.exceptions.HTTPError) as err:
                problem = _classify(err, self.connect_timeout, self.timeout)
            except Transient as err:
                problem = err
            if isinstance(problem, Failed):
                raise problem
            if n >= self.tries or self.stop.is_set():
                note = f" (tried {n} times)" if n > 1 else ""
                if isinstance(problem, Unreachable):
                    raise HostDown(problem.kind, problem.host, problem.words, note)
                raise Failed(f"{problem}{note}")
            if art is not None:
                self.report.retrying(art, str(problem), n, self.tries)
            time.sleep(min(self.backoff * 2 ** (n - 1), MAX_BACKOFF))

    def run(self, step, items):
        """`step(item)` for every item on a pool of download.parallel threads; yields (item, result or Failed)."""
        from concurrent.futures import ThreadPoolExecutor, as_completed

        with ThreadPoolExecutor(
            max_workers=max(1, min(self.parallel, len(items))), thread_name_prefix="download"
        ) as pool:
            futures = {pool.submit(self._guarded, step, item): item for item in items}
            try:
                for future in as_completed(futures):
                    yield futures[future], future.result()
            except BaseException:
                self.stop.set()
                for future in futures:
                    future.cancel()
                raise

    @staticmethod
    def _guarded(step, item):
        try:
            return step(item)
        except Failed as err:
            return err
        except OSError as err:  # disk full, permissions: this artifact fails, the others go on
            return Failed(f"{type(err).__name__}: {err}")

    # -- one artifact --------------------------------------------------------

    def look_up(self, url: str):
        """The Future of the digest published beside `url`: (algorithm, digest, its URL) from the first file of
        DIGEST_FILES found, None if none is. All are asked for at once: they are latency, not bandwidth."""
        from concurrent.futures import Future

        with self._guard:
            if url in self._lookups:
                return self._lookups[url]
            found = self._lookups[url] = Future()
        asked = [(algo, where, name, self._digest_file_once(where)) for algo, where, name in digest_urls(url)]
        lock = threading.Lock()

        def settle(_) -> None:
            with lock:
                for algo, where, name, future in asked:
                    if found.done() or not future.done():
                        return  # decided, or a file earlier in the order decides first
                    if future.cancelled() or future.exception() is not None:  # (the run was interrupted)
                        found.set_exception(future.exception() if not future.cancelled() else Failed("interrupted"))
                        return
                    digest = parse_digest(future.result(), algo, name) if future.result() is not None else None
                    if digest:
                        found.set_result((algo, digest, where))
                        return
                found.set_result(None)

        for *_, future in asked:
            future.add_done_callback(settle)
        return found

    def _digest_file_once(self, url: str):
        """The Future of a digest file's body (`_digest_file`): each is asked for once a run, so a listing that
        several artifacts share (SHA256SUMS in their folder) is fetched once."""
        with self._guard:
            if url not in self._digest_files:
                self._digest_files[url] = self.lookups.submit(self.attempts, self._digest_file, url)
            return self._digest_files[url]

    def _digest_file(self, url: str) -> bytes | None:
        """The first DIGEST_CAP bytes of a digest file (whole lines), None if it is not published."""
        with self.request(url) as response:
            body = b""
            for chunk in response.iter_content(8192):
                body += chunk
                if len(body) > DIGEST_CAP:  # a long listing, or no digest file at all: its first lines only
                    body = body[:DIGEST_CAP].rpartition(b"\n")[0]
                    break
            # Read (when short) to the end, so the connection goes back to the pool.
            return None if response.status_code >= 400 else body

    def fetch(self, job: Job) -> tuple[Locked, float, list[int]]:
        """Download one artifact into place; returns (its lock entry, seconds, stamp) or raises Failed."""
        art = job.art
        started = time.monotonic()
        lookup = None if job.want else self.look_up(art.url)
        part = part_path(art)
        for stale in art.path.parent.glob(f"{art.name}.*.part*"):
            if stale.name.startswith(part.name):
                continue
            if re.fullmatch(re.escape(art.name) + r"\.[0-9a-f]{8}\.part(\.meta)?", stale.name):
                stale.unlink()  # a download of another URL (version, mirror) left behind
        try:
            whole = self._download(job, part, lookup)
            published = lookup.result() if lookup else None
        except Refused:
            discard(part)
            raise
        # Hashed once, after: reading back from the page cache costs less than hashing every digest the
        # look-up might need while it runs (measured: benchmarks/download.py).
        hashers = {algo: hashlib.new(algo) for algo in {"sha256", published[0] if published else "sha256"}}
        size = _hash_into(part, hashers)
        sha256 = hashers["sha256"].hexdigest()
        problem = None
        if job.want and sha256 != job.want:
            problem = f"sha256 {sha256} does not match {job.want} {job.label}"
        elif published and hashers[published[0]].hexdigest() != published[1]:
            algo, digest, where = published
            problem = f"{algo} {hashers[algo].hexdigest()} does not match {digest} published at {where}"
        elif not job.want and not published:
            problem = unvouched(job, whole)
        if problem:
            discard(part)
            raise Failed(problem)
        os.chmod(part, art.mode)
        os.replace(part, art.path)
        meta_path(part).unlink(missing_ok=True)
        entry = Locked(sha256, art.upstream, size, trusted=job.trusted if job.want else not published)
        return entry, time.monotonic() - started, _stamp(art.path.stat())

    def _download(self, job: Job, part: Path, lookup) -> bool:
        """Fill `part` with the artifact, over as many connections as are free and its size is worth; returns
        whether the end of the file was certain (a Content-Length or chunked encoding: a close-delimited body
        cut short looks whole)."""
        self.slots.take(self.stop)
        held = True
        try:
            if self.stop.is_set():
                raise Failed("interrupted")
            body, piece, response, whole = self.attempts(self._open, job, part, art=job.art)

            def vouched() -> None:
                """Refuse at once, without reading on, when the look-up ended with nothing to vouch."""
                if lookup is not None and lookup.done() and not job.trust_first_use and lookup.result() is None:
                    raise Refused(unvouched(job, whole))  # (lookup.result() raises a failed look-up's error)

            body.check = vouched
            self.report.started(job.art, body.size, (body.size or 0) - body.left())
            with self._guard:
                self.bodies.append(body)
            try:
                self._offer()
                self._fill(body, piece, response)
                while (piece := body.take()) is not None:
                    self._fill(body, piece)
            finally:
                self.slots.give()  # to a file waiting to start, else to the pieces of others
                held = False
                self._offer()
                body.wait()
                with self._guard:
                    self.bodies.remove(body)
                if not body.complete() and not isinstance(body.error, Refused):
                    body.checkpoint()  # what the next try or run resumes
                body.close()
            if body.error:
                raise body.error
            return whole
        finally:
            if held:
                self.slots.give()

    def _open(self, job: Job, part: Path) -> tuple[Body, Piece, Any, bool]:
        """The first request of a try: the rest of what `part` holds (Range, If-Range) if the server's file is
        still the one it was started from, else the whole file. Returns the body, the piece the response fills,
        the response and whether the end of the file is certain."""
        art = job.art
        resumed, size, todo = read_state(part) if part.exists() else ("", None, [])
        if part.exists() and not todo:
            discard(part)  # nothing tells whether the server's file is still the one it was started from
        resume = bool(todo) and (todo[0].pos > 0 or len(todo) > 1)
        headers = {"Range": f"bytes={todo[0].pos}-", "If-Range": resumed} if resume else None
        response = self.request(art.url, headers=headers)
        try:
            if response.status_code == 416:  # the part is longer than the file: start again
                discard(part)
                raise Transient("HTTP 416 for a partial download; starting again")
            if response.status_code >= 400:
                raise Failed(f"HTTP {response.status_code} {response.reason}")
            length = response.headers.get("Content-Length", "")
            whole = length.isdigit() or "chunked" in response.headers.get("Transfer-Encoding", "").lower()
            span = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", ""))
            if resume and span and int(span[1]) == todo[0].pos and size in (None, int(span[2])):
                size = int(span[2])
                pieces = [Piece(p.start, p.pos, size if p.end is None else p.end) for p in todo]
            else:  # the whole file: a new download, a file changed since (If-Range), or a server ignoring Range
                resumed, size = validator(response.headers), int(length) if length.isdigit() else None
                pieces = [Piece(0, 0, size)]
            if job.size is not None and size is not None and size != job.size:
                raise Refused(f"the server announces {size} bytes, {job.size} {job.label}")
            ranges = bool(span) or response.headers.get("Accept-Ranges", "").lower() == "bytes"
            body = Body(art, part, response.url, resumed, size, pieces, ranges)
            if pieces[0].pos == 0:
                body.checkpoint()  # the validator, before any byte: a later resume asks If-Range with it
            pieces[0].busy = True
            return body, pieces[0], response, whole
        except BaseException:
            response.close()
            raise

    def _offer(self) -> None:
        """Free connections go to the files being downloaded that can use one more."""
        with self._guard:
            wanted = any(body.spare() for body in self.bodies)
        while wanted and self.slots.spare():
            self.helpers.submit(self._help)

    def _help(self) -> None:
        """One more connection: pieces of whichever file has the most left, until none is worth it or a file is
        waiting to start (a start goes first: its latency then overlaps the others' transfers)."""
        try:
            while not self.stop.is_set() and not self.slots.wanted():
                with self._guard:
                    bodies = sorted(self.bodies, key=Body.left, reverse=True)
                found = next(((body, piece) for body in bodies if (piece := body.take()) is not None), None)
                if found is None:
                    return
                self._fill(*found)
        finally:
            self.slots.give()

    def _fill(self, body: Body, piece: Piece, response=None) -> None:
        """Fill `piece` to its end, asking for the rest after a cut (tries with backoff); whatever stops it for
        good stops the whole body."""
        pending = [(response, body.size)] if response is not None else []

        def once():
            answer, until = pending.pop() if pending else self._rest(body, piece)
            with answer:
                self._pump(body, piece, answer, until)

        error = None
        try:
            self.attempts(once, art=body.art)
        except Failed as err:
            error = err
        except Exception as err:  # disk full, permissions: this artifact fails, the others go on
            error = Failed(f"{type(err).__name__}: {err}")
        finally:
            for leftover, _ in pending:
                leftover.close()
            body.ended(piece, error)

    def _rest(self, body: Body, piece: Piece) -> tuple[Any, int | None]:
        """A response for the rest of `piece` (Range, If-Range) from the artifact's redirect target, resolved
        once; and the offset it ends at. A target that no longer answers (a signed URL expired) is resolved again."""
        if body.error:
            raise Failed("stopped")
        if not body.validator:  # a resume could splice two versions: the whole file again (one piece only)
            headers, until = None, body.size
        else:
            to_end = piece.end in (None, body.size)
            until = body.size if to_end else piece.end
            headers = {
                "Range": f"bytes={piece.pos}-{'' if to_end or until is None else until - 1}",
                "If-Range": body.validator,
            }
        response = self.request(body.url, headers=headers)
        if response.status_code >= 400 and body.url != body.art.url:
            response.close()
            response = self.request(body.art.url, headers=headers)
            body.url = response.url
        if response.status_code >= 400:
            response.close()
            raise Failed(f"HTTP {response.status_code} {response.reason}")
        span = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", ""))
        if span and int(span[1]) == piece.pos and int(span[2]) == body.size:
            return response, until
        if response.status_code == 200 and body.restart(piece, response.headers):
            self.report.started(body.art, body.size, 0)
            return response, body.size
        response.close()
        raise Refused("the file changed on the server during the download (If-Range): run `inv download` again")

    def _pump(self, body: Body, piece: Piece, response, until: int | None) -> None:
        """Write the response's bytes into `piece` until it ends (the piece, or the body: then it was cut)."""
        # read1 hands over whatever has arrived, so a cut loses no byte already received.
        read1 = getattr(response.raw, "read1", None)
        chunks = iter(lambda: read1(CHUNK, decode_content=False), b"") if read1 else response.iter_content(CHUNK)
        for chunk in chunks:
            if self.stop.is_set():
                raise Failed("interrupted")
            if body.error:
                raise Failed("stopped")
            self.report.advanced(body.art, body.write(piece, chunk))
            body.check()
            if piece.done and piece.end != until:
                return  # another connection has the rest: this one is closed before its end
        if not piece.done and piece.end is not None:
            raise Transient(f"body cut short at {piece.pos} of {body.size} bytes")

    def probe(self, art: Artifact) -> tuple[str, int | None, str]:
        """(status, size, content type) of art.url without downloading it: HEAD, or a GET closed at once."""

        def ask():
            with self.request(art.url, method="HEAD") as response:
                if response.status_code not in (403, 405, 501):
                    _ = response.content  # nothing to read; releases the connection for reuse
                    return response
            # Some servers (signed redirect targets) refuse HEAD: the headers of a GET say the same.
            with self.request(art.url) as response:
                return response

        try:
            response = self.attempts(ask)
        except Failed as err:
            return f"error: {err}", None, ""
        length = response.headers.get("Content-Length", "")
        size = int(length) if length.isdigit() else None
        return f"{response.status_code} {response.reason}", size, response.headers.get("Content-Type", "")


def suspicious(art: Artifact, size: int | None, content_type: str, lock: dict[str, Locked], lock_name: str) -> str:
    """Why an answer (2xx) is obviously not the artifact, or ""."""
    if content_type.split(";")[0].strip().lower() == "text/html":
        return "a web page (text/html), not the file: a login or error page?"
    entry = lock.get(art.name)
    if entry and entry.url == art.upstream and None not in (entry.size, size) and size != entry.size:
        return f"{size} bytes, not the {entry.size} recorded in {lock_name}"
    return ""


# --- the steps -------------------------------------------------------------


def read_lock(path: Path) -> dict[str, Locked]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    return parse_lock(text, path.name)


def fetch_all(
    project: Project,
    *,
    only=(),
    update_lock: bool = False,
    trust_first_use: bool = False,
    parallel: int = 0,
    progress=Quiet,
    backoff: float = BACKOFF,
) -> Outcome:
    """Bring the downloads folder up to date with download.artifacts; ConfigError for an unknown `only` name.

    `progress()` makes the progress display, only if something is to be downloaded.
    """
    every = list(project.download.artifacts)
    chosen = select(every, only)
    lockfile = project.download.lock_file
    lock = read_lock(lockfile)
    folder = project.downloads_dir
    recorded = read_cache(folder)
    cache = dict(recorded)
    outcome = Outcome(lock=lockfile)
    found: dict[str, Locked] = {}
    jobs = []
    for art in chosen:
        job = wanted(art, lock, lockfile.name, update_lock, trust_first_use)
        if job.want and local_sha256(art, cache) == job.want:
            outcome.present.append(art)
            found[art.name] = Locked(job.want, art.upstream, cache[art.name][0], job.trusted)
        else:
            jobs.append(job)
    try:
        if jobs:  # only now: a complete folder never opens a connection
            folder.mkdir(parents=True, exist_ok=True)
            dl = project.download
            report = progress()
            with (
                report,
                Fetcher(
                    dl.timeout,
                    dl.retries,
                    parallel or dl.parallel,
                    report,
                    backoff,
                    dl.allow_http,
                    dl.connections,
                    dl.connect_timeout,
                ) as fetcher,
            ):
                for job in jobs:  # digest files first: a file nothing vouches for is refused before much of it comes
                    if not job.want:
                        fetcher.look_up(job.art.url)
                for job, result in fetcher.run(fetcher.fetch, jobs):
                    art = job.art
                    if isinstance(result, Failed):
                        outcome.failed.append((art, str(result)))
                        if isinstance(result, HostDown):
                            outcome.unreachable[art.name] = result
                            report.unreachable(art, str(result))
                        else:
                            report.failed(art, str(result))
                        continue
                    entry, seconds, stamp = result
                    found[art.name] = entry
                    cache[art.name] = [*stamp, entry.sha256]
                    outcome.downloaded.append((art, entry.size, seconds))
                    report.finished(art, entry.size, seconds)
    finally:
        # Also after Ctrl-C: what was verified and put in place is recorded, not fetched again.
        new = relocked(lock, every, found)
        if new != lock and (new or lockfile.exists()):
            outcome.lock_changed = write_atomic(lockfile, format_lock(new).encode())
        # Files of artifacts no longer configured stay recorded while they exist: they are still ours.
        kept = {name: entry for name, entry in cache.items() if (folder / name).is_file()}
        if kept != recorded and folder.is_dir():
            write_atomic(folder / CACHE, json.dumps(kept, indent=1).encode())
    return outcome


def check_all(project: Project, *, only=(), parallel: int = 0) -> list[tuple[Artifact, str, int | None, str]]:
    """(artifact, HTTP status or error, size, why it is obviously not the file or "") for each URL, through
    mirrors; downloads nothing."""
    chosen = select(list(project.download.artifacts), only)
    dl = project.download
    lock = read_lock(dl.lock_file)
    fetcher = Fetcher(dl.timeout, dl.retries, parallel or dl.parallel, Quiet(), allow_http=dl.allow_http)
    fetcher.connect_timeout = dl.connect_timeout
    with fetcher:
        found = dict(fetcher.run(fetcher.probe, chosen))
    rows = []
    for art in chosen:
        status, size, content_type = found[art]
        problem = suspicious(art, size, content_type, lock, dl.lock_file.name) if status[:1] == "2" else ""
        rows.append((art, status, size, problem))
    return rows


@task(
    iterable=["only"],
    help={
        "check": "Only ask each URL (through download.mirrors) whether it exists, its size, and whether it looks "
        "like the file (not a web page, the size the lock file records); download nothing.",
        "update-lock": "Download again and record what upstream serves now in the lock file (pins still apply; "
        "an artifact with no published digest also needs --trust-first-use).",
        "trust-first-use": "Accept an artifact that nothing vouches for (no pin, no lock entry, no digest file "
        f"published beside it) as the server sends it, marked {TRUSTED} in the lock file.",
        "parallel": "Simultaneous downloads (default: download.parallel).",
        "only": "Only this artifact (by name); repeat for several.",
    },
)
@exits
def download(c, check=False, update_lock=False, trust_first_use=False, parallel=0, only=None):
    """Download the cluster's binaries into paths.downloads, verified against pins, the lock file or published digests.

    Replaces the seed's wget list: parallel, resumable, through download.mirrors,
    sha256 recorded in download.lock_file. An artifact that no pin, lock entry
    or digest file published beside it vouches for is refused, unless
    --trust-first-use. A re-run with every file in place and matching the lock
    makes no network request.
    """
    from tasks import ui

    project = settings.load(c)
    if parallel < 0:
        raise ConfigError("--parallel", parallel, "a whole number of at least 1 (0: download.parallel)")
    if project.download.allow_http:
        ui.note_once("download.allow_http is true: plain http URLs and redirects to them are accepted")
    if check:
        return _report_check(check_all(project, only=only, parallel=parallel))
    select(list(project.download.artifacts), only)  # an unknown name: before the folder is even made
    foreign = strangers(project)
    if foreign:
        raise StepError(
            f"paths.downloads {project.downloads_dir} holds files `inv download` did not write "
            f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}): choose a new or empty folder"
        )
    with folder_lock(project.downloads_dir, "download"):
        outcome = fetch_all(
            project,
            only=only,
            update_lock=update_lock,
            trust_first_use=trust_first_use,
            parallel=parallel,
            progress=lambda: Bars() if ui.on_terminal() else Lines(),
        )
    lock_note = f"{outcome.lock.name} updated" if outcome.lock_changed else f"{outcome.lock.name} unchanged"
    ui.say(
        f"{len(outcome.downloaded)} downloaded, {len(outcome.present)} already present and verified "
        f"in {project.downloads_dir}; {lock_note}."
    )
    if outcome.failed:
        total = len(outcome.failed) + len(outcome.downloaded) + len(outcome.present)
        # Those whose host gave no answer are said once, by cause, with what to do; the others were named above.
        others = [art.name for art, _ in outcome.failed if art.name not in outcome.unreachable]
        parts = [", ".join(others)] if others else []
        parts += [offline(outcome.unreachable)] if outcome.unreachable else []
        raise StepError(f"download failed for {len(outcome.failed)} of {total} artifact(s): {'; '.join(parts)}")


def _report_check(rows) -> None:
    from tasks import ui

    ui.table(
        "Artifacts (through download.mirrors)",
        ("artifact", "url", "status", "size", "problem"),
        [(art.name, art.url, status, human(size), problem) for art, status, size, problem in rows],
    )
    missing = [f"{art.name} ({status})" for art, status, _, _ in rows if not status[:1] == "2"]
    odd = [f"{art.name} ({problem})" for art, _, _, problem in rows if problem]
    lines = ([f"not available: {', '.join(missing)}"] if missing else []) + (
        [f"not the file, it seems: {', '.join(odd)}"] if odd else []
    )
    if lines:
        raise StepError("; ".join(lines))


TASKS = (download,)

"""`inv copy`: binaries, certificates, manifests and each node's configuration onto every node.

Replaces the seed's NFS synced folder, its key.sh (a CA made on every node)
and its file provisioners. On all nodes in parallel, what the node's role
needs (stack data: an artifact's `roles`, the stack's `pki_files` and
`files`): for the seed, the downloaded binaries (/opt/bin, /opt/cni/bin), the
PKI to /srv/kubernetes (keys 0600), the addon manifests to the master's home;
for the current stack, its units, containerd and kernel settings, the CA on
the master. The node's configuration (the seed's cloud-config, the current
stack's kubeadm configuration) goes LAST to cluster.user_data_path, so that
what it starts finds its binaries and certificates; then
cluster.activate_command, if set, bounded by ACTIVATE_TIMEOUT. Files other
roles get that an earlier copy left on a node (a worker's server.key) are
removed. The stack's `before_copy` runs on the master first.

Before any node is touched, every downloaded file is checked against its pin
or the lock file: a binary changed since `inv download` is refused.

A node's new files travel as one tar stream over OpenSSH's ssh (host keys
checked as the tasks' connections check them), which root's tar writes at
temporary names beside their targets, 0600 root; without an ssh program they
go over SFTP to a folder in the user's home and root copies them beside their
targets. Root then gives each its mode and owner and renames it over its
target: when the disk fills or the connection drops, the old file is still
there, whole, with its mode. Temporary names start with `.inv-copy-`; they are
removed on success, on failure and on Ctrl-C, and what an interrupted run left
is removed by the next one.

A file whose remote sha256, mode and owner already match is skipped: a re-run
uploads nothing. Root's record of the installed files' sums (and of the last
activation that succeeded) lives in STATE_DIR, a folder only root can write;
a damaged record is ignored and every file hashed again. When anything else on
a node changed, or the last activation did not succeed, its configuration is
installed and activated again, so units restart onto the new files.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import shlex
import threading
from dataclasses import dataclass, field
from pathlib import Path

from invoke import task

from tasks import settings
from tasks.errors import StepError, exits
from tasks.nodes import Failure, NodesFailed, describe, where
from tasks.settings import Artifact, Cluster, Project
from tasks.ui import last_line

PKI_DEST = "/srv/kubernetes"
HOME = "~"  # the SSH user's home, resolved per node over SFTP
# Root's record: each installed file's sha256 with its size, inode and change time (so a re-run need
# not hash unchanged files again on the node), and the last activation that succeeded.
STATE_DIR = "/var/lib/inv"  # 0700 root
STATE = f"{STATE_DIR}/copy.sums"
# Every temporary name on a node starts so: upload folders in the home, files beside their targets
# before the rename, the record before its rename.
TEMP = ".inv-copy-"
OLD_STATE = (".inv-copy.sums", ".inv-copy.sums.tmp")  # where the record was kept before: the home
ACTIVATE_TIMEOUT = 600  # seconds cluster.activate_command may run on a node
REQUEST_SIZE = 255 * 1024  # SFTP write requests: OpenSSH's limit is 256 KiB per message
SUM_LINE = re.compile(r"sum\|[0-9a-f]{64}\|\d+\|\d+\|[^|]+\|/.*")
ACTIVATED_LINE = re.compile(r"activated\|[0-9a-f]{64}\|[0-9a-f]{64}")
HASH_LINE = re.compile(r"([0-9a-f]{64})  (/.*)")


class Interrupted(Exception):
    """Ctrl-C in the task: a node's copy stops at the next chunk and removes its temporary files."""

    def __str__(self) -> str:
        return "interrupted"


@dataclass(frozen=True)
class Item:
    """One thing a node gets: a file from `source`, or a directory when source is None."""

    target: str
    mode: int
    source: Path | None = None
    owner: str = "root"  # "user": the SSH user (files in its home)
    sha256: str = ""  # of source, when already known (downloads, checked against pin or lock)

    @property
    def is_dir(self) -> bool:
        return self.source is None

    @property
    def file(self) -> Path:
        """The local file of a file item."""
        if self.source is None:
            raise ValueError(f"{self.target} is a directory")
        return self.source


@dataclass
class Report:
    """What happened on one node."""

    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # files of other roles, from an earlier copy
    error: str = ""


@dataclass
class Remote:
    """What the check found on a node: the targets, the record's activations, leftover temporary files."""

    files: dict[str, dict] = field(default_factory=dict)  # target -> mode, owner, kind, identity, sha256
    activated: set[str] = field(default_factory=set)
    leftovers: list[str] = field(default_factory=list)


def pki_names(project: Project, role: str) -> list[str]:
    """The PKI files a role gets, in pki.NODE_FILES order; StepError if the stack lists one that stays home."""
    from tasks import pki

    listed = project.stack.pki_files.get(role, ())
    home_only = [name for name in listed if name not in pki.NODE_FILES]
    if home_only:
        raise StepError(
            f"stack {project.stack.name}: pki_files of role {role} lists {', '.join(home_only)}: "
            f"only {', '.join(pki.NODE_FILES)} leave the host"
        )
    return [name for name in pki.NODE_FILES if name in listed]


def verified(project: Project, artifacts: list[Artifact]) -> dict[str, str]:
    """Each downloaded artifact's sha256, checked against its pin or the lock file before anything is sent.

    Hashes are cached as `inv download` caches them (size and times), so
    unchanged files are not read again. Raises StepError with a line per
    artifact that differs from its pin or lock entry, or that neither vouches for.
    """
    import json

    from tasks import download
    from tasks.files import write_atomic

    lockfile = project.download.lock_file
    lock = download.read_lock(lockfile)
    folder = project.downloads_dir
    recorded = download.read_cache(folder)
    cache = dict(recorded)
    found: dict[str, str] = {}
    problems, unvouched = [], []
    for art in artifacts:
        want = download.wanted(art, lock, lockfile.name).want
        if not want:
            unvouched.append(art.name)
            continue
        have = download.local_sha256(art, cache)
        if have is not None and have == want:
            found[art.name] = have
            continue
        source = "its pin in download.artifacts" if art.sha256 else f"its entry in {lockfile}"
        problems.append(
            f"downloaded file {art.path} cannot be read: run `inv download` again"
            if have is None
            else f"downloaded file {art.path} has sha256 {have}, not {want} as {source} says: "
            f"it changed after download; run `inv download` to fetch it again"
        )
    if unvouched:
        problems.append(
            f"{', '.join(unvouched)}: neither a sha256 pin in download.artifacts nor an entry in {lockfile}: "
            f"run `inv download` first"
        )
    if cache != recorded and folder.is_dir():
        with contextlib.suppress(OSError):  # a cache that cannot be written only costs hashing again
            write_atomic(folder / download.CACHE, json.dumps(cache, indent=1).encode())
    if problems:
        raise StepError("\n".join(problems))
    return found


def stack_files(project: Project) -> list[tuple[tuple[str, ...], Item]]:
    """The stack's rendered files with the roles that get them: its `files`, then one hosts.toml per mirror.

    A secret (a key, a kubeconfig) goes to the master only and is 0600:
    StepError for a stack file that says otherwise.
    """
    stack, out = project.stack, project.output_dir
    every = tuple(stack.node_templates)
    found = []
    for entry in stack.files:
        source, mode = entry["source"], int(entry.get("mode", "0644"), 8)
        roles = tuple(entry.get("roles") or every)
        secret = source.endswith((".key", ".conf")) and source.startswith("pki/")
        if secret and (roles != ("master",) or mode != 0o600):
            raise StepError(f"stack {stack.name}: files: {source} is a secret: send it to the master only, mode 0600")
        found.append((roles, Item(entry["dest"], mode, out / source, owner=entry.get("owner", "root"))))
    for registry in project.cluster.mirrors if stack.mirror_template else ():
        name = f"{registry}/hosts.toml"
        found.append((every, Item(f"{stack.mirror_dest}/{name}", 0o644, out / "containerd-certs.d" / name)))
    return found


def manifest_items(project: Project) -> list[Item]:
    """Exactly the manifests `inv addons` will apply, into the master's home: files, and kustomize folders."""
    out = project.output_dir / "manifests"
    items = []
    for name in project.addons.manifests:
        path = out / name
        if path.is_dir():
            items += [Item(f"{HOME}/{name}/{f.name}", 0o644, f, owner="user") for f in sorted(path.iterdir())]
        else:
            items.append(Item(f"{HOME}/{name}", 0o644, path, owner="user"))
    return items


def home_folders(items: list[Item]) -> list[Item]:
    """The folders below the home that files go to (~/.kube), made first and owned by the user."""
    folders = {posixpath.dirname(i.target) for i in items if i.target.startswith(HOME + "/")} - {HOME}
    return [Item(folder, 0o700, owner="user") for folder in sorted(folders)]


def plan(project: Project) -> dict[str, list[Item]]:
    """Node name -> what it gets, in order; the node's configuration is always last.

    Each node gets the artifacts, PKI and stack files of its role only.
    Raises StepError, before any node is touched, when a rendered or
    downloaded file is missing or a downloaded one does not match its pin or
    lock entry.
    """
    from tasks import render

    cluster, out = project.cluster, project.output_dir
    roles = list(dict.fromkeys(n.role for n in cluster.nodes))
    pki_files = {role: pki_names(project, role) for role in roles}
    extra = [(r, i) for r, i in stack_files(project) if set(r) & set(roles)]
    rendered = [out / render.user_data_name(n.name) for n in cluster.nodes]
    rendered += [out / render.PKI_DIR / name for name in dict.fromkeys(n for r in roles for n in pki_files[r])]
    rendered += [item.file for _, item in extra]
    rendered += [out / "manifests" / name for name in project.addons.manifests]
    for path in rendered:
        if not path.exists():
            raise StepError(f"{path} is missing: run `inv render` first")
    manifests = manifest_items(project)
    sent = [a for a in project.download.artifacts if set(a.roles) & set(roles)]
    for art in sent:
        if not art.path.is_file():
            raise StepError(f"downloaded file {art.path} is missing: run `inv download` first")
    sums = verified(project, sent)
    result = {}
    for node in cluster.nodes:
        items = [
            Item(a.target, a.mode, a.path, owner=a.owner, sha256=sums[a.name]) for a in sent if node.role in a.roles
        ]
        items += [Item(folder, 0o755) for folder in project.stack.folders]
        items += [
            Item(f"{PKI_DEST}/{name}", 0o600 if name.endswith(".key") else 0o644, out / render.PKI_DIR / name)
            for name in pki_files[node.role]
        ]
        items += [item for r, item in extra if node.role in r]
        if node.is_master:
            items += manifests
        items = home_folders(items) + items
        items.append(Item(cluster.user_data_path, project.stack.user_data_mode, out / render.user_data_name(node.name)))
        result[node.name] = items
    return result


def unused(wanted: dict[str, list[Item]]) -> dict[str, list[str]]:
    """Node name -> the files other roles get and its own does not (a worker's kube-apiserver, server.key).

    An earlier `inv copy` may have put them there; they go. Only root's files
    outside the home: the user's own files are none of our business.
    """

    def sent(items: list[Item]) -> set[str]:
        return {i.target for i in items if not i.is_dir and i.owner == "root"}

    every = set().union(*(sent(items) for items in wanted.values())) if wanted else set()
    return {name: sorted(every - sent(items)) for name, items in wanted.items()}


def digests(items) -> dict[Path, str]:
    """sha256 of every source file, each read once, in parallel (hashlib releases the GIL); known ones not again."""
    from concurrent.futures import ThreadPoolExecutor

    from tasks.files import sha256

    known = {i.source: i.sha256 for i in items if i.source is not None and i.sha256}
    sources = sorted({i.source for i in items if i.source is not None} - known.keys())
    with ThreadPoolExecutor(max_workers=4) as pool:
        return known | dict(zip(sources, pool.map(sha256, sources), strict=True))


def _sudo(script: str) -> str:
    return "sudo -n sh -c " + shlex.quote(script)


def _folders(targets) -> list[str]:
    return sorted({posixpath.dirname(t) for t in targets})


def check_command(targets: list[str], places: list[str], home: str) -> str:
    """ONE remote command: mode, owner, type and identity of every target and of the record (and its
    folder), the record itself, and the temporary files an earlier run left in `places` and `home`."""
    quoted = " ".join(shlex.quote(t) for t in [*targets, STATE_DIR, STATE])
    left = [f"{shlex.quote(p)}/{TEMP}*" for p in places] + [shlex.quote(f"{home}/{name}") for name in OLD_STATE]
    return _sudo(
        f"stat -c 'stat|%a|%U|%F|%s|%i|%z|%n' -- {quoted} 2>/dev/null; "
        f"[ -L {shlex.quote(STATE)} ] || sed 's/^/record|/' -- {shlex.quote(STATE)} 2>/dev/null; "
        f'for f in {" ".join(left)}; do if [ -e "$f" ] || [ -L "$f" ]; then echo "left|$f"; fi; done; true'
    )


def hash_command(targets: list[str]) -> str:
    """ONE sha256sum over every file the record does not vouch for."""
    return _sudo("sha256sum -- " + " ".join(shlex.quote(t) for t in targets) + " 2>/dev/null; true")


def parse_check(text: str) -> Remote:
    """Output of check_command -> what is on the node.

    A recorded sum counts only while the file's size, inode and change time
    (`%z`: to the nanosecond, in every coreutils) are those recorded: any
    write, chmod or chown changes the change time, and no one can set it back.
    The record counts only when it is a root-owned file in a 0700 root folder
    and every line of it reads well: otherwise every file is hashed again.
    """
    remote = Remote()
    recorded, activated, damaged = [], set(), False
    for line in text.splitlines():
        kind, _, rest = line.partition("|")
        if kind == "stat":
            fields = rest.split("|", 6)
            if len(fields) == 7:
                mode, owner, what, size, inode, ctime, target = fields
                remote.files.setdefault(target, {}).update(
                    mode=int(mode, 8), owner=owner, kind=what, identity=(size, inode, ctime)
                )
        elif kind == "left":
            remote.leftovers.append(rest)
        elif kind == "record":
            if SUM_LINE.fullmatch(rest):
                _, digest, size, inode, ctime, target = rest.split("|", 5)
                recorded.append((target, digest, (size, inode, ctime)))
            elif ACTIVATED_LINE.fullmatch(rest):
                activated.add(rest)
            else:
                damaged = True
    folder, record = remote.files.pop(STATE_DIR, {}), remote.files.pop(STATE, {})
    trusted = (folder.get("kind"), folder.get("mode"), folder.get("owner")) == ("directory", 0o700, "root") and (
        record.get("kind"),
        record.get("owner"),
    ) == ("regular file", "root")
    if damaged or not trusted:
        return remote
    remote.activated = activated
    for target, digest, identity in recorded:
        if target in remote.files and remote.files[target].get("identity") == identity:
            remote.files[target]["sha256"] = digest
    return remote


def parse_hashes(text: str) -> dict[str, str]:
    """Output of hash_command -> {target: sha256}."""
    return {m[2]: m[1] for line in text.splitlines() if (m := HASH_LINE.fullmatch(line))}


def unhashed(items: list[Item], remote: dict[str, dict]) -> list[str]:
    """Existing remote files whose sha256 is not known yet."""
    return [
        i.target
        for i in items
        if not i.is_dir and remote.get(i.target, {}).get("kind") == "regular file" and "sha256" not in remote[i.target]
    ]


def activation(activate: str, user_data_sum: str) -> str:
    """The record's line for a successful activation of this command on this cloud-config."""
    import hashlib

    return f"activated|{hashlib.sha256(activate.encode()).hexdigest()}|{user_data_sum}" if activate else ""


def state_lines(items: list[Item], sums: dict[Path, str], token: str, marker: str = "") -> list[str]:
    """Root's commands recording each file's sum with its size, inode and change time (and `marker`).

    The folder is made (again) a 0700 root directory, never through a
    symlink; the record is written under a temporary name in it and renamed
    over the old one (a rename replaces a symlink, never follows it).
    """
    folder, tmp = shlex.quote(STATE_DIR), shlex.quote(f"{STATE_DIR}/{TEMP}{token}-record")
    lines = [
        f"if [ -L {folder} ] || {{ [ -e {folder} ] && [ ! -d {folder} ]; }}; then rm -f -- {folder}; fi",
        f"install -d -m 0700 -o root -g root {folder}",
        f"(set -C; : > {tmp})",
    ]
    lines += [
        f"stat -c {shlex.quote('sum|' + sums[i.file] + '|%s|%i|%z|%n')} -- {shlex.quote(i.target)} >> {tmp}"
        for i in items
        if not i.is_dir
    ]
    if marker:
        lines.append(f"echo {shlex.quote(marker)} >> {tmp}")
    return lines + [f"mv -fT {tmp} {shlex.quote(STATE)}"]


def marker_lines(token: str, marker: str) -> list[str]:
    """Root's commands adding `marker` to the record just written, through a temporary name and a rename."""
    tmp = shlex.quote(f"{STATE_DIR}/{TEMP}{token}-activated")
    return [
        f"(set -C; cat -- {shlex.quote(STATE)} > {tmp})",
        f"echo {shlex.quote(marker)} >> {tmp}",
        f"mv -fT {tmp} {shlex.quote(STATE)}",
    ]


def needed(
    items: list[Item], remote: dict[str, dict], sums: dict[Path, str], user: str, activated: bool = True
) -> list[Item]:
    """The items whose remote copy is missing or differs in content, mode or owner.

    The cloud-config (last) also when anything before it is, or when its last
    activation did not succeed.
    """

    def current(item: Item) -> bool:
        have = remote.get(item.target, {})
        owner = user if item.owner == "user" else item.owner
        if have.get("mode") != item.mode or have.get("owner") != owner:
            return False
        if item.is_dir:
            return have.get("kind") == "directory"
        return have.get("sha256") == sums[item.file]

    stale = [i for i in items[:-1] if not current(i)]
    last = items[-1]
    if stale or not current(last) or not activated:
        stale.append(last)
    return stale


def install_script(
    items: list[Item],
    tmp: str,
    token: str,
    user: str,
    activate: str,
    record: list[str],
    marker: str = "",
    streamed: bool = False,
) -> str:
    """Root's shell script putting uploaded files in place, in order; prints `done|TARGET` after each.

    Each file is copied from the upload folder `tmp` to `.inv-copy-TOKEN-N`
    beside its target (`streamed`: it is there already, root's), given its
    mode and owner, and renamed over the target. Whatever way the script
    ends, its temporary files and `tmp` go. The record is written before the
    activation, the activation's line only after it succeeded.
    """
    temps = [f"{shlex.quote(p)}/{TEMP}{token}-*" for p in _folders([*(i.target for i in items if not i.is_dir), STATE])]
    lines = [
        "set -e",
        f"cleanup() {{ rm -rf -- {shlex.quote(tmp)} {' '.join(temps)}; }}",
        "trap cleanup EXIT",
        "trap 'exit 129' HUP",
        "trap 'exit 130' INT",
        "trap 'exit 143' TERM",
    ]
    for index, item in enumerate(items):
        target = shlex.quote(item.target)
        owner = (
            f'-o {shlex.quote(user)} -g "$(id -g {shlex.quote(user)})"' if item.owner == "user" else "-o root -g root"
        )
        temporary = shlex.quote(beside(item.target, token, index))
        if item.is_dir:
            lines.append(f"install -d -m {item.mode:04o} {owner} {target}")
        elif streamed:
            who = f'{shlex.quote(user)}:"$(id -g {shlex.quote(user)})"' if item.owner == "user" else "root:root"
            lines.append(f"chown {who} {temporary} && chmod {item.mode:04o} {temporary}")
            lines.append(f"mv -fT {temporary} {target}")
        else:
            lines.append(f"install -D -T -m {item.mode:04o} {owner} {shlex.quote(f'{tmp}/{index}')} {temporary}")
            lines.append(f"mv -fT {temporary} {target}")
        lines.append(f"echo {shlex.quote('done|' + item.target)}")
    lines += [f"rm -rf -- {shlex.quote(tmp)}", *record]
    if activate:
        # Its output goes to stderr: stdout is the `done|` protocol. 124 (137 after KILL) is timeout's.
        lines += [
            f"if timeout -k 10 {ACTIVATE_TIMEOUT} sh -c {shlex.quote(activate)} >&2; then :; else s=$?; "
            "if [ $s -eq 124 ] || [ $s -eq 137 ]; then echo 'timeout|activate'; fi; exit $s; fi",
            *marker_lines(token, marker),
            "echo 'done|activate'",
        ]
    return "\n".join(lines) + "\n"


class StreamFailed(OSError):
    """`ssh ... tar -x` ended badly: `lost` when ssh itself failed (exit 255: the connection), else the tar's error."""

    def __init__(self, message: str, lost: bool, at: int):
        super().__init__(message)
        self.lost, self.at = lost, at


def chunks(source: Path, advance=None, stop: threading.Event | None = None):
    """The bytes of `source` in large pieces, each counted by `advance` once the caller has sent it.

    Raises Interrupted, between two pieces, once `stop` is set.
    """
    with open(source, "rb") as local:
        while data := local.read(REQUEST_SIZE * 4):
            if stop is not None and stop.is_set():
                raise Interrupted()
            yield data
            if advance:
                advance(len(data))


def beside(target: str, token: str, index: int) -> str:
    """The temporary name item `index` has beside its target until root renames it over the target."""
    return f"{posixpath.dirname(target)}/{TEMP}{token}-{index}"


def open_stream(ssh: list[str]):
    """OpenSSH's ssh running root's `tar -x` at / on the node, reading an archive from its stdin (`stream`).

    Started before the node is checked, so that its connection is made meanwhile.
    """
    import subprocess

    # AES-GCM first, as for the tasks' own connections: with AES instructions it costs less CPU than
    # OpenSSH's default ChaCha20-Poly1305, and the bulk of a copy is encryption.
    ciphers = ["-o", "Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com"]
    return subprocess.Popen(
        [ssh[0], *ciphers, *ssh[1:], "sudo -n tar -x -f - -C /"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def end_stream(proc) -> None:
    """An `open_stream` nothing was sent on (nothing changed, or the copy stopped first): stopped at once.

    Not a byte of an archive reached its tar, which therefore writes nothing.
    """
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pipe in (proc.stdin, proc.stderr):
        try:
            pipe.close()
        except OSError:
            pass


def stream(proc, sources: list[tuple[str, Path]], advance=None, stop=None) -> None:
    """Send each (node path, file) as ONE tar archive into `proc` (open_stream), which root's `tar -x` writes at
    those paths, 0600 root: the bytes are never in a file another user can write, and never copied again on the
    node. ssh is a process of its own: the encryption of several nodes' streams runs on several CPUs.

    Raises Interrupted once `stop` is set, StreamFailed when ssh or tar fails.
    """
    import tarfile

    assert proc.stdin is not None and proc.stderr is not None
    at = -1
    try:
        for position, (where, source) in enumerate(sources):
            at = position  # the file being sent when ssh or tar fails
            size = source.stat().st_size
            header = tarfile.TarInfo(where.lstrip("/"))
            header.size, header.mode, header.uname, header.gname = size, 0o600, "root", "root"
            proc.stdin.write(header.tobuf(format=tarfile.GNU_FORMAT))
            for data in chunks(source, advance, stop):
                proc.stdin.write(data)
            proc.stdin.write(b"\0" * (-size % 512))
        proc.stdin.write(b"\0" * 1024)  # the end of the archive
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the far end stopped reading: its exit status and message say why
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if not proc.stdin.closed:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
    message = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        # tar goes on after a file it cannot write: the first such file is the one to name.
        first = next((line.strip() for line in message.splitlines() if TEMP in line), last_line(message))
        raise StreamFailed(first, proc.returncode == 255, max(at, 0))


def upload(sftp, source: Path, remote: str, advance=None, stop: threading.Event | None = None) -> None:
    """Write `source` to `remote` in pipelined 255 KiB requests, then check the size.

    paramiko's `put` sends 32 KiB requests; OpenSSH's sftp-server takes up to
    256 KiB, which makes the copy to several nodes about 1.5 times faster.
    Raises Interrupted, between two chunks, once `stop` is set.
    """
    with sftp.open(remote, "wb") as out:
        out.set_pipelined(True)
        out.MAX_REQUEST_SIZE = REQUEST_SIZE
        for data in chunks(source, advance, stop):
            out.write(data)
    size, sent = source.stat().st_size, sftp.stat(remote).st_size
    if sent != size:
        raise OSError(f"{remote}: {sent} of {size} bytes arrived")


def copy_to(
    conn,
    items: list[Item],
    sums,
    activate: str,
    dry: bool = False,
    bars=None,
    name: str = "",
    stop: threading.Event | None = None,
    extra: list[str] | None = None,
    force: bool = False,
    ssh: list[str] | None = None,
) -> Report:
    """Bring one node up to date over one SSH connection (and, for the bytes, OpenSSH's ssh or SFTP).

    `sums` is a Future of the local files' sha256s (computed while connecting);
    `bars`, on a terminal, shows the bytes sent to node `name`. Once `stop` is
    set (Ctrl-C), the copy removes its temporary files and raises Interrupted.
    Those of the files `extra` that are there are removed (see `unused`).
    `force`: every file is sent and the activation runs, changed or not. `ssh`: OpenSSH's ssh to the node
    (Nodes.ssh), which carries the files' bytes when there is one; else they go over SFTP.
    The report names files as planned (~/ for the home).
    """
    proc = open_stream(ssh) if ssh and not dry else None  # connects while the node is checked
    try:
        return _copy_to(conn, items, sums, activate, dry, bars, name, stop, extra, force, proc)
    finally:
        if proc is not None:
            end_stream(proc)


def _copy_to(conn, items, sums, activate, dry, bars, name, stop, extra, force, proc) -> Report:
    """copy_to's work, with `proc` the node's `open_stream` (None: the bytes go over SFTP)."""
    import secrets

    stop = stop or threading.Event()

    def go_on() -> None:
        if stop.is_set():
            raise Interrupted()

    sftp = conn.sftp()
    home = sftp.normalize(".")
    user = conn.user
    planned = items
    items = [
        Item(home + i.target[1:], i.mode, i.source, i.owner, i.sha256) if i.target.startswith(HOME + "/") else i
        for i in items
    ]
    shown = {i.target: p.target for i, p in zip(items, planned, strict=True)}
    places = sorted({*_folders(i.target for i in items if not i.is_dir), home, STATE_DIR})
    extra = extra or []
    remote = parse_check(conn.run(check_command([i.target for i in items] + extra, places, home), hide=True).stdout)
    unknown = unhashed(items, remote.files)
    if unknown:
        for target, digest in parse_hashes(conn.run(hash_command(unknown), hide=True).stdout).items():
            remote.files.setdefault(target, {})["sha256"] = digest
    sums = sums.result()
    marker = activation(activate, sums[items[-1].file])
    activated = not marker or marker in remote.activated
    todo = list(items) if force else needed(items, remote.files, sums, user, activated)
    report = Report(unchanged=[shown[i.target] for i in items if i not in todo])
    report.removed = [t for t in extra if remote.files.get(t, {}).get("kind") in ("regular file", "symbolic link")]
    if dry:
        report.uploaded = [shown[i.target] for i in todo]
        return report
    go_on()
    if remote.leftovers or report.removed:  # of a run that was cut short (connection lost, killed); other roles'
        conn.run(_sudo("rm -rf -- " + " ".join(shlex.quote(p) for p in remote.leftovers + report.removed)), hide=True)
    token = secrets.token_hex(6)
    if not todo:
        if unknown:  # sums learned the slow way: record them, so the next run needs no sha256sum
            conn.run(_sudo("set -e\n" + "\n".join(state_lines(items, sums, token, marker))), hide=True)
        return report
    tmp = f"{home}/{TEMP}{token}"
    files = [(index, i) for index, i in enumerate(todo) if not i.is_dir]
    streamed = bool(proc and files)
    if not streamed:
        sftp.mkdir(tmp, 0o700)
    advance = None
    if bars is not None:
        bar = bars.add_task(name, total=sum(i.file.stat().st_size for i in todo if not i.is_dir))

        def advance(count: int) -> None:
            bars.advance(bar, count)

    item = todo[0]
    try:
        if streamed:
            stream(proc, [(beside(i.target, token, index), i.file) for index, i in files], advance, stop)
        for index, item in files if not streamed else ():
            upload(sftp, item.file, f"{tmp}/{index}", advance, stop)
        go_on()
    except BaseException as err:
        import paramiko

        transport = conn.transport
        if isinstance(err, StreamFailed):  # the file tar names, else the one being sent
            named = re.search(rf"{re.escape(TEMP + token)}-(\d+)", str(err))
            item = todo[int(named[1])] if named else files[err.at][1]
        lost = (
            isinstance(err, (EOFError, paramiko.SSHException))
            or (isinstance(err, StreamFailed) and err.lost)
            or (isinstance(err, OSError) and not (transport and transport.is_active()))
        )
        temporaries = " ".join(f"{shlex.quote(p)}/{TEMP}{token}-*" for p in _folders(i.target for _, i in files))
        try:
            conn.run(_sudo(f"rm -rf -- {shlex.quote(tmp)} {temporaries}"), hide=True, warn=True)
        except Exception:  # the connection itself broke: report the upload's error, not this one's
            pass
        if lost:
            raise StepError(
                f"{item.target}: connection lost during the upload ({describe(err)}); every file on the node "
                f"is still whole, and the next `inv copy` goes on from there"
            ) from err
        if isinstance(err, StreamFailed):  # tar's own words: a full disk, a missing sudo
            raise StepError(f"{item.target}: {err}") from err
        raise
    script = install_script(todo, tmp, token, user, activate, state_lines(items, sums, token), marker, streamed)
    if activate and name:
        from tasks import ui

        # An activation may run for minutes (kubeadm pulls images): say so rather than look hung.
        ui.progress(f"{name}: files in place; running the activation (up to {ACTIVATE_TIMEOUT // 60} min)")
    result = conn.run(_sudo(script), hide=True, warn=True)
    lines = result.stdout.splitlines()
    done = {line[5:] for line in lines if line.startswith("done|")}
    report.uploaded = [shown[i.target] for i in todo if i.target in done]
    report.failed = [shown[i.target] for i in todo if i.target not in done]
    if result.failed:
        if report.failed:
            report.error = f"{report.failed[0]}: exited {result.exited}: {last_line(result.stderr)}"
        elif "timeout|activate" in lines:
            report.error = (
                f"cluster.activate_command timed out after {ACTIVATE_TIMEOUT} s: {activate} "
                f"(it runs again on the next `inv copy`)"
            )
        else:
            report.error = f"activate_command: exited {result.exited}: {last_line(result.stderr)}"
        if not report.failed:
            report.failed.append("activate_command")
    return report


def _dry_tables(cluster: Cluster, wanted: dict[str, list[Item]], activate: str, reports: dict) -> None:
    """Per node: every file it would get, marked as `inv copy` would treat it (upload, or already there)."""
    from tasks import ui

    for node in cluster.nodes:
        report = reports.get(node.name)
        if report is None:
            continue  # the node did not answer: the summary names it
        sent = set(report.uploaded)
        rows = [
            (
                i.target,
                "upload" if i.target in sent else "unchanged",
                "directory" if i.is_dir else f"{i.mode:04o}",
                node.user if i.owner == "user" else i.owner,
                i.source or "",
            )
            for i in wanted[node.name]
        ]
        rows += [(target, "remove", "", "", "(not for its role)") for target in report.removed]
        if activate:
            rows.append(("(then run)", "run" if sent else "no", "", "root", activate))
        ui.table(f"{node.name} would get", ("target", "action", "mode", "owner", "from"), rows)


@task(
    help={
        "dry": "Print, per node and per file, what would be uploaded and what is already there; change nothing "
        "(the nodes must answer over SSH).",
        "force": "Send every file and run the activation again, even where nothing changed.",
    }
)
@exits
def copy(c, dry=False, force=False):
    """Copy binaries, certificates, manifests and each node's configuration (last) to every node over SSH.

    Each node gets what its role needs. Unchanged files (same sha256, mode and
    owner) are skipped; the node's configuration (the seed's cloud-config, the
    current stack's kubeadm configuration) goes to cluster.user_data_path last,
    then cluster.activate_command runs ({path} is that path): for the current
    stack, activate.sh (kubeadm init on the master, kubeadm join on the
    workers, once).
    """
    from tasks.nodes import Nodes

    project = settings.load(c)
    project.stack.check_step("copy")
    wanted = plan(project)
    with Nodes(c, project) as group:
        if not dry:
            before_copy(project, group)
        copy_all(project.cluster, wanted, group, dry, force)


def before_copy(project: Project, group) -> None:
    """The stack's `before_copy` as root on the master (current: the bootstrap token, made again if it expired).

    StepError naming the master when it fails: no worker is sent anything that could not join.
    """
    from invoke import UnexpectedExit

    cluster = project.cluster
    command = project.stack.before_copy.replace("{path}", shlex.quote(cluster.user_data_path))
    if not command:
        return
    master = cluster.master.name
    try:
        conn = group.conn(master)
    except Exception:  # unreachable, or its host key refused: the copy that follows names it with the others
        return
    try:
        conn.run(_sudo(command), hide=True, in_stream=False)
    except UnexpectedExit as err:
        result = err.result
        raise StepError(
            f"copy: on {master}, before any node is copied: {project.stack.before_copy} exited {result.exited}: "
            f"{last_line(result.stderr or result.stdout)}"
        ) from None


def copy_all(cluster: Cluster, wanted: dict[str, list[Item]], group, dry: bool = False, force: bool = False) -> None:
    """Bring every node up to date over the `Nodes` group (from `plan`): a table, then NodesFailed if any failed."""
    from concurrent.futures import ThreadPoolExecutor

    from tasks import ui

    activate = cluster.activate_command.replace("{path}", shlex.quote(cluster.user_data_path))
    bars = ui.transfer_bars() if not dry and ui.console().is_terminal else None
    stop = threading.Event()
    extra = unused(wanted)
    ssh = {name: None if dry else group.ssh(name) for name in wanted}
    with ThreadPoolExecutor(max_workers=2) as background, bars or contextlib.nullcontext():
        # Hash the local files while the nodes are reached and checked.
        sums = background.submit(digests, [i for items in wanted.values() for i in items])
        work = background.submit(
            group.attempt,
            lambda name, conn: copy_to(
                conn,
                wanted[name],
                sums,
                activate,
                dry=dry,
                bars=bars,
                name=name,
                stop=stop,
                extra=extra[name],
                force=force,
                ssh=ssh[name],
            ),
        )
        try:
            reports, failures = work.result()
        except KeyboardInterrupt:
            # Ctrl-C: each node's copy stops at its next chunk and removes its temporary files; then we stop too.
            stop.set()
            ui.progress("interrupted: stopping the copies and removing their temporary files from the nodes")
            work.result()
            raise
    if dry:
        _dry_tables(cluster, wanted, activate, reports)
    rows: list[tuple] = []
    for node in cluster.nodes:
        if node.name in failures:
            rows.append((node.name, "-", "-", "-", failures[node.name].reason))
            continue
        r = reports[node.name]
        if r.error:
            failures[node.name] = Failure(node.name, where(group[node.name]), r.error)
        removed = (
            f"{'would remove' if dry else 'removed'} {', '.join(r.removed)} (not for its role)" if r.removed else ""
        )
        rows.append((node.name, len(r.uploaded), len(r.unchanged), len(r.failed), r.error or removed))
    title = "Would copy (dry run: nothing changed)" if dry else "Copied"
    ui.table(title, ("node", "would upload" if dry else "uploaded", "unchanged", "failed", "detail"), rows)
    if failures:
        raise NodesFailed(failures, "copy")


TASKS = (copy,)

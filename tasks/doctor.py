"""`inv doctor`: is everything the chosen stack and provider need in place? And the checks `inv up` runs first.

Each check is a pure function from facts to a `Row` (ok, warn or missing,
what was found, the one thing to do); small effectful functions gather the
facts (versions of programs, /proc/meminfo, networks.conf, free disk, HEAD
requests, SSH handshakes). `doctor` changes nothing anywhere: it records no
host key, writes no file and downloads nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from invoke import task

from tasks import settings
from tasks.errors import StepError, exits

OK, WARN, MISSING = "ok", "warn", "missing"
# VirtualBox 6.1.28+ allows host-only networks only in these ranges unless networks.conf lists others
# (Linux, and macOS before VirtualBox 7; Windows has no such limit): as Vagrant 2.3's virtualbox provider checks.
NETWORKS_CONF = "/etc/vbox/networks.conf"
NETWORKS_CONF_VARIABLE = "INV_VBOX_NETWORKS_CONF"  # another path for it (tests)
HOST_ONLY_DEFAULT = "192.168.56.0/21"
HOST_ONLY_LIMITED_FROM = (6, 1, 28)
PROBE_TIMEOUT = 5  # seconds at most for each download host's answer
PIP_INSTALL = "python3 -m venv .venv && .venv/bin/pip install -e . (in the project folder), as README.md says"
# Module each distribution of pyproject.toml is imported as, where the names differ.
MODULES = {"Jinja2": "jinja2", "PyYAML": "yaml"}


@dataclass(frozen=True)
class Row:
    """One check: its state (ok, warn, missing), what was found, and what to do when it is not ok."""

    check: str
    state: str
    found: str
    todo: str = ""
    line: str = ""  # the one-line message `inv up` stops with, when not just "<check>: <found>: <todo>"

    @property
    def message(self) -> str:
        return self.line or f"{self.check}: {self.found}" + (f": {self.todo}" if self.todo else "")


# -- pure checks --------------------------------------------------------------------


def version_of(text: str) -> tuple[int, ...]:
    """The leading numbers of a version: "7.0.14r161095" -> (7, 0, 14), "2.32.3" -> (2, 32, 3)."""
    match = re.match(r"v?(\d+(?:\.\d+)*)", text.strip())
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def satisfies(version: str, spec: str) -> bool:
    """Whether `version` meets a requirement like ">=2.2,<3" (the forms pyproject.toml uses)."""
    have = version_of(version)
    for clause in filter(None, (part.strip() for part in spec.split(","))):
        op, bound = re.fullmatch(r"(>=|<=|==|<|>)\s*(\S+)", clause).groups()  # type: ignore[union-attr]
        want = version_of(bound)
        width = max(len(have), len(want))
        a, b = (v + (0,) * (width - len(v)) for v in (have, want))
        if not {">=": a >= b, "<=": a <= b, "==": a == b, "<": a < b, ">": a > b}[op]:
            return False
    return True


def python_row(version: tuple[int, ...], spec: str) -> Row:
    shown = ".".join(str(v) for v in version[:3])
    if satisfies(shown, spec):
        return Row("python", OK, f"{shown} ({sys.executable})")
    return Row("python", MISSING, f"{shown}, needs {spec}", f"install Python {spec.lstrip('>=')} or newer")


def package_rows(installed: dict[str, str | None], requirements: dict[str, str]) -> list[Row]:
    """A row per required distribution: `installed` maps it to its version, None when it cannot be imported."""
    rows = []
    for name, spec in requirements.items():
        version = installed.get(name)
        if version is None:
            rows.append(Row(name, MISSING, "not installed", PIP_INSTALL))
        elif not satisfies(version, spec):
            rows.append(Row(name, MISSING, f"{version}, needs {spec}", PIP_INSTALL))
        else:
            rows.append(Row(name, OK, version))
    return rows


def vagrant_row(output: str | None) -> Row:
    """`output`: what `vagrant --version` printed ("" when only its presence is known), None when not on PATH."""
    from tasks.providers import VAGRANT_INSTALL

    if output is None:
        return Row("vagrant", MISSING, "not installed", VAGRANT_INSTALL.split(": ", 1)[1], line=VAGRANT_INSTALL)
    version = re.search(r"\d+\.\d+\.\d+", output)
    return Row("vagrant", OK, version.group(0) if version else "installed")


def vbox_version(output: str | None) -> tuple[int, ...]:
    """VirtualBox's version from `VBoxManage --version` (the last line: warnings may come first); () if unknown."""
    lines = [line.strip() for line in (output or "").splitlines() if re.match(r"\d+\.\d+", line.strip())]
    return version_of(lines[-1]) if lines else ()


def virtualbox_row(output: str | None) -> Row:
    """`output`: what `VBoxManage --version` printed (stdout and stderr), None when it is not on PATH."""
    from tasks.providers import VIRTUALBOX_INSTALL

    if output is None:
        return Row(
            "VirtualBox",
            MISSING,
            "not installed (no VBoxManage)",
            VIRTUALBOX_INSTALL.split(": ", 1)[1],
            VIRTUALBOX_INSTALL,
        )
    shown = output.strip().splitlines()[-1].strip() if output.strip() else "no version"
    if "vboxdrv" in output and "not loaded" in output:
        # VirtualBox's own warning names the command that builds and loads its kernel module.
        command = re.search(r"install it by\s*\n\s*(\S[^\n]*)", output)
        fix = f"run `{command.group(1).strip()}`" if command else "install VirtualBox's kernel module (vboxdrv)"
        return Row("VirtualBox", MISSING, f"{shown}, but its kernel module vboxdrv is not loaded", fix)
    if not vbox_version(output):
        return Row("VirtualBox", MISSING, f"`VBoxManage --version` printed {shown!r}", "reinstall VirtualBox")
    return Row("VirtualBox", OK, shown)


def allowed_ranges(conf: str | None) -> list[str]:
    """The host-only ranges networks.conf allows (its `* RANGE ...` lines), or the default when there is none."""
    if conf is None:
        return [HOST_ONLY_DEFAULT]
    return [entry for line in conf.splitlines() if line.strip().startswith("*") for entry in line.strip()[1:].split()]


def host_only_row(network: str, vbox_output: str | None, conf_path: str, conf: str | None, platform: str) -> Row:
    """Whether VirtualBox takes `network` (cluster.network) for a host-only network; `conf`: networks.conf's text."""
    import ipaddress

    version = vbox_version(vbox_output)
    check = "host-only network"
    if platform.startswith("win") or (version and version < HOST_ONLY_LIMITED_FROM):
        return Row(check, OK, f"{network} (VirtualBox {'.'.join(map(str, version)) or ''} limits no range here)")
    if platform == "darwin" and version >= (7,):
        return Row(check, OK, f"{network} (VirtualBox 7 on macOS limits no range)")
    wanted = ipaddress.IPv4Network(network)
    ranges = allowed_ranges(conf)
    for entry in ranges:
        try:
            if wanted.subnet_of(ipaddress.ip_network(entry, strict=False)):  # type: ignore[arg-type]
                where = f"allowed by {conf_path}" if conf is not None else "VirtualBox's default range"
                return Row(check, OK, f"{network} ({where})")
        except (ValueError, TypeError):  # an IPv6 range or a line VirtualBox would not read either
            continue
    # A new networks.conf replaces the default range: keep it beside ours, for other projects' VMs.
    line = f"* {network}" if conf is not None else f"* {network} {HOST_ONLY_DEFAULT}"
    allowed = ", ".join(ranges) or "nothing"
    return Row(
        check,
        MISSING,
        f"VirtualBox 6.1.28+ allows {allowed} ({conf_path if conf is not None else 'no ' + conf_path}), "
        f"not cluster.network {network}",
        f"add the line `{line}` to {conf_path} (as root), or choose cluster.network and cluster.first_ip "
        f"inside {HOST_ONLY_DEFAULT}",
    )


def memory_row(vms: int, each_mb: int, meminfo: dict[str, int] | None) -> Row:
    """Room for `vms` VMs of `each_mb` MB to start; `meminfo`: /proc/meminfo's MemTotal and MemAvailable in kB."""
    need = vms * each_mb
    what = f"{vms} VM(s) to start x {each_mb} MB = {need} MB"
    if not vms:
        return Row("memory", OK, "every VM runs already")
    if not meminfo or "MemAvailable" not in meminfo:
        return Row("memory", WARN, f"{what}; free memory unknown on this system", "check there is that much free")
    free = meminfo["MemAvailable"] // 1024
    if need > free:
        return Row(
            "memory",
            MISSING,
            f"{what}, {free} MB free",
            "close programs, or lower cluster.num_instances or vm.memory",
        )
    return Row("memory", OK, f"{what}, {free} MB free")


def human(size: int) -> str:
    from tasks.download import human as sized

    return sized(size)


def disk_row(folder: Path, free: int | None, pending: dict[str, int | None]) -> Row:
    """Room in `folder` for the downloads still to come: `pending` maps each to its size (from the lock), or None."""
    if not pending:
        return Row("disk", OK, f"every download is in {folder}")
    known = sum(size for size in pending.values() if size is not None)
    unknown = [name for name, size in pending.items() if size is None]
    if free is None:
        return Row("disk", WARN, f"free space in {folder} unknown", f"make room for {human(known)} or more")
    if len(unknown) == len(pending):
        sizes = "of sizes unknown before the first download (the lock file records them)"
    else:
        sizes = f"of {human(known)}" + (f" and {len(unknown)} of unknown size" if unknown else "")
    found = f"{len(pending)} download(s) {sizes}, {human(free)} free in {folder}"
    if known > free:
        return Row("disk", MISSING, found, "make room, or set paths.downloads to a folder on a larger disk")
    return Row("disk", OK, found)


@dataclass(frozen=True)
class Answer:
    """How a download host answered a HEAD: `status` ("HTTP 200"), or `error` (its cause) when it did not."""

    status: str = ""
    error: str = ""


def host_row(host: str, answer: Answer, pending: list[str], mirror: bool) -> Row:
    """Whether download host `host` answers; `pending`: its downloads still to come; `mirror`: download.mirrors
    names it."""
    check = f"host {host}"
    if answer.error:
        todo = (
            "check that mirror in download.mirrors (or set HTTPS_PROXY)"
            if mirror
            else f"map {host}/ to a mirror in download.mirrors, or set HTTPS_PROXY"
        ) + "; then `inv download --check`"
        if not pending:
            return Row(check, WARN, f"{answer.error} (its files are downloaded already)", todo)
        return Row(check, MISSING, answer.error, todo)
    if answer.status.startswith(("HTTP 2", "HTTP 3")):
        return Row(check, OK, f"answers ({answer.status})")
    return Row(check, WARN, f"answers {answer.status}", "`inv download --check` shows each URL's status")


def cause(error: BaseException, timeout: float) -> str:
    """The class of a failed request, in words: DNS, refused, no route, timeout, TLS, proxy (as `inv download`
    says it)."""
    from tasks.download import cause as classified

    return classified(error, timeout, timeout)[1]


def ssh_row(name: str, where: str, state: str, found: str, todo: str = "") -> Row:
    return Row(f"ssh {name}", state, f"{where}: {found}", todo)


def ssh_client_row(output: str | None) -> Row:
    """OpenSSH's ssh (`ssh -V`): `inv copy` sends each node's files through it; without it, over SFTP, slower."""
    if output is None:
        return Row(
            "ssh client",
            WARN,
            "not installed: `inv copy` sends files over SFTP instead, slower",
            "install OpenSSH's client (Debian/Ubuntu: apt-get install openssh-client)",
        )
    version = re.search(r"OpenSSH_[\w.]+", output)
    return Row("ssh client", OK, version.group(0) if version else output.strip()[:40])


def render_row(changed: list[str] | None) -> Row:
    """Whether the last render still describes the configured machines; None: nothing rendered yet."""
    if changed is None:
        return Row("render", OK, "not rendered yet (`inv render` comes before `inv up`)")
    if changed:
        return Row("render", WARN, f"the configuration changed since: {'; '.join(changed)}", "`inv render`")
    return Row("render", OK, "cluster.json describes the configured machines")


def summary(rows: list[Row], what: str) -> tuple[bool, str]:
    """(whether nothing required is missing, the one-line summary)."""
    missing = [row.check for row in rows if row.state == MISSING]
    warned = [row.check for row in rows if row.state == WARN]
    warnings = f"; {len(warned)} warning(s): {', '.join(warned)}" if warned else ""
    if missing:
        return False, f"doctor: {len(missing)} missing for {what}: {', '.join(missing)}{warnings}"
    return True, f"doctor: everything {what} needs is in place{warnings}"


# -- facts: small effects -------------------------------------------------------------


def requirements() -> tuple[str, dict[str, str]]:
    """(requires-python, {distribution: version spec}) from pyproject.toml: the one list of what is needed."""
    import tomllib

    data = tomllib.loads((settings.ROOT / "pyproject.toml").read_text())["project"]
    found = {}
    for dependency in data["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", dependency.split(";")[0].strip())
        if match:
            found[match.group(1)] = match.group(2)
    return data["requires-python"], found


def installed(names) -> dict[str, str | None]:
    """Each distribution's version, None when its module cannot be imported (whatever the metadata says)."""
    import importlib
    from importlib import metadata

    found: dict[str, str | None] = {}
    for name in names:
        try:
            module = importlib.import_module(MODULES.get(name, name.lower()))
        except ImportError:
            found[name] = None
            continue
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = str(getattr(module, "__version__", "unknown version"))
    return found


def output_of(*argv: str) -> str | None:
    """What a program prints (stdout then stderr), None when it is not on PATH."""
    if not shutil.which(argv[0]):
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"`{' '.join(argv)}` failed: {err}"
    return done.stdout + done.stderr


def networks_conf() -> tuple[str, str | None]:
    """(path, text) of VirtualBox's networks.conf; text None when there is no such file."""
    path = os.environ.get(NETWORKS_CONF_VARIABLE) or NETWORKS_CONF
    try:
        return path, Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return path, None
    except OSError as err:
        return path, f"# unreadable: {err}"


def meminfo() -> dict[str, int] | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        words = value.split()
        if words and words[0].isdigit():
            found[key] = int(words[0])
    return found


def free_space(folder: Path) -> int | None:
    """Free bytes on the disk of `folder`, or of its nearest existing parent (it may not exist yet)."""
    for place in (folder, *folder.parents):
        if place.exists():
            try:
                return shutil.disk_usage(place).free
            except OSError:
                return None
    return None


def pending_downloads(project) -> dict[str, int | None]:
    """The downloads not in place yet -> their size in the lock file (None where it records none)."""
    from tasks import download

    try:
        lock = download.read_lock(project.download.lock_file)
    except Exception:  # a damaged lock: `inv download` names it; sizes are unknown here
        lock = {}
    pending: dict[str, int | None] = {}
    for art in project.download.artifacts:
        entry = lock.get(art.name)
        size = entry.size if entry and entry.url == art.upstream else None
        try:
            present = art.path.stat().st_size
        except OSError:
            present = None
        if present is None or (size is not None and present != size):
            pending[art.name] = size
    return pending


def hosts_of(project) -> dict[str, list]:
    """Each download host (scheme://host[:port], after download.mirrors) -> its artifacts, in order."""
    from urllib.parse import urlsplit

    hosts: dict[str, list] = {}
    for art in project.download.artifacts:
        parts = urlsplit(art.url)
        hosts.setdefault(f"{parts.scheme}://{parts.netloc}", []).append(art)
    return hosts


def ask_hosts(urls: dict[str, str], timeout: float) -> dict[str, Answer]:
    """A HEAD to one URL of each host, all in parallel, redirects followed (through HTTPS_PROXY if set)."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    def ask(url: str) -> Answer:
        try:
            with requests.head(url, timeout=timeout, allow_redirects=True, headers={"User-Agent": "inv-doctor/1"}) as r:
                return Answer(status=f"HTTP {r.status_code} {r.reason}".strip())
        except requests.RequestException as err:
            return Answer(error=cause(err, timeout))

    if not urls:
        return {}
    with ThreadPoolExecutor(max_workers=min(len(urls), 16)) as pool:
        return dict(zip(urls, pool.map(ask, urls.values()), strict=True))


def ssh_rows(c, project) -> list[Row]:
    """Each node of cluster.hosts over SSH, in parallel: reachable, host key known, login works; records nothing."""
    from tasks import nodes

    rows = []
    with nodes.Nodes(c, project, dry=True) as group:

        def probe(name, conn) -> Row:
            where = f"{conn.user}@{nodes.where(conn)}"
            try:
                group.conn(name)
                conn.run("true", hide=True)
            except nodes.HostKeyNew as err:
                return ssh_row(name, where, WARN, str(err), f"check it on the machine; or first {err.accept}")
            except nodes.HostKeyRefused as err:
                return ssh_row(name, where, MISSING, str(err), f"check the key on the machine, then {err.accept}")
            except Exception as err:
                todo = f"check the machine is up, and cluster.hosts' entry for {name} (address, port, user, key_file)"
                return ssh_row(name, where, MISSING, nodes.describe(err), todo)
            return ssh_row(name, where, OK, "logs in; host key known")

        results, failures = group.attempt(probe)
    for name in group.names:
        rows.append(results[name] if name in results else ssh_row(name, "", MISSING, failures[name].reason))
    return rows


def _not_running(provider) -> int:
    """How many VMs `inv up` has to start (a running one has its memory already); all when Vagrant cannot tell."""
    count = len(provider.project.cluster.nodes)
    if not (shutil.which("vagrant") and shutil.which("VBoxManage")):
        return count  # nothing runs without both
    if not (provider.project.output_dir / "cluster.json").is_file():
        return count
    try:
        states = provider.states()
    except StepError:
        return count
    return sum(1 for n in provider.project.cluster.nodes if states.get(n.name) != "running")


def vm_rows(provider, vagrant_output: str | None) -> list[Row]:
    """The rows of what VirtualBox VMs need: Vagrant, VirtualBox, the host-only network, memory."""
    project = provider.project
    vbox = output_of("VBoxManage", "--version")
    path, conf = networks_conf()
    memory = meminfo()
    room = memory_row(len(project.cluster.nodes), project.cluster.vm["memory"], memory)
    if room.state == MISSING:  # unless some run already (a second `inv up`): only then ask Vagrant, which is slow
        room = memory_row(_not_running(provider), project.cluster.vm["memory"], memory)
    return [
        vagrant_row(vagrant_output),
        virtualbox_row(vbox),
        host_only_row(project.cluster.network, vbox, path, conf, sys.platform),
        room,
    ]


def preflight(provider) -> None:
    """What `inv up` checks before it starts anything: StepError with a line per missing thing; warnings on stderr."""
    from tasks import ui

    rows = vm_rows(provider, "" if shutil.which("vagrant") else None)
    missing = [row.message for row in rows if row.state == MISSING]
    if missing:
        raise StepError("\n".join(missing))
    for row in rows:
        if row.state == WARN:
            ui.progress(f"warning: {row.message}")


def project_rows(c, project) -> list[Row]:
    """Every row about the configured stack and provider (after Python's)."""
    from tasks import providers, render

    rows = PROVIDER_ROWS[project.cluster.provider](providers.of(project, c, stale_ok=True))
    rendered = render.last_render(project.output_dir)
    rows.append(render_row(None if rendered is None else render.changes(rendered, project)))
    rows.append(ssh_client_row(output_of("ssh", "-V")))
    pending = pending_downloads(project)
    rows.append(disk_row(project.downloads_dir, free_space(project.downloads_dir), pending))
    hosts = hosts_of(project)
    timeout = min(PROBE_TIMEOUT, project.download.timeout)
    answers = ask_hosts({host: arts[0].url for host, arts in hosts.items()}, timeout)
    for host, arts in hosts.items():
        mirror = any(a.url != a.upstream for a in arts)
        rows.append(host_row(host, answers[host], [a.name for a in arts if a.name in pending], mirror))
    return rows


# What each provider needs besides: VirtualBox VMs, or machines that answer over SSH.
PROVIDER_ROWS = {
    "vagrant": lambda provider: vm_rows(provider, output_of("vagrant", "--version")),
    "hosts": lambda provider: ssh_rows(provider.c, provider.project),
}


@task
@exits
def doctor(c):
    """Check what the chosen stack and provider need on this machine, one row each, with what to do; changes nothing.

    Python and its packages; with cluster.provider vagrant: Vagrant, VirtualBox, whether VirtualBox takes
    cluster.network as a host-only network (/etc/vbox/networks.conf), free memory for the VMs; the last render;
    free disk for the downloads; whether each download host answers (after download.mirrors); with hosts: each
    node over SSH and its host key. Exit status 1 when something required is missing.
    """
    from tasks import ui

    python_spec, needed = requirements()
    rows = [python_row(tuple(sys.version_info[:3]), python_spec), *package_rows(installed(needed), needed)]
    what = "these tasks"
    if all(row.state == OK for row in rows):
        project = settings.load(c)
        what = f"stack {project.stack.name} on provider {project.cluster.provider}"
        rows += project_rows(c, project)
    ui.table(
        f"inv doctor: {what}",
        ("check", "state", "found", "what to do"),
        [(row.check, row.state, row.found, row.todo) for row in rows],
    )
    fine, line = summary(rows, what)
    if not fine:
        raise StepError(line)
    ui.say(line)


TASKS = (doctor,)

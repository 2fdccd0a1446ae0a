"""A pretend Kubernetes 1.1 + Calico cluster on the SSH test nodes (tests/sshnodes.py).

Kubernetes and Calico cannot run here. The stand-in programs in
tests/standins/ (`kubectl`, `calicoctl`: see their docstrings) are shipped to
the nodes by the real `inv copy` as the downloaded artifacts of those names,
so `inv addons` and `inv verify` run their real commands over real SSH; what
the stand-ins report comes from /var/lib/standin/scenario.json on each node,
which `Scenario` writes. The API server proxy that serves the kube-ui is a
loopback HTTP server in the test process (`UIServer`).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from conftest import project, run_inv
from tasks import render
from tasks.files import sha256

STANDINS = Path(__file__).resolve().parent / "standins"
UI_PATH = "/api/v1/proxy/namespaces/kube-system/services/kube-ui/"


def prepare(config: dict) -> None:
    """Rendered output, and downloads where kubectl and calicoctl are the stand-ins, with their lock file."""
    render.render_all(project(config))
    downloads = project(config).downloads_dir
    downloads.mkdir(parents=True, exist_ok=True)
    for artifact in project(config).download.artifacts:
        name = artifact.name
        if (STANDINS / name).exists():
            shutil.copyfile(STANDINS / name, downloads / name)
        else:
            (downloads / name).write_bytes(b"stand-in " + name.encode())
    lock_downloads(config)


def lock_downloads(config: dict) -> Path:
    """Record the files in paths.downloads in a lock file beside that folder, as `inv download` does.

    `inv copy` sends only downloads that match their pin or lock entry, so
    stand-in downloads need a lock of their own: `config` is changed to use it
    (download.lock_file) and to pin nothing (the seed pins one real file).
    """
    from tasks import download
    from tasks import stack as stacks

    section = config.setdefault("download", {})
    listed = section.get("artifacts") or stacks.load(config["stack"]).defaults["download"]["artifacts"]
    section["artifacts"] = [dict(a, sha256="") for a in listed]
    downloads = project(config).downloads_dir
    lock = downloads.with_name(downloads.name + ".lock")
    section["lock_file"] = str(lock)
    entries = {a.name: download.Locked(sha256(a.path), a.upstream) for a in project(config).download.artifacts}
    lock.write_text(download.format_lock(entries))
    return lock


def give_state_folders(nodes) -> None:
    """/var/lib/standin owned by core, who runs kubectl and calicoctl on the nodes."""
    core = pwd.getpwnam("core")
    for name in nodes.names:
        os.chown(nodes.path(name, "/var/lib/standin"), core.pw_uid, core.pw_gid)


def install(nodes, config: dict, tmp_path: Path) -> None:
    """Fresh node folders, then the real `inv copy` of everything."""
    nodes.reset()
    give_state_folders(nodes)
    done = run_inv(tmp_path, "copy", config=config)
    assert done.returncode == 0, done.stdout + done.stderr


def forget_objects(nodes) -> None:
    """The stand-in API server forgets every object created (the cluster before `inv addons`)."""
    for name in nodes.names:
        for leftover in ("kubectl.json", "kubectl.lock"):
            nodes.path(name, f"/var/lib/standin/{leftover}").unlink(missing_ok=True)


class Scenario:
    """What the stand-ins report on each node: healthy unless changed."""

    def __init__(self, nodes, config: dict):
        self.nodes = nodes
        cluster = project(config).cluster
        self.ips = {n.name: n.ip for n in cluster.nodes}
        self.master = cluster.master.name
        self.kubernetes = {
            "nodes": [{"name": ip} for ip in self.ips.values()],
            "cluster_dns": cluster.dns_ip,
            "kubernetes_ip": cluster.api_service_ip,
        }
        self.calico = {
            name: {
                "running": True,
                "ip": ip,
                "peers": [{"address": other, "since": "03:57:16"} for o, other in self.ips.items() if o != name],
            }
            for name, ip in self.ips.items()
        }

    def node(self, ip: str) -> dict:
        return next(n for n in self.kubernetes["nodes"] if n["name"] == ip)

    def peer(self, name: str, of: str) -> dict:
        """The BGP peer row for node `of` in `name`'s calicoctl status."""
        return next(p for p in self.calico[name]["peers"] if p["address"] == self.ips[of])

    def write(self) -> None:
        for name in self.nodes.names:
            data = {"calico": self.calico[name]}
            if name == self.master:
                data["kubernetes"] = self.kubernetes
            path = self.nodes.path(name, "/var/lib/standin/scenario.json")
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)


class UIServer:
    """The API server's proxy to the kube-ui, on 127.0.0.1: 200 on UI_PATH unless `.status` says otherwise."""

    def __init__(self):
        self.status = 200
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append(self.path)
                if self.path != UI_PATH:
                    code, body = 404, b'{"kind":"Status","message":"the server could not find the requested resource"}'
                elif owner.status == 200:
                    code, body = 200, b"<html><title>Kubernetes UI</title></html>"
                else:
                    code, body = (
                        owner.status,
                        (
                            b'{"kind":"Status","apiVersion":"v1","status":"Failure",'
                            b'"message":"no endpoints available for service \\"kube-ui\\""}'
                        ),
                    )
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "UIServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

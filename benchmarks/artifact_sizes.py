"""Random stand-ins for the seed's downloads, at their real sizes (about 210 MB in all)."""

from __future__ import annotations

import os
from pathlib import Path

# Bytes of the linux/amd64 release files. Only setup-network-environment's is known
# exactly (DESIGN.md); the others are estimates of the v1.1.7 / v0.15.0 / v1.0.0 files.
SIZES = {
    "kubectl": 20_000_000,
    "kubelet": 39_000_000,
    "kube-proxy": 18_000_000,
    "kube-apiserver": 41_000_000,
    "kube-controller-manager": 34_000_000,
    "kube-scheduler": 20_000_000,
    "calicoctl": 20_500_000,
    "calico": 7_000_000,
    "calico-ipam": 6_900_000,
    "setup-network-environment": 3_183_760,
}


def generate(folder: Path, names=None, scale: float = 1.0) -> dict[str, Path]:
    """Random files named `names` (default: all of SIZES) of those sizes times `scale`, in a new `folder`."""
    folder.mkdir(parents=True)
    files = {}
    for name in names or SIZES:
        path = folder / name
        with open(path, "wb") as out:
            left = int(SIZES.get(name, 10_000_000) * scale)
            while left:
                n = min(left, 8 << 20)
                out.write(os.urandom(n))
                left -= n
        files[name] = path
    return files

"""The seed's cloud-config templates, read from the blog post, and unit parsing."""

from __future__ import annotations

import re
import shlex

import yaml

from conftest import seed_file

POST = "000_f30f3fc981904be9.txt"


def seed_template(kind: str) -> str:
    """The fenced block that follows `<kind>-config.yaml.tmpl 内容如下` in the post."""
    text = seed_file(POST).read_text(encoding="utf-8")
    start = text.index(f"{kind}-config.yaml.tmpl 内容如下")
    block = re.search(r"```\n(.*?)```", text[start:], re.S)
    assert block and block.group(1).startswith("#cloud-config"), f"no {kind} template in the seed"
    return block.group(1)


def seed_config(kind: str, hostname: str, ip: str) -> dict:
    """The seed's template with its placeholders filled, as CoreOS would see it."""
    text = seed_template(kind).replace("__HOSTNAMT__", hostname).replace("$private_ipv4", ip)
    return yaml.safe_load(text)


def parse_unit(content: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values...]}}, continuations joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", content)
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def normalized_unit(content: str) -> dict:
    """Units compared by meaning: command lines as (binary, set of flags), quotes removed."""
    unit = parse_unit(content)
    for keys in unit.values():
        for key, values in keys.items():
            if key.startswith("Exec") or key == "Environment":
                words = [shlex.split(v) for v in values]
                keys[key] = [(w[0], tuple(sorted(w[1:]))) for w in words]
    return unit

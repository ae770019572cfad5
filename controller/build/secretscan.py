"""Secret-looking files in a served tree or an initramfs.

Everything in a version is readable by every host the export or the TFTP
server admits, so private keys and password hashes do not belong there: ssh
host keys are made on each node at boot (base/ netroot-hostkeys.service),
per-node secrets come from the site. Pure rules here; the build strips host
keys and refuses an initramfs carrying a secret, `netroot verify --secrets`
lists what a version holds, `netroot validate` warns about recipes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from controller.store import treeindex

# Made by openssh-server's postinst at build time; removed from every version.
HOST_KEY = re.compile(r"etc/ssh/ssh_host_[a-z0-9]+_key(\.pub)?")
_USER_KEY = re.compile(r"(?:.*/)?\.ssh/id_(?:rsa|dsa|ecdsa|ed25519)(?:_sk)?")
_SHADOW = ("etc/shadow", "etc/shadow-", "etc/gshadow", "etc/gshadow-")
_NAMED = {
    "etc/munge/munge.key": "munge key",
    "etc/krb5.keytab": "Kerberos keytab",
}
PRIVATE_KEY_MARK = b"PRIVATE KEY-----"
# Content is read only where secrets live, and only from small files.
_CONTENT_DIRS = ("etc/", "root/", "home/", "srv/", "opt/")
MAX_CONTENT = 64 * 1024
# Shadow password fields that hold no hash.
_NO_HASH = {"", "*", "!", "!!", "!*", "x"}


@dataclass(frozen=True)
class Finding:
    """One secret-looking file: where and why."""

    path: str  # relative to the tree root, no leading slash
    why: str


def is_host_key(path: str) -> bool:
    """An ssh host key (private or public) baked by the build: every node needs its own."""
    return HOST_KEY.fullmatch(path) is not None


def hashed_accounts(shadow: bytes) -> list[str]:
    """Accounts of a shadow(5)/gshadow(5) file whose password field holds a hash."""
    found = []
    for line in shadow.decode(errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 2 and fields[1].lstrip("!") not in _NO_HASH:
            found.append(fields[0])
    return found


def wants_content(path: str, size: int) -> bool:
    """Whether classify needs the file's content to judge it."""
    return path in _SHADOW or (path.startswith(_CONTENT_DIRS) and size <= MAX_CONTENT)


def _by_name(path: str) -> str | None:
    if HOST_KEY.fullmatch(path) and not path.endswith(".pub"):
        return "ssh host private key"
    if _USER_KEY.fullmatch(path):
        return "ssh private key"
    return _NAMED.get(path)


def _by_content(path: str, content: bytes) -> str | None:
    if path in _SHADOW:
        accounts = hashed_accounts(content)
        return f"password hashes ({', '.join(accounts[:5])})" if accounts else None
    return "private key" if PRIVATE_KEY_MARK in content else None


def classify(path: str, content: bytes | None) -> str | None:
    """Why a regular file is secret-looking, or None."""
    path = path.lstrip("/")
    why = _by_name(path)
    if why is None and content is not None:
        why = _by_content(path, content)
    return why


def scan_members(members: Iterable[tuple[str, bytes]]) -> list[Finding]:
    """Findings among (path, content) pairs, such as an initramfs's files."""
    found = []
    for path, content in members:
        why = classify(path, content)
        if why is not None:
            found.append(Finding(path.lstrip("/"), why))
    return found


def scan_tree(rootfs: Path, index: treeindex.Index) -> list[Finding]:
    """Findings among the regular files of a version (its files.idx names them)."""
    found = []
    for path, rest in sorted(index.items()):
        fields = rest.split("\t")
        if fields[0] != "f":
            continue
        content = None
        if wants_content(path, int(fields[4])):
            try:
                fd = os.open(rootfs / path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            with os.fdopen(fd, "rb") as f:
                content = f.read(MAX_CONTENT + 1)
        why = classify(path, content)
        if why is not None:
            found.append(Finding(path, why))
    return found


def recipe_warnings(text: str, where: str) -> list[str]:
    """What a recipe's own text says it puts into the image that should not be there."""
    warnings = []
    if "ssh-keygen" in text:
        warnings.append(
            f"{where}: runs ssh-keygen at build time: keys made there are served"
            " to every node (host keys are made on each node at boot)"
        )
    if re.search(r"ssh_host_[a-z0-9]+_key(?!\.pub)\b", text):
        warnings.append(
            f"{where}: names an ssh host private key: it would be served to every"
            " node (remove it; nodes make their own at boot)"
        )
    if PRIVATE_KEY_MARK.decode() in text:
        warnings.append(
            f"{where}: holds a private key: anything in a version is readable by"
            " every host the export admits"
        )
    return warnings

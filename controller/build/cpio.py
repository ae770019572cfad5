"""The files inside an initramfs: newc cpio archives, each optionally compressed.

dracut writes an uncompressed early cpio (microcode) followed by the main
archive compressed with zstd, gzip, xz or lz4. Members are read only to look
for secrets before the initramfs is served by TFTP to anyone who asks. An
image that is not a cpio at all (a test fake, an unknown compressor) yields
nothing and says so.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from controller.core import proc
from controller.core.errors import ProcessError

_NEWC = (b"070701", b"070702")
_HEADER = 110
_TRAILER = "TRAILER!!!"
_ZSTD, _LZ4 = b"\x28\xb5\x2f\xfd", b"\x02\x21\x4c\x18"
MAX_MEMBER = 1024 * 1024  # larger members are listed with empty content (binaries, modules)


@dataclass
class Listing:
    """What was read: (path, content) pairs, and what could not be read."""

    members: list[tuple[str, bytes]] = field(default_factory=list)
    unreadable: str = ""  # why (part of) the image was not read


def _align(n: int) -> int:
    return (n + 3) & ~3


def parse_cpio(data: bytes, offset: int, listing: Listing) -> int:
    """Members of one newc archive starting at offset; returns the offset after it."""
    while data[offset : offset + 6] in _NEWC:
        header = data[offset : offset + _HEADER]
        try:
            mode = int(header[14:22], 16)
            size = int(header[54:62], 16)
            name_size = int(header[94:102], 16)
        except ValueError:
            listing.unreadable = f"bad cpio header at byte {offset}"
            return len(data)
        name_end = offset + _HEADER + name_size
        name = data[offset + _HEADER : name_end - 1].decode(errors="replace")
        start = _align(name_end)
        end = start + size
        if name == _TRAILER:
            return _align(end)
        if mode & 0o170000 == 0o100000:  # regular files only
            content = data[start:end] if size <= MAX_MEMBER else b""
            listing.members.append((name.removeprefix("./"), content))
        offset = _align(end)
    return offset


def _decompress(data: bytes) -> bytes | None:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00" or data[:1] == b"\x5d":
        return lzma.decompress(data)
    if data[:3] == b"BZh":
        return bz2.decompress(data)
    if data[:4] in (_ZSTD, _LZ4):
        tool = "zstd" if data[:4] == _ZSTD else "lz4"
        with tempfile.TemporaryDirectory(prefix="netroot-initramfs-") as tmp:
            packed, plain = Path(tmp) / "packed", Path(tmp) / "plain"
            packed.write_bytes(data)
            # both stop at the end of their frames: trailing padding is ignored
            out = ["-o", plain] if tool == "zstd" else [plain]  # lz4 takes it positionally
            proc.run([tool, "-d", "-q", "-f", packed, *out])
            return plain.read_bytes()
    return None


def read(path: Path) -> Listing:
    """Every regular file in the initramfs at path (early and main archives)."""
    data = path.read_bytes()
    listing = Listing()
    offset = 0
    while offset < len(data):
        if data[offset : offset + 6] in _NEWC:
            offset = parse_cpio(data, offset, listing)
            while offset < len(data) and data[offset] == 0:  # padding between archives
                offset += 1
            continue
        try:
            plain = _decompress(data[offset:])
        except (OSError, EOFError, lzma.LZMAError, ProcessError) as exc:
            listing.unreadable = f"cannot decompress from byte {offset}: {exc}"
            break
        if plain is None:
            listing.unreadable = f"not a cpio archive or a known compression at byte {offset}"
            break
        inner = 0
        while inner < len(plain) and plain[inner : inner + 6] in _NEWC:
            inner = parse_cpio(plain, inner, listing)
            while inner < len(plain) and plain[inner] == 0:
                inner += 1
        break  # a compressed archive runs to the end of the image
    return listing


def members(path: Path) -> Iterator[tuple[str, bytes]]:
    """(path, content) of every regular file (content empty beyond MAX_MEMBER)."""
    yield from read(path).members

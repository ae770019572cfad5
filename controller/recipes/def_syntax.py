"""The syntax of a Singularity/Apptainer `.def` file: its header keywords and its
`%sections`, each with the line it starts on (legacy_def.py makes a recipe of them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from controller.core.errors import RecipeError

BOOTSTRAPS = ("yum", "dnf", "debootstrap")
HEADER_KEYS = ("Bootstrap", "OSVersion", "MirrorURL", "UpdateURL", "Include", "GPG")
# Singularity's other header keywords: other bootstrap agents' or yum tuning
OTHER_KEYS = (
    "From",
    "IncludeCmd",
    "Library",
    "Registry",
    "Namespace",
    "Stage",
    "Product",
    "User",
    "Regcode",
    "ProductPGP",
    "RegisterURL",
    "Modules",
    "Fingerprints",
    "SetOpt",
)
_DISTRO_COMMENT = re.compile(r"#\s*netroot-distro\s*:\s*(\S+)\s*", re.IGNORECASE)
USED_SECTIONS = ("setup", "post", "files", "environment")
IGNORED_SECTIONS = {
    "runscript": "a diskless node has no container entry point",
    "startscript": "a diskless node starts its services with systemd",
    "test": "test the node by booting it (netroot boot)",
    "labels": "labels are container metadata",
    "help": "help text is container metadata",
    "pre": "%pre is gone from Singularity 3 too; use %setup",
}
_SECTION_RE = re.compile(r"%([A-Za-z]+)\b(.*)")
_HEADER_RE = re.compile(r"([A-Za-z][A-Za-z0-9_-]*)\s*:\s*(.*)")


@dataclass
class Section:
    """One %section: its name, the line of its %name line, its body lines."""

    name: str
    line: int  # of the %name line
    body: list[str] = field(default_factory=list)

    def text(self) -> str:
        """The body with surrounding blank lines dropped, ending in a newline."""
        lines = list(self.body)
        while lines and not lines[0].strip():
            lines.pop(0)
        while lines and not lines[-1].strip():
            lines.pop()
        return "\n".join(lines) + "\n" if lines else ""


@dataclass
class Parsed:
    """A .def file split up: header keywords, sections, and notices for the user."""

    header: dict[str, tuple[str, int]] = field(default_factory=dict)  # key -> (value, line)
    sections: dict[str, Section] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)


def def_error(source: str, line: int, problem: str, allowed: str = "") -> RecipeError:
    """The error naming the file and line of a .def."""
    return RecipeError(f"{source}:{line}", "", problem, allowed)


def split_def(text: str, source: str) -> Parsed:
    """Header lines and sections, with their line numbers."""
    parsed = Parsed()
    current: Section | None = None
    ended: int | None = None  # line of a %end that closed the last section
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        stripped = line.strip()
        match = _SECTION_RE.fullmatch(stripped)
        name = match.group(1).lower() if match else ""
        if match and name == "end":
            _end(parsed, current, match.group(2).strip(), number, source)
            current, ended = None, number
            continue
        known = name in USED_SECTIONS or name in IGNORED_SECTIONS or name.startswith("app")
        if match and (known or not line[:1].isspace()):
            if not known:
                raise def_error(
                    source,
                    number,
                    f"unknown section %{match.group(1)}",
                    ", ".join(f"%{s}" for s in (*USED_SECTIONS, *IGNORED_SECTIONS)),
                )
            current, ended = _section(parsed, name, match.group(2).strip(), number, source), None
            continue
        if current is not None:
            current.body.append(line)
            continue
        if ended is not None and stripped and not stripped.startswith("#"):
            raise def_error(
                source,
                number,
                f"text after %end (line {ended}) outside any section",
                "a %section line, a comment or a blank line",
            )
        _header_line(parsed, stripped, number, source)
    if "Bootstrap" not in parsed.header:
        raise def_error(source, 1, "no `Bootstrap:` header", ", ".join(BOOTSTRAPS))
    return parsed


def _header_line(parsed: Parsed, stripped: str, number: int, source: str) -> None:
    """One line before the first section: `Key: value` (any case), a comment or blank."""
    canonical = {k.lower(): k for k in HEADER_KEYS}
    if distro := _DISTRO_COMMENT.fullmatch(stripped):
        parsed.header["Distro"] = (distro.group(1), number)
        return
    if not stripped or stripped.startswith("#"):
        return
    head = _HEADER_RE.fullmatch(stripped)
    if head is None:
        raise def_error(
            source,
            number,
            f"expected a header line `Key: value` or a %section, found {stripped[:60]!r}",
        )
    key = canonical.get(head.group(1).lower())
    other = head.group(1).lower() in {k.lower() for k in OTHER_KEYS} or head.group(
        1
    ).lower().startswith("otherurl")
    if key is None and other:
        parsed.notices.append(
            f"{source}:{number}: {head.group(1)} ignored (not used by netroot's builder)"
        )
        return
    if key is None:
        raise def_error(
            source,
            number,
            f"unknown header keyword {head.group(1)!r}",
            ", ".join(HEADER_KEYS + OTHER_KEYS),
        )
    if key in parsed.header:
        raise def_error(
            source, number, f"{key} given twice (first on line {parsed.header[key][1]})"
        )
    if "Bootstrap" not in parsed.header and key != "Bootstrap":
        raise def_error(source, number, "the header must start with `Bootstrap:`")
    parsed.header[key] = (head.group(2).strip(), number)


def _end(parsed: Parsed, current: Section | None, args: str, number: int, source: str) -> None:
    """A kickstart-style %end: the section ends here rather than at the next one."""
    if current is None or args:
        raise def_error(
            source,
            number,
            "%end outside a section"
            if current is None
            else f"%end {args}: %end takes no arguments",
        )
    parsed.notices.append(
        f"{source}:{number}: %end closes %{current.name} (a kickstart "
        "habit; sections end at the next %section line)"
    )


def _section(parsed: Parsed, name: str, args: str, number: int, source: str) -> Section:
    section = Section(name, number)
    if name in USED_SECTIONS:
        if args:
            raise def_error(
                source,
                number,
                f"%{name} {args}: section arguments are not supported "
                f"(%post runs with /bin/sh -e, %files copies from the build host)",
            )
        if name in parsed.sections:
            raise def_error(
                source,
                number,
                f"a second %{name} section (the first is on line {parsed.sections[name].line})",
            )
        parsed.sections[name] = section
    else:
        why = IGNORED_SECTIONS.get(name, "apps are a container feature")
        parsed.notices.append(f"{source}:{number}: %{name} ignored ({why})")
    return section


def header_value(parsed: Parsed, key: str, osversion: str) -> str | None:
    """A header value with %{OSVERSION} filled in; None if the header does not set it."""
    if key not in parsed.header:
        return None
    return parsed.header[key][0].replace("%{OSVERSION}", osversion)


def header_line(parsed: Parsed, key: str) -> int:
    """The line that sets key (the Bootstrap line if none does), for messages."""
    return parsed.header.get(key, ("", parsed.header["Bootstrap"][1]))[1]

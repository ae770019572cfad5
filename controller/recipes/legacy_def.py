"""Legacy Singularity/Apptainer `.def` recipes, read into the native model.

The header (`Bootstrap: yum|dnf|debootstrap`, `OSVersion`, `MirrorURL` with
`%{OSVERSION}`, `UpdateURL`, `Include`, `GPG`) becomes a native recipe
(debootstrap -> mmdebstrap, yum and dnf -> dnf); `%files` becomes its files
and `%post` its post script. `%setup` (run on the host with SINGULARITY_ROOTFS
and APPTAINER_ROOTFS set) and `%environment` (sourced by login shells on the
node) travel beside it in a DefRecipe. Sections a diskless node has no use for
(`%runscript`, `%startscript`, `%test`, `%labels`, `%help`, `%app*`) are
ignored with a notice. Every error names the file and the line.

A `.def` does not say which rpm distribution it installs; netroot reads it
from words in MirrorURL (rocky, alma, centos, fedora) or from a header comment
`# netroot-distro: rocky` (a comment, so Singularity and Apptainer, which
refuse unknown header keywords, still accept the file).

The original live_netroot recipes (Singularity 2.x, CentOS 7/8, Fedora 28-32)
load as they are: header keywords in any case (`BootStrap`), a kickstart-style
`%end` closing a section (with a notice), end-of-life releases when MirrorURL
names where their packages are now (with a notice giving the rpm database
format the release implies), and a warning naming each %post line that pipes a
plaintext password to passwd.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from controller.core.errors import RecipeError
from controller.core.model import first_error
from controller.recipes import distros
from controller.recipes.def_syntax import (
    BOOTSTRAPS,
    USED_SECTIONS,
    Parsed,
    Section,
    def_error,
    header_line,
    header_value,
    split_def,
)
from controller.recipes.models import DefRecipe, DnfRecipe, MmdebstrapRecipe

RPM_DISTROS = ("rocky", "alma", "centos-stream", "centos", "fedora")
# words in a MirrorURL that name the distribution, in the order they are tried
# ("centos" is CentOS Linux for its releases, 7 and 8, else CentOS Stream)
_URL_WORDS = (
    ("rocky", "rocky"),
    ("alma", "alma"),
    ("centos", "centos-stream"),
    ("fedora", "fedora"),
)
# `echo secret | passwd --stdin root`, `echo root:secret | chpasswd` (not -e)
_PIPED_PASSWORD = re.compile(r"\|\s*(?:\S*/)?(passwd|chpasswd)\b([^|;&]*)")
# native field -> the header keyword or section it comes from, for error messages
_HEADER_OF = {
    "release": "OSVersion",
    "packages": "Include",
    "mirror": "MirrorURL",
    "repositories": "MirrorURL",
    "distro": "netroot-distro",
    "files": "%files",
    "post": "%post",
}


def _deb_distro(release: str, source: str, line: int) -> str:
    for name in ("debian", "ubuntu"):
        if release in distros.DISTROS[name].releases:
            return name
    raise def_error(
        source,
        line,
        f"OSVersion {release!r} is not a Debian or Ubuntu release",
        f"{distros.DISTROS['debian'].allowed_releases()}; "
        f"{distros.DISTROS['ubuntu'].allowed_releases()}",
    )


def _rpm_distro(parsed: Parsed, mirror: str | None, source: str) -> str:
    if "Distro" in parsed.header:
        name = parsed.header["Distro"][0].lower()
        if name not in RPM_DISTROS:
            raise def_error(
                source,
                header_line(parsed, "Distro"),
                f"netroot-distro {name!r} is not built with dnf",
                ", ".join(RPM_DISTROS),
            )
        return name
    for word, name in _URL_WORDS:
        if mirror and word in mirror.lower():
            release = parsed.header["OSVersion"][0]
            linux = distros.DISTROS["centos"].eol_releases
            if name == "centos-stream" and release in linux and "stream" not in mirror.lower():
                return "centos"
            return name
    raise def_error(
        source,
        header_line(parsed, "MirrorURL"),
        "cannot tell the distribution from MirrorURL",
        f"a header comment `# netroot-distro: NAME`, NAME one of {', '.join(RPM_DISTROS)}",
    )


def _files(section: Section | None, root: Path, source: str) -> list[dict[str, str]]:
    """`%files` lines `SRC [DEST]`: SRC relative to the .def's directory, DEST default SRC."""
    copies: list[dict[str, str]] = []
    if section is None:
        return copies
    for offset, raw in enumerate(section.body, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        number = section.line + offset
        parts = line.split()
        if len(parts) > 2:
            raise def_error(
                source, number, "a %files line is `SOURCE [DESTINATION]` (no spaces in paths)"
            )
        if any(c in parts[0] for c in "*?["):
            raise def_error(
                source,
                number,
                f"{parts[0]}: wildcards in %files are not supported; name each file or a directory",
            )
        src = root / parts[0]
        if not src.exists():
            raise def_error(source, number, f"{parts[0]}: no such file (relative to {root})")
        dest = parts[1] if len(parts) == 2 else parts[0]
        dest = dest if dest.startswith("/") else f"/{dest}"
        if ".." in dest.split("/"):
            raise def_error(source, number, f"{dest}: a destination may not contain '..'")
        copies.append({"src": str(src), "dest": dest})
    return copies


def _native(parsed: Parsed, root: Path, source: str) -> MmdebstrapRecipe | DnfRecipe:
    bootstrap, boot_line = parsed.header["Bootstrap"][0].lower(), parsed.header["Bootstrap"][1]
    if bootstrap not in BOOTSTRAPS:
        raise def_error(
            source,
            boot_line,
            f"Bootstrap: {bootstrap} is not supported by netroot's builder",
            f'{", ".join(BOOTSTRAPS)}; or builder = "apptainer"',
        )
    if "OSVersion" not in parsed.header:
        raise def_error(source, boot_line, "OSVersion is required (the release to install)")
    release = parsed.header["OSVersion"][0]
    mirror = header_value(parsed, "MirrorURL", release)
    include = (header_value(parsed, "Include", release) or "").replace(",", " ").split()
    data: dict[str, Any] = {
        "release": release,
        "packages": include,
        "files": _files(parsed.sections.get("files"), root, source),
        "post": parsed.sections["post"].text() if "post" in parsed.sections else "",
    }
    lines = {
        "release": header_line(parsed, "OSVersion"),
        "packages": header_line(parsed, "Include"),
        "mirror": header_line(parsed, "MirrorURL"),
        "repositories": header_line(parsed, "MirrorURL"),
    }
    if bootstrap == "debootstrap":
        distro = (
            parsed.header["Distro"][0].lower()
            if "Distro" in parsed.header
            else _deb_distro(release, source, lines["release"])
        )
        data.update(builder="mmdebstrap", distro=distro, mirror=mirror)
        for key in ("UpdateURL", "GPG"):
            if key in parsed.header:
                parsed.notices.append(
                    f"{source}:{header_line(parsed, key)}: {key} ignored "
                    "(mmdebstrap checks the archive with the distribution's "
                    "keyring)"
                )
    else:
        data.update(builder="dnf", distro=_rpm_distro(parsed, mirror, source))
        data.update(_repositories(parsed, mirror, release, source))
        _end_of_life(parsed, data["distro"], release, source)
    model = MmdebstrapRecipe if data["builder"] == "mmdebstrap" else DnfRecipe
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = first_error(exc)
        key = err.loc[0] if err.loc else ""
        number = lines.get(
            key,
            parsed.sections["files"].line
            if key == "files" and "files" in parsed.sections
            else boot_line,
        )
        if key == "post" and "post" in parsed.sections:
            number = parsed.sections["post"].line
        message = err.problem
        if err.kind == "literal_error":
            message = f"{err.input!r} is not allowed here"
        name = _HEADER_OF.get(key, "%" + key if key in USED_SECTIONS else err.field)
        raise def_error(source, number, f"{name}: {message}") from None


def _repositories(parsed: Parsed, mirror: str | None, release: str, source: str) -> dict[str, Any]:
    """yum's MirrorURL and UpdateURL are repository baseurls, GPG the key checking both."""
    gpg = header_value(parsed, "GPG", release)
    repos = []
    for key, name in (("MirrorURL", "base"), ("UpdateURL", "updates")):
        url = header_value(parsed, key, release)
        if url is not None:
            repos.append({"name": name, "baseurl": url, **({"gpgkey": gpg} if gpg else {})})
    if "UpdateURL" in parsed.header and mirror is None:
        raise def_error(source, header_line(parsed, "UpdateURL"), "UpdateURL needs a MirrorURL")
    if repos and gpg is None:
        parsed.notices.append(
            f"{source}:{header_line(parsed, 'MirrorURL')}: no GPG key given: "
            "packages are not signature-checked (as Singularity did)"
        )
    return {"repositories": repos, "gpgcheck": gpg is not None or not repos}


def _end_of_life(parsed: Parsed, distro: str, release: str, source: str) -> None:
    """A release past its end of life: only from the named mirror, and say what it implies."""
    info = distros.get(distro)
    why = info.eol(release)
    if why is None:
        return
    line = header_line(parsed, "OSVersion")
    if "MirrorURL" not in parsed.header:
        raise def_error(
            source,
            line,
            f"OSVersion {release}: {why}; its packages are no longer on the distribution's mirrors",
            "MirrorURL naming where they are (an archive or a local copy)",
        )
    backend, path = distros.rpmdb_backend(info, release), distros.rpmdb_path(info, release)
    parsed.notices.append(
        f"{source}:{line}: {why}: built from MirrorURL only; its rpm database "
        f"is {backend} in {path} (the build host's rpm must write {backend})"
    )


def _password_warnings(section: Section | None, source: str) -> list[str]:
    """Lines of %post piping a plaintext password to passwd or chpasswd (not a crypt hash)."""
    found: list[str] = []
    if section is None:
        return found
    for offset, raw in enumerate(section.body, start=1):
        line = raw.strip()
        match = _PIPED_PASSWORD.search(line)
        if line.startswith("#") or match is None:
            continue
        tool, args = match.group(1), match.group(2).split()
        if tool == "chpasswd" and ({"-e", "--encrypted"} & set(args)):
            continue  # a crypt hash, as the shipped recipes do
        found.append(
            f"{source}:{section.line + offset}: %post pipes a plaintext password to "
            f"{tool}: anyone who reads the recipe knows it (use `echo 'root:HASH' | "
            "chpasswd -e` with a hash from `openssl passwd -6`)"
        )
    return found


def parse_def(text: str, *, source: str, root: Path) -> DefRecipe:
    """A .def file's text as a DefRecipe built by netroot's own backends.

    root is the directory %files sources are relative to (the .def's own).
    """
    parsed = split_def(text, source)
    native = _native(parsed, root, source)
    return DefRecipe(
        builder="def",
        definition=Path(source),
        bootstrap=parsed.header["Bootstrap"][0].lower(),
        native=native,
        setup=parsed.sections["setup"].text() if "setup" in parsed.sections else "",
        environment=(
            parsed.sections["environment"].text() if "environment" in parsed.sections else ""
        ),
        notices=tuple(parsed.notices),
        warnings=tuple(_password_warnings(parsed.sections.get("post"), source)),
        lines={name: section.line for name, section in parsed.sections.items()},
    )


def load_def(path: Path) -> DefRecipe:
    """Read and parse a .def file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecipeError(str(path), "", "recipe file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(str(path), "", f"cannot read: {exc}") from None
    return parse_def(text, source=str(path), root=path.resolve().parent)

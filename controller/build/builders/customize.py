"""What a recipe does after its packages are installed, for every package backend.

Files copied in, locale, timezone, root password, services, then the post
script, in that order. Host-side writes go through `ImageRoot` (never through
a symlink out of the image); everything else runs inside the image through
`chroot.run` copy-on-write (the tree shares inodes with the package-stage
cache and older versions). Failures name the recipe and the field that caused
them.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

from controller.build.builders import chroot
from controller.build.overlays import OverlayItem, apply_overlays
from controller.core.errors import ProcessError, RecipeError
from controller.recipes import FileCopy, PackageRecipe
from controller.store.safepath import ImageRoot

Say = Callable[[str], None]
POST_SCRIPT_DIR = "tmp"


def file_items(copy: FileCopy, source: str) -> list[OverlayItem]:
    """The overlay items that put one recipe file (or directory tree) at its destination."""
    src = copy.src
    dest = copy.dest.strip("/")
    try:
        st = src.lstat()
    except FileNotFoundError:
        raise RecipeError(source, "files", f"{src} does not exist") from None
    mode = int(copy.mode, 8) if copy.mode else None
    if stat.S_ISREG(st.st_mode):
        return [OverlayItem(dest, "file", src, mode if mode is not None else st.st_mode)]
    if not stat.S_ISDIR(st.st_mode):
        raise RecipeError(source, "files", f"{src} is neither a file nor a directory")
    items = [OverlayItem(dest, "dir", src, mode if mode is not None else st.st_mode)]
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = f"{dest}/{path.relative_to(src).as_posix()}"
            pst = path.lstat()
            if stat.S_ISDIR(pst.st_mode):
                items.append(OverlayItem(rel, "dir", path, pst.st_mode))
            elif stat.S_ISLNK(pst.st_mode):
                items.append(OverlayItem(rel, "symlink", path, target=os.readlink(path)))
            elif stat.S_ISREG(pst.st_mode):
                items.append(OverlayItem(rel, "file", path, pst.st_mode))
            else:
                raise RecipeError(source, "files", f"{path}: only files, dirs and symlinks")
    return items


def copy_files(root: Path, recipe: PackageRecipe, source: str) -> int:
    """Copy the recipe's files into the image, owned by root; returns the entries written."""
    items = [item for copy in recipe.files for item in file_items(copy, source)]
    return apply_overlays(root, items, {}) if items else 0


def _in_image(
    root: Path,
    argv: list[str],
    *,
    log_file: Path,
    source: str,
    field: str,
    what: str,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
) -> None:
    try:
        chroot.run(root, argv, log_file=log_file, stdin=stdin, env=env, copy_on_write=True)
    except ProcessError as exc:
        raise RecipeError(
            source, field, f"{what} failed with status {exc.returncode} (see the build log)"
        ) from None


def set_locale(root: Path, recipe: PackageRecipe, locale: str, log_file: Path, source: str) -> None:
    """Default locale: /etc/default/locale (Debian) or /etc/locale.conf, generated if possible."""
    line = f"LANG={locale}\n".encode()
    with ImageRoot(root) as image:
        image.write_bytes("etc/locale.conf", line)
        if recipe.info.family == "deb":
            image.write_bytes("etc/default/locale", line)
    gen = root / "etc" / "locale.gen"
    if recipe.info.family == "deb" and gen.is_file() and not locale.startswith(("C", "POSIX")):
        charset = locale.split(".", 1)[1] if "." in locale else "ISO-8859-1"
        with ImageRoot(root) as image:
            image.write_bytes("etc/locale.gen", f"{locale} {charset}\n".encode())
        _in_image(
            root,
            ["locale-gen"],
            log_file=log_file,
            source=source,
            field="locale",
            what="locale-gen",
        )


def set_timezone(root: Path, recipe: PackageRecipe, zone: str, source: str) -> None:
    """/etc/localtime -> the zone file (which the image must have: tzdata)."""
    if not (root / "usr/share/zoneinfo" / zone).is_file():
        raise RecipeError(
            source,
            "timezone",
            f"/usr/share/zoneinfo/{zone} is not in the image",
            "a zone of the image's tzdata (add tzdata to packages)",
        )
    with ImageRoot(root) as image:
        image.replace_symlink("etc/localtime", f"/usr/share/zoneinfo/{zone}", uid=0, gid=0)
        if recipe.info.family == "deb":
            image.write_bytes("etc/timezone", f"{zone}\n".encode())


def set_root_password(root: Path, recipe: PackageRecipe, log_file: Path, source: str) -> None:
    """chpasswd inside the image; the secret goes through stdin, never argv."""
    if recipe.root_password_hash is not None:
        _in_image(
            root,
            ["chpasswd", "--encrypted"],
            log_file=log_file,
            source=source,
            field="root_password_hash",
            what="chpasswd",
            stdin=f"root:{recipe.root_password_hash}\n".encode(),
        )
    elif recipe.root_password is not None:
        _in_image(
            root,
            ["chpasswd"],
            log_file=log_file,
            source=source,
            field="root_password",
            what="chpasswd",
            stdin=f"root:{recipe.root_password}\n".encode(),
        )


def set_services(root: Path, recipe: PackageRecipe, log_file: Path, source: str) -> None:
    """systemctl enable / disable inside the image (offline: no running systemd needed)."""
    for verb, units in (("enable", recipe.services.enable), ("disable", recipe.services.disable)):
        if units:
            _in_image(
                root,
                ["systemctl", verb, *units],
                log_file=log_file,
                source=source,
                field=f"services.{verb}",
                what=f"systemctl {verb}",
            )


def run_post(
    root: Path, recipe: PackageRecipe, log_file: Path, source: str, env: dict[str, str]
) -> None:
    """The post script, written into the image's /tmp and run with `sh -e`, then removed."""
    name = f"{POST_SCRIPT_DIR}/netroot-post-{uuid.uuid4().hex[:8]}.sh"
    with ImageRoot(root) as image:
        image.ensure_dir(POST_SCRIPT_DIR, mode=0o1777, uid=0, gid=0)
        image.write_bytes(name, recipe.post.encode(), mode=0o700)
    try:
        _in_image(
            root,
            ["/bin/sh", "-e", f"/{name}"],
            log_file=log_file,
            source=source,
            field="post",
            what="the post script",
            env=env,
        )
    finally:
        with ImageRoot(root) as image:
            image.remove(name)


def customize(
    root: Path,
    recipe: PackageRecipe,
    *,
    log_file: Path,
    source: str,
    say: Say,
    env: dict[str, str] | None = None,
) -> None:
    """Every post-package step the recipe asks for, in order."""
    if recipe.files:
        say(f"copying {len(recipe.files)} file entries into the image")
        copy_files(root, recipe, source)
    if recipe.locale:
        say(f"locale {recipe.locale}")
        set_locale(root, recipe, recipe.locale, log_file, source)
    if recipe.timezone:
        say(f"timezone {recipe.timezone}")
        set_timezone(root, recipe, recipe.timezone, source)
    if recipe.root_password_hash is not None or recipe.root_password is not None:
        say("root password")
        set_root_password(root, recipe, log_file, source)
    if recipe.services.enable or recipe.services.disable:
        say(
            f"services: {len(recipe.services.enable)} enabled, "
            f"{len(recipe.services.disable)} disabled"
        )
        set_services(root, recipe, log_file, source)
    if recipe.post.strip():
        say("running the post script")
        run_post(root, recipe, log_file, source, env or {})

"""The named steps of a build, each over the shared BuildContext, in pipeline order:
resolve, stage, base, overlays, boot, version, manifest, verify, commit."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import structlog

from controller.build import cpio as initramfs
from controller.build import secretscan
from controller.build.builders import BuildRequest, builder_for, chroot, cow
from controller.build.context import BuildContext, Unchanged
from controller.build.overlays import apply_overlays, overlay_digest, record_parents, scan_overlays
from controller.config.models import LabelConfig
from controller.core.errors import BuildError, ProcessError, UnsafePathError, VerifyError
from controller.recipes import distros, load_recipe
from controller.render.cmdline import INITRD_NAME, KERNEL_NAME  # the names menus serve
from controller.store import fsops, liveedits, treeindex
from controller.store import versions as store
from controller.store.layout import new_version_id
from controller.store.manifest import BootArtifact, Manifest
from controller.store.safepath import ImageRoot

log = structlog.get_logger(component="build")

VERSION_FILE = "etc/netroot/version"
HEALTH_FILE = "etc/netroot/health"
DEFAULT_HEALTH = LabelConfig.model_fields["health"].default


def health_file(command: str) -> bytes:
    """/etc/netroot/health: the label's health command, one line the agent runs with sh -c."""
    return f"{' '.join(command.split())}\n".encode()


def step_resolve(ctx: BuildContext) -> None:
    """Load the recipe and work out the key of its base tree.

    For an overlay-only version (the watcher saw only overlay edits) the active
    version's base is taken as is, without fingerprinting the builder's inputs.
    """
    ctx.recipe_path = ctx.config.recipe_path(ctx.label)
    ctx.recipe = load_recipe(ctx.recipe_path, allow_plaintext_password=ctx.insecure_test_password)
    ctx.builder = builder_for(ctx.recipe, base_dir=ctx.config.base_dir)
    active = store.active_version(ctx.paths) if ctx.overlays_only else None
    if active is not None:
        key = store.read_manifest(ctx.paths, active).base_key
        if (ctx.paths.base(key) / store.INDEX_NAME).is_file():
            ctx.base_key = key
            return
    ctx.base_key = ctx.builder.input_key(ctx.recipe, ctx.recipe_path)


def step_stage(ctx: BuildContext) -> None:
    """Create the staging directory on the store's filesystem, and the build log."""
    ctx.log_file.parent.mkdir(parents=True, exist_ok=True)
    ctx.log_file.touch(mode=0o600)  # build output may quote secrets of the image
    (ctx.staging / "boot").mkdir(parents=True)
    ctx.rootfs.mkdir()


def step_base(ctx: BuildContext) -> None:
    """Clone the cached base tree for this key, or run the builder and cache its tree."""
    cached = ctx.paths.base(ctx.base_key)
    rw = ctx.config.label(ctx.label).rw
    if not ctx.rebuild and (cached / store.INDEX_NAME).is_file() and _base_intact(ctx, cached, rw):
        ctx.say(f"reusing base tree {cached.name[:12]} (inputs unchanged)")
        ctx.rootfs.rmdir()
        index_bytes = (cached / store.INDEX_NAME).read_bytes()
        ctx.base_digest = treeindex.digest(index_bytes)
        # Parse the index while cp clones the tree: cp runs in its own process.
        with ThreadPoolExecutor(max_workers=1) as pool:
            parsed = pool.submit(treeindex.parse, index_bytes)
            cow.version_tree(cached / "rootfs", ctx.rootfs, rw=rw)
            ctx.index = parsed.result()
        ctx.reused_base = True
        return
    request = BuildRequest(
        # what to build
        label=ctx.label,
        build_id=ctx.build_id,
        recipe=ctx.recipe,
        recipe_path=ctx.recipe_path,
        base_dir=ctx.config.base_dir,
        rebuild=ctx.rebuild,
        # where
        rootfs=ctx.rootfs,
        log_file=ctx.log_file,
        cache_dir=ctx.config.state_dir / "cache",
    )
    ctx.builder.build(request, ctx.say)
    ctx.say("indexing the base tree")
    ctx.index = treeindex.scan(ctx.rootfs)
    _snapshot_base(ctx, cached)
    if rw:
        # The builder's tree now shares inodes with the cache (and perhaps the
        # package-stage cache): the rw version gets its own copy of it.
        fsops.remove_tree(ctx.rootfs)
        cow.version_tree(cached / "rootfs", ctx.rootfs, rw=True)


def _base_intact(ctx: BuildContext, cached: Path, rw: bool) -> bool:
    """Whether the cached base may seed this version; an rw label's is hashed first.

    Stores of older netroots hard-linked caches into rw versions whose nodes
    wrote through them: such a cache is rebuilt, never copied into a version.
    """
    if not rw:
        return True
    ctx.say(f"checking base tree {cached.name[:12]} (every file hashed: rw label)")
    try:
        store.verify_base(cached)
    except VerifyError as exc:
        ctx.say(f"base tree differs from its index, rebuilding it: {exc}")
        log.warning("base tree written in place", label=ctx.label, error=str(exc))
        return False
    return True


def _snapshot_base(ctx: BuildContext, cached: Path) -> None:
    """Keep the pre-overlay tree (hard links: no data copied) for overlay-only versions."""
    tmp = ctx.paths.staging / f"base-{ctx.build_id}"
    fsops.clone_tree(ctx.rootfs, tmp / "rootfs")
    index_bytes = treeindex.render(ctx.index)
    ctx.base_digest = treeindex.digest(index_bytes)
    (tmp / store.INDEX_NAME).write_bytes(index_bytes)
    fsops.remove_tree(cached)
    cached.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, cached)


def strip_host_keys(ctx: BuildContext) -> None:
    """ssh host keys made by the package scripts: each node makes its own at boot
    (base/ netroot-hostkeys.service); baked in, every node would share one private key
    readable by the whole subnet."""
    keys = [path for path in ctx.index if secretscan.is_host_key(path)]
    with ImageRoot(ctx.rootfs, ctx.image_name) as image:
        for path in keys:
            image.remove(path)
            del ctx.index[path]
    if keys:
        ctx.say(f"removed {len(keys)} ssh host key file(s): nodes make their own at boot")


def step_overlays(ctx: BuildContext) -> None:
    """Apply overlays/common and overlays/<label> (or the label's list) over the base."""
    strip_host_keys(ctx)
    dirs = [ctx.config.overlays_dir / name for name in ctx.config.overlay_names(ctx.label)]
    ctx.overlay_items = scan_overlays(dirs)
    ctx.overlay_digest = overlay_digest(ctx.overlay_items)
    count = apply_overlays(ctx.rootfs, ctx.overlay_items, ctx.index, ctx.image_name)
    ctx.say(
        f"{count} overlay entries from {', '.join(d.name for d in dirs if d.is_dir()) or 'none'}"
    )


_KVER = re.compile(r"vmlinuz-(.+)")


def _find_kernel(ctx: BuildContext, image: ImageRoot) -> tuple[str, str, str]:
    """(kernel path, initrd path, kernel version) inside rootfs.

    Every path, from the recipe or from the image's /boot and its symlinks,
    resolves inside the image (RESOLVE_IN_ROOT): `kernel = "../../x"` or a
    /boot linking to a host directory finds nothing on the host.
    """
    recipe = ctx.recipe
    kernel = getattr(recipe, "kernel", None)
    initrd = getattr(recipe, "initrd", None)
    where = f"{ctx.recipe_path}: kernel" if kernel is not None else f"{ctx.label}: kernel"
    if kernel is None:
        try:
            names = sorted(n for n in image.listdir("boot") if _KVER.fullmatch(n))
        except UnsafePathError:
            names = []  # no /boot directory inside the image
        if not names:
            raise VerifyError(f"{ctx.label}: no kernel in /boot of the image (vmlinuz-VERSION)")
        kernel = f"boot/{names[-1]}"
    try:
        # The version is named by the file the path resolves to (/vmlinuz -> boot/vmlinuz-V).
        match = _KVER.fullmatch(Path(image.resolve_file(kernel)).name)
    except UnsafePathError as exc:
        raise VerifyError(f"{where} {kernel!r}: {exc}") from None
    kver = match.group(1) if match else "unknown"
    if initrd is None:
        for candidate in (f"boot/initrd.img-{kver}", f"boot/initramfs-{kver}.img"):
            with contextlib.suppress(UnsafePathError):
                image.resolve_file(candidate)
                initrd = candidate
                break
        else:
            raise VerifyError(f"{ctx.label}: no initramfs for kernel {kver} in /boot of the image")
    return kernel.lstrip("/"), initrd.lstrip("/"), kver


BOOT_MODE = 0o644  # TFTP and HTTP servers read them as their own unprivileged users


def _boot_artifact(ctx: BuildContext, image: ImageRoot, source: str, name: str) -> BootArtifact:
    """Copy source out of the image into boot/: a new inode in the servers' mode, never a
    link to the image's file (shared with the cache, other versions, or, through a
    hostile symlink, the host)."""
    try:
        size, sha = image.copy_out(source, ctx.staging / "boot" / name, mode=BOOT_MODE)
    except UnsafePathError as exc:
        raise VerifyError(f"{ctx.label}: boot file {source!r}: {exc}") from None
    return BootArtifact(name=name, source=source, size=size, sha256=sha)


LABEL_INITRD = "netroot-label-initrd.img"  # at the image's top: no directory to follow


def step_boot(ctx: BuildContext) -> None:
    """Take kernel and initramfs out of the tree into boot/."""
    modules = ctx.config.label(ctx.label).initramfs_modules
    with ImageRoot(ctx.rootfs, ctx.image_name) as image:
        kernel, initrd, ctx.kernel_version = _find_kernel(ctx, image)
        ctx.kernel = _boot_artifact(ctx, image, kernel, KERNEL_NAME)
        if modules:
            initrd = _label_initramfs(ctx, ctx.kernel_version, modules)
        try:
            ctx.initrd = _boot_artifact(ctx, image, initrd, INITRD_NAME)
        finally:
            if modules:
                (ctx.rootfs / LABEL_INITRD).unlink(missing_ok=True)  # never part of the tree
    _check_initrd(ctx, initrd)
    ctx.say(
        f"kernel {ctx.kernel_version}, initramfs"
        f" {ctx.initrd.size / 1e6:.1f} MB{' with ' + ' '.join(modules) if modules else ''}"
    )


def _label_initramfs(ctx: BuildContext, kver: str, modules: tuple[str, ...]) -> str:
    """The initramfs made again with the label's initramfs_modules; its path in the image."""
    ctx.say(f"making the initramfs again with {' '.join(modules)} (labels.{ctx.label})")
    argv = distros.dracut_argv(kver, f"/{LABEL_INITRD}", add_drivers=modules)
    try:
        # The tree shares inodes with the base cache: changes reach it by rename only.
        chroot.run(ctx.rootfs, argv, log_file=ctx.log_file, copy_on_write=True)
    except ProcessError as exc:
        raise BuildError(
            "boot", f"dracut with initramfs_modules failed with status {exc.returncode}"
        ) from None
    return LABEL_INITRD


def _check_initrd(ctx: BuildContext, source: str) -> None:
    """Anyone on the boot network can fetch the initramfs: refuse one carrying a secret."""
    listing = initramfs.read(ctx.staging / "boot" / INITRD_NAME)
    found = secretscan.scan_members(listing.members)
    if found:
        shown = ", ".join(f"/{f.path} ({f.why})" for f in found[:5])
        raise VerifyError(
            f"{ctx.label}: the initramfs /{source} carries secrets served to anyone over"
            f" TFTP: {shown}; keep them out of dracut's install_items"
        )
    if listing.unreadable:
        ctx.say(f"initramfs not checked for secrets: {listing.unreadable}")


def _boot_artifacts(ctx: BuildContext) -> tuple[BootArtifact, BootArtifact]:
    if ctx.kernel is None or ctx.initrd is None:
        raise BuildError("boot", "kernel and initramfs were not found before this step")
    return ctx.kernel, ctx.initrd


def _boot_digest(ctx: BuildContext) -> str:
    kernel, initrd = _boot_artifacts(ctx)
    return hashlib.sha256(f"{kernel.sha256}\n{initrd.sha256}\n".encode()).hexdigest()


def step_version(ctx: BuildContext) -> None:
    """Name the version after time and content, and write /etc/netroot/version into it."""
    ctx.index.pop(VERSION_FILE, None)
    ctx.index.pop(HEALTH_FILE, None)
    health = health_file(ctx.config.label(ctx.label).health)
    # Base content, overlay content, boot files and the baked health check
    # determine the tree: hashing their digests names the content without
    # rendering the index twice.
    parts: tuple[str, ...] = (ctx.base_digest, ctx.overlay_digest, _boot_digest(ctx))
    if health != health_file(DEFAULT_HEALTH):  # the default keeps the ids it always had
        parts += (hashlib.sha256(health).hexdigest(),)
    content = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    if not ctx.force and _same_as_active(ctx, content):
        raise Unchanged
    ctx.version = new_version_id(datetime.now(UTC), content)
    with ImageRoot(ctx.rootfs, ctx.image_name) as image:
        image.ensure_dir("etc/netroot", mode=0o755, uid=0, gid=0)
        path, sha = image.write_bytes(VERSION_FILE, f"{ctx.version}\n".encode())
        ctx.index[path] = treeindex.entry(image.lstat(path), sha)
        record_parents(image, path, ctx.index)
        # The node's health check (canary rollouts): the agent runs this file's
        # command on the enumerated `health` command; the network never names one.
        path, sha = image.write_bytes(HEALTH_FILE, health)
        ctx.index[path] = treeindex.entry(image.lstat(path), sha)


def _same_as_active(ctx: BuildContext, content: str) -> bool:
    """The active version has this content (its id's hash, overlays and boot files) and
    was never edited in place (by `shell --live`, or by the node of an rw label)."""
    if ctx.config.label(ctx.label).rw:
        return False  # its node edits the active version in place: never "identical"
    active = store.active_version(ctx.paths)
    if active is None or not active.endswith(f"-{content[:8]}"):
        return False
    manifest = store.read_manifest(ctx.paths, active)
    if (manifest.overlay_digest, manifest.boot_digest) != (ctx.overlay_digest, _boot_digest(ctx)):
        return False
    if liveedits.count(ctx.paths, active) != 0:
        return False
    ctx.unchanged = active
    return True


def step_manifest(ctx: BuildContext) -> None:
    """Write files.idx and manifest.json into the staged version."""
    kernel, initrd = _boot_artifacts(ctx)
    index_bytes = treeindex.render(ctx.index)
    fsops.write_atomic(ctx.staging / store.INDEX_NAME, index_bytes, 0o600)  # hashes of secrets
    count, size = treeindex.totals(ctx.index)
    ctx.manifest = Manifest(
        version=ctx.version,
        label=ctx.label,
        created=datetime.now(UTC),
        builder=ctx.builder.name,
        recipe=str(ctx.recipe_path),
        recipe_sha256=treeindex.file_sha256(ctx.recipe_path),
        base_key=ctx.base_key,
        overlay_digest=ctx.overlay_digest,
        parent=store.active_version(ctx.paths),
        kernel_version=ctx.kernel_version,
        kernel=kernel,
        initrd=initrd,
        boot_digest=_boot_digest(ctx),
        tree_digest=treeindex.digest(index_bytes),
        file_count=count,
        size_bytes=size,
        build_id=ctx.build_id,
    )
    fsops.write_atomic(
        ctx.staging / "manifest.json", ctx.manifest.model_dump_json(indent=2).encode() + b"\n"
    )


def step_verify(ctx: BuildContext) -> None:
    """The staged version must verify before it may be committed."""
    store.verify_tree(ctx.staging, ctx.written_manifest(), depth="index")


def step_commit(ctx: BuildContext) -> None:
    """Flush the staged tree, then rename it into images/<label>/<version>."""
    fsops.syncfs(ctx.staging)
    os.rename(ctx.staging, ctx.paths.version(ctx.version))
    fsops.fsync_dir(ctx.paths.images)

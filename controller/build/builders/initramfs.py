"""The initramfs, generated inside the image for the image's own kernels (any backend)."""

from __future__ import annotations

from pathlib import Path

from controller.build.builders import Progress, chroot
from controller.core.errors import NetrootError, ProcessError, UnsafePathError
from controller.recipes import distros
from controller.store.safepath import ImageRoot


def kernel_versions(root: Path) -> list[str]:
    """Versions of the kernels in the image's /boot (vmlinuz-VERSION), /boot resolved
    inside the image: a /boot linking to a host directory lists nothing of the host."""
    with ImageRoot(root) as image:
        try:
            names = sorted(image.listdir("boot"))
        except UnsafePathError:
            names = []
    return [n.removeprefix("vmlinuz-") for n in names if n.startswith("vmlinuz-")]


def make_initramfs(root: Path, distro: distros.Distro, log_file: Path, say: Progress) -> list[str]:
    """Run dracut inside the image for each of its kernels; returns the kernel versions."""
    kvers = kernel_versions(root)
    if not kvers:
        raise NetrootError("no kernel in /boot of the image after package installation")
    for kver in kvers:
        say(f"generating the initramfs for kernel {kver} (dracut, inside the image)")
        try:
            chroot.run(
                root,
                distros.dracut_argv(kver, distros.initrd_path(distro, kver)),
                log_file=log_file,
            )
        except ProcessError as exc:
            raise NetrootError(
                f"dracut failed for kernel {kver} with status {exc.returncode}"
            ) from None
    return kvers

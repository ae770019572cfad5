"""Cold `netroot build debian12` against plain mmdebstrap, and a post-script-only rebuild.

Targets: cold build at most 1.10 x plain mmdebstrap with the same package set
and hooks (base/ copied in before packages configure, dracut with NFS and
network inside the image), and a rebuild after a post-script-only change at
most 0.10 x the cold build. Both cold runs download from the Debian mirror
mmdebstrap picks by default, in this same run. Takes several minutes.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO

from controller.recipes import load_recipe
from controller.recipes.models import PackageRecipe


def _netroot(config: Path, *args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "controller", "--config", str(config), *args],
        check=True,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def _plain_mmdebstrap(recipe: PackageRecipe, target: Path) -> float:
    """mmdebstrap by hand: same packages, base/ in a setup hook, dracut in a customize hook."""
    base = shlex.quote(str(REPO / "base"))
    dracut = (
        'for k in $(ls "$1/lib/modules"); do chroot "$1" dracut -N --force '
        '--add "nfs network" --kver "$k" "/boot/initrd.img-$k"; done'
    )
    argv = [
        "mmdebstrap",
        "--mode=root",
        "--variant=apt",
        f"--include={','.join(recipe.package_set)}",
        f'--setup-hook=mkdir -p "$1" && tar -C {base} -c . | tar -C "$1" -x',
        f"--customize-hook={dracut}",
        recipe.suite,
        str(target),
    ]
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    """Print the three timings and both ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: /var/tmp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir or "/var/tmp", prefix="netroot-bench-") as tmp:
        work = Path(tmp)
        shutil.copytree(REPO / "recipes", work / "recipes")
        config = work / "netroot.toml"
        config.write_text(
            f'state_dir = "state"\nrecipes_dir = "recipes"\nbase_dir = "{REPO / "base"}"\n'
            'overlays_dir = "overlays"\nexport_root = "export"\ntftp_root = "tftp"\n'
            '[labels.debian12]\nrecipe = "debian12.toml"\n'
        )
        recipe = load_recipe(work / "recipes" / "debian12.toml")
        if not isinstance(recipe, PackageRecipe):
            raise SystemExit("debian12.toml is not a package recipe")
        plain = _plain_mmdebstrap(recipe, work / "plain-root")
        cold = _netroot(config, "build", "debian12")
        recipe_file = work / "recipes" / "debian12.toml"
        recipe_file.write_text(
            recipe_file.read_text().replace(
                'post = """', 'post = """\necho bench-edit > /etc/bench-edit'
            )
        )
        post_only = _netroot(config, "build", "debian12")
        print(f"plain mmdebstrap (same packages and hooks): {plain:7.1f} s")
        print(f"netroot build debian12, cold:               {cold:7.1f} s")
        print(f"netroot build after a post-only change:     {post_only:7.1f} s")
        print(f"cold / plain mmdebstrap: {cold / plain:.2f} (target <= 1.10)")
        print(f"post-only rebuild / cold: {post_only / cold:.2f} (target <= 0.10)")


if __name__ == "__main__":
    main()

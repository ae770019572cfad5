"""Where netroot's shipped data is, and where its state goes by default.

The one home of both rules. The shipped data (the recipes, the base/ tree
every image gets, the config and systemd examples) is package data under
controller/shipped/, read through importlib.resources: the same code finds
it in a checkout and in an installed wheel. State goes under the checkout's
./var when netroot runs from a checkout, else /var/lib/netroot for root and
the XDG state directory (~/.local/state/netroot) for anyone else.
"""

from __future__ import annotations

import os
import site
import sysconfig
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from controller.core.errors import NetrootError

PACKAGE = "controller"
SHIPPED = ("recipes", "base", "config", "systemd")
SYSTEM_STATE = Path("/var/lib/netroot")
StateRule = Literal["checkout", "root", "user"]
# The rules in words, for `netroot status`.
RULES: dict[StateRule, str] = {
    "checkout": "./var of the checkout netroot runs from",
    "root": f"{SYSTEM_STATE}: run as root, not from a checkout",
    "user": "the XDG state directory: run as a user, not from a checkout",
}


def package_dir() -> Path:
    """The directory of the controller package."""
    found = resources.files(PACKAGE)
    # pip installs unzipped, and the builders hand base/ to tar and the watcher
    # to inotify: both need a real directory, not a Traversable inside a zip.
    if not isinstance(found, Path) or not found.is_dir():
        raise NetrootError(
            f"the netroot package is at {found}, not in a directory; install it with pip"
        )
    return found


def shipped_dir() -> Path:
    """The directory of the shipped data."""
    return package_dir() / "shipped"


def shipped(name: str) -> Path:
    """One part of the shipped data: recipes, base, config or systemd."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped data named {name!r}; allowed: {', '.join(SHIPPED)}")
    return shipped_dir() / name


def checkout() -> Path | None:
    """The source checkout the package runs from (pyproject.toml and .git beside it), or None."""
    top = package_dir().parent
    if (top / "pyproject.toml").is_file() and (top / ".git").exists():
        return top
    return None


@dataclass(frozen=True)
class DefaultState:
    """Where the built-in defaults keep state, and which rule chose it."""

    state_dir: Path  # images/, cache/, logs/, netroot.db
    var: Path  # overlays/, export/, tftp/
    rule: StateRule


def default_state() -> DefaultState:
    """./var of a checkout; else /var/lib/netroot as root, else the XDG state directory."""
    top = checkout()
    if top is not None:
        return DefaultState(top / "var" / "lib", top / "var", "checkout")
    if os.geteuid() == 0:
        return DefaultState(SYSTEM_STATE, SYSTEM_STATE, "root")
    xdg = os.environ.get("XDG_STATE_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    base = Path(xdg) if Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return DefaultState(base / "netroot", base / "netroot", "user")


def import_path() -> Path | None:
    """What a child interpreter needs on PYTHONPATH to import this package.

    None when it is installed where sys.executable looks anyway (its
    site-packages); the directory holding the package when it runs from a
    checkout that was never installed.
    """
    top = package_dir().parent.resolve()
    paths = sysconfig.get_paths()
    found = [paths["purelib"], paths["platlib"], *site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        found.append(site.getusersitepackages())
    return None if top in {Path(p).resolve() for p in found} else top

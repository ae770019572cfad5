"""dnsmasq for netroot nodes: its config from `[dhcp]`, and the dhcp-script wrapper.

dnsmasq's `dhcp-script=` takes a bare executable path and runs it as
`SCRIPT add|old|del MAC IP [HOSTNAME]`; the wrapper written here turns that
into `netroot hook dhcp ...`, which queues the lease durably for the daemon.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from controller.config.models import BUILTIN, Config
from controller.core import shipped
from controller.core.errors import ConfigError
from controller.core.model import first_error
from controller.render import DnsmasqSpec, render_dnsmasq
from controller.render.cmdline import GENERATED
from controller.store import fsops


def hook_script(config: Config) -> Path:
    """The executable dnsmasq runs for every lease."""
    return config.dhcp.hook_script or config.state_dir / "bin" / "dhcp-hook"


def hook_wrapper(config: Config, python: str = sys.executable) -> str:
    """The one-line wrapper: this interpreter running `netroot hook dhcp "$@"`."""
    argv = [python, "-m", "controller"]
    if config.source != BUILTIN:
        argv += ["--config", os.fspath(Path(config.source).resolve())]
    command = shlex.join([*argv, "hook", "dhcp"])
    # An installed package imports by itself; one run from a checkout never
    # pip-installed needs the checkout on PYTHONPATH.
    where = shipped.import_path()
    env = "" if where is None else f"PYTHONPATH={shlex.quote(os.fspath(where))} "
    return f'#!/bin/sh\n# {GENERATED}\n{env}exec {command} "$@"\n'


def dnsmasq_spec(config: Config, *, tftp_root: Path | None = None) -> DnsmasqSpec:
    """The DnsmasqSpec of the `[dhcp]` table; a ConfigError naming the field if it is wrong."""
    dhcp = config.dhcp
    try:
        return DnsmasqSpec(
            mode=dhcp.mode,
            network=dhcp.network,
            server=config.server,
            tftp_root=os.fspath(tftp_root or config.tftp_root),
            dhcp_script=os.fspath(hook_script(config)),
            range_start=dhcp.range_start,
            range_end=dhcp.range_end,
            router=dhcp.router,
            interface=dhcp.interface,
            lease_time=dhcp.lease_time,
            lease_file=os.fspath(dhcp.lease_file) if dhcp.lease_file else None,
        )
    except ValidationError as exc:
        err = first_error(exc)
        field = f"dhcp.{err.field}" if err.field else "dhcp"
        raise ConfigError(config.source, field, err.problem) from None


def render_config(config: Config) -> str:
    """The dnsmasq config file text."""
    return render_dnsmasq(dnsmasq_spec(config))


@dataclass(frozen=True)
class DhcpFiles:
    """What write_files wrote."""

    config_file: Path
    hook: Path


def write_files(config: Config, *, config_file: Path | None = None) -> DhcpFiles:
    """Write the dnsmasq config and the hook wrapper (rendered in full before either is written)."""
    text = render_config(config)
    wrapper = hook_wrapper(config)
    target = config_file or config.dhcp.config_file
    hook = hook_script(config)
    fsops.write_atomic(hook, wrapper.encode(), mode=0o755)
    fsops.write_atomic(target, text.encode())
    return DhcpFiles(target, hook)


def dnsmasq_argv(config_file: Path, pid_file: Path, *, lease_file: Path | None = None) -> list[str]:
    """dnsmasq in the foreground on one config file, logging to stderr (tests, `netroot`)."""
    argv = [
        "dnsmasq",
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        f"--conf-file={os.fspath(config_file)}",
        f"--pid-file={os.fspath(pid_file)}",
        "--log-facility=-",
    ]
    if lease_file is not None:
        argv.append(f"--dhcp-leasefile={os.fspath(lease_file)}")
    return argv

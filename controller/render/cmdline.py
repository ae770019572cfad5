"""What a node boots: the boot target model, its kernel command line, and MAC forms.

Everything here is pure. `boot_target` turns the config, a label and the
version to serve into a `BootTarget`; every boot loader renders from that
model only, so pxelinux, iPXE and GRUB always agree on the command line.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Literal

from pydantic import Field, model_validator

from controller.config.models import TFTP_LINK_DIR, TFTP_VERSIONS_DIR, Config, listen_address
from controller.core.errors import ConfigError, StoreError
from controller.core.ids import (
    HOST_ALLOWED,
    VERSION_ID_ALLOWED,
    check_host,
    check_mac,
    is_host,
    is_version_id,
    valid_label,
    valid_version_id,
)
from controller.core.model import Model

# One character class for every word of the command line: it holds nothing
# that pxelinux, iPXE (`${`), GRUB (quotes, `$`, `;`, `#`, wildcards) or a
# config file (newlines) would interpret, so each loader can write the words
# verbatim and all three boot exactly the same command line.
ARG_RE = re.compile(r"[A-Za-z0-9_.,:=/+@%~^!-]+")
ARG_ALLOWED = "words of letters, digits and _ . , : = / + @ % ~ ^ ! -"

# NFS root paths also go into `nfs4:server:path[:options]`, so no `:` or `,`;
# the same rule keeps export and Ganesha config files free of quoting.
PATH_RE = re.compile(r"/[A-Za-z0-9_./+@%~-]*")
PATH_ALLOWED = "an absolute path of letters, digits and _ . / + @ % ~ -"

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
NAME_ALLOWED = "1-63 of A-Z a-z 0-9 . _ -, starting with a letter or digit"

# Boot files as the TFTP root serves them: <tftp_root>/netroot/<label> links to
# the active version's files (the store swaps that link).
TFTP_DIR = TFTP_LINK_DIR
# Menus name each version's files through <tftp_root>/netroot/_versions/<label>/<version>/
# (hard links to that version's boot/ files, kept by controller.store.activation): the
# menu alone switches a node to a new version, so a node that read the old menu
# just before an activation still gets the kernel and initramfs that match it.
KERNEL_NAME = "vmlinuz"
INITRD_NAME = "initrd.img"

# Over HTTP (controller.serve.httpboot) a version's files are /boot/LABEL/VERSION/NAME.
BOOT_URL_DIR = "boot"

DEBUG_ARGS = ("rd.debug", "console=ttyS0,115200")

NfsServer = Literal["ganesha", "kernel"]


def _require(ok: bool, what: str, value: object, allowed: str) -> None:
    # Model validators report through pydantic; the message names value and rule.
    if not ok:
        raise ValueError(f"invalid {what} {value!r} (allowed: {allowed})")


class BootTarget(Model):
    """One label's served version as every boot loader sees it."""

    label: str
    version: str
    server: str
    nfs_path: str
    rw: bool = False
    debug: bool = False
    extra_cmdline: tuple[str, ...] = ()
    rootovlcfg: tuple[str, ...] = ()
    mqtt_host: str | None = None
    mqtt_port: int = Field(1883, ge=1, le=65535)
    # seconds between agent heartbeats; None: the agent's own default (60)
    heartbeat: int | None = Field(None, ge=0, le=86400)
    kernel_path: str
    initrd_path: str
    # where iPXE loads kernel and initramfs over HTTP (server:http_port); None: TFTP
    http_port: int | None = Field(None, ge=1, le=65535)

    @model_validator(mode="after")
    def _words_are_safe(self) -> BootTarget:
        valid_label(self.label)
        valid_version_id(self.version)
        for host in (self.server, self.mqtt_host):
            _require(host is None or is_host(host), "host", host, HOST_ALLOWED)
        for path in (self.nfs_path, "/" + self.kernel_path, "/" + self.initrd_path):
            _require(PATH_RE.fullmatch(path) is not None, "path", path, PATH_ALLOWED)
        for word in self.extra_cmdline:
            _require(ARG_RE.fullmatch(word) is not None, "kernel argument", word, ARG_ALLOWED)
        for name in self.rootovlcfg:
            _require(NAME_RE.fullmatch(name) is not None, "rootovlcfg name", name, NAME_ALLOWED)
        return self


MAC_FILE_ID_PATTERN = r"01(-[0-9a-f]{2}){6}"  # what mac_file_id makes


def mac_file_id(mac: str) -> str:
    """The `01-aa-bb-cc-dd-ee-ff` form (ARP type 1, Ethernet) loaders look up per client."""
    return "01-" + check_mac(mac).replace(":", "-")


def host_in_url(host: str) -> str:
    """A host as it appears before `:port` or `:path`: IPv6 addresses in brackets."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"[{host}]" if address.version == 6 else host


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _split_cmdline(text: str, source: str, field: str) -> tuple[str, ...]:
    words = tuple(text.split())
    for word in words:
        if not ARG_RE.fullmatch(word):
            problem = f"kernel argument {word!r} has a character boot loaders would interpret"
            raise ConfigError(source, field, problem, ARG_ALLOWED)
    return words


def boot_url(target: BootTarget, name: str) -> str:
    """The HTTP URL of one of the target's boot files (target.http_port must be set)."""
    return (
        f"http://{host_in_url(target.server)}:{target.http_port}"
        f"/{BOOT_URL_DIR}/{target.label}/{target.version}/{name}"
    )


def version_boot_dir(label: str, version: str) -> str:
    """The version's boot files, relative to the TFTP root."""
    return f"{TFTP_VERSIONS_DIR}/{label}/{version}"


def _nfs_path(config: Config, label: str, version: str, nfs: NfsServer | None) -> str:
    if (nfs or config.nfs.server) == "ganesha":
        # Ganesha exports every version under its own pseudo path (ganesha.py),
        # so the command line pins the version the menu names.
        return f"/{label}/{version}"
    path = str(config.export_link(label))
    if not PATH_RE.fullmatch(path):
        field = f"labels.{label}.export_path" if config.label(label).export_path else "export_root"
        raise ConfigError(config.source, field, f"invalid NFS export path {path!r}", PATH_ALLOWED)
    return path


def _node_broker(config: Config, node_server: str, override: str | None) -> str | None:
    if override is not None:
        return check_host(override, config.source, "mqtt.host")
    if not config.mqtt.enabled:
        return None  # no broker: tell the agent none rather than a dead address
    # The controller's own broker address is often loopback, which a node
    # cannot reach; nodes then use the boot server, the address they use for
    # everything else (docs/design.md §7, `server`).
    if _is_local(config.mqtt.host):
        return node_server
    return check_host(config.mqtt.host, config.source, "mqtt.host")


def boot_target(
    config: Config,
    label: str,
    version: str | None,
    *,
    server: str | None = None,
    mqtt_host: str | None = None,
    mqtt_port: int | None = None,
    nfs: NfsServer | None = None,
) -> BootTarget:
    """Build the BootTarget of a label's version; raise if there is nothing valid to serve.

    server, mqtt_host, mqtt_port and nfs (the NFS server kind) override the
    config, for a test VM that reaches everything through forwarded ports.
    """
    label_config = config.label(label)
    if not version:
        raise StoreError(f"label {label!r} has no version to serve: build and activate one first")
    if not is_version_id(version):
        raise StoreError(
            f"invalid version id {version!r} for label {label!r} (allowed: {VERSION_ID_ALLOWED})"
        )
    source = config.source
    node_server = check_host(server or config.server, source, "server")
    extra = _split_cmdline(label_config.extra_cmdline, source, f"labels.{label}.extra_cmdline")
    for name in label_config.rootovlcfg:
        if not NAME_RE.fullmatch(name):
            problem = f"invalid configuration tree name {name!r}"
            raise ConfigError(source, f"labels.{label}.rootovlcfg", problem, NAME_ALLOWED)
    boot_dir = version_boot_dir(label, version)
    target = BootTarget(
        label=label,
        version=version,
        server=node_server,
        nfs_path=_nfs_path(config, label, version, nfs),
        rw=label_config.rw,
        debug=label_config.debug,
        extra_cmdline=extra,
        rootovlcfg=label_config.rootovlcfg,
        mqtt_host=_node_broker(config, node_server, mqtt_host),
        mqtt_port=mqtt_port or config.mqtt.port,
        heartbeat=_heartbeat(config.heartbeat_interval),
        kernel_path=f"{boot_dir}/{KERNEL_NAME}",
        initrd_path=f"{boot_dir}/{INITRD_NAME}",
        http_port=listen_address(config.boot_http.listen)[1] if config.boot_http.enabled else None,
    )
    _check_length(target, source, f"labels.{label}.extra_cmdline")
    return target


# x86 COMMAND_LINE_SIZE is 2048 bytes with the terminating NUL; the kernel
# silently cuts the rest, and the netroot.* arguments come last.
CMDLINE_MAX = 2047


def _check_length(target: BootTarget, source: str, field: str) -> None:
    # Loaders add words of their own: pxelinux BOOT_IMAGE= and initrd=.
    added = len(f"BOOT_IMAGE=/{target.kernel_path} initrd=/{target.initrd_path} ")
    length = len(kernel_cmdline(target).encode()) + added
    if length > CMDLINE_MAX:
        problem = (
            f"the kernel command line would be {length} bytes; x86 truncates it past"
            f" {CMDLINE_MAX} and would drop the netroot.* arguments"
        )
        raise ConfigError(source, field, problem, f"a command line of at most {CMDLINE_MAX} bytes")


def kernel_cmdline(target: BootTarget) -> str:
    """The kernel command line for a target (docs/design.md §7)."""
    args = [f"root=nfs4:{host_in_url(target.server)}:{target.nfs_path}"]
    args.append("rw" if target.rw else "ro")
    args += ["rd.neednet=1", "ip=dhcp"]
    if not target.rw:
        args.append("rootovl")
    if target.rootovlcfg:
        args.append("rootovlcfg=" + ",".join(target.rootovlcfg))
    if target.debug:
        args += DEBUG_ARGS
    args += target.extra_cmdline
    args += [f"netroot.label={target.label}", f"netroot.version={target.version}"]
    if target.mqtt_host is not None:
        args.append(f"netroot.mqtt={host_in_url(target.mqtt_host)}:{target.mqtt_port}")
        if target.heartbeat is not None:
            args.append(f"netroot.heartbeat={target.heartbeat}")
    return " ".join(args)


AGENT_HEARTBEAT_S = 60  # what the agent uses when the command line names none


def _heartbeat(interval: float) -> int | None:
    """netroot.heartbeat for the agent, or None when its default already matches.

    The controller's heartbeat_timeout counts on this interval, so a node must
    be told when the config differs from the agent's default.
    """
    seconds = round(interval)
    if interval > 0 and seconds == 0:
        seconds = 1  # the agent counts whole seconds; 0 would turn heartbeats off
    return None if seconds == AGENT_HEARTBEAT_S else seconds


GENERATED = "Generated by netroot: edits are lost the next time netroot renders this file."


def boot_menu(targets: Iterable[BootTarget], default: str) -> tuple[BootTarget, ...]:
    """Targets in label order; raise StoreError if the default has none or a label repeats."""
    by_label: dict[str, BootTarget] = {}
    for target in targets:
        if target.label in by_label:
            raise StoreError(f"label {target.label!r} is given twice to one boot menu")
        by_label[target.label] = target
    if default not in by_label:
        raise StoreError(f"label {default!r} has no version to serve: build and activate one first")
    return tuple(by_label[label] for label in sorted(by_label))

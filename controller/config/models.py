"""Controller configuration: frozen pydantic models with one-line errors.

Reading a file or the built-in defaults into them is controller.config.load.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import socket
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

from controller.core.errors import ConfigError
from controller.core.ids import Host, ServerName, TopicPrefix, check_label, valid_label
from controller.core.model import Model

BUILTIN = "built-in defaults"


CLIENTS_ALLOWED = "networks like 10.0.2.0/24, or '*' written explicitly"
# <tftp_root>/TFTP_LINK_DIR/<label> links to the active version's boot files,
# which live in TFTP_VERSIONS_DIR/<label>/<version>/ (controller.store.activation).
# Labels cannot start with "_", so the name never clashes with a label's link.
TFTP_LINK_DIR = "netroot"
TFTP_VERSIONS_DIR = f"{TFTP_LINK_DIR}/_versions"


def client_network_problem(net: str) -> str | None:
    """Why net cannot be an NFS client list entry, or None when it can."""
    if net == "*":
        return None  # the world, allowed only when written explicitly
    try:
        network = ipaddress.ip_network(net, strict=False)
    except ValueError:
        return f"{net!r} is not a network like 10.0.0.0/16 or '*'"
    if network.prefixlen == 0:
        # The README promises no world export unless '*' is listed.
        return f"{net!r} is the whole world: write '*' to export to every client"
    return None


def _split_args(value: Any) -> Any:
    # EXTRA_QEMU was a shell string in the original label file; keep accepting it.
    return tuple(shlex.split(value)) if isinstance(value, str) else value


ArgList = Annotated[tuple[str, ...], BeforeValidator(_split_args)]


class MqttConfig(Model):
    """Broker connection for events; disabled means events stay in the outbox and the log."""

    enabled: bool = True
    host: Host = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    topic_prefix: TopicPrefix = "netroot"
    username: str | None = None
    password_file: Path | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: int = Field(30, ge=5, le=3600)
    outbox_limit: int = Field(100_000, ge=100)
    status_interval: float = Field(
        30.0, ge=0.5, le=3600, description="seconds between refreshes of the retained status"
    )


def listen_address(listen: str) -> tuple[str, int]:
    """(host, port) of an `http.listen` value like 127.0.0.1:9650 or [::1]:9650."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{listen!r} is not an address like 127.0.0.1:9650 or [::1]:9650")
    host = host.removeprefix("[").removesuffix("]")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{listen!r}: {host!r} is not an IP address or localhost") from None
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach host (an address listen_address accepted)."""
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


class Listener(Model):
    """An HTTP listener of the daemon: `listen` is host:port, "" turns it off."""

    listen: str = ""

    @field_validator("listen")
    @classmethod
    def _address(cls, value: str) -> str:
        if value:
            listen_address(value)
        return value

    @property
    def enabled(self) -> bool:
        """Whether the daemon listens here at all."""
        return bool(self.listen)


class HttpConfig(Listener):
    """The daemon's HTTP server: /metrics and the read-only API (docs/design.md §12)."""

    listen: str = Field(
        "127.0.0.1:9650",
        description='host:port; "" turns the server off; other than loopback needs token_file',
    )
    token_file: Path | None = Field(
        None, description="bearer token every request must carry (not readable by others)"
    )


class BootHttpConfig(Listener):
    """Kernel and initramfs over HTTP for iPXE nodes: a listener of its own, no API, no token."""

    listen: str = Field(
        "",
        description='host:port nodes reach (iPXE menus use `server` and this port); "" is off',
    )


def _server_name() -> str:
    # The host's own name, made a valid server name: the first label, lowercased.
    name = re.sub(r"[^a-z0-9._-]", "-", socket.gethostname().split(".")[0].lower()).strip("-._")
    return name[:63] or "boot-server"


Role = Literal["primary", "replica"]
ROLES: tuple[Role, ...] = get_args(Role)


class ReplicationConfig(Model):
    """Two or more boot servers, one primary building, replicas following (docs/design.md §17)."""

    role: Role = Field(
        "primary", description="primary builds; replica follows the primary (`serve --role`)"
    )
    name: ServerName = Field(
        default_factory=_server_name,
        description="this server's name in replica acknowledgements and events (default: host)",
    )
    primary_url: str = Field(
        "", description="replica: the primary's [http] address, like http://10.0.0.1:9650"
    )
    token_file: Path | None = Field(None, description="replica: the primary's bearer token file")
    replicas_required: int = Field(
        0,
        ge=0,
        le=64,
        description="primary: activate only once this many replicas hold the version",
    )
    ack_timeout: float = Field(
        900.0, gt=0, le=86400, description="primary: seconds a daemon activation waits for them"
    )
    retry_interval: float = Field(
        30.0, ge=1, le=3600, description="replica: seconds between attempts after a failed fetch"
    )

    @field_validator("primary_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not re.fullmatch(r"https?://[A-Za-z0-9.:\[\]_-]+(:\d{1,5})?/?", value):
            raise ValueError(f"{value!r} is not an address like http://10.0.0.1:9650")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _replica_needs_primary(self) -> ReplicationConfig:
        if self.role == "replica" and not self.primary_url:
            raise ValueError("a replica needs primary_url, the primary's [http] address")
        return self


class NfsConfig(Model):
    """How root trees are exported to nodes."""

    server: Literal["ganesha", "kernel"] = "ganesha"
    clients: tuple[str, ...] = ("10.0.2.0/24",)
    insecure: bool = False
    port: int = Field(2049, ge=1, le=65535)
    exports_file: Path = Path("/etc/exports.d/netroot.exports")
    ganesha_config: Path = Path("/etc/ganesha/netroot.conf")
    manage: bool = Field(
        False,
        description="write exports_file or ganesha_config and reload the server on every "
        "activation and gc (off: a checkout or a test never touches /etc)",
    )
    ganesha_pidfile: Path = Field(
        Path("/run/ganesha/ganesha.pid"), description="the running ganesha.nfsd, sent SIGHUP"
    )

    @field_validator("clients")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Both servers read an export without a client list as open to everyone.
        if not value:
            raise ValueError(f"no client network configured (allowed: {CLIENTS_ALLOWED})")
        for net in value:
            problem = client_network_problem(net)
            if problem is not None:
                raise ValueError(problem)
        return value


class NodeConfig(Model):
    """One node's boot override, keyed by its MAC: it boots this label, not the default."""

    label: str


class DhcpConfig(Model):
    """dnsmasq for netroot nodes: DHCP (full, or proxy beside another server) and TFTP."""

    enabled: bool = Field(False, description="`netroot install` writes config_file")
    mode: Literal["full", "proxy"] = "proxy"
    network: str = "10.0.2.0/24"
    range_start: str | None = None
    range_end: str | None = None
    router: str | None = None
    interface: str | None = None
    lease_time: str = "12h"
    config_file: Path = Path("/etc/dnsmasq.d/netroot.conf")
    hook_script: Path | None = Field(None, description="default: <state_dir>/bin/dhcp-hook")
    lease_file: Path | None = None


KERNEL_MODULE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class LabelConfig(Model):
    """One configured system: the original tool's label file entry, and more."""

    recipe: str = Field(description="recipe file, relative to recipes_dir (RECIPE)")
    rw: bool = Field(False, description="serve read-write to a single node, no tmpfs overlay (RW)")
    debug: bool = Field(False, description="rd.debug and a serial console (DEBUG)")
    extra_cmdline: str = Field("", description="appended to the kernel command line")
    extra_qemu: ArgList = Field((), description="extra qemu arguments for `netroot boot`")
    export_path: Path | None = Field(None, description="export link, default export_root/LABEL")
    tftp_root: Path | None = Field(None, description="TFTP root for this label (TFTPBOOT)")
    keep_versions: int = Field(3, ge=1, le=1000)
    overlays: tuple[str, ...] | None = Field(
        None, description="overlay directories applied in order; default common then LABEL"
    )
    rootovlcfg: tuple[str, ...] = ()
    initramfs_modules: tuple[str, ...] = Field(
        (),
        description="kernel modules this label's nodes need in the initramfs beyond the lean"
        " set (a NIC driver, say); the version's initramfs is made again with them",
    )
    activation: Literal["auto", "manual", "canary"] = Field(
        "auto",
        description="after a daemon build: auto activates, manual waits for `netroot activate`,"
        " canary tries the version on canary_count nodes first (`activate --canary`)",
    )
    # canary rollouts (issue 12)
    canary_count: int = Field(1, ge=1, le=1000, description="canaries of activation = canary")
    canary_timeout: float = Field(
        900.0, gt=0, le=86400, description="seconds for every canary to boot and pass its check"
    )
    health: str = Field(
        "systemctl is-system-running",
        min_length=1,
        max_length=1024,
        description="the node's health check, baked into each version as /etc/netroot/health;"
        " the agent runs it (sh -c) only on the enumerated `health` command",
    )
    auto_remount: bool = Field(
        True, description="tell a node whose tree changed in place to remount / on its own"
    )
    auto_reboot: bool = Field(
        False, description="tell a node running an outdated version to reboot (kills its jobs)"
    )

    @field_validator("initramfs_modules")
    @classmethod
    def _module_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not KERNEL_MODULE_RE.fullmatch(name):
                raise ValueError(
                    f"invalid kernel module name {name!r} (allowed: letters, digits, _ and -)"
                )
        return value

    @field_validator("overlays")
    @classmethod
    def _overlay_names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for name in value or ():
            valid_label(name, "overlay name")
        return value


class Config(Model):
    """The whole controller configuration."""

    state_dir: Path = Path("var/lib")
    recipes_dir: Path = Path("recipes")
    overlays_dir: Path = Path("var/overlays")
    base_dir: Path = Path("base")
    export_root: Path = Path("var/export")
    tftp_root: Path = Path("var/tftp")
    server: Host = "10.0.2.2"
    mqtt: MqttConfig = MqttConfig()
    http: HttpConfig = HttpConfig()
    boot_http: BootHttpConfig = BootHttpConfig()
    nfs: NfsConfig = NfsConfig()
    labels: dict[str, LabelConfig] = Field(default_factory=dict)
    nodes: dict[str, NodeConfig] = Field(
        default_factory=dict, description='per-MAC boot overrides: [nodes."aa:bb:cc:dd:ee:ff"]'
    )
    dhcp: DhcpConfig = DhcpConfig()
    replication: ReplicationConfig = ReplicationConfig()
    max_parallel_builds: int = Field(1, ge=1, le=64, description="labels the daemon builds at once")
    debounce_quiet: float = Field(
        1.0, gt=0, le=600, description="seconds without edits before the daemon builds"
    )
    debounce_max_latency: float = Field(
        10.0, gt=0, le=3600, description="seconds from the first edit after which it builds anyway"
    )
    heartbeat_interval: float = Field(
        60.0,
        ge=0,
        le=86400,
        description="seconds between node agent heartbeats (the agent's netroot.heartbeat, "
        "60 unless the kernel command line says otherwise); 0: agents send none",
    )
    heartbeat_timeout: float | None = Field(
        None,
        gt=0,
        le=7 * 86400,
        description="seconds of silence after which a running node becomes lost; "
        "default three heartbeat intervals, never with heartbeats off",
    )
    node_expiry: float = Field(
        7 * 86400.0,
        gt=0,
        description="seconds of silence after which a node that is not running and not "
        "listed in [nodes] is forgotten (its retained state cleared)",
    )
    max_nodes: int = Field(
        20_000, ge=1, le=1_000_000, description="nodes tracked at most; reports of new ones wait"
    )
    resync_rate: float = Field(
        200.0, gt=0, le=100_000, description="`report` commands per second after a reconnect"
    )
    resync_grace: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="seconds a node has to answer `report` before a will held across a "
        "broker restart makes it lost",
    )
    last_seen_refresh: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="the retained node state's last_seen lags the newest report by at most this",
    )
    events_retention: float = Field(
        7 * 86400.0,
        gt=0,
        description="seconds the event journal keeps an event (`netroot events --since`)",
    )
    events_limit: int = Field(
        500_000,
        ge=1000,
        le=100_000_000,
        description="events the journal keeps at most: the oldest go first",
    )
    source: str = Field(BUILTIN, exclude=True, description="where this config came from")

    @property
    def silence_timeout(self) -> float | None:
        """Seconds of silence that make a running node lost; None: silence is never judged."""
        if self.heartbeat_timeout is not None:
            return self.heartbeat_timeout
        return 3 * self.heartbeat_interval if self.heartbeat_interval > 0 else None

    def label(self, name: str) -> LabelConfig:
        """The label's config, or a ConfigError listing the configured labels."""
        check_label(name)
        try:
            return self.labels[name]
        except KeyError:
            known = ", ".join(sorted(self.labels)) or "none configured"
            raise ConfigError(self.source, f"labels.{name}", "no such label", known) from None

    def overlay_names(self, name: str) -> tuple[str, ...]:
        """Overlay directories for a label, in the order they apply."""
        configured = self.label(name).overlays
        return configured if configured is not None else ("common", name)

    def recipe_path(self, name: str) -> Path:
        """The label's recipe file."""
        return self.recipes_dir / self.label(name).recipe

    def export_link(self, name: str) -> Path:
        """The symlink NFS exports for the label."""
        return self.label(name).export_path or self.export_root / name

    def label_tftp_root(self, name: str) -> Path:
        """The TFTP root that serves the label's boot files."""
        return self.label(name).tftp_root or self.tftp_root

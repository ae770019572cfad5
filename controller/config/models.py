"""Controller configuration: frozen pydantic models, built-in defaults, one-line errors.

A config file is TOML. Relative paths are taken relative to the file's
directory. The built-in defaults take recipes and base/ from the package's
shipped data and keep state where controller.core.shipped says (./var of a
checkout, else /var/lib/netroot as root), so a first run needs no file in /etc.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
)

from controller.core import shipped
from controller.core.errors import ConfigError
from controller.core.ids import Host, TopicPrefix, check_label, check_mac, valid_label
from controller.core.model import Model, first_error, read_toml

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
    activation: Literal["auto", "manual"] = "auto"
    auto_remount: bool = Field(
        True, description="tell a node whose tree changed in place to remount / on its own"
    )
    auto_reboot: bool = Field(
        False, description="tell a node running an outdated version to reboot (kills its jobs)"
    )

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
    nfs: NfsConfig = NfsConfig()
    labels: dict[str, LabelConfig] = Field(default_factory=dict)
    nodes: dict[str, NodeConfig] = Field(
        default_factory=dict, description='per-MAC boot overrides: [nodes."aa:bb:cc:dd:ee:ff"]'
    )
    dhcp: DhcpConfig = DhcpConfig()
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


DEFAULT_LABELS: dict[str, dict[str, Any]] = {
    "debian12": {"recipe": "debian12.toml"},
}


def builtin_paths() -> dict[str, Path]:
    """The paths of the built-in defaults: shipped data from the package, state by the rule."""
    state = shipped.default_state()
    return {
        "state_dir": state.state_dir,
        "recipes_dir": shipped.shipped("recipes"),
        "overlays_dir": state.var / "overlays",
        "base_dir": shipped.shipped("base"),
        "export_root": state.var / "export",
        "tftp_root": state.var / "tftp",
    }


def _first_error(exc: ValidationError, source: str, model: type[BaseModel]) -> ConfigError:
    err = first_error(exc)
    unknown = err.kind == "extra_forbidden"
    allowed = ", ".join(_fields_at(model, list(err.loc[:-1]))) if unknown else ""
    return ConfigError(source, err.field, err.in_file, allowed)


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the model found at a location, for an 'allowed' hint."""
    current: Any = model
    for part in loc:
        if current is Config and part in ("labels", "nodes"):
            current = dict if part == "labels" else list  # a table keyed by label or MAC
        elif current is dict:
            current = LabelConfig
        elif current is list:
            current = NodeConfig
        elif isinstance(current, type) and issubclass(current, BaseModel):
            annotation = current.model_fields[part].annotation
            current = annotation if isinstance(annotation, type) else None
        if current is None:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [n for n, f in current.model_fields.items() if not f.exclude]
    return []


def _resolve(data: dict[str, Any], root: Path) -> dict[str, Any]:
    """Make path keys absolute relative to root (the config file's directory).

    Top-level paths and each label's export_path and tftp_root; a value of
    the wrong type is left for validation to report.
    """
    out = dict(data)
    for key, field in Config.model_fields.items():
        if field.annotation is Path:
            value = out.get(key, field.default)
            if isinstance(value, (str, Path)):
                out[key] = root / Path(value)
    labels = out.get("labels")
    if isinstance(labels, dict):
        resolved = {}
        for name, table in labels.items():
            if isinstance(table, dict):
                paths = {
                    key: root / Path(table[key])
                    for key in ("export_path", "tftp_root")
                    if isinstance(table.get(key), str)
                }
                resolved[name] = {**table, **paths}
            else:
                resolved[name] = table
        out["labels"] = resolved
    return out


def parse_config(data: dict[str, Any], *, source: str, root: Path) -> Config:
    """Validate a config mapping; paths resolved against root."""
    labels = data.get("labels")
    for name in labels if isinstance(labels, dict) else ():
        check_label(str(name), source, f"labels.{name}")
    try:
        config = Config.model_validate({**_resolve(data, root), "source": source})
    except ValidationError as exc:
        raise _first_error(exc, source, Config) from None
    except RecursionError:
        raise ConfigError(source, "", "values nested too deeply") from None
    _check_nodes(config)
    _check_link_paths(config)
    return config


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def _check_link_paths(config: Config) -> None:
    """Export links never share a path with each other or with the TFTP side.

    An export link inside a TFTP root's link directory would be overwritten
    by the TFTP link of the same name (and served over TFTP).
    """
    tftp_dirs = {config.label_tftp_root(name) / TFTP_LINK_DIR for name in config.labels}
    owners: dict[Path, str] = {}
    for name in sorted(config.labels):
        field = f"labels.{name}.export_path" if config.labels[name].export_path else "export_root"
        link = Path(os.path.normpath(config.export_link(name)))
        for tftp_dir in sorted(tftp_dirs):
            if _inside(link, Path(os.path.normpath(tftp_dir))) or _inside(
                Path(os.path.normpath(tftp_dir)), link
            ):
                problem = f"export link {link} overlaps the TFTP link directory {tftp_dir}"
                raise ConfigError(config.source, field, problem, "a path outside every tftp_root")
        if link in owners:
            problem = f"export link {link} is also the export link of label {owners[link]!r}"
            raise ConfigError(config.source, field, problem, "one export path per label")
        owners[link] = name


def _check_nodes(config: Config) -> None:
    """Per-MAC overrides: canonical MAC keys, each naming a configured label."""
    for mac, node in config.nodes.items():
        field = f'nodes."{mac}"'
        check_mac(mac, config.source, field)
        if node.label not in config.labels:
            known = ", ".join(sorted(config.labels)) or "none configured"
            problem = f"label {node.label!r} is not configured"
            raise ConfigError(config.source, f"{field}.label", problem, known)


def load_config(path: Path | None = None) -> Config:
    """Load the config named by path, NETROOT_CONFIG, or the built-in defaults."""
    if path is None and os.environ.get("NETROOT_CONFIG"):
        path = Path(os.environ["NETROOT_CONFIG"])
    if path is None:
        paths = builtin_paths()
        data = {**paths, "labels": DEFAULT_LABELS}
        return parse_config(data, source=BUILTIN, root=paths["state_dir"])
    data = read_toml(path, "config file")
    try:
        return parse_config(data, source=str(path), root=path.resolve().parent)
    except (TypeError, ValueError, RecursionError) as exc:
        # Last line of defence: whatever a hostile file does, one line naming it.
        raise ConfigError(str(path), "", f"invalid config: {exc}") from None

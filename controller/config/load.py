"""Loading a config: a TOML file or the built-in defaults, checked across fields.

Relative paths are taken relative to the file's directory. The built-in
defaults take recipes and base/ from the package's shipped data and keep
state where controller.core.shipped says (./var of a checkout, else
/var/lib/netroot as root), so a first run needs no file in /etc. Every
problem is one ConfigError naming the file and the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from controller.config.models import (
    BUILTIN,
    TFTP_LINK_DIR,
    Config,
    LabelConfig,
    NodeConfig,
    is_loopback,
    listen_address,
)
from controller.core import shipped
from controller.core.errors import ConfigError
from controller.core.ids import check_label, check_mac
from controller.core.model import first_error, read_toml

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
    http = out.get("http")
    if isinstance(http, dict) and isinstance(http.get("token_file"), str):
        out["http"] = {**http, "token_file": root / Path(http["token_file"])}
    replication = out.get("replication")
    if isinstance(replication, dict) and isinstance(replication.get("token_file"), str):
        out["replication"] = {
            **replication,
            "token_file": root / Path(replication["token_file"]),
        }
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
    _check_http(config)
    if config.replication.role == "replica" and not config.mqtt.enabled:
        problem = "a replica follows its primary through the broker"
        raise ConfigError(config.source, "mqtt.enabled", problem, "true on a replica")
    return config


def _check_http(config: Config) -> None:
    """Only loopback may listen without a bearer token."""
    http = config.http
    if http.enabled and http.token_file is None:
        host, _ = listen_address(http.listen)
        if not is_loopback(host):
            problem = f"{http.listen!r} is reachable from other machines without http.token_file"
            raise ConfigError(
                config.source, "http.listen", problem, "a loopback address, or set http.token_file"
            )


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


ROLE_ENV = "NETROOT_ROLE"  # `netroot serve --role`: the daemon, its reloads and children


def _with_role(data: dict[str, Any], serving: str | None) -> dict[str, Any]:
    """replication.role as NETROOT_ROLE, else as the running daemon serves, overrides
    it (validated with the rest)."""
    role = os.environ.get(ROLE_ENV) or serving
    if not role:
        return data
    replication = data.get("replication")
    table = replication if isinstance(replication, dict) else {}
    return {**data, "replication": {**table, "role": role}}


def load_config(path: Path | None = None, serving: str | None = None) -> Config:
    """Load the config named by path, NETROOT_CONFIG, or the built-in defaults.

    serving: the role the running daemon serves (for a command beside it), when
    it differs from the file's.
    """
    if path is None and os.environ.get("NETROOT_CONFIG"):
        path = Path(os.environ["NETROOT_CONFIG"])
    if path is None:
        paths = builtin_paths()
        data = _with_role({**paths, "labels": DEFAULT_LABELS}, serving)
        return parse_config(data, source=BUILTIN, root=paths["state_dir"])
    data = _with_role(read_toml(path, "config file"), serving)
    try:
        return parse_config(data, source=str(path), root=path.resolve().parent)
    except (TypeError, ValueError, RecursionError) as exc:
        # Last line of defence: whatever a hostile file does, one line naming it.
        raise ConfigError(str(path), "", f"invalid config: {exc}") from None

"""import-hosts: the original tool's live_netroot_hosts as netroot.toml labels (never run)."""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any

from pydantic.dataclasses import dataclass

from controller.cli.options import OPTIONS, Common, add_commands, command, flag, opt, pos
from controller.cli.output import emit_json, printable
from controller.config import hostsfile
from controller.config.load import load_config, parse_config
from controller.core.errors import ConfigError, NetrootError
from controller.store import fsops


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class ImportHostsOptions(Common):
    """netroot import-hosts."""

    file: str = pos(help="the original label file (live_netroot_hosts)")
    pwd: str | None = opt(
        metavar="DIR",
        help="what $PWD was when the original ran (default: the file's directory, "
        "as `live_netroot` sourced ./live_netroot_hosts)",
    )
    write: bool = flag(
        "append the labels the config does not have yet to the config file "
        "(staged, validated, renamed into place; the rest of the file is kept)"
    )


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the import-hosts command."""
    add_commands(sub, common, cmd_import_hosts)


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise NetrootError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NetrootError(f"{path}: cannot read: {exc}") from None


def _write(config_path: Path, imported: hostsfile.HostsImport, source: Path) -> list[str]:
    """Append the new labels to the config; returns the labels it already had (kept)."""
    exists = config_path.exists()
    text = _read(config_path, "config file") if exists else ""
    try:
        current = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(config_path), "", f"invalid TOML: {exc}") from None
    existing = set(current.get("labels", {}) or {})
    merged, kept = hostsfile.merge_into(text, existing, imported.labels, str(source))
    if merged == text:
        return kept
    # the merged file must load as a whole before it replaces the old one
    try:
        data = tomllib.loads(merged)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            str(config_path),
            "labels",
            f"the labels cannot be appended to this file ({exc}); paste them by hand",
        ) from None
    parse_config(data, source=str(config_path), root=config_path.resolve().parent)
    mode = config_path.stat().st_mode & 0o7777 if exists else 0o644
    fsops.write_atomic(config_path, merged.encode(), mode)
    return kept


@command(
    "import-hosts",
    ImportHostsOptions,
    help="print the labels of an original live_netroot_hosts file (read, never run)",
    description="Read a live_netroot_hosts file without executing it: variable "
    "assignments, $VAR/${VAR}/$PWD and the `case $label in ... esac` arms. Any other "
    "shell line is reported with its number and skipped. Prints the equivalent "
    "netroot.toml [labels.*] tables; --write appends them to the config file.",
)
def cmd_import_hosts(opts: ImportHostsOptions) -> int:
    """Read the label file, print (or append) the labels, report every skipped line."""
    source = Path(opts.file)
    text = _read(source, "label file")
    config_path = opts.config_file()
    if opts.write and config_path is None:
        raise NetrootError(
            "import-hosts --write: name the config file to change (--config PATH or NETROOT_CONFIG)"
        )
    # RECIPE paths inside the config's recipes_dir are written relative to it
    recipes_dir = None
    if config_path is None or config_path.exists():
        recipes_dir = load_config(config_path).recipes_dir.resolve()
    pwd = Path(opts.pwd).resolve() if opts.pwd else source.resolve().parent
    imported = hostsfile.read_hosts(text, pwd=pwd, recipes_dir=recipes_dir)
    if not imported.labels:
        raise NetrootError(
            f"{source}: no label could be imported ({len(imported.findings)} "
            "line(s) reported; see --json)"
        )
    kept = _write(config_path, imported, source) if opts.write and config_path else []
    written = str(config_path) if opts.write else None
    if opts.json:
        emit_json(
            {
                "source": str(source),
                "labels": imported.labels,
                "findings": [
                    {"line": f.line, "text": f.text, "reason": f.reason} for f in imported.findings
                ],
                "written": written,
                "kept": kept,
            }
        )
    else:
        for finding in imported.findings:
            print(
                f"netroot: {printable(str(source))}:{finding.line}: {finding.reason}: "
                f"{printable(finding.text)}",
                file=sys.stderr,
            )
        for label in kept:
            print(
                f"netroot: {config_path}: labels.{label} exists: kept as it is, not imported",
                file=sys.stderr,
            )
        if opts.write:
            added = len(imported.labels) - len(kept)
            print(f"{config_path}: {added} label(s) added")
        else:
            sys.stdout.write(hostsfile.render_labels(imported.labels))
    return 0

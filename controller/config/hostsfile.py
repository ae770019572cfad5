"""Read the original tool's `live_netroot_hosts` without running it.

The original `live_netroot` sourced that file, a shell fragment, with `$label`
set: defaults first, then `case $label in LABEL) VAR=...;; esac`. netroot never
runs it. This module is a small reader for exactly that subset: variable
assignments (also after `export`), `$VAR`, `${VAR}` and `$PWD` in unquoted,
double-quoted and single-quoted words (controller.config.shellwords), and the arms of
a `case $label in ... esac`. Anything
else (a command, `$(...)` or backquotes, a pipe, a redirection, `if`, a
function) is reported with its line and skipped, never executed
(controller.config.hostsparse parses; this module evaluates). Pure: text in,
labels and findings out; the CLI reads and writes the files.

Each label becomes a netroot.toml label table (controller.config.models.LabelConfig):
RECIPE -> recipe, NETROOT -> export_path, TFTPBOOT -> tftp_root, RW=Y -> rw,
DEBUG=Y -> debug, EXTRA_QEMU -> extra_qemu (split as the shell split it),
EXTRA_CMDLINE -> extra_cmdline. Defaults set before the `case` apply to every
label, as they did when the file was sourced.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from controller.config.hostsparse import Assign, Case, Finding, Item, Parser, walk
from controller.config.models import LabelConfig
from controller.config.shellwords import Word
from controller.core.ids import LABEL_ALLOWED, is_label
from controller.core.model import first_error

# the original's variables, in the order netroot.toml lists them
VARIABLES = {
    "RECIPE": "recipe",
    "NETROOT": "export_path",
    "TFTPBOOT": "tftp_root",
    "RW": "rw",
    "DEBUG": "debug",
    "EXTRA_QEMU": "extra_qemu",
    "EXTRA_CMDLINE": "extra_cmdline",
}


@dataclass(frozen=True)
class HostsImport:
    """The labels read from a label file, and every line it skipped or doubted."""

    labels: dict[str, dict[str, Any]]
    findings: tuple[Finding, ...]


# ---- evaluation ------------------------------------------------------------------------


def _expand(word: Word, env: dict[str, str], unset: set[tuple[int, str]]) -> str:
    out = []
    for kind, text in word.parts:
        if kind == "var":
            if text not in env:
                unset.add((word.line, text))
            out.append(env.get(text, ""))
        else:
            out.append(text)
    return "".join(out)


def _run(items: list[Item], label: str, env: dict[str, str], unset: set[tuple[int, str]]) -> bool:
    """Assignments in order, the matching arm for label; whether an arm matched."""
    matched = False
    for item in items:
        if isinstance(item, Assign):
            if item.value.bad is None:
                env[item.name] = _expand(item.value, env, unset)
            continue
        for arm in item.arms:
            if label in arm.patterns:
                matched = True
                for assign in arm.body:
                    if assign.value.bad is None:
                        env[assign.name] = _expand(assign.value, env, unset)
                break
    return matched


def _flag(value: str, name: str, label: str, findings: list[Finding], line: int) -> bool:
    """The original tested `[ "$RW" = "Y" ]`: Y is true, anything else false."""
    if value not in ("Y", "N", ""):
        findings.append(
            Finding(
                line,
                f"{name}={value}",
                f"label {label}: {name} is not Y, so it is false, as the original read it",
            )
        )
    return value == "Y"


def _absolute(value: str, pwd: Path) -> str:
    path = Path(value)
    return str(path if path.is_absolute() else pwd / path)


def _label_table(
    label: str,
    env: dict[str, str],
    *,
    pwd: Path,
    recipes_dir: Path | None,
    findings: list[Finding],
    line: int,
) -> dict[str, Any] | None:
    """The netroot.toml table of one label, or None (with a finding) when it is unusable."""
    if not is_label(label):
        findings.append(
            Finding(
                line,
                label,
                f"label {label!r} is not a netroot label name ({LABEL_ALLOWED}): not imported",
            )
        )
        return None
    if not env.get("RECIPE"):
        findings.append(Finding(line, label, f"label {label}: no RECIPE: not imported"))
        return None
    recipe = Path(_absolute(env["RECIPE"], pwd))
    if recipes_dir is not None and recipe.is_relative_to(recipes_dir):
        recipe = recipe.relative_to(recipes_dir)
    table: dict[str, Any] = {"recipe": str(recipe)}
    if env.get("NETROOT"):
        table["export_path"] = _absolute(env["NETROOT"], pwd)
    if env.get("TFTPBOOT"):
        table["tftp_root"] = _absolute(env["TFTPBOOT"], pwd)
    for name in ("RW", "DEBUG"):
        if _flag(env.get(name, ""), name, label, findings, line):
            table[VARIABLES[name]] = True
    if env.get("EXTRA_QEMU", "").strip():
        try:
            table["extra_qemu"] = shlex.split(env["EXTRA_QEMU"])
        except ValueError as exc:
            findings.append(
                Finding(
                    line,
                    env["EXTRA_QEMU"],
                    f"label {label}: EXTRA_QEMU cannot be split ({exc}): left out",
                )
            )
    if env.get("EXTRA_CMDLINE", "").strip():
        table["extra_cmdline"] = env["EXTRA_CMDLINE"].strip()
    try:
        LabelConfig.model_validate(table)
    except ValidationError as exc:
        err = first_error(exc)
        findings.append(
            Finding(
                line,
                label,
                f"label {label}: {err.field}: {err.problem}: not imported",
            )
        )
        return None
    return table


def read_hosts(text: str, *, pwd: Path, recipes_dir: Path | None = None) -> HostsImport:
    """The labels of a live_netroot_hosts text, as netroot.toml label tables.

    pwd is what $PWD was when the original sourced the file (its directory, as
    the original ran `. ./live_netroot_hosts`). A RECIPE inside recipes_dir is
    written relative to it, as netroot.toml takes it.
    """
    parser = Parser(text)
    items, _ = parser.program()
    for item in walk(items):
        if isinstance(item, Assign) and item.value.bad is not None:
            parser.report(item.line, f"{item.name}= uses {item.value.bad}: skipped, not run")
    findings = list(parser.findings)
    labels: dict[str, dict[str, Any]] = {}
    unset: set[tuple[int, str]] = set()
    arms = [arm for item in items if isinstance(item, Case) for arm in item.arms]
    if not arms:
        findings.append(Finding(0, "", "no `case $label in ... esac` arm names a label"))
    for arm in arms:
        for label in arm.patterns:
            if label in labels:
                continue
            env = {"PWD": str(pwd), "label": label}
            _run(items, label, env, unset)
            table = _label_table(
                label, env, pwd=pwd, recipes_dir=recipes_dir, findings=findings, line=arm.line
            )
            if table is not None:
                labels[label] = table
    for line, name in sorted(unset):
        if name != "label":
            findings.append(
                Finding(
                    line,
                    parser.lines[line - 1].strip(),
                    f"${name} is not set here: read as empty (the original ran with set -u)",
                )
            )
    findings.sort(key=lambda f: f.line)
    return HostsImport(labels, tuple(findings))


# ---- netroot.toml text ------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    # a JSON string is a valid TOML basic string (same escapes, \uXXXX for the rest)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def _table_name(label: str) -> str:
    """`labels.NAME`, quoted when the name holds a dot (a TOML key separator)."""
    return f"labels.{json.dumps(label)}" if "." in label else f"labels.{label}"


def render_labels(labels: dict[str, dict[str, Any]]) -> str:
    """The labels as netroot.toml tables, in the file's order."""
    blocks = []
    for label, table in labels.items():
        lines = [f"[{_table_name(label)}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def merge_into(
    config_text: str, existing: set[str], labels: dict[str, dict[str, Any]], source: str
) -> tuple[str, list[str]]:
    """The config text with the new labels appended; labels it already has are kept as they are.

    Returns the new text and the labels left out because the config has them.
    """
    kept = [label for label in labels if label in existing]
    new = {k: v for k, v in labels.items() if k not in existing}
    if not new:
        return config_text, kept
    head = config_text if config_text.endswith("\n") or not config_text else config_text + "\n"
    text = f"{head}\n# imported from {source} by `netroot import-hosts`\n{render_labels(new)}"
    return text, kept

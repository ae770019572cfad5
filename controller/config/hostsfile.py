"""Read the original tool's `live_netroot_hosts` without running it.

The original `live_netroot` sourced that file, a shell fragment, with `$label`
set: defaults first, then `case $label in LABEL) VAR=...;; esac`. netroot never
runs it. This module is a small reader for exactly that subset: variable
assignments (also after `export`), `$VAR`, `${VAR}` and `$PWD` in unquoted,
double-quoted and single-quoted words (controller.config.shellwords), and the arms of
a `case $label in ... esac`. Anything
else (a command, `$(...)` or backquotes, a pipe, a redirection, `if`, a
function) is reported with its line and skipped, never executed. Pure: text
in, labels and findings out; the CLI reads and writes the files.

Each label becomes a netroot.toml label table (controller.config.models.LabelConfig):
RECIPE -> recipe, NETROOT -> export_path, TFTPBOOT -> tftp_root, RW=Y -> rw,
DEBUG=Y -> debug, EXTRA_QEMU -> extra_qemu (split as the shell split it),
EXTRA_CMDLINE -> extra_cmdline. Defaults set before the `case` apply to every
label, as they did when the file was sourced.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from controller.config.models import LabelConfig
from controller.config.shellwords import Op, Token, Word, tokenize
from controller.core.ids import LABEL_ALLOWED, is_label
from controller.core.model import first_error

_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
_OPENERS = {
    "if": "fi",
    "for": "done",
    "while": "done",
    "until": "done",
    "select": "done",
    "case": "esac",
    "{": "}",
}
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
class Finding:
    """A line of the file that was not taken over as it stands, and why."""

    line: int
    text: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}: {self.text}"


@dataclass(frozen=True)
class HostsImport:
    """The labels read from a label file, and every line it skipped or doubted."""

    labels: dict[str, dict[str, Any]]
    findings: tuple[Finding, ...]


# ---- statements ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Assign:
    line: int
    name: str
    value: Word


@dataclass(frozen=True)
class _Arm:
    line: int
    patterns: tuple[str, ...]
    body: tuple[_Assign, ...]


@dataclass(frozen=True)
class _Case:
    line: int
    arms: tuple[_Arm, ...]


_Item = _Assign | _Case


class _Parser:
    """Assignments and the label case; every other construct becomes a finding."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.tokens = tokenize(text)
        self.pos = 0
        self.findings: list[Finding] = []

    def report(self, line: int, reason: str, last: int | None = None) -> None:
        text = self.lines[line - 1].strip() if 0 < line <= len(self.lines) else ""
        if last is not None and last > line:
            reason = f"{reason} (lines {line}-{last})"
        self.findings.append(Finding(line, text, reason))

    def command(self) -> tuple[list[Token], str]:
        """Tokens up to the next separator, and the separator (';', ';;', '\\n', '' at end)."""
        out: list[Token] = []
        while self.pos < len(self.tokens):
            tok = self.tokens[self.pos]
            if isinstance(tok, Op) and tok.op in (";", ";;", "\n"):
                self.pos += 1
                return out, tok.op
            out.append(tok)
            self.pos += 1
        return out, ""

    def program(self, *, in_arm: bool = False) -> tuple[list[_Item], str]:
        """Statements until the end, or in a case arm until `;;` or `esac`."""
        items: list[_Item] = []
        while self.pos < len(self.tokens):
            mark = self.pos
            tokens, sep = self.command()
            if not tokens:
                if in_arm and sep == ";;":
                    return items, ";;"
                continue
            first = tokens[0]
            if in_arm and isinstance(first, Word) and first.plain == "esac":
                self.pos = mark  # the caller reads esac
                return items, "esac"
            items.extend(self.statement(tokens, mark))
            if in_arm and sep == ";;":
                return items, ";;"
        return items, ""

    def statement(self, tokens: list[Token], mark: int) -> list[_Item]:
        first = tokens[0]
        keyword = first.plain if isinstance(first, Word) else None
        if keyword == "case":
            return self.case(tokens, mark)
        if keyword in _OPENERS or (isinstance(first, Op) and first.op == "("):
            self.skip_compound(mark, first.line, keyword or "(")
            return []
        if len(tokens) > 1 and isinstance(tokens[1], Op) and tokens[1].op == "(":
            self.skip_compound(mark, first.line, "function")
            return []
        assigns: list[_Item] = []
        if keyword == "export" and len(tokens) > 1:
            tokens = tokens[1:]  # `export NAME=value`: the value is all the original used
        for tok in tokens:
            match = _ASSIGNMENT.match(tok.head) if isinstance(tok, Word) else None
            if not isinstance(tok, Word) or match is None:
                self.report(first.line, "not a variable assignment: skipped, not run")
                return []
            assigns.append(_assignment(tok, match.group(1)))
        return assigns

    def skip_compound(self, mark: int, line: int, keyword: str) -> None:
        """Skip an if/for/while/{}/function/subshell up to its end; report it once."""
        self.pos = mark
        stack: list[str] = []  # closers expected, innermost last
        last = line
        while self.pos < len(self.tokens):
            tokens, _ = self.command()
            for index, tok in enumerate(tokens):
                last = tok.line
                word = tok.plain if isinstance(tok, Word) else None
                op = tok.op if isinstance(tok, Op) else None
                starts = index == 0 or _starts_command(tokens[index - 1])
                in_case = bool(stack) and stack[-1] == "esac"  # `x)` there closes a pattern
                if word in _OPENERS and starts:
                    stack.append(_OPENERS[word])
                elif op == "(" and not in_case:
                    stack.append(")")
                elif stack and ((word == stack[-1] and starts) or (op == stack[-1] == ")")):
                    stack.pop()
            if not stack and tokens:
                break
        self.report(
            line,
            f"`{keyword}` is not read (only assignments and the label case): skipped, not run",
            last,
        )

    def case(self, tokens: list[Token], mark: int) -> list[_Item]:
        subject = tokens[1] if len(tokens) > 1 else None
        keyword_in = tokens[2] if len(tokens) > 2 else None
        is_label = isinstance(subject, Word) and [
            p for p in subject.parts if p != ("qlit", "")
        ] == [("var", "label")]
        if not is_label or not (isinstance(keyword_in, Word) and keyword_in.plain == "in"):
            self.skip_compound(mark, tokens[0].line, "case (not `case $label in`)")
            return []
        self.pos = mark
        # re-read from just after `in`, which may share its line with the first arm
        while self.pos < len(self.tokens) and self.tokens[self.pos] is not keyword_in:
            self.pos += 1
        self.pos += 1
        arms: list[_Arm] = []
        while self.pos < len(self.tokens):
            tok = self.tokens[self.pos]
            if isinstance(tok, Op) and tok.op in ("\n", ";"):
                self.pos += 1
                continue
            if isinstance(tok, Word) and tok.plain == "esac":
                self.pos += 1
                return [_Case(tokens[0].line, tuple(arms))]
            arm = self.arm()
            if arm is not None:
                arms.append(arm)
        self.report(tokens[0].line, "`case` without `esac`: its arms are not read")
        return []

    def arm(self) -> _Arm | None:
        """`pattern[|pattern]) body ;;`; None for an arm that names no label."""
        first = self.tokens[self.pos]
        line = first.line
        if isinstance(first, Op) and first.op == "(":
            self.pos += 1
        patterns: list[str] = []
        while self.pos < len(self.tokens):
            tok = self.tokens[self.pos]
            self.pos += 1
            if isinstance(tok, Op) and tok.op == ")":
                break
            if isinstance(tok, Word):
                patterns.append(_pattern_text(tok))
            elif tok.op != "|":
                self.report(line, "malformed case pattern: arm skipped")
                self.program(in_arm=True)
                return None
        body, _ = self.program(in_arm=True)
        assigns = tuple(a for a in body if isinstance(a, _Assign))
        if any(isinstance(a, _Case) for a in body):
            self.report(line, "a case inside a case arm is not read")
        if patterns == ["*"]:
            self.report(line, "the `*)` arm (labels the file does not name) is not imported")
            return None
        literal = [p for p in patterns if not any(c in p for c in "*?[")]
        for glob in sorted(set(patterns) - set(literal)):
            self.report(line, f"pattern {glob!r} matches labels it does not name: not imported")
        return _Arm(line, tuple(literal), assigns) if literal else None


def _starts_command(previous: Token) -> bool:
    """Whether the token after previous starts a command (for reserved words)."""
    if isinstance(previous, Op):
        return previous.op in (";", "\n", "&&", "||", "|", "(", ")", "&")
    return previous.plain in ("then", "do", "else", "elif", "{", "!")


def _pattern_text(word: Word) -> str:
    text = "".join(t if k in ("lit", "qlit") else f"${t}" for k, t in word.parts)
    return text if word.bad is None else "*"


def _assignment(word: Word, name: str) -> _Assign:
    """NAME=value: the value word is the rest of the first literal plus the other parts."""
    head = word.parts[0][1][len(name) + 1 :]
    value = Word(word.line, raw=word.raw[len(name) + 1 :])
    if head:
        value.add("lit", head)
    for kind, text in word.parts[1:]:
        value.add(kind, text)
    return _Assign(word.line, name, value)


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


def _run(items: list[_Item], label: str, env: dict[str, str], unset: set[tuple[int, str]]) -> bool:
    """Assignments in order, the matching arm for label; whether an arm matched."""
    matched = False
    for item in items:
        if isinstance(item, _Assign):
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
    parser = _Parser(text)
    items, _ = parser.program()
    for item in _walk(items):
        if isinstance(item, _Assign) and item.value.bad is not None:
            parser.report(item.line, f"{item.name}= uses {item.value.bad}: skipped, not run")
    findings = list(parser.findings)
    labels: dict[str, dict[str, Any]] = {}
    unset: set[tuple[int, str]] = set()
    arms = [arm for item in items if isinstance(item, _Case) for arm in item.arms]
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


def _walk(items: list[_Item]) -> list[_Item]:
    out: list[_Item] = []
    for item in items:
        out.append(item)
        if isinstance(item, _Case):
            out.extend(a for arm in item.arms for a in arm.body)
    return out


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

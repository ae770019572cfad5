"""The statements of a `live_netroot_hosts` file: variable assignments and the arms of
`case $label in ... esac`, parsed from shell words (controller.config.shellwords).
Every other construct becomes a finding naming its line; nothing is run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from controller.config.shellwords import Op, Token, Word, tokenize

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


@dataclass(frozen=True)
class Finding:
    """A line of the file that was not taken over as it stands, and why."""

    line: int
    text: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}: {self.text}"


@dataclass(frozen=True)
class Assign:
    """NAME=value (also after `export`)."""

    line: int
    name: str
    value: Word


@dataclass(frozen=True)
class Arm:
    """One arm of the label case: the labels it names literally and its assignments."""

    line: int
    patterns: tuple[str, ...]
    body: tuple[Assign, ...]


@dataclass(frozen=True)
class Case:
    """`case $label in ... esac`."""

    line: int
    arms: tuple[Arm, ...]


Item = Assign | Case


class Parser:
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

    def program(self, *, in_arm: bool = False) -> tuple[list[Item], str]:
        """Statements until the end, or in a case arm until `;;` or `esac`."""
        items: list[Item] = []
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

    def statement(self, tokens: list[Token], mark: int) -> list[Item]:
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
        assigns: list[Item] = []
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

    def case(self, tokens: list[Token], mark: int) -> list[Item]:
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
        arms: list[Arm] = []
        while self.pos < len(self.tokens):
            tok = self.tokens[self.pos]
            if isinstance(tok, Op) and tok.op in ("\n", ";"):
                self.pos += 1
                continue
            if isinstance(tok, Word) and tok.plain == "esac":
                self.pos += 1
                return [Case(tokens[0].line, tuple(arms))]
            arm = self.arm()
            if arm is not None:
                arms.append(arm)
        self.report(tokens[0].line, "`case` without `esac`: its arms are not read")
        return []

    def arm(self) -> Arm | None:
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
        assigns = tuple(a for a in body if isinstance(a, Assign))
        if any(isinstance(a, Case) for a in body):
            self.report(line, "a case inside a case arm is not read")
        if patterns == ["*"]:
            self.report(line, "the `*)` arm (labels the file does not name) is not imported")
            return None
        literal = [p for p in patterns if not any(c in p for c in "*?[")]
        for glob in sorted(set(patterns) - set(literal)):
            self.report(line, f"pattern {glob!r} matches labels it does not name: not imported")
        return Arm(line, tuple(literal), assigns) if literal else None


def _starts_command(previous: Token) -> bool:
    """Whether the token after previous starts a command (for reserved words)."""
    if isinstance(previous, Op):
        return previous.op in (";", "\n", "&&", "||", "|", "(", ")", "&")
    return previous.plain in ("then", "do", "else", "elif", "{", "!")


def _pattern_text(word: Word) -> str:
    text = "".join(t if k in ("lit", "qlit") else f"${t}" for k, t in word.parts)
    return text if word.bad is None else "*"


def _assignment(word: Word, name: str) -> Assign:
    """NAME=value: the value word is the rest of the first literal plus the other parts."""
    head = word.parts[0][1][len(name) + 1 :]
    value = Word(word.line, raw=word.raw[len(name) + 1 :])
    if head:
        value.add("lit", head)
    for kind, text in word.parts[1:]:
        value.add(kind, text)
    return Assign(word.line, name, value)


def walk(items: list[Item]) -> list[Item]:
    """Every statement, those inside the case arms included."""
    out: list[Item] = []
    for item in items:
        out.append(item)
        if isinstance(item, Case):
            out.extend(a for arm in item.arms for a in arm.body)
    return out

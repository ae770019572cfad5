"""Shell words of a sourced configuration fragment, read and never run.

A tokenizer for the small subset controller.config.hostsfile reads: unquoted,
single- and double-quoted text, backslash escapes and line continuations,
`$NAME` and `${NAME}`, comments and the control operators. Anything that would
run or compute something (`$(...)`, backquotes, `$((...))`, `${X:-y}`, `$1`)
is consumed without being read and marked on its word, so the caller can
report it. Pure: text in, tokens out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
OPERATORS = (";;", "&&", "||", ">>", "<<", ";", "&", "|", "(", ")", "<", ">")


@dataclass
class Word:
    """A shell word: literal pieces and variable references, in order."""

    line: int
    parts: list[tuple[str, str]] = field(default_factory=list)  # (lit|qlit|var|bad, text)
    raw: str = ""

    def add(self, kind: str, text: str) -> None:
        if kind in ("lit", "qlit") and self.parts and self.parts[-1][0] == kind:
            self.parts[-1] = (kind, self.parts[-1][1] + text)
        else:
            self.parts.append((kind, text))

    @property
    def plain(self) -> str | None:
        """The word's text when it is one unquoted literal (a keyword or a pattern)."""
        if len(self.parts) == 1 and self.parts[0][0] == "lit":
            return self.parts[0][1]
        return None

    @property
    def head(self) -> str:
        """The leading unquoted literal (where `NAME=` of an assignment is)."""
        return self.parts[0][1] if self.parts and self.parts[0][0] == "lit" else ""

    @property
    def bad(self) -> str | None:
        """Why the word cannot be read without running something, if it cannot."""
        return next((text for kind, text in self.parts if kind == "bad"), None)


@dataclass(frozen=True)
class Op:
    """A control operator (`;;`, `|`, `(`...), or "\\n" for the end of a line."""

    line: int
    op: str


Token = Word | Op


class _Lexer:
    """Shell tokens with line numbers: words, operators and newlines (as ';' at line end)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.tokens: list[Token] = []

    def peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def take(self) -> str:
        char = self.text[self.pos]
        self.pos += 1
        if char == "\n":
            self.line += 1
        return char

    def run(self) -> list[Token]:
        while self.pos < len(self.text):
            char = self.peek()
            if char == "\n":
                self.tokens.append(Op(self.line, "\n"))
                self.take()
            elif char in " \t\r":
                self.take()
            elif char == "\\" and self.peek(1) == "\n":
                self.take()
                self.take()
            elif char == "#":
                while self.pos < len(self.text) and self.peek() != "\n":
                    self.take()
            elif op := next((o for o in OPERATORS if self.text.startswith(o, self.pos)), None):
                self.tokens.append(Op(self.line, op))
                for _ in op:
                    self.take()
            else:
                self.tokens.append(self.word())
        return self.tokens

    def word(self) -> Word:
        word = Word(self.line)
        start = self.pos
        while self.pos < len(self.text):
            char = self.peek()
            if char in " \t\r\n" or any(self.text.startswith(o, self.pos) for o in OPERATORS):
                break
            if char == "\\":
                self.take()
                if self.pos < len(self.text):
                    escaped = self.take()
                    if escaped != "\n":
                        word.add("qlit", escaped)
            elif char == "'":
                self.single(word)
            elif char == '"':
                self.double(word)
            elif char == "$":
                self.dollar(word)
            elif char == "`":
                self.backquote(word)
            else:
                word.add("lit", self.take())
        word.raw = self.text[start : self.pos]
        return word

    def single(self, word: Word) -> None:
        self.take()
        chunk = []
        while self.pos < len(self.text) and self.peek() != "'":
            chunk.append(self.take())
        if self.pos >= len(self.text):
            word.add("bad", "unterminated single quote")
            return
        self.take()
        word.add("qlit", "".join(chunk))

    def double(self, word: Word) -> None:
        self.take()
        word.add("qlit", "")  # "" is a word of its own, even when empty
        while self.pos < len(self.text) and self.peek() != '"':
            char = self.peek()
            if char == "\\" and self.peek(1) in '$`"\\\n':
                self.take()
                escaped = self.take()
                if escaped != "\n":
                    word.add("qlit", escaped)
            elif char == "$":
                self.dollar(word)
            elif char == "`":
                self.backquote(word)
            else:
                word.add("qlit", self.take())
        if self.pos >= len(self.text):
            word.add("bad", "unterminated double quote")
            return
        self.take()

    def backquote(self, word: Word) -> None:
        """`...`: consumed up to the closing backquote, never read or run."""
        self.take()
        while self.pos < len(self.text) and self.take() != "`":
            pass
        word.add("bad", "command substitution `...`")

    def balanced(self, opening: str, closing: str) -> None:
        """Consume a bracketed group (nested, quotes respected) without reading it."""
        depth, quote = 0, ""
        while self.pos < len(self.text):
            char = self.take()
            if quote:
                quote = "" if char == quote else quote
            elif char in "'\"":
                quote = char
            elif char == opening:
                depth += 1
            elif char == closing:
                depth -= 1
                if depth == 0:
                    return

    def dollar(self, word: Word) -> None:
        self.take()
        rest = self.text[self.pos :]
        if rest.startswith("("):
            kind = "arithmetic $((...))" if rest.startswith("((") else "command substitution $(...)"
            word.add("bad", kind)
            self.balanced("(", ")")
        elif rest.startswith("{"):
            end = rest.find("}")
            name = rest[1:end] if end > 0 else ""
            word.add(
                *(
                    ("var", name)
                    if NAME.fullmatch(name)
                    else ("bad", f"parameter expansion ${{{name or '...'}}}")
                )
            )
            self.balanced("{", "}")
        elif match := NAME.match(rest):
            word.add("var", match.group())
            for _ in match.group():
                self.take()
        elif rest[:1] and rest[:1] not in " \t\n\"'":
            word.add("bad", f"special parameter ${rest[0]}")
        else:
            word.add("lit", "$")  # a lone $ is literal in the shell too


def tokenize(text: str) -> list[Token]:
    """Words and operators with their line numbers; a newline is the operator "\\n"."""
    return _Lexer(text).run()

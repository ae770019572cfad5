"""Hostile configs, TOML recipes and `.def` files: a one-line error naming the file, never a
traceback (hypothesis, bounded and derandomized so the suite stays fast and repeatable)."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import REPO

from controller.config.load import load_config
from controller.config.models import Config, LabelConfig
from controller.core.errors import ConfigError, NetrootError
from controller.recipes import load_recipe
from controller.recipes.legacy_def import parse_def

FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _toml_key(key: str) -> str:
    return json.dumps(key)  # a quoted key takes any text


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "inf" if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
    return "{" + items + "}"


def to_toml(data: dict[str, Any]) -> str:
    """A minimal TOML writer: every table inline, so any nesting round-trips."""
    return "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in data.items())


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=24)
SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    TEXT,
    st.sampled_from(["", ".", "..", "/", "/etc", "a b", "10.0.0.0/8", "*", "0.0.0.0/0", '"']),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)


def _keyed(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.one_of(st.sampled_from(names), TEXT), VALUES, max_size=6)


CONFIG_KEYS = [n for n, f in Config.model_fields.items() if not f.exclude]
LABEL_KEYS = list(LabelConfig.model_fields)
CONFIGS = st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(CONFIG_KEYS, VALUES),
        "labels": st.one_of(
            VALUES,
            st.dictionaries(
                st.one_of(st.sampled_from(["demo", "a", "Bad_Name", ""]), TEXT),
                st.one_of(_keyed(LABEL_KEYS), VALUES),
                max_size=3,
            ),
        ),
        "nfs": st.one_of(VALUES, _keyed(["clients", "server", "port", "manage", "insecure"])),
        "mqtt": st.one_of(VALUES, _keyed(["host", "port", "enabled", "topic_prefix"])),
    },
)


def _assert_one_line(exc: NetrootError, path: Path) -> None:
    message = str(exc)
    assert "\n" not in message, message
    assert str(path) in message, message


def _load_config_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "netroot.toml"
        path.write_text(text)
        try:
            load_config(path)
        except NetrootError as exc:
            _assert_one_line(exc, path)


@FUZZ
@given(CONFIGS)
def test_fuzzed_config_tables_give_one_line_errors(data: dict[str, Any]) -> None:
    _load_config_text(to_toml(data))


SHIPPED = (REPO / "config" / "netroot.toml").read_text()


@FUZZ
@given(st.integers(0, len(SHIPPED)), st.integers(0, 40), TEXT)
def test_edits_of_the_shipped_config_give_one_line_errors(at: int, cut: int, insert: str) -> None:
    _load_config_text(SHIPPED[:at] + insert + SHIPPED[at + cut :])


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("labels = 5\n", "labels"),
        ("state_dir = 5\n", "state_dir"),
        ('[labels.demo]\nrecipe = "x.toml"\nexport_path = 5\n', "labels.demo.export_path"),
        ("a = " + "[" * 1000 + "]" * 1000 + "\n", ""),
        ("a = " + "{b = " * 1000 + "1" + "}" * 1000 + "\n", ""),
        ("nfs = 5\n", "nfs"),
        ("[labels]\ndemo = 5\n", "labels.demo"),
    ],
    ids=["labels", "state_dir", "export_path", "arrays", "tables", "nfs", "label"],
)
def test_wrong_types_and_deep_nesting(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "netroot.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    _assert_one_line(exc.value, path)
    assert exc.value.field.startswith(field)


RECIPE_KEYS = [
    "builder", "distro", "release", "arch", "mirror", "components", "packages", "files",
    "root_password_hash", "root_password", "locale", "timezone", "post", "services",
    "extends", "source", "kernel", "initrd", "definition", "repositories", "gpgcheck",
]  # fmt: skip
RECIPES = st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(RECIPE_KEYS, VALUES),
        "builder": st.sampled_from(["import", "mmdebstrap", "dnf", "apptainer", "x"]),
        "distro": st.sampled_from(["debian", "ubuntu", "fedora", "rocky", "nope"]),
        "extends": st.sampled_from(["base.toml", "self.toml", "../x.toml", "/etc/passwd", ""]),
        "source": st.sampled_from(["tree", "/", "../..", "missing.tar", ""]),
    },
)


@FUZZ
@given(RECIPES)
def test_fuzzed_toml_recipes_give_one_line_errors(data: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "tree" / "boot").mkdir(parents=True)
        (root / "base.toml").write_text('distro = "debian"\nrelease = "12"\n')
        path = root / "self.toml"
        path.write_text(to_toml(data))
        try:
            load_recipe(path)
        except NetrootError as exc:
            assert "\n" not in str(exc), str(exc)


DEF_LINES = st.one_of(
    st.sampled_from(
        [
            "Bootstrap: debootstrap",
            "Bootstrap: yum",
            "Bootstrap: docker",
            "OSVersion: bookworm",
            "OSVersion: 9",
            "MirrorURL: http://mirror.invalid/%{OSVERSION}/",
            "Include: vim",
            "From: debian",
            "%post",
            "%setup",
            "%files",
            "%environment",
            "%runscript",
            "%labels",
            "%test",
            "a b",
            "/etc/x /etc/y",
            "../../x /y",
            "",
            "#",
            "%",
            ":",
        ]
    ),
    TEXT,
)


@FUZZ
@given(st.lists(DEF_LINES, max_size=20))
def test_fuzzed_def_recipes_give_one_line_errors(lines: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source = str(Path(tmp) / "x.def")
        try:
            parse_def("\n".join(lines) + "\n", source=source, root=Path(tmp))
        except NetrootError as exc:
            assert "\n" not in str(exc), str(exc)

"""Config: defaults that work from a checkout, the shipped example, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import REPO

from controller.config.load import load_config
from controller.config.models import BUILTIN
from controller.core.errors import ConfigError
from controller.core.ids import check_label


def _load(tmp_path: Path, text: str) -> None:
    path = tmp_path / "netroot.toml"
    path.write_text(text)
    load_config(path)


def test_builtin_defaults_live_under_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NETROOT_CONFIG", raising=False)
    config = load_config()
    assert config.source == BUILTIN
    assert config.state_dir == REPO / "var" / "lib"
    # Shipped data comes from the package (./recipes and ./base link into it).
    assert config.recipes_dir == (REPO / "recipes").resolve()
    assert config.base_dir == (REPO / "base").resolve()
    assert config.export_link("debian12") == REPO / "var" / "export" / "debian12"
    assert config.overlay_names("debian12") == ("common", "debian12")


def test_shipped_example_loads_with_every_label_variable() -> None:
    config = load_config(REPO / "config" / "netroot.toml")
    label = config.label("debian12")
    assert (label.rw, label.debug, label.extra_cmdline, label.keep_versions) == (
        False,
        False,
        "",
        3,
    )
    assert config.state_dir == Path("/var/lib/netroot")
    assert config.nfs.clients == ("10.0.2.0/24",)


def test_netroot_config_env_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    path.write_text('state_dir = "s"\n[labels.a]\nrecipe = "a.toml"\n')
    monkeypatch.setenv("NETROOT_CONFIG", str(path))
    config = load_config()
    assert config.source == str(path) and config.state_dir == tmp_path / "s"


def test_extra_qemu_accepts_the_original_shell_string(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[labels.a]\nrecipe = "a.toml"\nextra_qemu = "-m 2048 -smp \'2\'"\n')
    assert load_config(path).label("a").extra_qemu == ("-m", "2048", "-smp", "2")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[nfs]\nclients = ['10.0.0.300/8']\n", "nfs.clients: '10.0.0.300/8' is not a network"),
        ("[mqtt]\nport = 70000\n", "mqtt.port: Input should be less than or equal to 65535"),
        ("[mqtt]\nhots = 'x'\n", "mqtt.hots: unknown field (allowed: enabled, host, port"),
        ("sever = 'x'\n", "sever: unknown field (allowed: state_dir, recipes_dir"),
        ("[labels.a]\nrw = true\n", "labels.a.recipe: required field is missing"),
        ("[labels.a]\nrecipe='a'\noverlays=['Bad']\n", "labels.a.overlays: invalid overlay name"),
    ],
)
def test_errors_name_file_field_and_allowed(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert str(info.value).startswith(f"{tmp_path / 'netroot.toml'}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["a", "node-1", "rocky9.4", "x_y", "0" * 63])
def test_valid_label_names(name: str) -> None:
    assert check_label(name) == name


@pytest.mark.parametrize("name", ["", "A", ".x", "-x", "a/b", "a b", "0" * 64, "é"])
def test_invalid_label_names(name: str) -> None:
    with pytest.raises(ConfigError, match="allowed: 1-63 of a-z 0-9"):
        check_label(name)

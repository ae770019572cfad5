"""Hostile arguments and configs against the store: refused with one line, nothing switched.

`activate` takes only version ids of the label's store; a config `validate`
accepts can be activated, and one that cannot be served is refused by
`validate`, by `build` and by the activation itself before its history line.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from support import Workspace, snapshot

from controller.config.load import load_config
from controller.render import export_id_for
from controller.serve import nfs
from controller.store.layout import label_paths


def _one_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("netroot: error: ")
    assert "Traceback" not in stderr
    return lines[0]


def _served(ws: Workspace) -> tuple[int, str, str]:
    paths = label_paths(load_config(ws.config), ws.label)
    history = paths.history.read_text().count("\n")
    return history, os.readlink(paths.export_link), os.readlink(paths.tftp_link)


@pytest.mark.parametrize(
    "version",
    ["/etc", "../../../../etc", "20261126T093424.161Z-861dd82a", ".staging", "history", ""],
)
def test_activate_takes_only_version_ids_of_the_store(workspace: Workspace, version: str) -> None:
    workspace.run("build", "demo", "--activate")
    before = _served(workspace)
    result = workspace.run("activate", "demo", version, check=False)
    assert result.returncode == 1
    line = _one_error(result.stderr)
    assert "demo:" in line and repr(version) in line
    assert _served(workspace) == before
    verify = workspace.run("verify", "demo", version, check=False) if version else None
    if verify is not None:
        assert verify.returncode == 1
        _one_error(verify.stderr)


BAD_CONFIGS = [
    ('server = "bad host!"\n', "", "server", "invalid host 'bad host!'"),
    ('[mqtt]\nhost = ""\n', "", "mqtt.host", "invalid host ''"),
    ("[nfs]\nclients = []\n", "", "nfs.clients", "no client network"),
    ('[nfs]\nclients = ["0.0.0.0/0"]\n', "", "nfs.clients", "write '*'"),
    ('[nfs]\nclients = ["::/0"]\n', "", "nfs.clients", "whole world"),
    ('export_root = "tftp/netroot"\n', "", "export_root", "overlaps the TFTP link directory"),
    ("", 'extra_cmdline = "quiet x=\\"y\\""\n', "labels.demo.extra_cmdline", "interpret"),
    ("", 'rootovlcfg = ["a b"]\n', "labels.demo.rootovlcfg", "configuration tree name"),
    ("", f'extra_cmdline = "{"x" * 2000}"\n', "labels.demo.extra_cmdline", "truncates"),
]


@pytest.mark.parametrize(("top", "label", "field", "problem"), BAD_CONFIGS)
def test_validate_and_build_refuse_what_cannot_be_served(
    workspace: Workspace, top: str, label: str, field: str, problem: str
) -> None:
    workspace.run("build", "demo", "--activate")
    good = workspace.config.read_text()
    if top.startswith("export_root"):
        good = good.replace('export_root = "export"\n', "")
    workspace.config.write_text(top + good + label)
    before = snapshot(workspace.root)
    for command in (["validate"], ["build", "demo", "--activate"], ["activate", "demo"]):
        result = workspace.run(*command, check=False)
        assert result.returncode == 1, command
        line = _one_error(result.stderr)
        assert f"{workspace.config}: {field}" in line, line
        assert problem in line, line
    assert snapshot(workspace.root) == before


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_export_path_that_is_not_a_link_is_refused(workspace: Workspace, kind: str) -> None:
    workspace.config.write_text(workspace.config.read_text() + 'export_path = "exports/demo"\n')
    target = workspace.root / "exports" / "demo"
    target.parent.mkdir()
    if kind == "directory":
        target.mkdir()
        (target / "keep").write_text("mine\n")
    else:
        target.write_text("mine\n")
    before = snapshot(workspace.root)
    for command in (["validate"], ["build", "demo", "--activate"]):
        result = workspace.run(*command, check=False)
        line = _one_error(result.stderr)
        assert f"{target}: is a {kind}" in line and "export_path" in line
    assert snapshot(workspace.root) == before


def test_label_paths_resolve_against_the_config_file(workspace: Workspace, tmp_path: Path) -> None:
    workspace.config.write_text(
        workspace.config.read_text() + 'export_path = "exp/demo"\ntftp_root = "boot"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)
    config = load_config(workspace.config)
    assert config.export_link("demo") == workspace.root / "exp" / "demo"
    assert config.label_tftp_root("demo") == workspace.root / "boot"
    workspace.run("build", "demo", "--activate")
    assert (workspace.root / "exp" / "demo").is_symlink()
    assert (workspace.root / "boot" / "netroot" / "demo").is_symlink()
    assert not (elsewhere / "exp").exists()


def test_a_bad_boot_config_never_half_activates(workspace: Workspace) -> None:
    """The failure comes while preparing: no history line, links and menus untouched."""
    workspace.run("build", "demo", "--activate")
    (workspace.overlays / "demo").mkdir(parents=True)
    (workspace.overlays / "demo" / "tag").write_text("2")
    new = workspace.json("build", "demo")["version"]["version"]
    before = _served(workspace)
    menus = snapshot(workspace.root / "tftp")
    # A label whose files the shared menu renders, broken behind validate's back.
    text = workspace.config.read_text() + 'extra_cmdline = "a;b"\n'
    workspace.config.write_text(text)
    result = workspace.run("activate", "demo", new, check=False)
    assert "labels.demo.extra_cmdline" in _one_error(result.stderr)
    assert _served(workspace) == before
    assert snapshot(workspace.root / "tftp") == menus
    workspace.config.write_text(text.replace('extra_cmdline = "a;b"\n', ""))
    workspace.run("activate", "demo", new)  # no recovery wedge: the next command works
    assert _served(workspace)[1].endswith(f"{new}/rootfs")


# --- Export_Ids -------------------------------------------------------------------------


def _ids(text: str) -> dict[str, int]:
    found = re.findall(r"Export_Id = (\d+);\n    Path = \S+;\n    Pseudo = (\S+);", text)
    return {pseudo: int(export_id) for export_id, pseudo in found}


def _fake_versions(ws: Workspace, count: int) -> list[str]:
    versions = [
        f"20260101T{i // 3600:02d}{i // 60 % 60:02d}{i % 60:02d}.000Z-{i:08x}" for i in range(count)
    ]
    for version in versions:
        (ws.images() / version / "rootfs").mkdir(parents=True)
    return versions


def test_export_ids_are_stored_once_and_survive_gc_of_others(workspace: Workspace) -> None:
    config = load_config(workspace.config)
    versions = _fake_versions(workspace, 300)
    first = _ids(nfs.render_system_ganesha(config))
    assert len(first) == 300 and len(set(first.values())) == 300  # no clash at 300 exports
    for version in versions[::2]:  # gc of every other version
        os.rename(workspace.images() / version, workspace.root / f"gone-{version}")
    second = _ids(nfs.render_system_ganesha(config))
    assert second == {p: i for p, i in first.items() if p in second}
    assert len(second) == 150
    # A new version never takes an id a pruned one had: Ganesha may still hold it.
    (workspace.images() / "20270101T000000.000Z-ffffffff" / "rootfs").mkdir(parents=True)
    third = _ids(nfs.render_system_ganesha(config))
    new_id = third["/demo/20270101T000000.000Z-ffffffff"]
    assert new_id not in first.values()
    assert {p: i for p, i in third.items() if p in second} == second


def test_export_id_of_a_live_version_holds_when_an_older_clashing_one_goes(
    workspace: Workspace,
) -> None:
    """The old crc32 scheme moved the newer of two clashing versions back when gc pruned
    the older, and Ganesha dropped its export on reload."""
    config = load_config(workspace.config)
    seen: dict[int, str] = {}
    clash: tuple[str, str] | None = None
    for i in range(200_000):
        version = f"20260101T000000.000Z-{i:08x}"
        first = export_id_for(f"demo/{version}")  # the old scheme's first choice
        if first in seen:
            clash = (seen[first], version)
            break
        seen[first] = version
    assert clash is not None
    older, newer = clash
    for version in clash:
        (workspace.images() / version / "rootfs").mkdir(parents=True)
    before = _ids(nfs.render_system_ganesha(config))
    (workspace.images() / older / "rootfs").rmdir()
    (workspace.images() / older).rmdir()
    after = _ids(nfs.render_system_ganesha(config))
    assert after == {f"/demo/{newer}": before[f"/demo/{newer}"]}


# --- a private store, boot files still served -------------------------------------------


def _others_can_reach(path: Path, stop: Path) -> bool:
    """Whether a user other than root can open path (o+x on every directory from stop down)."""
    real = Path(os.path.realpath(path))
    below = [d for d in real.parents if d == stop or stop in d.parents]
    if any(not d.stat().st_mode & 0o001 for d in below):
        return False
    return bool(real.stat().st_mode & 0o004)


def test_store_is_private_and_boot_files_stay_servable(workspace: Workspace) -> None:
    suid = workspace.tree / "usr" / "bin" / "id-suid"
    suid.write_bytes(Path("/usr/bin/id").read_bytes())
    suid.chmod(0o4755)
    version = workspace.json("build", "demo", "--activate")["version"]["version"]
    state = workspace.state
    for private in ("images", "cache", "logs"):
        assert (state / private).stat().st_mode & 0o777 == 0o700, private
    assert (state / "netroot.db").stat().st_mode & 0o777 == 0o600
    assert (workspace.images() / version / "files.idx").stat().st_mode & 0o777 == 0o600
    for log in (state / "logs" / "demo").iterdir():
        assert log.stat().st_mode & 0o777 == 0o600
    rootfs_suid = workspace.images() / version / "rootfs" / "usr" / "bin" / "id-suid"
    assert rootfs_suid.stat().st_mode & 0o4000  # the image keeps its setuid bit...
    assert not _others_can_reach(rootfs_suid, state)  # ...but no local user reaches it
    # dnsmasq serves TFTP as its own user: what the menu names is reachable by it.
    tftp = workspace.root / "tftp"
    for rel in (f"netroot/_versions/demo/{version}/vmlinuz", "netroot/demo/vmlinuz"):
        assert _others_can_reach(tftp / rel, tftp), rel
        assert (tftp / rel).samefile(workspace.images() / version / "boot" / "vmlinuz")
    menu = (tftp / "pxelinux.cfg" / "default").read_text()
    assert f"netroot/_versions/demo/{version}/initrd.img" in menu


def test_boot_file_symlinks_of_the_old_layout_become_hard_links(workspace: Workspace) -> None:
    version = workspace.json("build", "demo", "--activate")["version"]["version"]
    served = workspace.root / "tftp" / "netroot" / "_versions" / "demo" / version
    shutil.rmtree(served)
    served.symlink_to(workspace.images() / version / "boot")  # what older netroot made
    workspace.run("recover")
    assert served.is_dir() and not served.is_symlink()
    assert (served / "vmlinuz").samefile(workspace.images() / version / "boot" / "vmlinuz")


def test_corrupt_state_database_gives_one_line(workspace: Workspace) -> None:
    workspace.run("build", "demo", "--activate")
    db = workspace.state / "netroot.db"
    db.write_bytes(b"this is not an SQLite database\n" * 100)
    for command in (["activate", "demo"], ["gc", "demo"], ["rollback", "demo"]):
        line = _one_error(workspace.run(*command, check=False).stderr)
        assert f"{db}: cannot" in line and "not a database" in line, line

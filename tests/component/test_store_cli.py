"""build, activate, versions, rollback and gc from the shell, as an administrator runs them."""

from __future__ import annotations

import os
from pathlib import Path

from support import Workspace, make_root_tree, make_tarball


def test_build_activate_versions_rollback_gc(workspace: Workspace) -> None:
    first = workspace.json("build", "demo", "--activate")
    v1 = first["version"]["version"]
    assert first["activated"] is True
    assert os.readlink(workspace.export_link) == str(workspace.images() / v1 / "rootfs")
    # The TFTP side holds hard links of the version's boot files, inside the TFTP root.
    assert os.readlink(workspace.tftp_link) == f"_versions/demo/{v1}"
    served_kernel = workspace.tftp_link / "vmlinuz"
    assert served_kernel.samefile(workspace.images() / v1 / "boot" / "vmlinuz")
    assert served_kernel.read_bytes().endswith(b"kernel")
    assert (workspace.export_link / "etc/netroot/version").read_text() == f"{v1}\n"

    (workspace.overlays / "common" / "etc").mkdir(parents=True)
    (workspace.overlays / "common" / "etc" / "motd").write_text("welcome\n")
    v2 = workspace.json("build", "demo", "--activate")["version"]["version"]
    assert v2 > v1
    assert workspace.active() == v2
    assert (workspace.export_link / "etc/motd").read_text() == "welcome\n"

    table = workspace.run("versions", "demo").stdout
    assert "VERSION" in table and v1 in table and v2 in table
    active_line = next(line for line in table.splitlines() if v2 in line)
    assert active_line.startswith("*")

    rolled = workspace.json("rollback", "demo")
    assert rolled == {"label": "demo", "version": v1, "previous": v2, "action": "rollback"}
    assert os.readlink(workspace.export_link).endswith(f"{v1}/rootfs")
    assert os.readlink(workspace.tftp_link) == f"_versions/demo/{v1}"
    assert not (workspace.export_link / "etc/motd").exists()

    back = workspace.run("activate", "demo", v2).stdout
    assert f"activated demo to {v2}" in back

    assert workspace.run("verify", "demo", "--deep").returncode == 0


def test_gc_keeps_active_rollback_target_and_newest(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, keep_versions=2)
    make_root_tree(ws.tree)
    ws.write()
    built = []
    for i in range(5):
        (ws.overlays / "demo").mkdir(parents=True, exist_ok=True)
        (ws.overlays / "demo" / "build-number").write_text(str(i))
        built.append(ws.json("build", "demo")["version"]["version"])
    ws.run("activate", "demo", built[0])
    ws.run("activate", "demo", built[1])  # built[0] becomes the rollback target

    dry = ws.json("gc", "demo", "--dry-run")
    assert dry["pruned"] == [built[2]]
    assert ws.versions() == built  # a dry run removes nothing

    result = ws.json("gc", "demo")
    assert result["pruned"] == [built[2]]
    assert result["kept"] == {built[0]: "rollback target", built[1]: "active"}
    assert ws.versions() == [built[0], built[1], built[3], built[4]]
    assert not (ws.images() / built[2]).exists()
    human = ws.run("gc", "demo").stdout
    assert "pruned 0 version(s)" in human and "rollback target" in human


def test_import_from_tar_archive(workspace: Workspace) -> None:
    make_tarball(workspace.tree, workspace.root / "tree.tar")
    workspace.write(source="tree.tar")
    version = workspace.json("build", "demo", "--activate")["version"]
    assert version["kernel_version"] == "6.1.0-test"
    assert (workspace.export_link / "etc/hostname").read_text() == "node\n"
    assert os.readlink(workspace.export_link / "bin") == "usr/bin"


def test_rebuild_with_unchanged_inputs_reuses_base_and_keeps_content_hash(
    workspace: Workspace,
) -> None:
    a = workspace.json("build", "demo")["version"]
    result = workspace.run("build", "demo")
    assert "reusing base tree" in result.stderr
    b = workspace.json("versions", "demo")[-1]
    assert a["tree_digest"] != b["tree_digest"]  # /etc/netroot/version differs
    assert a["version"][-8:] == b["version"][-8:]  # same content, same short hash
    forced = workspace.run("build", "demo", "--rebuild")
    assert "reusing base tree" not in forced.stderr


def test_activate_newest_and_nothing_to_roll_back(workspace: Workspace) -> None:
    missing = workspace.run("activate", "demo", check=False)
    assert missing.returncode != 0
    assert "no version built yet" in missing.stderr
    v1 = workspace.json("build", "demo")["version"]["version"]
    assert workspace.json("activate", "demo")["version"] == v1
    none_left = workspace.run("rollback", "demo", check=False)
    assert none_left.returncode == 1
    assert (
        none_left.stderr.strip()
        == "netroot: error: demo: no earlier active version to roll back to"
    )


def test_gc_drops_cached_base_trees_no_version_uses(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, keep_versions=1)
    make_root_tree(ws.tree)
    ws.write()
    old = ws.json("build", "demo", "--activate")["version"]
    (ws.tree / "etc" / "added-to-the-source").write_text("new base\n")
    new = ws.json("build", "demo", "--activate")["version"]
    (ws.overlays / "demo").mkdir(parents=True)
    (ws.overlays / "demo" / "motd").write_text("third\n")
    third = ws.json("build", "demo", "--activate")["version"]
    bases = ws.state / "cache" / "bases" / "demo"
    assert old["base_key"] != new["base_key"] == third["base_key"]
    assert len(list(bases.iterdir())) == 2

    assert ws.json("gc", "demo")["pruned"] == [old["version"]]
    assert [p.name for p in bases.iterdir()] == [new["base_key"][:32]]
    ws.run("build", "demo", "--activate")  # the remaining base is still reusable

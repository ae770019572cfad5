"""Boot files in a real TFTP root: what activation, install and render write, and refuse."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support import Workspace, snapshot

from controller.config.load import load_config
from controller.serve import nfs
from controller.serve.tftp import read_default_choice
from controller.store.layout import label_paths

MAC = "52:54:00:12:34:56"


def tftp(ws: Workspace) -> Path:
    return ws.root / "tftp"


def menu_files(ws: Workspace) -> set[str]:
    root = tftp(ws)
    return {
        str(p.relative_to(root))
        for d in ("pxelinux.cfg", "ipxe", "grub")
        for p in (root / d).glob("*")
        if p.is_file()
    }


def kernel_paths(text: str) -> list[str]:
    words = text.split()
    return [words[i + 1].lstrip("/") for i, w in enumerate(words) if w in ("KERNEL", "INITRD")]


@pytest.fixture
def served(workspace: Workspace) -> Workspace:
    workspace.run("build", "demo", "--activate")
    return workspace


def test_activation_renders_every_loader_menu_naming_existing_files(served: Workspace) -> None:
    active = served.active()
    assert menu_files(served) == {
        "pxelinux.cfg/default", "pxelinux.cfg/netroot-demo", "ipxe/boot.ipxe",
        "ipxe/default.ipxe", "grub/grub.cfg",
    }  # fmt: skip
    default = (tftp(served) / "pxelinux.cfg/default").read_text()
    assert f"root=nfs4:10.0.2.2:/demo/{active} ro " in default
    assert f"netroot.version={active}" in default
    for rel in kernel_paths(default):
        # what a TFTP server would send: the version's own files, through its link
        assert (tftp(served) / rel).is_file(), rel
        assert f"/{active}/" in rel
    grub = (tftp(served) / "grub/grub.cfg").read_text()
    assert f"linux /netroot/_versions/demo/{active}/vmlinuz" in grub
    ipxe = (tftp(served) / "ipxe/default.ipxe").read_text()
    assert f"kernel /netroot/_versions/demo/{active}/vmlinuz initrd=initrd.img" in ipxe


def test_a_new_activation_switches_the_menu_and_keeps_the_old_versions_files(
    served: Workspace,
) -> None:
    old = served.active()
    (served.overlays / "demo").mkdir(parents=True)
    (served.overlays / "demo" / "marker").write_text("v2")
    served.run("build", "demo", "--activate")
    new = served.active()
    assert old is not None and new is not None
    assert new != old
    default = (tftp(served) / "pxelinux.cfg/default").read_text()
    assert new in default and old not in default
    # a node that read the old menu a moment ago still finds its kernel
    assert (tftp(served) / f"netroot/_versions/demo/{old}/vmlinuz").is_file()
    assert (tftp(served) / f"netroot/_versions/demo/{new}/vmlinuz").is_file()


def test_gc_then_render_drops_links_of_pruned_versions(workspace: Workspace) -> None:
    ws = Workspace(workspace.root, keep_versions=1).write()
    (ws.overlays / "demo").mkdir(parents=True)
    versions = []
    for tag in ("a", "b", "c"):
        (ws.overlays / "demo" / "tag").write_text(tag)
        ws.run("build", "demo", "--activate")
        versions.append(ws.active())
    ws.run("gc", "demo")
    ws.run("recover")  # any later render, e.g. the next activation
    links = sorted(os.listdir(tftp(ws) / "netroot/_versions/demo"))
    assert links == sorted(set(ws.versions()))
    assert versions[0] not in links


def test_per_mac_override_renders_and_is_removed_with_its_config(workspace: Workspace) -> None:
    (workspace.root / "recipes" / "other.toml").write_text(
        'builder = "import"\nsource = "../source-tree"\n'
    )
    base_extra = '[labels.other]\nrecipe = "other.toml"\n'
    ws = Workspace(
        workspace.root, extra_config=f'[nodes."{MAC}"]\nlabel = "other"\n{base_extra}'
    ).write()
    ws.run("build", "other", "--activate")
    ws.run("build", "demo", "--activate")
    ws.run("install", "demo")
    per_mac = {"pxelinux.cfg/01-52-54-00-12-34-56", "ipxe/01-52-54-00-12-34-56.ipxe",
               "grub/grub.cfg-01-52-54-00-12-34-56"}  # fmt: skip
    assert per_mac <= menu_files(ws)
    text = (tftp(ws) / "pxelinux.cfg/01-52-54-00-12-34-56").read_text()
    assert "DEFAULT other" in text
    assert "DEFAULT demo" in (tftp(ws) / "pxelinux.cfg/default").read_text()
    # the override leaves the config: the next render removes its files
    Workspace(workspace.root, extra_config=base_extra).write()
    ws.run("activate", "demo")
    assert not per_mac & menu_files(ws)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ('[nodes."52:54:00:12:34:ZZ"]\nlabel = "demo"\n', 'nodes."52:54:00:12:34:ZZ": invalid MAC'),
        ('[nodes."52-54-00-12-34-56"]\nlabel = "demo"\n', "six lowercase hex pairs"),
        (f'[nodes."{MAC}"]\nlabel = "nosuch"\n', "label 'nosuch' is not configured"),
    ],
)
def test_bad_override_is_one_clear_error_and_writes_nothing(
    served: Workspace, extra: str, words: str
) -> None:
    before = snapshot(tftp(served))
    Workspace(served.root, extra_config=extra).write()
    for command in (("install", "demo"), ("render", "pxelinux"), ("activate", "demo")):
        done = served.run(*command, check=False)
        assert done.returncode == 1, command
        assert done.stderr.count("netroot: error:") == 1 and words in done.stderr, done.stderr
    assert snapshot(tftp(served)) == before


def test_missing_boot_file_or_recipe_is_refused_before_any_write(served: Workspace) -> None:
    config = load_config(served.config)
    paths = label_paths(config, "demo")
    before = snapshot(tftp(served))
    kernel = paths.boot(served.active() or "") / "vmlinuz"
    kernel.rename(kernel.with_name("moved"))
    done = served.run("install", "demo", check=False)
    assert (
        done.returncode == 1
        and "boot file" in done.stderr
        and "vmlinuz is missing" in (done.stderr)
    )
    kernel.with_name("moved").rename(kernel)
    (served.root / "recipes" / "demo.toml").rename(served.root / "recipe.moved")
    done = served.run("install", "demo", check=False)
    assert done.returncode == 1 and "demo.toml" in done.stderr, done.stderr
    assert snapshot(tftp(served)) == before


def test_label_without_a_version_is_refused(workspace: Workspace) -> None:
    done = workspace.run("install", "demo", check=False)
    assert done.returncode == 1
    assert "no active version; run `netroot build demo --activate`" in done.stderr
    assert not (workspace.root / "tftp").exists()


def test_install_copies_loaders_and_makes_the_label_the_default(served: Workspace) -> None:
    result = served.json("install", "demo")
    root = tftp(served)
    # Debian's pxelinux, syslinux-common, ipxe and grub-efi-amd64-bin (.ci/setup)
    assert result["missing_loaders"] == []
    for name, source in (
        ("pxelinux.0", "/usr/lib/PXELINUX/pxelinux.0"),
        ("ldlinux.c32", "/usr/lib/syslinux/modules/bios/ldlinux.c32"),
        ("ipxe/undionly.kpxe", "/usr/lib/ipxe/undionly.kpxe"),
    ):
        assert (root / name).read_bytes() == Path(source).read_bytes(), name
    assert (root / "grub/grubx64.efi").read_bytes()[:2] == b"MZ"  # a PE/COFF EFI application
    assert read_default_choice(root) == "demo"
    assert result["default"] == "demo"
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name]


def test_render_prints_without_writing(served: Workspace) -> None:
    before = snapshot(tftp(served))
    active = served.active()
    pxe = served.run("render", "pxelinux").stdout
    assert pxe == (tftp(served) / "pxelinux.cfg/default").read_text()
    assert f"kernel /netroot/_versions/demo/{active}/vmlinuz" in served.run("render", "ipxe").stdout
    assert "menuentry 'demo" in served.run("render", "grub", "demo").stdout
    exports = served.run("render", "exports").stdout
    assert f"{served.export_link} 10.0.2.0/24(ro,no_root_squash,no_subtree_check,fsid=" in exports
    ganesha = served.run("render", "ganesha", "demo").stdout
    assert f"Pseudo = /demo/{active};" in ganesha
    real = os.path.realpath(served.images() / str(active) / "rootfs")
    assert f"Path = {real};" in ganesha
    assert "dhcp-range=10.0.2.0,proxy,255.255.255.0" in served.run("render", "dnsmasq").stdout
    assert f"root=nbd:10.0.2.2:10809/demo-{active}:squashfs:ro" in (
        served.run("render", "nbd", "demo").stdout
    )
    assert snapshot(tftp(served)) == before


def test_managed_ganesha_config_is_written_per_version(served: Workspace) -> None:
    ws = Workspace(
        served.root,
        extra_config=(
            f'[nfs]\nmanage = true\nganesha_config = "{served.root}/ganesha.conf"\n'
            f'ganesha_pidfile = "{served.root}/ganesha.pid"\n'
        ),
    ).write()
    first = ws.active()
    (ws.overlays / "demo").mkdir(parents=True)
    (ws.overlays / "demo" / "tag").write_text("2")
    ws.run("build", "demo", "--activate")
    text = (ws.root / "ganesha.conf").read_text()
    for version in ws.versions():
        assert f"Pseudo = /demo/{version};" in text
    assert f"Pseudo = /demo/{first};" in text  # the old version stays exported
    assert "Clients = 10.0.2.0/24;" in text and "PrivilegedPort = true;" in text


def test_kernel_exports_file_renders_a_stable_fsid(served: Workspace) -> None:
    config = load_config(served.config)
    text = nfs.render_kernel_exports(config)
    again = nfs.render_kernel_exports(config)
    assert text == again
    line = text.splitlines()[1]
    assert line.startswith(f"{served.export_link} 10.0.2.0/24(ro,") and ",fsid=" in line
    assert "*" not in text and "insecure" not in text


def test_dhcp_install_writes_config_and_a_hook_that_queues_the_lease(served: Workspace) -> None:
    conf = served.root / "dnsmasq.conf"
    Workspace(
        served.root,
        extra_config=(
            f'[dhcp]\nenabled = true\nmode = "full"\nrange_start = "10.0.2.50"\n'
            f'range_end = "10.0.2.99"\nconfig_file = "{conf}"\n'
        ),
    ).write()
    served.run("install", "demo")
    text = conf.read_text()
    hook = served.state / "bin" / "dhcp-hook"
    assert f"dhcp-script={hook}" in text and "dhcp-range=10.0.2.50,10.0.2.99," in text
    assert os.access(hook, os.X_OK)
    # what dnsmasq does on a lease
    subprocess.run([hook, "add", "52:54:00:AA:BB:CC", "10.0.2.51", "node1"], check=True,
                   env={"PATH": "/usr/bin:/bin", "DNSMASQ_VENDOR_CLASS": "PXEClient:Arch:00000"},
                   timeout=60)  # fmt: skip
    records = [p.read_text() for p in (served.state / "spool").glob("*.json")]
    assert len(records) == 1 and '"mac":"52:54:00:aa:bb:cc"' in records[0].replace(" ", "")
    assert '"firmware":true' in records[0].replace(" ", "")


def test_managed_kernel_server_gets_its_exports_file_and_exportfs(workspace: Workspace) -> None:
    exports = workspace.root / "netroot.exports"
    ws = Workspace(
        workspace.root,
        extra_config=(
            f'[nfs]\nserver = "kernel"\nmanage = true\nexports_file = "{exports}"\n'
            'clients = ["10.0.2.0/24", "192.168.8.0/22"]\n'
        ),
    ).write()
    done = ws.run("build", "demo", "--activate", check=False)
    line = exports.read_text().splitlines()[1]
    options = "ro,no_root_squash,no_subtree_check,fsid="
    assert line.startswith(f"{ws.export_link} 10.0.2.0/24({options}")
    assert f") 192.168.8.0/22({options}" in line
    if shutil.which("exportfs") is None:
        # No kernel NFS server on this machine: the step that needs one says so.
        assert done.returncode == 1
        assert "netroot: error: exportfs exited with status 127: exportfs: command not found" in (
            done.stderr
        )
    else:
        assert done.returncode == 0, done.stderr

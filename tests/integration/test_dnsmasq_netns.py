"""dnsmasq as `netroot install` configures it, for real, in a network namespace.

A veth pair joins the server's namespace to a client's; busybox udhcpc in
the client asks for an address as PXE firmware would. The client must get
an address from the configured range and the BIOS loader as its boot file,
and the dhcp-script wrapper must hand the lease to `netroot hook dhcp`,
which queues it in <state_dir>/spool for the daemon.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import KVER, Workspace, make_root_tree, wait_until

from controller.config.load import load_config
from controller.serve import dhcp

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SERVER = "10.77.0.1"
CLIENT_VENDOR = "PXEClient:Arch:00000:UNDI:002001"  # what BIOS PXE firmware sends


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=30)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str, str]]:
    """(server ns, client ns, client interface), joined by a veth pair; removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("network namespaces need root and iproute2 (run .ci/setup as root)")
    tag = uuid.uuid4().hex[:6]
    server_ns, client_ns = f"nr-srv-{tag}", f"nr-cli-{tag}"
    server_if, client_if = f"nrs{tag}", f"nrc{tag}"
    ip("netns", "add", server_ns)
    ip("netns", "add", client_ns)
    try:
        ip("link", "add", server_if, "type", "veth", "peer", "name", client_if)
        ip("link", "set", server_if, "netns", server_ns)
        ip("link", "set", client_if, "netns", client_ns)
        ip("-n", server_ns, "addr", "add", f"{SERVER}/24", "dev", server_if)
        for ns, dev in ((server_ns, server_if), (client_ns, client_if)):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", dev, "up")
        yield server_ns, client_ns, client_if
    finally:
        # deleting a namespace deletes the veth end in it, and so the pair
        for ns in (server_ns, client_ns):
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30)


def test_dnsmasq_leases_to_a_pxe_client_and_the_hook_queues_it(
    workspace: Workspace, namespaces: tuple[str, str, str], tmp_path: Path
) -> None:
    server_ns, client_ns, client_if = namespaces
    server_if = "nrs" + client_if[3:]
    conf = tmp_path / "dnsmasq.conf"
    leases = tmp_path / "leases"
    ws = Workspace(
        workspace.root,
        extra_config=(
            f'server = "{SERVER}"\n'
            f'[dhcp]\nenabled = true\nmode = "full"\nnetwork = "10.77.0.0/24"\n'
            f'range_start = "10.77.0.50"\nrange_end = "10.77.0.60"\ninterface = "{server_if}"\n'
            f'config_file = "{conf}"\nlease_file = "{leases}"\n'
        ),
    ).write()
    ws.run("build", "demo", "--activate")
    ws.run("install", "demo")
    text = conf.read_text()
    assert f"interface={server_if}" in text and "dhcp-boot=tag:!ipxe,tag:bios,pxelinux.0" in text
    pid_file = tmp_path / "dnsmasq.pid"
    argv = dhcp.dnsmasq_argv(conf, pid_file)
    # root inside the test namespace: the pytest tmp dirs are closed to `nobody`
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, *argv, "--user=root"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        # dnsmasq writes its pid file once its sockets are bound (or it has exited)
        wait_until(lambda: server.poll() is not None or pid_file.exists(), "dnsmasq to start")
        assert server.poll() is None, server.communicate()[0]
        script = tmp_path / "udhcpc-script"
        env_dump = tmp_path / "lease.env"
        script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && env > {env_dump}\nexit 0\n')
        script.chmod(0o755)
        client = subprocess.run(
            ["ip", "netns", "exec", client_ns, "busybox", "udhcpc", "-i", client_if, "-f", "-q",
             "-n", "-t", "5", "-T", "2", "-s", str(script), "-V", CLIENT_VENDOR,
             "-x", "0x5d:0000"],  # client architecture 0: BIOS
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert client.returncode == 0, client.stdout + client.stderr
        lines = env_dump.read_text().splitlines()
        lease = dict(line.split("=", 1) for line in lines if "=" in line)
        assert 50 <= int(lease["ip"].rsplit(".", 1)[1]) <= 60
        assert lease["boot_file"] == "pxelinux.0" and lease["siaddr"] == SERVER
        link = subprocess.run(
            ["ip", "-n", client_ns, "-o", "link", "show", client_if],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        mac = link.stdout.split("link/ether ")[1].split()[0]
        spool = ws.state / "spool"
        deadline = time.monotonic() + 30
        records: list[dict[str, object]] = []
        while time.monotonic() < deadline and not records:
            records = [json.loads(p.read_text()) for p in spool.glob("*.json")]
            time.sleep(0.2)
        assert records, "the dhcp-script hook queued nothing"
        record = records[0]
        assert record["action"] == "add" and record["ip"] == lease["ip"]
        assert record["mac"] == mac
        assert record["firmware"] is True
    finally:
        server.terminate()
        server.communicate(timeout=30)
    config = load_config(ws.config)
    assert dhcp.hook_script(config).is_file()


@pytest.mark.parametrize("mode", ["full", "proxy"])
def test_dnsmasq_accepts_both_rendered_modes(workspace: Workspace, mode: str) -> None:
    extra = f'[dhcp]\nmode = "{mode}"\n'
    if mode == "full":
        extra += 'range_start = "10.0.2.50"\nrange_end = "10.0.2.99"\n'
    ws = Workspace(workspace.root, extra_config=extra).write()
    conf = workspace.root / "dnsmasq.conf"
    conf.write_text(ws.run("render", "dnsmasq").stdout)
    done = subprocess.run(["dnsmasq", "--test", f"--conf-file={conf}"], capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "syntax check OK" in done.stderr


def menu_files(tftp_root: Path) -> set[str]:
    """Every file the pxelinux, iPXE and GRUB menus name, relative to the TFTP root."""
    named: set[str] = set()
    for line in (tftp_root / "pxelinux.cfg" / "default").read_text().splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in ("KERNEL", "INITRD"):
            named.add(words[1])
    for menu in (tftp_root / "ipxe" / "default.ipxe", tftp_root / "grub" / "grub.cfg"):
        for line in menu.read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in ("kernel", "initrd", "linux", "chain"):
                named.add(words[1].lstrip("/"))
    return named


def test_dnsmasq_as_its_own_user_serves_every_file_the_menus_name(
    namespaces: tuple[str, str, str], tmp_path: Path
) -> None:
    """As a boot server runs it: dnsmasq drops to its own user, so every directory on the
    way to a boot file must be searchable and every boot file readable by it."""
    if subprocess.run(["getent", "passwd", "dnsmasq"], capture_output=True,
                      check=False).returncode != 0:  # fmt: skip
        pytest.fail("the dnsmasq user is created by Debian's dnsmasq-base (run .ci/setup)")
    server_ns, client_ns, client_if = namespaces
    server_if = "nrs" + client_if[3:]
    # pytest's own tmp directories are closed to other users; a site's are not
    site = Path(tempfile.mkdtemp(prefix="netroot-tftp-", dir="/var/tmp"))
    site.chmod(0o755)
    try:
        ws = Workspace(site, extra_config=(
            f'server = "{SERVER}"\n[dhcp]\nenabled = true\nmode = "full"\n'
            f'network = "10.77.0.0/24"\nrange_start = "10.77.0.50"\nrange_end = "10.77.0.60"\n'
            f'interface = "{server_if}"\nconfig_file = "{site / "dnsmasq.conf"}"\n'
        ))  # fmt: skip
        make_root_tree(ws.tree)
        (ws.tree / "boot" / f"initrd.img-{KVER}").chmod(0o600)  # as dracut writes it
        ws.write()
        ws.run("build", "demo", "--activate")
        ws.run("install", "demo")
        conf = tmp_path / "dnsmasq.conf"
        conf.write_text(ws.run("render", "dnsmasq", "demo").stdout)
        tftp_root = ws.root / "tftp"
        assert f"tftp-root={tftp_root}" in conf.read_text()
        names = menu_files(tftp_root)
        assert any(n.endswith("/initrd.img") for n in names) and any(
            n.endswith("/vmlinuz") for n in names)  # fmt: skip
        names |= {"pxelinux.0", "ldlinux.c32", "pxelinux.cfg/default", "ipxe/undionly.kpxe",
                  "ipxe/ipxe.efi", "ipxe/boot.ipxe", "grub/grubx64.efi",
                  "grub/grub.cfg"}  # fmt: skip
        ip("-n", client_ns, "addr", "add", "10.77.0.2/24", "dev", client_if)
        argv = dhcp.dnsmasq_argv(conf, tmp_path / "dnsmasq.pid")
        server = subprocess.Popen(
            ["ip", "netns", "exec", server_ns, *argv, "--user=dnsmasq"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            fetched = tmp_path / "fetched"
            fetched.mkdir()
            failures = []
            for name in sorted(names):
                out = fetched / name.replace("/", "_")
                done = subprocess.run(
                    ["ip", "netns", "exec", client_ns, "busybox", "tftp", "-g", "-b", "1400",
                     "-r", name, "-l", str(out), SERVER],
                    capture_output=True, text=True, timeout=120, check=False,
                )  # fmt: skip
                if done.returncode != 0:
                    failures.append(f"{name}: {done.stderr.strip()}")
                elif out.read_bytes() != (tftp_root / name).read_bytes():
                    failures.append(f"{name}: differs from the file in the TFTP root")
            assert failures == [], failures
        finally:
            server.terminate()
            log = server.communicate(timeout=30)[0]
        assert "Permission denied" not in log, log
    finally:
        shutil.rmtree(site, ignore_errors=True)

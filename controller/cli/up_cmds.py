"""`netroot up`: the whole job on one machine, for a first run or a demo.

A broker on loopback (unless one already listens on the configured port),
the controller, a build and activation of the label, a VM node booting it,
and the event stream printed live; Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from controller import proc
from controller.config import Config, check_label, load_config
from controller.errors import NetrootError

# the daemon's "ready" log line, console or JSON rendering
READY = re.compile(r'\]\s+ready\s|"event": "ready"')
BROKER_CONF = """\
# written by `netroot up`: a loopback broker for this run only
listener {port} 127.0.0.1
allow_anonymous true
persistence false
log_dest stderr
"""


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the up command."""
    p = sub.add_parser(
        "up",
        parents=[common],
        help="broker, controller, build, a VM node and live events; Ctrl-C stops all",
        description=__doc__,
    )
    p.add_argument("label", nargs="?", default="debian12")
    p.add_argument("--timeout", type=float, metavar="S", help="stop the VM node after S seconds")
    p.add_argument("--no-boot", action="store_true", help="build and activate, boot no VM")
    p.set_defaults(handler=cmd_up)


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def _wait_listening(host: str, port: int, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not _listening(host, port):
        if time.monotonic() > deadline:
            raise NetrootError(
                f"the broker did not listen on {host}:{port} within {within_s:.0f} s"
            )
        time.sleep(0.1)


def _wait_ready(serve: subprocess.Popen[bytes], log_file: Path, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            raise NetrootError(f"the controller stopped: {proc.file_tail(log_file, 3)}")
        if log_file.exists() and READY.search(log_file.read_text(errors="replace")):
            return
        time.sleep(0.2)
    raise NetrootError(f"the controller was not ready within {within_s:.0f} s (log: {log_file})")


def _say(message: str) -> None:
    print(f"netroot up: {message}", file=sys.stderr, flush=True)


def _netroot(args: argparse.Namespace, *command: str) -> list[str]:
    config = ["--config", args.config] if args.config else []
    return [sys.executable, "-m", "controller", *config, *command]


def _start_broker(stack: contextlib.ExitStack, config: Config, run_dir: Path) -> None:
    host, port = config.mqtt.host, config.mqtt.port
    if _listening(host, port):
        _say(f"using the broker already listening on {host}:{port}")
        return
    if host not in ("127.0.0.1", "localhost"):
        raise NetrootError(f"{config.source}: mqtt.host: no broker answers on {host}:{port}")
    conf = run_dir / "mosquitto.conf"
    conf.write_text(BROKER_CONF.format(port=port))
    stack.enter_context(
        proc.background(["mosquitto", "-c", conf], log_file=run_dir / "mosquitto.log")
    )
    _wait_listening(host, port, within_s=10)
    _say(f"mosquitto on {host}:{port} (log: {run_dir / 'mosquitto.log'})")


def cmd_up(args: argparse.Namespace) -> int:
    """Run it all; return when the VM node stops or on Ctrl-C."""
    config = load_config(Path(args.config) if args.config else None)
    check_label(args.label)
    config.label(args.label)
    run_dir = config.state_dir / "run" / "up"
    run_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if config.mqtt.enabled:
            _start_broker(stack, config, run_dir)
        serve_log = run_dir / "serve.log"
        serve_log.unlink(missing_ok=True)
        serve = stack.enter_context(proc.background(_netroot(args, "serve"), log_file=serve_log))
        # Build only once the controller is ready, so it sees and announces the activation.
        _wait_ready(serve, serve_log, within_s=120)
        _say(f"controller ready (log: {serve_log})")
        if config.mqtt.enabled:
            stack.enter_context(proc.background(_netroot(args, "events")))  # printed live
        build = proc.run_interactive(_netroot(args, "build", args.label, "--activate"))
        if build.returncode != 0:
            _say(f"the build failed (status {build.returncode}); stopping")
            return 1
        if not args.no_boot:
            boot = [*_netroot(args, "boot", args.label, "--headless")]
            if args.timeout:
                boot += ["--timeout", str(args.timeout)]
            _say("booting a VM node; Ctrl-C stops it and everything else")
            proc.run_interactive(boot)
        time.sleep(1)  # let the last events arrive before the stream stops
        proc.run_interactive(_netroot(args, "nodes"))
        _say("stopping everything started")
    return 0

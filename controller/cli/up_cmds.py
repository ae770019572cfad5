"""`netroot up`: the whole job on one machine, for a first run or a demo.

A broker on loopback (unless one already listens on the configured port),
the controller, a build and activation of the label, a VM node booting it,
and the event stream printed live. Ctrl-C, SIGTERM and SIGHUP (a closed
terminal) stop everything it started; its children get SIGTERM even if it
is killed outright (proc's parent-death signal), and they run this very
installation of netroot (proc.netroot_argv), whatever the working directory.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any, get_args

from pydantic.dataclasses import dataclass

from controller.cli.options import OPTIONS, Common, add_commands, command, flag, load, opt, pos
from controller.config.models import BUILTIN, Config
from controller.core import proc
from controller.core.errors import NetrootError
from controller.core.ids import check_label
from controller.daemon.notify import NotifySocket
from controller.vm import broker as upbroker
from controller.vm.guest import random_mac
from controller.vm.qemu import AccelRequest

READY_WITHIN_S = 120.0  # recovery of a large store comes before READY=1
LAST_EVENT_WITHIN_S = 20.0  # the event a step ends with: published within a few seconds
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # Ctrl-C is KeyboardInterrupt already
BROKER_CONF = upbroker.BROKER_CONF  # what every run's broker has (credentials aside)


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class UpOptions(Common):
    """netroot up."""

    label: str = pos(nargs="?", default="debian12")
    timeout: float | None = opt(type=float, metavar="S", help="stop the VM node after S seconds")
    no_boot: bool = flag("build and activate, boot no VM")
    accel: AccelRequest = opt(
        choices=get_args(AccelRequest),
        default="auto",
        help="the VM's accelerator, as `netroot boot --accel` (default auto)",
    )


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the up command."""
    add_commands(sub, common, cmd_up)


class Stopped(Exception):
    """SIGTERM or SIGHUP arrived: unwind, stopping everything started."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def _on_stop_signal(signum: int, _frame: FrameType | None) -> None:
    # The first one unwinds; later ones must not break the unwinding.
    for sig in (*STOP_SIGNALS, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signum)


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


def _say(message: str) -> None:
    # The terminal may be gone (SIGHUP): saying so must not stop the cleanup.
    with contextlib.suppress(OSError):
        print(f"netroot up: {message}", file=sys.stderr, flush=True)


def _netroot(config: Config, *command: str) -> list[str]:
    """A child netroot command on the same config file as this one."""
    chosen = [] if config.source == BUILTIN else ["--config", str(Path(config.source).resolve())]
    return proc.netroot_argv(*chosen, *command)


def _start_broker(stack: contextlib.ExitStack, config: Config, run_dir: Path) -> None:
    host, port = config.mqtt.host, config.mqtt.port
    if _listening(host, port):
        _say(f"using the broker already listening on {host}:{port}")
        return
    if host not in upbroker.LOOPBACK_HOSTS:
        raise NetrootError(f"{config.source}: mqtt.host: no broker answers on {host}:{port}")
    conf = upbroker.write_broker_files(config.mqtt, run_dir)
    stack.enter_context(
        proc.background(["mosquitto", "-c", conf], log_file=run_dir / "mosquitto.log")
    )
    _wait_listening(host, port, within_s=10)
    _say(f"mosquitto on {host}:{port} (log: {run_dir / 'mosquitto.log'})")


def _start_controller(stack: contextlib.ExitStack, config: Config, run_dir: Path) -> Path:
    """`netroot serve`, returning once it said READY=1 on a notify socket of ours."""
    serve_log = run_dir / "serve.log"
    serve_log.unlink(missing_ok=True)
    notify = stack.enter_context(NotifySocket())
    env = {**proc.netroot_env(), "NOTIFY_SOCKET": notify.address}
    serve = stack.enter_context(
        proc.background(_netroot(config, "serve"), log_file=serve_log, env=env)
    )
    ready = notify.wait_ready(serve.pid, lambda: serve.poll() is None, READY_WITHIN_S)
    if ready:
        return serve_log
    if serve.poll() is not None:
        raise NetrootError(f"the controller stopped: {proc.file_tail(serve_log, 3)}")
    raise NetrootError(
        f"the controller was not ready within {READY_WITHIN_S:.0f} s (log: {serve_log})"
    )


class EventStream:
    """`netroot events` printed live, and told when an awaited event went by."""

    def __init__(self, stdout: IO[bytes]) -> None:
        self.stdout = stdout
        self.seen: list[tuple[str, str]] = []  # (kind, subject) of every event line
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._pump, name="events", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # the pipe closes when it stops
            for raw in self.stdout:
                line = raw.decode(errors="replace")
                with contextlib.suppress(OSError):
                    sys.stdout.write(line)
                    sys.stdout.flush()
                words = line.split()
                if len(words) >= 3:  # HH:MM:SS kind subject fields...
                    with self.changed:
                        self.seen.append((words[1], words[2]))
                        self.changed.notify_all()

    def wait_for(self, kind: str, subject: str | None, within_s: float) -> bool:
        """True once an event of kind (about subject, if given) was printed (within_s at most)."""

        def found() -> bool:
            return any(k == kind and subject in (None, s) for k, s in self.seen)

        with self.changed:
            return self.changed.wait_for(found, within_s)


@contextlib.contextmanager
def _event_stream(config: Config) -> Iterator[EventStream]:
    argv = _netroot(config, "events")
    with proc.background(argv, env=proc.netroot_env(), pipe_stdout=True) as child:
        if child.stdout is None:
            raise NetrootError("netroot events: no output pipe")
        stream = EventStream(child.stdout)
        # The broker hands a new subscriber the retained controller status:
        # once it is printed, the stream misses no event the build causes.
        stream.wait_for("controller.status", None, LAST_EVENT_WITHIN_S)
        yield stream


@command(
    "up",
    UpOptions,
    help="broker, controller, build, a VM node and live events; Ctrl-C stops all",
    description=__doc__,
)
def cmd_up(opts: UpOptions) -> int:
    """Run it all; return when the VM node stops, on Ctrl-C, SIGTERM or SIGHUP."""
    config = load(opts)
    check_label(opts.label)
    config.label(opts.label)
    previous = {sig: signal.signal(sig, _on_stop_signal) for sig in STOP_SIGNALS}
    try:
        return _up(opts, config)
    except Stopped as stop:
        _say(f"{stop}; stopped everything it started")
        return 128 + stop.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _up(opts: UpOptions, config: Config) -> int:
    run_dir = config.state_dir / "run" / "up"
    run_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if config.mqtt.enabled:
            _start_broker(stack, config, run_dir)
        serve_log = _start_controller(stack, config, run_dir)
        # Build only once the controller is ready, so it sees and announces the activation.
        _say(f"controller ready (log: {serve_log})")
        events = stack.enter_context(_event_stream(config)) if config.mqtt.enabled else None
        build = proc.run_interactive(
            _netroot(config, "build", opts.label, "--activate"), env=proc.netroot_env()
        )
        if build.returncode != 0:
            _say(f"the build failed (status {build.returncode}); stopping")
            return 1
        awaited = ("image.activated", opts.label)
        if not opts.no_boot:
            mac = random_mac()
            boot = _netroot(config, "boot", opts.label, "--headless", "--mac", mac,
                            "--accel", opts.accel)  # fmt: skip
            if opts.timeout:
                boot += ["--timeout", str(opts.timeout)]
            _say(f"booting a VM node ({mac}); Ctrl-C stops it and everything else")
            booted = proc.run_interactive(boot, env=proc.netroot_env()).returncode == 0
            awaited = ("node.booted", mac) if booted else ("", "")
        # The stream stops once the event the last step caused went by.
        if events is not None and awaited[0] and not events.wait_for(*awaited, LAST_EVENT_WITHIN_S):
            _say(f"no {awaited[0]} event for {awaited[1]} within {LAST_EVENT_WITHIN_S:.0f} s")
        proc.run_interactive(_netroot(config, "nodes"), env=proc.netroot_env())
        _say("stopping everything started")
    return 0

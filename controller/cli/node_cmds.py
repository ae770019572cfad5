"""netroot node diff: ask one node's agent what its overlay changed against the image.

The command goes to the node over the broker with the controller's own MQTT
settings (the ones `netroot events` uses), and the answer is read on the
node's report topic and validated as the daemon validates it; the daemon,
when it runs, also journals the answer as a node.diff event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import uuid
from typing import Any

from pydantic.dataclasses import dataclass

from controller.cli.options import OPTIONS, Common, add_commands, command, load, opt, pos
from controller.cli.output import emit_json, human_size, printable, table
from controller.config.models import Config
from controller.core.errors import NetrootError
from controller.core.ids import normalize_mac
from controller.daemon.db import Database, db_path
from controller.daemon.mqtt import BrokerLink, Message
from controller.events.node_events import Drift, NodeState
from controller.events.node_messages import (
    NodeCommand,
    NodeMessageError,
    NodeReport,
    parse_node_message,
)
from controller.events.nodes import RUNNING
from controller.events.topics import Topics

DEFAULT_TIMEOUT_S = 30.0
HEADERS = ("CHANGE", "TYPE", "SIZE", "PATH")


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class NodeDiffOptions(Common):
    """netroot node diff."""

    mac: str = pos(metavar="MAC", help="the node's MAC address")
    timeout: float = opt(
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"seconds to wait for the answer (default {DEFAULT_TIMEOUT_S:g})",
    )


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `netroot node ...`."""
    p = sub.add_parser("node", parents=[common], help="ask one node's agent")
    node = p.add_subparsers(dest="node_command", metavar="COMMAND", required=True)
    add_commands(node, common, cmd_node_diff)


def running_node(config: Config, mac: str) -> NodeState:
    """The node's stored state, if it runs (else a one-line NetrootError saying why not)."""
    path = db_path(config)
    state = None
    if path.exists():
        with Database(path, readonly=True) as db:
            state = next((n for n in db.nodes() if n.mac == mac), None)
    if state is None:
        raise NetrootError(f"node {mac} is unknown: no agent of that MAC has reported")
    if state.state not in RUNNING:
        raise NetrootError(f"node {mac} is {state.state}, not up: only a running agent answers")
    return state


async def ask_diff(config: Config, mac: str, wait_s: float) -> NodeReport:
    """Send the node the diff command and return its validated diff_result."""
    topics = Topics(config.mqtt.topic_prefix)
    link = BrokerLink(
        config.mqtt,
        client_id=f"netroot-diff-{uuid.uuid4().hex[:12]}",
        subscriptions=[topics.node_report(mac)],
    )
    request = NodeCommand(command="diff", id=str(uuid.uuid4()), reason="netroot node diff")
    # Gone with the timeout: an agent that comes back later has nobody to answer.
    message = Message(
        topics.node_cmd(mac),
        request.model_dump_json().encode(),
        content_type="application/json",
        expiry_s=max(1, math.ceil(wait_s)),
    )
    async with link:
        runner = asyncio.create_task(link.run(), name="mqtt")
        try:
            async with asyncio.timeout(wait_s):
                await link.attempted.wait()
                if not link.connected:
                    where = f"{config.mqtt.host}:{config.mqtt.port}"
                    raise NetrootError(f"mqtt: no broker answers on {where}")
                if await link.publish([message]) != 1:
                    raise NetrootError(f"mqtt: the broker did not take the command for {mac}")
                return await _answer(link, topics.prefix, request.id)
        except TimeoutError:
            raise NetrootError(f"node {mac} did not answer within {wait_s:g} s") from None
        finally:
            await link.close()
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


async def _answer(link: BrokerLink, prefix: str, command_id: str) -> NodeReport:
    """The diff_result answering command_id (other reports of the node are skipped)."""
    while True:
        message = await link.inbox.get()
        try:
            report = parse_node_message(message.topic, message.payload, prefix)
        except NodeMessageError:
            continue  # the daemon logs what a node sends wrong; here it is no answer
        if report.kind == "diff_result" and report.command_id == command_id:
            return report


def rows(diff: Drift) -> list[list[str]]:
    """The table's rows: one per listed change, by path."""
    return [
        [e.change, e.type, human_size(e.size), printable(e.path)]
        for e in sorted(diff.entries, key=lambda e: e.path)
    ]


def summary(report: NodeReport, diff: Drift) -> str:
    """One line: the counts, what the listing leaves out, and which boot answered."""
    counts = f"{diff.added} added, {diff.modified} modified, {diff.deleted} deleted"
    line = f"{diff.total} changes against {report.label} {report.version}: {counts}"
    if diff.truncated:
        line += f" (the first {len(diff.entries)} listed)"
    return f"{line}; boot {report.boot_id or '-'}"


def record(report: NodeReport, diff: Drift) -> dict[str, Any]:
    """--json: the node, its boot and the Drift model as the node.diff event carries it."""
    return {
        "mac": report.mac,
        "label": report.label,
        "version": report.version,
        "boot_id": report.boot_id,
        **diff.model_dump(mode="json"),
    }


@command(
    "diff",
    NodeDiffOptions,
    help="what a node's overlay changed against its image",
    description="Asks the node's agent (command `diff`) for the files its writable layer "
    "added, modified and deleted against the image, with types and sizes; at most 200 "
    "are listed, the counts cover all. Needs the broker of the config's [mqtt]; the "
    "daemon journals the answer as a node.diff event.",
)
def cmd_node_diff(opts: NodeDiffOptions) -> int:
    """Print the node's drift as a table and a summary (or --json)."""
    try:
        mac = normalize_mac(opts.mac)
    except ValueError as exc:
        raise NetrootError(f"MAC: {exc}") from None
    if not (0 < opts.timeout <= 3600):
        raise NetrootError(f"--timeout: {opts.timeout:g} is not within 0 to 3600 seconds")
    config = load(opts)
    if not config.mqtt.enabled:
        raise NetrootError(f"{config.source}: mqtt is disabled; nodes cannot be asked")
    running_node(config, mac)
    report = asyncio.run(ask_diff(config, mac, opts.timeout))
    diff = report.diff or Drift(added=0, modified=0, deleted=0, truncated=False)
    if opts.json:
        emit_json(record(report, diff))
        return 0
    if diff.entries:
        table(HEADERS, rows(diff))
    print(summary(report, diff))
    return 0

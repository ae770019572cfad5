"""serve, status, nodes, events, schema, hook."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import json
import logging
import os
import signal
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic.dataclasses import dataclass

from controller.cli import history
from controller.cli.nodes_cmds import cmd_nodes
from controller.cli.options import OPTIONS, Common, add_commands, command, flag, load, opt, pos
from controller.cli.output import emit_json, failed, printable, table
from controller.config.load import ROLE_ENV, load_config
from controller.config.models import BUILTIN, ROLES, Config, Role
from controller.core import log as logsetup
from controller.core import shipped
from controller.core.errors import NetrootError
from controller.core.model import first_error
from controller.daemon import serve
from controller.daemon.db import Database, db_path
from controller.daemon.lock import holder_pid, lock_path
from controller.daemon.mqtt import BrokerLink, Message
from controller.daemon.spool import DhcpRecord, write_record
from controller.daemon.web.fleet import rollout_records
from controller.events.envelope import Envelope, json_schemas
from controller.events.topics import Topics
from controller.store import holders
from controller.store import versions as store
from controller.store.layout import label_paths

DHCP_IGNORED = ("del", "init", "tftp", "arp", "arp-del", "relay-snoop")


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class EventsOptions(Common):
    """netroot events."""

    state: bool = flag("also retained image and node states")
    count: int | None = opt(type=int, metavar="N", help="exit after N messages")
    timeout: float | None = opt(type=float, metavar="S", help="exit after S seconds")
    since: str | None = opt(
        metavar="TIME",
        help="the journal since TIME instead of the live stream: 2026-12-04T08:00 (UTC "
        "unless an offset is given) or an age like 10m, 2h, 1d; works with the daemon stopped",
    )
    type: str | None = opt(
        metavar="T", help="with --since: types starting with T (node., image.build.failed)"
    )
    label: str | None = opt(metavar="L", help="with --since: events of label L")


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class SchemaOptions(Common):
    """netroot schema."""

    output: str | None = opt(metavar="DIR", help="write one NAME.schema.json file per schema")


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class DhcpHookOptions(Common):
    """netroot hook dhcp."""

    action: str = pos()
    mac: str | None = pos(nargs="?")
    ip: str | None = pos(nargs="?")
    hostname: str | None = pos(nargs="?")
    firmware: bool = flag(
        "the request came from PXE/UEFI firmware (default: from DNSMASQ_VENDOR_CLASS)"
    )


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the daemon commands."""
    add_commands(sub, common, cmd_serve, cmd_status, cmd_nodes, cmd_events, cmd_schema)
    p = sub.add_parser("hook", parents=[common], help="hooks run by other programs")
    hooks = p.add_subparsers(dest="hook", metavar="HOOK", required=True)
    add_commands(hooks, common, cmd_hook_dhcp)


@dataclass(frozen=True, kw_only=True, config=OPTIONS)
class ServeOptions(Common):
    """netroot serve."""

    role: Role | None = opt(
        choices=list(ROLES),
        help="replica: follow the primary named by [replication] primary_url instead of "
        "building (default: replication.role of the config, primary)",
    )


@command(
    "serve",
    ServeOptions,
    help="run the controller daemon (systemd: Type=notify)",
    description="Watches recipes and overlays and rebuilds what an edit affects, activates "
    "per each label's `activation`, tracks nodes from their agents' reports, publishes "
    "events over MQTT and serves /metrics and the read-only API. SIGHUP reloads the "
    "config; SIGTERM stops it in order. With --role replica it builds nothing and "
    "follows its primary instead (README, 'Two or more boot servers').",
)
def cmd_serve(opts: ServeOptions) -> int:
    """Run the daemon in the foreground until SIGTERM."""
    if opts.role is not None:
        os.environ[ROLE_ENV] = opts.role  # reloads and child commands see the same role
    path = opts.config_file()
    config = load_config(path)
    logsetup.configure(json=opts.json, level=logging.DEBUG if opts.verbose else logging.INFO)
    # `kill -USR1` dumps every thread's stack to stderr: a stuck daemon explains itself.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        asyncio.run(serve(config, path.resolve() if path else None))
    except ExceptionGroup as group:
        said = [f"{type(exc).__name__}: {exc}" for exc in _leaves(group)]
        if opts.json:
            failed("error", "; ".join(said), as_json=True)
        else:
            for line in said:
                print(f"netroot: error: {line}", file=sys.stderr)
        return 1
    return 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


def _open_db(config: Config) -> Database | None:
    path = db_path(config)
    if not path.exists():
        return None
    return Database(path, readonly=True)


def _stamp(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


@command(
    "status",
    Common,
    help="daemon, labels, builds, nodes, outbox",
    description="What the daemon knows, read from its state database (also with the "
    "daemon stopped): each label's active version and last build, nodes by state, "
    "undelivered events, canary rollouts and the server's replication role.",
)
def cmd_status(opts: Common) -> int:
    """What the daemon knows: labels, last builds, node counts, undelivered events."""
    config = load(opts)
    pid = holder_pid(lock_path(config.state_dir))
    report: dict[str, Any] = {"daemon": {"running": pid is not None, "pid": pid}}
    report["paths"] = _paths(config)
    report["replication"] = _replication(config)
    db = _open_db(config)
    if db is None:
        report.update(labels={}, nodes={}, outbox={"pending": 0, "dropped": 0}, rollouts=[])
    else:
        with db:
            report.update(_status(config, db))
    if opts.json:
        emit_json(report)
        return 0
    running = f"running (pid {pid})" if pid is not None else "not running"
    print(f"daemon: {running}; state {config.state_dir}")
    paths = report["paths"]
    rule = paths["state_rule"]
    why = shipped.RULES[rule] if rule else f"from {paths['config']}"
    print(f"state: {paths['state_dir']} ({why})")
    print(f"shipped data: {paths['shipped']}")
    rows = []
    for label, info in report["labels"].items():
        build = info["last_build"] or {}
        last = f"{build.get('state', '-')} {build.get('version') or build.get('step') or ''}"
        rows.append([label, info["active"] or "-", info["activated_at"] or "-", last.strip()])
    if rows:
        table(["LABEL", "ACTIVE", "ACTIVATED (UTC)", "LAST BUILD"], rows)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(report["nodes"].items())) or "none"
    print(f"nodes: {counts}")
    outbox = report["outbox"]
    print(f"outbox: {outbox['pending']} undelivered, {outbox['dropped']} dropped at the bound")
    _print_rollouts(report.get("rollouts", []))
    _print_replication(report["replication"])
    return 0


def _replication(config: Config) -> dict[str, Any]:
    """This server's role; on a primary, which replicas hold each label's newest versions."""
    replication = config.replication
    out: dict[str, Any] = {"role": replication.role, "name": replication.name}
    if replication.role == "replica":
        return {**out, "primary_url": replication.primary_url}
    held: dict[str, dict[str, list[str]]] = {}
    for label in sorted(config.labels):
        paths = label_paths(config, label)
        try:
            acks = holders.read_holders(paths).acks
        except NetrootError as exc:
            held[label] = {"error": [str(exc)]}
            continue
        newest = store.version_ids(paths)[-3:]
        held[label] = {v: sorted(acks.get(v, {})) for v in newest}
    return {**out, "replicas_required": replication.replicas_required, "held_by": held}


def _print_replication(info: dict[str, Any]) -> None:
    if info["role"] == "replica":
        print(f"replication: replica {info['name']} of {info['primary_url']}")
        return
    required = info["replicas_required"]
    held = {label: v for label, v in info["held_by"].items() if any(v.values())}
    if not required and not held:
        return  # one boot server: nothing to say
    print(f"replication: primary {info['name']}, replicas_required = {required}")
    rows = [
        [label, version, ", ".join(names) or "none"]
        for label, versions in info["held_by"].items()
        for version, names in versions.items()
    ]
    if rows:
        table(["LABEL", "VERSION", "HELD BY REPLICAS"], rows)


def _paths(config: Config) -> dict[str, Any]:
    """Where state and shipped data are; state_rule names the rule when the defaults chose."""
    rule = shipped.default_state().rule if config.source == BUILTIN else None
    return {
        "config": config.source,
        "state_dir": str(config.state_dir),
        "state_rule": rule,
        "shipped": str(shipped.shipped_dir()),
        "recipes_dir": str(config.recipes_dir),
        "base_dir": str(config.base_dir),
    }


def _status(config: Config, db: Database) -> dict[str, Any]:
    labels: dict[str, Any] = {}
    rows = db.labels()
    for label in sorted(set(config.labels) | set(rows)):
        row = rows.get(label)
        builds = db.builds(label=label, limit=1)
        last = builds[-1] if builds else None
        labels[label] = {
            "active": row.active if row else None,
            "previous": row.previous if row else None,
            "activated_at": _stamp(row.activated_at) if row and row.activated_at else None,
            "last_build": None
            if last is None
            else {
                "build_id": last.build_id,
                "state": last.state,
                "kind": last.kind,
                "version": last.version,
                "step": last.step,
                "error": last.error,
                "queued_at": _stamp(last.queued_at),
                "finished_at": _stamp(last.finished_at) if last.finished_at else None,
            },
        }
    counts: dict[str, int] = {}
    for node in db.nodes():
        counts[node.state] = counts.get(node.state, 0) + 1
    return {
        "labels": labels,
        "nodes": counts,
        "outbox": {"pending": db.outbox_pending, "dropped": db.outbox_dropped()},
        "rollouts": rollout_records(db),
    }


def _print_rollouts(rollouts: list[dict[str, Any]]) -> None:
    for r in rollouts:
        done = f"{r['passed']}/{len(r['canaries'])} canaries passed"
        failure = r.get("failure") or {}
        why = f": {failure.get('check')} {failure.get('mac') or ''} {failure.get('detail', '')}"
        tail = why.rstrip() if r["phase"] == "failed" else ""
        print(
            f"rollout {r['id']}: {r['label']} {r['version']} {r['phase']} ({done},"
            f" started {r['started_at']}, timeout {r['timeout_s']:g}s){tail}"
        )


def describe(message: Message) -> str:
    """One readable line for an event, or the raw message if it is not one.

    Node reports and DHCP leases put strings from the network into events
    (hostnames, kernel names, errors): control characters are shown escaped.
    """
    try:
        event = Envelope.model_validate_json(message.payload)
    except ValueError:
        return printable(f"{message.topic} {message.payload[:200]!r}")
    kind = event.type.removeprefix("org.netroot.")
    data = {k: v for k, v in event.data.items() if k not in ("label", "mac", "log_tail")}
    fields = " ".join(f"{k}={v}" for k, v in data.items() if v not in (None, "", [], {}))
    stamp = event.time.astimezone(UTC).strftime("%H:%M:%S")
    tail = event.data.get("log_tail")
    text = printable(f"{stamp} {kind:<24} {event.subject or '-'} {fields}".rstrip())
    return f"{text}\n{_indent(tail)}" if isinstance(tail, str) and tail else text


def _indent(text: str) -> str:
    return "\n".join("    " + printable(line) for line in text.splitlines()[-10:])


def as_json_line(payload: bytes) -> str:
    """A message for `events --json`: one line of JSON, every control character escaped."""
    try:
        return json.dumps(json.loads(payload), separators=(",", ":"))
    except ValueError:
        return json.dumps({"raw": payload.decode(errors="replace")})


@command(
    "events",
    EventsOptions,
    help="the live event stream, or the journal with --since",
    description="Without --since, follows the broker's events as they come; with --since "
    "(2h, 2026-12-04T08:00), reads the daemon's journal: every event kept, oldest first.",
)
def cmd_events(opts: EventsOptions) -> int:
    """Print events as they arrive, until Ctrl-C, --count or --timeout; or the journal's."""
    config = load(opts)
    if opts.since is not None:
        if opts.state or opts.count is not None or opts.timeout is not None:
            raise NetrootError("--state, --count and --timeout are for the live stream only")
        query = history.journal_query(opts.since, opts.type, opts.label)
        return history.show(config, query, as_json=opts.json)
    if opts.type is not None or opts.label is not None:
        raise NetrootError("--type and --label select from the journal: give --since TIME too")
    if not config.mqtt.enabled:
        raise NetrootError(f"{config.source}: mqtt is disabled; there is no event stream")
    prefix = config.mqtt.topic_prefix
    subs = [f"{prefix}/events/#", Topics(prefix).controller_status()]
    if opts.state:
        subs.append(f"{prefix}/state/#")
    client_id = f"netroot-events-{uuid.uuid4().hex[:12]}"
    link = BrokerLink(config.mqtt, client_id=client_id, subscriptions=subs)
    with contextlib.suppress(TimeoutError):
        asyncio.run(_stream(link, opts))
    return 0


async def _stream(link: BrokerLink, opts: EventsOptions) -> None:
    deadline = time.monotonic() + opts.timeout if opts.timeout else None
    async with link:
        runner = asyncio.create_task(link.run(), name="mqtt")
        try:
            async with asyncio.timeout_at(_loop_deadline(deadline)):
                seen = 0
                while not opts.count or seen < opts.count:
                    message = await link.inbox.get()
                    seen += 1
                    if opts.json:
                        print(as_json_line(message.payload), flush=True)
                    else:
                        print(describe(message), flush=True)
        finally:
            await link.close()
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


def _loop_deadline(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    loop = asyncio.get_running_loop()
    return loop.time() + max(0.0, deadline - time.monotonic())


def all_schemas() -> dict[str, dict[str, Any]]:
    """Section 6 schemas plus the controller's own events, each with `$schema` and `$id`."""
    return json_schemas()


@command(
    "schema",
    SchemaOptions,
    help="JSON Schema of every event payload",
    description="The JSON Schemas (draft 2020-12) of the CloudEvents envelope, every event "
    "payload and the node messages; each event's dataschema names one of their $ids.",
)
def cmd_schema(opts: SchemaOptions) -> int:
    """Print (or write) the JSON Schema of every event payload and node message."""
    schemas = all_schemas()
    if not opts.output:
        emit_json(schemas)
        return 0
    out = Path(opts.output)
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in sorted(schemas.items()):
        (out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
    print(f"wrote {len(schemas)} schemas to {out}")
    return 0


def _firmware_from_env() -> bool:
    vendor = os.environ.get("DNSMASQ_VENDOR_CLASS", "")
    users = [v for k, v in os.environ.items() if k.startswith("DNSMASQ_USER_CLASS")]
    return vendor.startswith("PXEClient") or "iPXE" in users


@command(
    "dhcp",
    DhcpHookOptions,
    help="dnsmasq --dhcp-script: queue a lease for the daemon",
    description="Called by dnsmasq as `ACTION MAC IP [HOSTNAME]`; add and old leases "
    "are queued in <state_dir>/spool for the daemon, other actions ignored.",
)
def cmd_hook_dhcp(opts: DhcpHookOptions) -> int:
    """dnsmasq's --dhcp-script: queue add/old leases for the daemon."""
    if opts.action in DHCP_IGNORED:
        return 0
    if opts.action not in ("add", "old"):
        raise NetrootError(f"hook dhcp: unknown action {opts.action!r} (expected add or old)")
    if not opts.mac or not opts.ip:
        raise NetrootError("hook dhcp: usage: hook dhcp add|old MAC IP [HOSTNAME]")
    try:
        record = DhcpRecord(
            action=opts.action,
            mac=opts.mac,
            ip=opts.ip,
            hostname=opts.hostname or None,
            firmware=opts.firmware or _firmware_from_env(),
            at=datetime.now(UTC),
        )
    except ValidationError as exc:
        err = first_error(exc)
        raise NetrootError(f"hook dhcp: {err.field}: {err.problem}") from None
    path = write_record(load(opts), record)
    if opts.json:
        emit_json({"queued": str(path)})
    return 0

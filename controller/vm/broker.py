"""The broker `netroot up` starts: mosquitto on loopback only, for one run.

It never listens beyond loopback (a VM node reaches it through qemu's guestfwd,
which connects from the host's loopback), so it may stay simple: node agents
connect anonymously. Once the controller has credentials (`mqtt.username` and
`mqtt.password_file`), the broker checks them: a client naming that username
without its password is refused, and an anonymous client (a node agent) may only
publish node reports and read node commands, never write events, states or
commands. A site's broker (config/mosquitto.conf.example) goes further: every
client authenticates, nodes by certificate.
"""

from __future__ import annotations

import os
from pathlib import Path

from controller.config.models import MqttConfig
from controller.core import proc
from controller.core.errors import NetrootError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


# Every run's broker; node agents (the VM's) connect without credentials, and the
# ACL, once the controller has credentials, keeps them to node topics.
BROKER_CONF = """\
# written by `netroot up`: a loopback broker for this run only
listener {port} 127.0.0.1
allow_anonymous true
persistence false
log_dest stderr
# A subscriber joining late is sent every retained state at once (one per
# node): mosquitto's default queue of 1,000 per client would drop the rest.
max_queued_messages 100000
max_inflight_messages 100
"""


def broker_conf(port: int, *, password_file: Path | None, acl_file: Path | None) -> str:
    """mosquitto.conf for one loopback listener; with the files, credentials are checked."""
    lines = [BROKER_CONF.format(port=port).rstrip("\n")]
    if password_file is not None and acl_file is not None:
        lines += [
            # A username is taken only with its password from this file.
            f"password_file {password_file}",
            f"acl_file {acl_file}",
        ]
        if os.geteuid() == 0:
            # mosquitto reads these files after it drops to user `mosquitto`,
            # which cannot read this run directory: stay root (loopback, this run).
            lines.append("user root")
    return "\n".join(lines) + "\n"


def broker_acl(prefix: str, username: str) -> str:
    """Anonymous clients: node topics only; the controller: everything under prefix."""
    return (
        "# written by `netroot up`\n"
        "# anonymous clients (node agents): their reports and commands only\n"
        f"topic write {prefix}/node/+/report\n"
        f"topic read {prefix}/node/+/cmd\n"
        f"user {username}\n"
        f"topic readwrite {prefix}/#\n"
    )


def _write_private(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def write_broker_files(mqtt: MqttConfig, run_dir: Path) -> Path:
    """Write the broker's config (and, with credentials, its password file and ACL)
    into run_dir; return the config file."""
    if mqtt.host not in LOOPBACK_HOSTS:
        raise NetrootError(
            f"mqtt.host: netroot up starts a broker on loopback only, not {mqtt.host}"
        )
    password_file = acl_file = None
    if mqtt.username is not None and mqtt.password_file is not None:
        if any(c in mqtt.username for c in ":#+/\n ") or not mqtt.username:
            raise NetrootError(
                f"mqtt.username: {mqtt.username!r} cannot be a mosquitto user "
                "(no ':', '#', '+', '/', white space)"
            )
        try:
            password = mqtt.password_file.read_text().rstrip("\n")
        except OSError as exc:
            raise NetrootError(
                f"mqtt.password_file: cannot read {mqtt.password_file}: {exc.strerror}"
            ) from None
        if not password or "\n" in password:
            raise NetrootError(f"mqtt.password_file: {mqtt.password_file} must hold one line")
        password_file, acl_file = run_dir / "mosquitto.passwd", run_dir / "mosquitto.acl"
        # Plain text first, hashed in place: the password never appears on a command line.
        _write_private(password_file, f"{mqtt.username}:{password}\n")
        proc.run(["mosquitto_passwd", "-U", password_file])
        _write_private(acl_file, broker_acl(mqtt.topic_prefix, mqtt.username))
    conf = run_dir / "mosquitto.conf"
    conf.write_text(broker_conf(mqtt.port, password_file=password_file, acl_file=acl_file))
    return conf

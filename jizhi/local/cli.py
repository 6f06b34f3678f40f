"""`jizhi local up|status|down`: the argparse commands over the public API."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from jizhi.local.cluster import down, status, up
from jizhi.local.config import DEFAULT_CLIENT_PORT
from jizhi.local.errors import LocalClusterError
from jizhi.local.jars import KAFKA_VERSION, jars_cached
from jizhi.local.paths import libs_dir
from jizhi.local.security import SECURITIES, USER, ca_file, client_toml, password_file


def register(subparsers: Any) -> None:
    """Adds `jizhi local up|status|down` to the CLI's argparse subparsers."""
    local = subparsers.add_parser(
        "local",
        help="a real Kafka cluster on loopback (from Maven jars, no Docker)",
        description="Start, inspect and stop a Kafka (KRaft) cluster on 127.0.0.1. State lives "
        "in $JIZHI_HOME/local (default ~/.cache/jizhi/local), jars in $JIZHI_HOME/kafka.",
    )
    sub = local.add_subparsers(dest="local_command", required=True)
    p_up = sub.add_parser("up", help="start the cluster (no-op if running); prints the bootstrap")
    p_up.add_argument(
        "--brokers",
        type=int,
        choices=(1, 3),
        default=1,
        help="1 broker, or 3 for fault tests (replication 3 survives one kill)",
    )
    p_up.add_argument(
        "--security",
        choices=SECURITIES,
        default="plaintext",
        help="sasl_ssl: TLS with a CA made now, and SCRAM-SHA-512 logins; writes the client "
        "settings to <state>/security/client.toml (plaintext)",
    )
    p_up.add_argument(
        "--port",
        type=int,
        default=DEFAULT_CLIENT_PORT,
        help=f"client port of node 1 if free; 0 = any free port ({DEFAULT_CLIENT_PORT})",
    )
    p_up.add_argument("--kafka-version", default=KAFKA_VERSION, help=argparse.SUPPRESS)
    p_up.set_defaults(func=_cmd_up)
    p_status = sub.add_parser("status", help="is it running, where, which pids")
    p_status.add_argument("--json", action="store_true", help="machine-readable output")
    p_status.set_defaults(func=_cmd_status)
    p_down = sub.add_parser("down", help="stop every broker and delete the data")
    p_down.set_defaults(func=_cmd_down)


def _fail(command: str, exc: LocalClusterError) -> int:
    print(f"error: jizhi local {command}: {exc}", file=sys.stderr)
    return 1


def _cmd_up(args: argparse.Namespace) -> int:
    version = str(args.kafka_version)
    if not jars_cached(version) and not status().running:
        print(
            f"fetching the Kafka {version} jars with Maven into {libs_dir(version)} "
            "(first run only)...",
            file=sys.stderr,
        )
    started = time.monotonic()
    try:
        before = status()
        result = up(
            args.brokers,
            kafka_version=version,
            security=args.security,
            first_port=args.port or None,
        )
    except LocalClusterError as exc:
        return _fail("up", exc)
    restarted = [b.node_id for b in before.brokers if before.running and not b.alive]
    if not before.running:
        how = f"up in {time.monotonic() - started:.1f} s"
    elif restarted:
        how = f"running again (restarted node(s) {restarted})"
    else:
        how = "already running"
    print(
        f"Kafka {result.kafka_version}: {len(result.brokers)} broker(s) {how}; "
        f"logs in {result.state_dir}",
        file=sys.stderr,
    )
    if result.security != "plaintext":
        sdir = Path(result.state_dir)
        print(
            f"{result.security}: user {USER!r}, password in {password_file(sdir)}, CA "
            f"{ca_file(sdir)}; clients: --config {client_toml(sdir)}",
            file=sys.stderr,
        )
    print(result.bootstrap)  # alone on stdout: `export JIZHI_BOOTSTRAP=$(jizhi local up)`
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    """Exit 0 when running and 1 when not, as `systemctl is-active`, for shell scripts."""
    try:
        result = status()
    except LocalClusterError as exc:
        return _fail("status", exc)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    elif not result.brokers:
        print("not running")
    else:
        print(
            f"{'running' if result.running else 'stopped'}  kafka {result.kafka_version}  "
            f"bootstrap {result.bootstrap}  {result.security}"
        )
        for b in result.brokers:
            print(
                f"  node {b.node_id}  pid {b.pid}  port {b.port}  "
                f"{'alive' if b.alive else 'dead'}  log {b.log}"
            )
    return 0 if result.running else 1


def _cmd_down(args: argparse.Namespace) -> int:
    try:
        stopped = down()
    except LocalClusterError as exc:
        return _fail("down", exc)
    print("stopped" if stopped else "not running", file=sys.stderr)
    return 0

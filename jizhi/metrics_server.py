"""The Prometheus endpoint every jizhi process serves."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

log = logging.getLogger(__name__)


def serve_metrics(port: int, addr: str = "127.0.0.1") -> str:
    """Serve /metrics in a background thread; a busy port is reported, not fatal, because metrics
    must never stop inference. ``addr`` is loopback unless configured (``metrics_addr``), e.g.
    ``0.0.0.0`` in a container that Prometheus scrapes from another."""
    try:
        start_http_server(port, addr=addr)
    except OSError as exc:
        log.warning("metrics port %s:%d unavailable: %s", addr, port, exc)
        return f"unavailable ({addr}:{port}: {exc.strerror})"
    return f"http://{addr}:{port}/metrics"

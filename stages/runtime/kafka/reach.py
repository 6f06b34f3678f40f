"""One quiet look at the broker before a command builds its clients.

Left alone, librdkafka retries a wrong address every few tens of milliseconds and logs each failure:
a mistyped ``--bootstrap`` printed ~580 ``Connect ... failed`` lines over 31 s before the admin
timeout said what was wrong. A wrong password or protocol does the same with other lines. So every
command that talks to Kafka first asks for metadata once, with librdkafka's log silenced and its
errors collected, for a bounded time, and turns what it saw into one `TransportError` that names
the address and the likely fix.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from stages.runtime.kafka.errors import TransportError

__all__ = ["require_broker"]

# Errors that waiting cannot cure: the broker answered, and said no.
_REFUSED = frozenset(
    {
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._SSL,
        KafkaError.ILLEGAL_SASL_STATE,
        KafkaError.UNSUPPORTED_SASL_MECHANISM,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }
)


_HANG_UPS = 3


def require_broker(conf: Mapping[str, Any], *, timeout_s: float = 10.0) -> int:
    """Returns the number of brokers in the cluster's metadata, or raises `TransportError`.

    Gives up at once on a refusal (authentication, TLS) and after ``timeout_s`` when nothing
    answers (``kafka.connect_timeout_s``).
    """
    bootstrap = str(conf.get("bootstrap.servers", "?"))
    seen: list[KafkaError] = []
    logs = _Lines()
    probe = {
        **conf,
        # librdkafka's errors and log lines are kept, not printed; one line is said at the end.
        "error_cb": seen.append,
        "logger": logs,
        "reconnect.backoff.ms": 200,
        "reconnect.backoff.max.ms": 1000,
    }
    try:
        client = AdminClient(probe)
    except KafkaException as exc:
        raise TransportError(
            f"Kafka client settings for {bootstrap}: {exc}", retriable=False
        ) from exc
    deadline = time.monotonic() + timeout_s
    last = ""
    try:
        while True:
            left = deadline - time.monotonic()
            try:
                meta = client.list_topics(timeout=max(0.1, min(1.0, left)))
                return len(meta.brokers)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                last = err.str() if isinstance(err, KafkaError) else str(exc)
            client.poll(0)  # serves error_cb and the logger
            refused = [e for e in seen if e.code() in _REFUSED]
            if logs.hung_up >= _HANG_UPS:
                raise TransportError(
                    f"Kafka at {bootstrap} hung up {logs.hung_up} times before any answer: "
                    f"{logs.last}{_hint(logs.last, conf)}",
                    retriable=False,
                )
            if refused:
                raise TransportError(
                    f"Kafka at {bootstrap} refused this client: {refused[0].str()}"
                    f"{_hint(refused[0].str(), conf)}",
                    retriable=False,
                )
            if time.monotonic() >= deadline:
                why = logs.last or (seen[-1].str() if seen else last)
                raise TransportError(
                    f"cannot reach Kafka at {bootstrap} within {timeout_s:g} s: {why}"
                    f"{_hint(why, conf)}",
                    retriable=True,
                )
    finally:
        client.__exit__(None, None, None)  # on this thread; see KafkaAdmin.close


class _Lines:
    """Stands in for the `logging.Logger` librdkafka writes to: keeps the last connection
    failure, which says more than the error callback does (e.g. a plaintext client disconnected
    by a TLS listener, "in state APIVERSION_QUERY", is an error_cb "0/1 brokers are down")."""

    def __init__(self) -> None:
        self.last = ""
        self.hung_up = 0
        """Connections closed by the broker before it said which versions it speaks: a listener
        of another protocol (TLS) does that every time, a broker that is merely down never."""

    def log(self, level: int, msg: str, *args: object) -> None:
        text = msg % args if args else msg
        if "FAIL" in text or "fail" in text or "Disconnected" in text:
            self.last = text.split("]: ", 1)[-1]
            self.hung_up += "Disconnected" in text and "APIVERSION" in text


def _hint(why: str, conf: Mapping[str, Any]) -> str:
    """The usual cause of each failure, as a user would fix it."""
    text = why.lower()
    protocol = str(conf.get("security.protocol", "plaintext")).lower()
    if "authentication" in text or "sasl" in text:
        return (
            " (check kafka.username and the password in $JIZHI_KAFKA_SASL_PASSWORD or "
            "kafka.password_file)"
        )
    if "ssl" in text or "certificate" in text or "handshake" in text:
        return " (check kafka.ca_file: the broker's certificate must be signed by it)"
    if "apiversion" in text or "disconnected" in text:
        if protocol == "plaintext":
            return " (the listener may require TLS/SASL: set kafka.security_protocol)"
        return f" (the listener may not speak {protocol}: check kafka.security_protocol)"
    if "refused" in text or "resolve" in text or "timed out" in text or "down" in text:
        return " (is a broker running there? `jizhi local up` starts one)"
    return ""

"""Quix Streams: an Application and a StreamingDataFrame applying the same transform.

Runs in its own virtualenv (quixstreams 3.x pins confluent-kafka < 2.13 and pydantic < 2.14,
which conflict with the project's environment); ``PYTHONPATH`` points at the repository for the
codec."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from quixstreams import Application

from bench._peers.common import BytesTransform, parse_args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once" if args.exactly_once else "at-least-once",
        use_changelog_topics=False,
        loglevel="WARNING",
    )
    inp = app.topic(args.input, key_deserializer="bytes", value_deserializer="bytes")
    out = app.topic(args.output, key_serializer="bytes", value_serializer="bytes")
    sdf = app.dataframe(inp)
    sdf = sdf.apply(BytesTransform())
    sdf.to_topic(out)
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The pass-through stage of `bench.bench_kafka`, one module per framework.

Each module is run as its own process (``python -m bench._peers.<name> --bootstrap ... --input ...
--output ... --group ...``) and does the same work per message: decode a msgpack jizhi `Event`
(200 candidates, 200 scores), multiply its scores by 1.5, stamp it, encode it, produce it to its
own output topic with the input's key, and commit its input offsets. The harness stops it once the
output topic holds every message.
"""

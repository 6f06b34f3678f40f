"""One real Kafka per test session, from wherever this machine can get one.

Order: ``JIZHI_BOOTSTRAP`` (a broker someone already runs), then Docker when a daemon answers
(testcontainers), then ``jizhi.local`` (the broker from Maven jars, which needs only Java). A
cluster this session started is stopped at its end; one it found running is left alone.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from jizhi import local
from tests.integration.workerkit import Workers, unique_pipeline, world_root

_HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    # Registered here as well as in pyproject so `-m "not slow"` works under --strict-markers.
    config.addinivalue_line("markers", "slow: starts its own multi-broker cluster (~30 s)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything in this folder needs a broker, so `-m "not integration"` must skip all of it."""
    for item in items:
        if item.path.resolve().is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


@dataclass(frozen=True, slots=True)
class KafkaUnderTest:
    """Where the session's broker came from: tests of `jizhi local` itself need it to be local."""

    bootstrap: str
    source: Literal["env", "docker", "local"]


def _docker_reachable() -> bool:
    """The docker CLI alone proves nothing (CI machines have it without a daemon): ping."""
    try:
        import docker  # type: ignore[import-untyped]  # noqa: PLC0415 - only the Docker path

        client: Any = docker.from_env(timeout=3)
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_under_test() -> Iterator[KafkaUnderTest]:
    env = os.environ.get("JIZHI_BOOTSTRAP")
    if env:
        yield KafkaUnderTest(env, "env")
        return
    if _docker_reachable():
        try:
            from testcontainers.community.kafka import KafkaContainer  # noqa: PLC0415
        except ImportError:  # testcontainers < 4.10
            from testcontainers.kafka import KafkaContainer  # noqa: PLC0415
        with KafkaContainer().with_kraft() as container:
            yield KafkaUnderTest(str(container.get_bootstrap_server()), "docker")
        return
    was_running = local.status().running
    # A cluster the developer already runs is reused as it is, whatever its size.
    cluster = local.status() if was_running else local.up()
    assert cluster.bootstrap is not None
    try:
        yield KafkaUnderTest(cluster.bootstrap, "local")
    finally:
        if not was_running:
            local.down()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_under_test: KafkaUnderTest) -> str:
    return kafka_under_test.bootstrap


@pytest.fixture(scope="module")
def three_brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A three-node cluster of the module's own (its state folder, ports off the session
    broker's), so fault tests can kill nodes of it beside the session's single broker."""
    if os.environ.get("JIZHI_BOOTSTRAP"):
        pytest.skip("JIZHI_BOOTSTRAP points at an external broker; not starting local ones")
    state_dir = tmp_path_factory.mktemp("three-brokers")
    local.up(3, state_dir=state_dir, first_port=None)
    try:
        yield state_dir
    finally:
        local.down(state_dir=state_dir, timeout=15)


@pytest.fixture
def local_cluster(kafka_under_test: KafkaUnderTest) -> local.LocalStatus:
    """For tests of `jizhi local` itself: skips unless this session's broker is a local one."""
    if kafka_under_test.source != "local":
        pytest.skip(f"the session's broker came from {kafka_under_test.source}, not jizhi.local")
    return local.status()


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> Callable[..., str]:
    """Topic names unique per test and per call, so tests sharing one broker never read each
    other's messages, and a name in a broker log still says which test made it."""
    test = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-")[:80]

    def make(suffix: str = "") -> str:
        name = f"jizhi-test.{test}.{suffix}" if suffix else f"jizhi-test.{test}"
        return f"{name}.{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small synthetic world for every worker test of the session (generated once)."""
    return world_root(tmp_path_factory.mktemp("world"))


@pytest.fixture
def workers(kafka_bootstrap: str, world_dir: Path, tmp_path: Path) -> Iterator[Workers]:
    """`jizhi worker` processes of a pipeline of the test's own, stopped at its end."""
    w = Workers(kafka_bootstrap, unique_pipeline("w"), world_dir, tmp_path)
    yield w
    w.close()

"""The tools a broker needs: Java 17+, and the Kafka jars that Maven fetches once per version."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from jizhi.local.errors import LocalClusterError
from jizhi.local.paths import libs_dir

KAFKA_VERSION = "4.1.1"


_MIN_JAVA = 17


_COMPLETE_MARKER = ".complete"


def _need(tool: str, why: str, install: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise LocalClusterError(
            f"`{tool}` is not on PATH; it is needed to {why}. Install it ({install}) and run again",
            retriable=False,
        )
    return path


def find_java() -> str:
    """JAVA_HOME first, as Kafka's own scripts do: it is how users pick one JDK among several."""
    home_java = Path(os.environ.get("JAVA_HOME", "/nonexistent")) / "bin" / "java"
    java = (
        str(home_java)
        if os.access(home_java, os.X_OK)
        else _need(
            "java",
            "run the Kafka broker",
            f"Java {_MIN_JAVA}+, e.g. apt-get install -y openjdk-17-jre-headless",
        )
    )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(found.group(1)) if found else 0
    if major == 1 and found and found.group(2):  # "1.8.0_392" style
        major = int(found.group(2))
    if major < _MIN_JAVA:
        raise LocalClusterError(
            f"{java}: Kafka 4 needs Java {_MIN_JAVA}+, found {out.strip().splitlines()[:1]}",
            retriable=False,
        )
    return java


def jars_cached(version: str) -> bool:
    return (libs_dir(version) / _COMPLETE_MARKER).exists()


def ensure_jars(version: str) -> Path:
    """Maven runs once per version; a marker file makes an interrupted download start over."""
    libs = libs_dir(version)
    if jars_cached(version):
        return libs
    mvn = _need(
        "mvn",
        f"fetch the Kafka {version} jars once into {libs}",
        "Apache Maven 3.6+, e.g. apt-get install -y maven",
    )
    base = libs.parent
    base.mkdir(parents=True, exist_ok=True)
    # Maven reads the pom from the cache, not from the installed package, which may be read-only.
    pom = base / "pom.xml"
    pom.write_bytes(resources.files("jizhi").joinpath("kafka/pom.xml").read_bytes())
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=base))
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-Dkafka.version={version}",
        f"-Djizhi.libs={staging}",
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise LocalClusterError(f"{' '.join(cmd)}: no answer in 900 s", retriable=True) from exc
    if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise LocalClusterError(
            f"{' '.join(cmd)} failed (exit {done.returncode}); is Maven Central reachable and "
            f"does Kafka {version} exist there?\n{tail}",
            retriable=True,
        )
    (staging / _COMPLETE_MARKER).write_text(version + "\n")
    shutil.rmtree(libs, ignore_errors=True)
    staging.replace(libs)
    return libs

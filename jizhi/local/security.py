"""TLS and SASL/SCRAM for a local cluster started with ``--security sasl_ssl``.

Everything is made when the cluster is made, under ``<state>/security`` (mode 0700): a throwaway
CA and the brokers' certificate (openssl), random passwords in files of mode 0600, and the SCRAM
credentials, given to ``kafka-storage format --add-scram`` as salted hashes so that no password
appears on a command line. Clients log in as ``jizhi``; the brokers talk to each other as
``admin`` over the same SASL_SSL listener, and to the controllers over TLS with client
certificates, so no port on the cluster accepts an unauthenticated connection.
``client.toml`` holds the ``[kafka]`` settings a jizhi process needs, with paths, not secrets.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any, Literal

from jizhi.local.errors import LocalClusterError

Security = Literal["plaintext", "sasl_ssl"]
SECURITIES: tuple[Security, ...] = ("plaintext", "sasl_ssl")
USER = "jizhi"
_ADMIN = "admin"
_MECHANISM = "SCRAM-SHA-512"
_ITERATIONS = 8192
_DAYS = "30"


def security_dir(sdir: Path) -> Path:
    return sdir / "security"


def password_file(sdir: Path, user: str = USER) -> Path:
    return security_dir(sdir) / f"{user}.password"


def ca_file(sdir: Path) -> Path:
    return security_dir(sdir) / "ca.pem"


def client_toml(sdir: Path) -> Path:
    return security_dir(sdir) / "client.toml"


def make_secrets(sdir: Path, bootstrap: str) -> None:
    """A new CA, broker certificate and passwords, replacing any left from an earlier cluster."""
    sec = security_dir(sdir)
    shutil.rmtree(sec, ignore_errors=True)
    sec.mkdir(mode=0o700, parents=True)
    for name in (USER, _ADMIN, "keystore"):
        _write_private(sec / f"{name}.password", secrets.token_urlsafe(24) + "\n")
    openssl = shutil.which("openssl")
    if openssl is None:
        raise LocalClusterError(
            "--security sasl_ssl needs `openssl` to make certificates, e.g. "
            "apt-get install -y openssl",
            retriable=False,
        )
    (sec / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        f"req -x509 -newkey rsa:2048 -nodes -days {_DAYS} -keyout ca.key -out ca.pem "
        "-subj /CN=jizhi-local-ca",
        "req -newkey rsa:2048 -nodes -keyout broker.key -out broker.csr -subj /CN=localhost",
        f"x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days {_DAYS} "
        "-extfile san.cnf -out broker.pem",
        "pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem -name broker "
        "-out broker.p12 -passout file:keystore.password",
    ]
    for step in steps:
        args = step.split()
        done = subprocess.run(
            [openssl, *args], cwd=sec, capture_output=True, text=True, check=False, timeout=60
        )
        if done.returncode != 0:
            raise LocalClusterError(
                f"openssl {args[0]} failed in {sec}: {done.stderr.strip()[-500:]}", retriable=False
            )
    for key in ("ca.key", "broker.key", "broker.p12"):
        (sec / key).chmod(0o600)
    _write_private(
        client_toml(sdir),
        "# [kafka] settings for a jizhi process talking to the local cluster; the password is\n"
        f"# read from password_file (or $JIZHI_KAFKA_SASL_PASSWORD), never written here.\n"
        "[kafka]\n"
        f'bootstrap = "{bootstrap}"\n'
        'security_protocol = "sasl_ssl"\n'
        f'sasl_mechanism = "{_MECHANISM}"\n'
        f'username = "{USER}"\n'
        f'password_file = "{password_file(sdir)}"\n'
        f'ca_file = "{ca_file(sdir)}"\n',
    )


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _secret(sdir: Path, name: str) -> str:
    return (security_dir(sdir) / f"{name}.password").read_text().strip()


def scram_args(sdir: Path) -> list[str]:
    """``--add-scram`` values for ``kafka-storage format``: salted, so the command line (visible
    to every local user in /proc) carries no password."""
    out = []
    for user in (_ADMIN, USER):
        salt = secrets.token_bytes(16)
        salted = hashlib.pbkdf2_hmac("sha512", _secret(sdir, user).encode(), salt, _ITERATIONS)
        out += [
            "--add-scram",
            f"{_MECHANISM}=[name={user},iterations={_ITERATIONS},"
            f'salt="{base64.b64encode(salt).decode()}",'
            f'saltedpassword="{base64.b64encode(salted).decode()}"]',
        ]
    return out


def listener_block(sdir: Path, security: Security, client_port: int, controller_port: int) -> str:
    """The listener lines of a node's server.properties."""
    if security == "plaintext":
        return (
            f"listeners=PLAINTEXT://127.0.0.1:{client_port},"
            f"CONTROLLER://127.0.0.1:{controller_port}\n"
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{client_port}\n"
            "inter.broker.listener.name=PLAINTEXT\n"
            "controller.listener.names=CONTROLLER\n"
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n"
        )
    sec = security_dir(sdir)
    store = _secret(sdir, "keystore")
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{_ADMIN}" password="{_secret(sdir, _ADMIN)}";'
    )
    return (
        f"listeners=SASL_SSL://127.0.0.1:{client_port},CONTROLLER://127.0.0.1:{controller_port}\n"
        f"advertised.listeners=SASL_SSL://127.0.0.1:{client_port}\n"
        "inter.broker.listener.name=SASL_SSL\n"
        "controller.listener.names=CONTROLLER\n"
        "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SSL\n"
        f"sasl.enabled.mechanisms={_MECHANISM}\n"
        f"sasl.mechanism.inter.broker.protocol={_MECHANISM}\n"
        f"listener.name.sasl_ssl.{_MECHANISM.lower()}.sasl.jaas.config={jaas}\n"
        "ssl.keystore.type=PKCS12\n"
        f"ssl.keystore.location={sec / 'broker.p12'}\n"
        f"ssl.keystore.password={store}\n"
        f"ssl.key.password={store}\n"
        "ssl.truststore.type=PEM\n"
        f"ssl.truststore.location={sec / 'ca.pem'}\n"
        "ssl.endpoint.identification.algorithm=https\n"
        # Only a holder of a certificate from this cluster's CA (a broker) reaches a controller.
        "listener.name.controller.ssl.client.auth=required\n"
    )


def admin_conf(sdir: Path, security: Security) -> dict[str, Any]:
    """librdkafka settings for `jizhi local` itself (readiness checks), as the brokers' user."""
    if security == "plaintext":
        return {}
    return {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": _MECHANISM,
        "sasl.username": _ADMIN,
        "sasl.password": _secret(sdir, _ADMIN),
        "ssl.ca.location": str(ca_file(sdir)),
    }

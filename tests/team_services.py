"""Real services for the end-to-end tests, each started on 127.0.0.1 and stopped by its caller:
an S3-compatible object store (moto's server mode), a PostgreSQL cluster in a temporary directory,
and an `mlflow server` over either of the tracking stores."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from dvc_workspace import env, wait_for

BIN = Path(sys.executable).parent
# moto's server accepts any key pair; these only have to be present, as real ones would be.
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "team-test", "AWS_SECRET_ACCESS_KEY": "team-test-secret",
                  "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(url: str) -> bool:
    """Whether `url` answers 200 within 2 seconds."""
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group, as Ctrl-C on a terminal would; SIGKILL it if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


def _spawn(args: list[str], cwd: Path, log: Path, extra_env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=cwd, env={**env(), **(extra_env or {})}, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                            region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"])

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def start_s3(directory: Path, bucket: str) -> S3Server:
    """moto's S3 server (in memory, over real HTTP), with `bucket` created."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = _spawn([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], directory,
                     directory / "moto.log")
    server = S3Server(f"http://127.0.0.1:{port}", process)
    wait_for(lambda: answers(f"{server.endpoint}/moto-api/"), 60, "the S3 server", process)
    server.client().create_bucket(Bucket=bucket)
    return server


def _postgres_bin(name: str) -> str:
    """Debian keeps PostgreSQL's server programs in /usr/lib/postgresql/<version>/bin, off PATH."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise AssertionError(f"PostgreSQL's {name} was not found: install Debian's postgresql package "
                             "(apt-get install postgresql); .ci/run does")
    return found


@dataclass
class Postgres:
    directory: Path
    port: int
    as_user: list[str] = field(default_factory=list)

    def uri(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def query(self, database: str, sql: str) -> list[tuple]:
        import psycopg2

        with psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database) as connection:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall()

    def stop(self) -> None:
        subprocess.run([*self.as_user, _postgres_bin("pg_ctl"), "-D", str(self.directory / "data"), "-m", "fast",
                        "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_postgres(database: str) -> Postgres:
    """A throwaway cluster (trust authentication, TCP on 127.0.0.1 only) holding an empty `database`.

    PostgreSQL refuses to run as root, so under root it runs as the `postgres` account that
    Debian's package creates, in a directory of its own outside pytest's root-only tmp tree."""
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    directory = Path(tempfile.mkdtemp(prefix="ptdefense-postgres-"))
    if as_user:
        shutil.chown(directory, "postgres", "postgres")
    cluster = Postgres(directory, free_port(), as_user)
    data = directory / "data"
    commands = [
        [_postgres_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        [_postgres_bin("pg_ctl"), "-D", str(data), "-l", str(directory / "server.log"), "-w", "-t", "120",
         "-o", f"-p {cluster.port} -k {directory} -c listen_addresses=127.0.0.1", "start"],
        [_postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", database],
    ]
    for command in commands:
        result = subprocess.run([*as_user, *command], capture_output=True, text=True, timeout=180)
        if result.returncode != 0:
            log = directory / "server.log"
            cluster.stop()
            raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}\n"
                                 f"{log.read_text() if log.is_file() else ''}")
    return cluster


def start_mlflow_server(directory: Path, backend_store_uri: str,
                        artifacts_destination: str) -> tuple[str, subprocess.Popen]:
    """`mlflow server` proxying artifacts (clients upload over HTTP, the server writes them on)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = _spawn([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                     "--backend-store-uri", backend_store_uri, "--artifacts-destination", artifacts_destination],
                    directory, directory / "server.log")
    uri = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(f"{uri}/health"), 180, "mlflow server", server)
    return uri, server

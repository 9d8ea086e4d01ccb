"""A throw-away local PostgreSQL for the production-mode tests (Debian's packages).

Installs ``postgresql`` with apt-get when its binaries are missing, creates a cluster
under ``var/postgres`` owned by the ``postgres`` system user (initdb refuses root), and
starts it on 127.0.0.1:$CRM_POSTGRES_TEST_PORT (default 54329) with a ``crm`` role that
owns one database per service. Idempotent: a running cluster is reused.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from crm_platform.settings import find_project_root

DATABASES = ("identity", "engagement", "support", "crm_test")


@dataclass(frozen=True)
class PostgresStatus:
    running: bool
    port: int
    data_dir: Path
    bin_dir: Path | None


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


class LocalPostgres:
    def __init__(self, data_dir: Path | None = None, port: int | None = None) -> None:
        var = Path(os.environ.get("CRM_VAR_DIR", find_project_root() / "var"))
        self.data_dir = data_dir or var / "postgres"
        self.port = port or int(os.environ.get("CRM_POSTGRES_TEST_PORT", "54329"))
        self.socket_dir = Path("/tmp")  # noqa: S108 - the default libpq socket place

    def ensure_installed(self) -> Path:
        bin_dir = _bin_dir()
        if bin_dir is None:
            if os.geteuid() != 0:
                raise RuntimeError("PostgreSQL is missing; install Debian's 'postgresql' package")
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
            subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], check=True, env=env)
            bin_dir = _bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL binaries not found after install")
        return bin_dir

    def _as_owner(self, args: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *args]
        return args

    def _pg_ctl(self, bin_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._as_owner([str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args]),
            check=check,
            capture_output=True,
            text=True,
        )

    def status(self) -> PostgresStatus:
        bin_dir = _bin_dir()
        running = bool(
            bin_dir
            and self.data_dir.exists()
            and self._pg_ctl(bin_dir, "status", check=False).returncode == 0
        )
        return PostgresStatus(running, self.port, self.data_dir, bin_dir)

    def _port_answers(self, bin_dir: Path) -> bool:
        probe = subprocess.run(
            [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
            check=False,
        )
        return probe.returncode == 0

    def start(self) -> PostgresStatus:
        bin_dir = self.ensure_installed()
        ours = (self.data_dir / "PG_VERSION").exists() and self._pg_ctl(
            bin_dir, "status", check=False
        ).returncode == 0
        if not ours and self._port_answers(bin_dir):
            # Another checkout's test cluster already serves this port: share it.
            self._provision(bin_dir)
            return PostgresStatus(True, self.port, self.data_dir, bin_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                owner = pwd.getpwnam("postgres")
                for path in (self.data_dir, *self.data_dir.parents):
                    if path == Path("/"):
                        break
                    # The postgres user must be able to reach its data directory.
                    os.chmod(path, os.stat(path).st_mode | 0o011)  # noqa: S103 - traverse only (x), no read
                shutil.chown(self.data_dir, owner.pw_uid, owner.pw_gid)
            subprocess.run(
                self._as_owner(
                    [
                        str(bin_dir / "initdb"),
                        "-D",
                        str(self.data_dir),
                        "-U",
                        "postgres",
                        "--auth=trust",
                        "-E",
                        "UTF8",
                        "--locale=C.UTF-8",
                    ]
                ),
                check=True,
                capture_output=True,
                text=True,
            )
        if self._pg_ctl(bin_dir, "status", check=False).returncode != 0:
            options = (
                f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c max_connections=200"
            )
            log = self.data_dir / "server.log"
            self._pg_ctl(bin_dir, "-o", options, "-l", str(log), "-w", "-t", "60", "start")
        self._wait_ready(bin_dir)
        self._provision(bin_dir)
        return self.status()

    def _psql(self, bin_dir: Path, sql: str, db: str = "postgres") -> str:
        out = subprocess.run(
            [
                str(bin_dir / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-tAc",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    def _wait_ready(self, bin_dir: Path, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            probe = subprocess.run(
                [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
                check=False,
            )
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not become ready on port {self.port}")
            time.sleep(0.2)

    def _provision(self, bin_dir: Path) -> None:
        if self._psql(bin_dir, "SELECT 1 FROM pg_roles WHERE rolname = 'crm'") != "1":
            self._psql(bin_dir, "CREATE ROLE crm LOGIN PASSWORD 'crm' CREATEDB")
        for db in DATABASES:
            exists = f"SELECT 1 FROM pg_database WHERE datname = '{db}'"  # noqa: S608 - fixed names
            if self._psql(bin_dir, exists) != "1":
                self._psql(bin_dir, f"CREATE DATABASE {db} OWNER crm")

    def stop(self) -> None:
        bin_dir = _bin_dir()
        if bin_dir and self.status().running:
            self._pg_ctl(bin_dir, "-m", "fast", "-w", "stop")

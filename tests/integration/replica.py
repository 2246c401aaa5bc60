"""A real streaming replica of the test database's PostgreSQL server, for the replica tests.

``pg_basebackup -R`` copies the primary's cluster into a temporary folder and the standby starts
there with ``pg_ctl`` on a port of its own, as the user that owns the primary's data (PostgreSQL
refuses to run as root). It works with the embedded pgserver (PostgreSQL 16, whose pg_hba.conf
allows local replication) and with the machine's PostgreSQL 15, whose pg_hba.conf gets a
``host replication`` line for 127.0.0.1 (trust, like its other local lines) and a reload when it has
none: a reload, never a restart. ``stop`` stops the standby and removes its folder.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

REPLICATION_LINE = "host replication all 127.0.0.1/32 trust  # recsys replica tests (tests/integration/replica.py)\n"


class ReplicaUnavailable(Exception):
    """This machine cannot start a replica of the primary (the reason says why)."""


def _connect(dsn: dict[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(**dsn, dbname="postgres", autocommit=True)


def _bin_dir(major: int) -> Path:
    """PostgreSQL binaries of the primary's major version: the system's, or pgserver's bundle."""
    candidates = [Path(f"/usr/lib/postgresql/{major}/bin")]
    try:
        import pgserver

        candidates.append(Path(pgserver.__file__).parent / "pginstall" / "bin")
    except ImportError:
        pass
    for folder in candidates:
        postgres = folder / "postgres"
        if postgres.exists():
            version = subprocess.run([str(postgres), "--version"], capture_output=True, text=True).stdout
            if version.split()[-1].split(".")[0] == str(major):
                return folder
    raise ReplicaUnavailable(f"no PostgreSQL {major} binaries (pg_basebackup, pg_ctl) found")


class StreamingReplica:
    def __init__(self, primary: dict[str, Any], port: int) -> None:
        """``primary``: psycopg connection keywords (host, port, user) of the primary server."""
        self.primary, self.port = primary, port
        self.folder: Path | None = None
        self.user = ""
        self.bin = Path()

    # ---- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        with _connect(self.primary) as conn:
            major = int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000
            data_directory = conn.execute("SHOW data_directory").fetchone()[0]
            hba_file = conn.execute("SHOW hba_file").fetchone()[0]
            if conn.execute("SHOW wal_level").fetchone()[0] == "minimal":
                raise ReplicaUnavailable("the primary runs with wal_level=minimal (no streaming replication)")
        self.bin = _bin_dir(major)
        self.user = pwd.getpwuid(os.stat(data_directory).st_uid).pw_name
        if os.geteuid() != 0 and self.user != pwd.getpwuid(os.geteuid()).pw_name:
            raise ReplicaUnavailable(f"the replica must run as {self.user}, and this process is not root")
        self.folder = Path(tempfile.mkdtemp(prefix="recsys-replica-"))
        os.chmod(self.folder, 0o700)
        shutil.chown(self.folder, self.user, self.user)
        try:
            self._base_backup(hba_file)
            self._configure()
            started = self._run(
                "pg_ctl", "-D", str(self.folder), "-l", str(self.folder / "log"), "-w", "-t", "60", "start", check=False
            )
            if started.returncode != 0:
                raise RuntimeError(f"the replica did not start; its log:\n{(self.folder / 'log').read_text()[-3000:]}")
            self._wait_streaming()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.folder is None:
            return
        if (self.folder / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.folder), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None

    def pause(self) -> None:
        """Stop replaying WAL: the replica falls behind the primary from here on."""
        self.execute("SELECT pg_wal_replay_pause()")

    def resume(self) -> None:
        self.execute("SELECT pg_wal_replay_resume()")

    def running(self) -> bool:
        return self.folder is not None and (self.folder / "postmaster.pid").exists()

    def kill(self) -> None:
        """Stop the standby at once (as a crash would), keeping its folder for ``stop``."""
        self._run("pg_ctl", "-D", str(self.folder), "-m", "immediate", "-w", "stop")

    # ---- reading it -------------------------------------------------------------------------------

    def url(self, database: str) -> str:
        return f"postgresql://{self.primary.get('user') or 'postgres'}@127.0.0.1:{self.port}/{database}"

    def execute(self, statement: str, params: Any = None, database: str = "postgres") -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    # ---- steps ------------------------------------------------------------------------------------

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)
        if check and done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
        return done

    def _base_backup(self, hba_file: str) -> None:
        host = str(self.primary.get("host") or "127.0.0.1")
        args = ["-D", str(self.folder), "-R", "-X", "stream", "-c", "fast", "-h", host]
        args += ["-p", str(self.primary.get("port") or 5432), "-U", str(self.primary.get("user") or "postgres")]
        done = self._run("pg_basebackup", *args, check=False)
        if done.returncode != 0 and "replication connection" in done.stderr and self._allow_replication(hba_file):
            done = self._run("pg_basebackup", *args, check=False)
        if done.returncode != 0:
            raise ReplicaUnavailable(f"pg_basebackup failed: {done.stderr.strip()}")

    def _allow_replication(self, hba_file: str) -> bool:
        """Trust replication from 127.0.0.1 on the primary (a reload, no restart); False if we may not."""
        path = Path(hba_file)
        if not os.access(path, os.W_OK) or str(self.primary.get("host", "")).startswith("/"):
            return False
        if REPLICATION_LINE not in path.read_text():
            # First, so that no earlier reject line shadows it.
            path.write_text(REPLICATION_LINE + path.read_text())
        with _connect(self.primary) as conn:
            conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)
        return True

    def _configure(self) -> None:
        """Settings of the standby's own: its port and socket, and access files where the primary
        keeps them outside its data folder (Debian's /etc/postgresql)."""
        assert self.folder is not None
        conf, hba = self.folder / "postgresql.conf", self.folder / "pg_hba.conf"
        if not hba.exists():
            hba.write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        lines = conf.read_text() if conf.exists() else ""
        lines += (
            f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.folder}'\n"
            f"hot_standby = on\nhba_file = '{hba}'\nident_file = '{self.folder / 'pg_ident.conf'}'\n"
            "shared_buffers = 32MB\nlogging_collector = off\n"
        )
        conf.write_text(lines)
        (self.folder / "pg_ident.conf").touch()
        for path in (conf, hba, self.folder / "pg_ident.conf"):
            shutil.chown(path, self.user, self.user)
        # The primary's own postmaster.pid / options are not copied by pg_basebackup; nothing else to drop.

    def _wait_streaming(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if self.execute("SELECT status FROM pg_stat_wal_receiver") == [("streaming",)]:
                    return
            except psycopg.OperationalError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the replica never streamed; log:\n{(self.folder / 'log').read_text()[-2000:]}")

"""Throwaway PostgreSQL and MariaDB servers for the test suite.

Each server is started from its binaries in a fresh temporary directory, listens on
127.0.0.1 only, and is stopped by its pid (interrupt, then kill) with the directory removed.
As root the servers run as their service users (`postgres`, `mysql`), because initdb and
postgres refuse to run as root. `setpriv --pdeathsig` makes a server exit when the test
process dies without cleaning up (e.g. SIGKILL), so no server outlives its test session.

Measured on a 2-core CI-like machine: PostgreSQL 0.9-2.1 s, MariaDB 0.8-1.2 s from nothing to
accepting connections (initdb / mariadb-install-db included).
"""

from __future__ import annotations

import atexit
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

POSTGRES_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
READY_TIMEOUT = 30.0  # seconds a server may take to accept connections
STOP_TIMEOUT = 10.0  # seconds a server may take to exit after SIGINT/SIGTERM before SIGKILL
POLL_INTERVAL = 0.05  # seconds between readiness probes
PORT_ATTEMPTS = 3  # tries with a fresh port when one is taken between probe and bind
LOG_TAIL_LINES = 40  # server log lines quoted in a start failure
OWNER_FILE = "owner.pid"  # pid of the test process that owns a server's temp dir
SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"  # mariadbd lives here, off a user's PATH

KINDS = ("postgres", "mariadb")


class DatabaseServerError(RuntimeError):
    """A throwaway database server could not be started."""


@dataclass
class DatabaseServer:
    """One running server; `url` is a SQLAlchemy URL for its `pilot` database."""

    kind: str
    port: int
    user: str
    password: str
    database: str
    pid: int
    tmp_dir: Path
    log_path: Path
    start_seconds: float
    _process: subprocess.Popen[bytes] = field(repr=False)
    _stop_signal: int = field(repr=False, default=signal.SIGTERM)
    _admin_connect: Callable[[], object] = field(repr=False, default=lambda: None)
    host: str = "127.0.0.1"
    # MariaDB templates' schemas, read once each (copy_database)
    _schemas: dict[str, tuple[list[tuple[str, str]], list[str]]] = field(
        repr=False, default_factory=dict)

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        auth = f"{self.user}:{self.password}@{self.host}:{self.port}"
        if self.kind == "postgres":
            return f"postgresql+psycopg://{auth}/{database}"
        return f"mysql+pymysql://{auth}/{database}?charset=utf8mb4"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        _check_identifier(name)
        if self.kind == "postgres":
            self._execute(f'CREATE DATABASE "{name}"')
        else:
            self._execute(
                f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
        return self.url_for(name)

    def copy_database(self, template: str, name: str) -> str:
        """Create ``name`` as a copy of ``template`` (its schema and rows) and return its URL.

        PostgreSQL copies the template's files (``CREATE DATABASE ... TEMPLATE``; nothing
        may be connected to the template). MariaDB has no templates: its tables and
        triggers are created again from what ``SHOW CREATE`` says of the template's (read
        once per template), with their rows copied; tables hold their definitions exactly,
        foreign keys included (checked off while they are made)."""
        _check_identifier(template)
        _check_identifier(name)
        if self.kind == "postgres":
            self._execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            return self.url_for(name)
        if template not in self._schemas:
            self._schemas[template] = self._read_schema(template)
        tables, triggers = self._schemas[template]
        self.create_database(name)
        conn = self._admin_connect()
        try:
            with conn.cursor() as cur:  # type: ignore[attr-defined]
                cur.execute(f"USE `{name}`")
                cur.execute("SET FOREIGN_KEY_CHECKS=0")
                for table, create in tables:
                    cur.execute(create)
                    cur.execute(f"INSERT INTO `{table}` SELECT * FROM `{template}`.`{table}`")
                for create in triggers:
                    cur.execute(create)
        finally:
            conn.close()  # type: ignore[attr-defined]
        return self.url_for(name)

    def _read_schema(self, database: str) -> tuple[list[tuple[str, str]], list[str]]:
        """A MariaDB database's (table, CREATE TABLE) pairs and CREATE TRIGGER statements."""
        conn = self._admin_connect()
        try:
            with conn.cursor() as cur:  # type: ignore[attr-defined]
                cur.execute(f"USE `{database}`")
                cur.execute("SHOW FULL TABLES WHERE Table_type = 'BASE TABLE'")
                names = [row[0] for row in cur.fetchall()]
                tables = []
                for table in names:
                    cur.execute(f"SHOW CREATE TABLE `{table}`")
                    tables.append((table, cur.fetchone()[1]))
                cur.execute("SHOW TRIGGERS")
                trigger_names = [row[0] for row in cur.fetchall()]
                triggers = []
                for trigger in trigger_names:
                    cur.execute(f"SHOW CREATE TRIGGER `{trigger}`")
                    triggers.append(cur.fetchone()[2])
                cur.execute("SELECT COUNT(*) FROM information_schema.views"
                            " WHERE table_schema = %s", (database,))
                if cur.fetchone()[0]:
                    raise DatabaseServerError(f"{database} has views; copy_database copies"
                                              " tables and triggers only")
        finally:
            conn.close()  # type: ignore[attr-defined]
        return tables, triggers

    def drop_database(self, name: str) -> None:
        """Drop a database, closing whatever connections a test left open on it."""
        _check_identifier(name)
        if self.kind == "postgres":
            self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        # An open transaction holding a metadata lock would make DROP DATABASE wait.
        conn = self._admin_connect()
        try:
            with conn.cursor() as cur:  # type: ignore[attr-defined]
                cur.execute(
                    "SELECT id FROM information_schema.processlist"
                    " WHERE db = %s AND id <> CONNECTION_ID()",
                    (name,),
                )
                for (thread_id,) in cur.fetchall():
                    try:
                        cur.execute(f"KILL {int(thread_id)}")
                    except Exception:  # the connection may have gone away meanwhile
                        pass
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()  # type: ignore[attr-defined]

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return _tail(self.log_path, lines)

    def stop(self) -> None:
        """Stop the server by its pid and remove its directory. Safe to call twice."""
        _running.pop(self.pid, None)
        _stop_process(self._process, self._stop_signal)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def _execute(self, statement: str) -> None:
        conn = self._admin_connect()
        try:
            with conn.cursor() as cur:  # type: ignore[attr-defined]
                cur.execute(statement)
        finally:
            conn.close()  # type: ignore[attr-defined]


# Servers started by this process and not yet stopped, by pid; stopped at exit as a backstop.
_running: dict[int, DatabaseServer] = {}


@atexit.register
def stop_all() -> None:
    for server in list(_running.values()):
        server.stop()


def start_server(kind: str) -> DatabaseServer:
    if kind == "postgres":
        return start_postgres()
    if kind == "mariadb":
        return start_mariadb()
    raise ValueError(f"unknown database server kind {kind!r}; known: {', '.join(KINDS)}")


def unavailable_reason(kind: str) -> str | None:
    """Why a `kind` server cannot be started here, or None when it can."""
    if kind == "postgres":
        for name in ("initdb", "postgres"):
            if not (POSTGRES_BIN_DIR / name).is_file():
                return (
                    f"PostgreSQL 15 is not installed ({POSTGRES_BIN_DIR / name} is missing;"
                    " Debian package postgresql-15)"
                )
        return _missing_module("psycopg", "postgres") or _missing_service_user("postgres")
    if kind == "mariadb":
        for name in ("mariadb-install-db", "mariadbd"):
            if _which(name) is None:
                return (
                    f"MariaDB is not installed ({name} not found; Debian package"
                    " mariadb-server, installed by scripts/install-system-deps.sh)"
                )
        return _missing_module("pymysql", "mysql") or _missing_service_user("mysql")
    raise ValueError(f"unknown database server kind {kind!r}; known: {', '.join(KINDS)}")


def start_postgres(*, timeout: float = READY_TIMEOUT) -> DatabaseServer:
    """Start PostgreSQL 15 on a free 127.0.0.1 port with a `pilot` database and user."""
    reason = unavailable_reason("postgres")
    if reason:
        raise DatabaseServerError(reason)
    import psycopg

    started = time.monotonic()
    tmp_dir, run_as = _make_tmp_dir("pilot-postgres-", "postgres")
    data_dir, log_path = tmp_dir / "data", tmp_dir / "server.log"
    password = secrets.token_hex(12)
    pwfile = tmp_dir / "password"
    pwfile.write_text(password + "\n")
    _chown(pwfile, run_as)
    try:
        _run_setup(
            [
                str(POSTGRES_BIN_DIR / "initdb"),
                "-D", str(data_dir),
                "-U", "pilot",
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            run_as, tmp_dir, log_path,
        )  # fmt: skip

        def connect(port: int) -> object:
            return psycopg.connect(
                host="127.0.0.1", port=port, user="pilot", password=password,
                dbname="postgres", connect_timeout=2, autocommit=True,
            )  # fmt: skip

        def command(port: int) -> list[str]:
            return [
                str(POSTGRES_BIN_DIR / "postgres"),
                "-D", str(data_dir),
                "-p", str(port),
                "-k", str(tmp_dir),
                "-c", "listen_addresses=127.0.0.1",
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
                "-c", "max_connections=200",
            ]  # fmt: skip

        server = _start_and_wait(
            "postgres", command, connect, password=password, run_as=run_as, tmp_dir=tmp_dir,
            log_path=log_path, stop_signal=signal.SIGINT, timeout=timeout,
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    try:
        server._execute('CREATE DATABASE "pilot"')
    except BaseException:
        server.stop()
        raise
    server.start_seconds = time.monotonic() - started
    return server


def start_mariadb(*, timeout: float = READY_TIMEOUT) -> DatabaseServer:
    """Start MariaDB on a free 127.0.0.1 port with a `pilot` database and user."""
    reason = unavailable_reason("mariadb")
    if reason:
        raise DatabaseServerError(reason)
    import pymysql

    started = time.monotonic()
    tmp_dir, run_as = _make_tmp_dir("pilot-mariadb-", "mysql")
    data_dir, log_path = tmp_dir / "data", tmp_dir / "server.log"
    socket_path = tmp_dir / "mariadbd.sock"
    password = secrets.token_hex(12)
    try:
        _run_setup(
            [
                str(_which("mariadb-install-db")),
                "--no-defaults",
                f"--datadir={data_dir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ],
            run_as, tmp_dir, log_path,
        )  # fmt: skip

        def connect(port: int) -> object:
            # root@localhost (empty password) over the socket; `pilot` is created below.
            return pymysql.connect(
                unix_socket=str(socket_path), user="root", password="",
                connect_timeout=2, autocommit=True,
            )  # fmt: skip

        def command(port: int) -> list[str]:
            return [
                str(_which("mariadbd")),
                "--no-defaults",
                f"--datadir={data_dir}",
                f"--socket={socket_path}",
                f"--port={port}",
                "--bind-address=127.0.0.1",
                f"--pid-file={tmp_dir / 'mariadbd.pid'}",
                f"--tmpdir={tmp_dir}",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=64M",
                "--innodb-flush-log-at-trx-commit=0",
                "--innodb-doublewrite=0",
                "--max-connections=300",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_unicode_ci",
            ]

        server = _start_and_wait(
            "mariadb", command, connect, password=password, run_as=run_as, tmp_dir=tmp_dir,
            log_path=log_path, stop_signal=signal.SIGTERM, timeout=timeout,
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    try:
        server._execute(f"CREATE USER 'pilot'@'%' IDENTIFIED BY '{password}'")
        server._execute("GRANT ALL PRIVILEGES ON *.* TO 'pilot'@'%' WITH GRANT OPTION")
        server.create_database("pilot")
    except BaseException:
        server.stop()
        raise
    server.start_seconds = time.monotonic() - started
    return server


def _start_and_wait(
    kind: str,
    command: Callable[[int], list[str]],
    connect: Callable[[int], object],
    *,
    password: str,
    run_as: str | None,
    tmp_dir: Path,
    log_path: Path,
    stop_signal: int,
    timeout: float,
) -> DatabaseServer:
    """Start the server, retrying on a fresh port if the probed one was taken meanwhile."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = _free_port()
        process = _spawn(command(port), run_as, tmp_dir, log_path, stop_signal)
        server = DatabaseServer(
            kind=kind, port=port, user="pilot", password=password, database="pilot",
            pid=process.pid, tmp_dir=tmp_dir, log_path=log_path, start_seconds=0.0,
            _process=process, _stop_signal=stop_signal,
            _admin_connect=lambda port=port: connect(port),  # type: ignore[misc]
        )  # fmt: skip
        _running[process.pid] = server
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            try:
                conn = connect(port)
            except Exception as exc:  # not accepting connections yet
                last_error = exc
                time.sleep(POLL_INTERVAL)
                continue
            conn.close()  # type: ignore[attr-defined]
            return server
        exited = process.poll()
        _running.pop(process.pid, None)
        _stop_process(process, stop_signal)
        log = _tail(log_path, LOG_TAIL_LINES)
        if exited is not None and attempt < PORT_ATTEMPTS and _port_taken(log):
            continue
        what = (
            f"exited with status {exited}"
            if exited is not None
            else f"did not accept connections within {timeout:.0f} s (last error: {last_error})"
        )
        raise DatabaseServerError(
            f"{kind} server on 127.0.0.1:{port} {what}.\n"
            f"command: {' '.join(command(port))}\n"
            f"--- last lines of {log_path} ---\n{log}"
        )
    raise AssertionError("unreachable")


def _spawn(
    argv: list[str], run_as: str | None, cwd: Path, log_path: Path, stop_signal: int
) -> subprocess.Popen[bytes]:
    """Start a server process whose pid is the server's own (setpriv execs, not forks)."""
    setpriv = shutil.which("setpriv")
    if setpriv:
        # The server exits if this process dies without stopping it.
        argv = [setpriv, f"--pdeathsig={signal.Signals(stop_signal).name[3:]}", "--", *argv]
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_server_env(cwd),
            start_new_session=True,  # Ctrl-C in the terminal reaches pytest, not the server
            **_identity(run_as),
        )


def _run_setup(argv: list[str], run_as: str | None, cwd: Path, log_path: Path) -> None:
    with open(log_path, "ab") as log:
        result = subprocess.run(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_server_env(cwd),
            timeout=READY_TIMEOUT,
            **_identity(run_as),
        )
    if result.returncode != 0:
        raise DatabaseServerError(
            f"{Path(argv[0]).name} failed with status {result.returncode}.\n"
            f"command: {' '.join(argv)}\n"
            f"--- last lines of {log_path} ---\n{_tail(log_path, LOG_TAIL_LINES)}"
        )


def _stop_process(process: subprocess.Popen[bytes], stop_signal: int) -> None:
    if process.poll() is not None:
        return
    try:
        os.kill(process.pid, stop_signal)
        process.wait(timeout=STOP_TIMEOUT)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT)


def _make_tmp_dir(prefix: str, service_user: str) -> tuple[Path, str | None]:
    """A private temp dir, owned by the service user when we are root."""
    _remove_orphaned_dirs(prefix)
    tmp_dir = Path(tempfile.mkdtemp(prefix=prefix))
    (tmp_dir / OWNER_FILE).write_text(f"{os.getpid()}\n")
    run_as = service_user if os.geteuid() == 0 else None
    _chown(tmp_dir, run_as)
    return tmp_dir, run_as


def _remove_orphaned_dirs(prefix: str) -> None:
    """Remove directories left by test processes that were killed before cleaning up."""
    for path in Path(tempfile.gettempdir()).glob(prefix + "*"):
        try:
            owner = int((path / OWNER_FILE).read_text())
            os.kill(owner, 0)
        except ProcessLookupError:  # the owning test process is gone
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):  # not ours, or still starting up, or still running
            pass


def _chown(path: Path, user: str | None) -> None:
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _identity(run_as: str | None) -> dict[str, object]:
    if run_as is None:
        return {}
    entry = pwd.getpwnam(run_as)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _server_env(home: Path) -> dict[str, str]:
    # A small, predictable environment: no PG*/MYSQL_* variables from the caller leak in.
    return {
        "PATH": f"{os.defpath}:{SBIN_PATH}",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_taken(log: str) -> bool:
    return "Address already in use" in log or "Do you already have another" in log


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=SBIN_PATH)


def _missing_module(module: str, extra: str) -> str | None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return f"Python module {module} is not installed (pip install -e '.[{extra}]')"
    return None


def _missing_service_user(user: str) -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(user)
    except KeyError:
        return f"running as root, but there is no {user!r} user to run the server as"
    return None


def _check_identifier(name: str) -> None:
    if not (name and name.replace("_", "").isalnum() and name.isascii()):
        raise ValueError(f"not a plain database name: {name!r}")


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])

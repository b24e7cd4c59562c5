"""Start and stop a `tinsmith serve` subprocess: used by the demo, the tests and the benchmarks.

It picks a free port and private directories, waits for /api/v1/healthz, and stops only the
process group it started. Its directories (data, downloads, log, Ray's temp dir: ~1.6 GB after a
test session) are removed when it stops, except those the caller passed in; a server that fails
to start keeps them, so that its log can be read.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it), for a server or a test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """Context manager around `tinsmith serve --config CONFIG` on 127.0.0.1:<free port>."""

    def __init__(
        self,
        config: str | Path,
        log_path: str | Path | None = None,
        startup_timeout: float = 600,
        data_dir: str | Path | None = None,
    ) -> None:
        self.config = str(config)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.workdir = Path(tempfile.mkdtemp(prefix="tinsmith-"))
        # Ray's socket paths must stay short, so its temp dir lives directly under /tmp.
        self.ray_dir = Path(tempfile.mkdtemp(prefix="tsr-", dir="/tmp"))
        self.data_dir = (
            Path(data_dir) if data_dir else self.workdir / "data"
        )  # reuse one to test restarts
        self.log_path = Path(log_path) if log_path else self.workdir / "serve.log"
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        for directory in (self.workdir, self.ray_dir):  # again, if stopped before
            directory.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            TINSMITH_DATA_DIR=str(self.data_dir),
            TINSMITH_RAY_TEMP_DIR=str(self.ray_dir),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        env.pop("RAY_ADDRESS", None)
        log = open(self.log_path, "wb")
        cmd = [
            sys.executable,
            "-m",
            "tinsmith.cluster.cli",
            "serve",
            "--config",
            self.config,
            "--port",
            str(self.port),
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self._log = log
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"tinsmith serve exited with {self.proc.returncode}; log: {self.log_path}; "
                    f"its last lines:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/api/v1/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        tail = self.log_tail()
        self.stop(keep_files=True)
        raise TimeoutError(
            "tinsmith serve did not become healthy in "
            f"{self.startup_timeout}s; log: {self.log_path}; its last lines:\n{tail}"
        )

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log, so that a failed start says why where it is reported
        (a CI machine's temp files are gone once the run ends)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, keep_files: bool = False) -> None:
        """SIGTERM the server, which stops its workers and its Ray itself (a SIGTERM to the
        whole group would kill the actors first, leaving the server waiting on dead ones), then
        SIGKILL what is left of our process group and remove the private directories."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        try:
            os.killpg(
                self.proc.pid, signal.SIGKILL
            )  # stragglers (Ray workers) of our own group only
        except ProcessLookupError:
            pass
        self._log.close()
        self.proc = None
        if not keep_files:
            # Only what this object created: a data_dir or log_path passed in is the caller's.
            shutil.rmtree(self.ray_dir, ignore_errors=True)
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server; after an error in the body its log and data stay for a look."""
        self.stop(keep_files=exc_type is not None)
        if exc_type is not None:
            log.warning("server files kept after an error: %s", self.workdir)

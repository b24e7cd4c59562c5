"""A real S3-compatible server for tests: OpenStack Swift with its s3api middleware.

Mocks such as moto accept wrong secrets and tampered presigned URLs; Swift checks SigV4 for real.
Four processes (account, container, object, proxy) listen on free loopback ports with one-replica
rings in a private temp dir. They are started from the Python running the tests (so the venv's
``swift`` package is the one used), stopped by PID, and die with the process that started them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

ACCESS_KEY = "test:tester"
SECRET_KEY = "testing"
BACKENDS = ("account", "container", "object")
SERVERS = (*BACKENDS, "proxy")

# Runs one server's console-script entry point in a child interpreter. It first asks the kernel
# to SIGKILL it when its parent dies (Swift servers call setsid, so they would outlive a killed
# test run), then checks the parent did not die before that request took effect.
_LAUNCHER = """
import ctypes, importlib, os, signal, sys
if sys.platform == "linux":
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv[1]):
        sys.exit(1)
module, _, attr = sys.argv[2].partition(":")
sys.argv = [sys.argv[3], *sys.argv[4:]]
sys.exit(getattr(importlib.import_module(module), attr)())
"""

# Builds the three rings through Swift's RingBuilder in one interpreter (the swift-ring-builder
# CLI takes ~0.4-1.3 s per call, nine calls in all).
_RINGS = """
import sys
from swift.common.ring import RingBuilder
swift_dir = sys.argv[1]
for spec in sys.argv[2:]:
    name, port = spec.split("=")
    builder = RingBuilder(10, 1, 1)
    builder.add_dev({"region": 1, "zone": 1, "ip": "127.0.0.1", "port": int(port),
                     "device": "sdb1", "weight": 1.0})
    builder.rebalance()
    builder.get_ring().save(f"{swift_dir}/{name}.ring.gz")
"""


def _child_env() -> dict[str, str]:
    # eventlet's green DNS resolver costs ~0.7 s of import per process and loopback needs no DNS.
    return {**os.environ, "EVENTLET_NO_GREENDNS": "yes"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _entry_point(script: str) -> str:
    """``module:attr`` of a swift console script, from the package metadata of this interpreter."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        points = distribution("swift").entry_points
    except PackageNotFoundError as exc:
        raise RuntimeError(
            f"the 'swift' package is not installed for {sys.executable}; pip install swift"
        ) from exc
    for point in points:
        if point.group == "console_scripts" and point.name == script:
            return point.value
    raise RuntimeError(f"swift installed for {sys.executable} has no console script {script!r}")


def _supports_user_xattrs(directory: Path) -> bool:
    """Swift's object server keeps metadata in user xattrs; some tmpfs mounts reject them."""
    probe = directory / f".xattr-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        os.setxattr(probe, "user.swift.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)


def _base_dir() -> Path:
    candidates = [Path(tempfile.gettempdir()), Path.home() / ".cache", Path.cwd()]
    for candidate in candidates:
        if candidate.is_dir() and _supports_user_xattrs(candidate):
            return candidate
    raise RuntimeError(
        f"no directory with user xattr support for Swift's object server among {candidates}"
    )


class SwiftServer:
    """Swift + s3api on loopback; ``with SwiftServer() as s3: ...`` or ``start()``/``stop()``."""

    def __init__(self, startup_timeout: float = 60.0) -> None:
        self.startup_timeout = startup_timeout
        self.root: Path | None = None
        self.ports: dict[str, int] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def endpoint_url(self) -> str:
        if "proxy" not in self.ports:
            raise RuntimeError("SwiftServer is not started")
        return f"http://127.0.0.1:{self.ports['proxy']}"

    @property
    def access_key(self) -> str:
        return ACCESS_KEY

    @property
    def secret_key(self) -> str:
        return SECRET_KEY

    def __enter__(self) -> SwiftServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the four servers and wait until each answers /healthcheck.

        A port picked free can be taken before Swift binds it, so a failed start is retried once
        on fresh ports before the error (with the servers' log tails) is raised.
        """
        if self._procs:
            raise RuntimeError("SwiftServer is already started")
        for attempt in (1, 2):
            try:
                self._start_once()
                return
            except RuntimeError:
                self.stop()
                if attempt == 2:
                    raise
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        """Stop the processes this object started (by PID) and remove its directory."""
        procs, self._procs = self._procs, {}
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        self.ports = {}

    def create_bucket(self, name: str) -> None:
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )
        client.create_bucket(Bucket=name)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of every server's log, for failure messages."""
        if self.root is None:
            return "(no logs: not started)"
        parts = []
        for name in SERVERS:
            path = self.root / "logs" / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            tail = "\n".join(text.splitlines()[-lines:]) or "(empty)"
            parts.append(f"--- {name} server log ({path}) ---\n{tail}")
        return "\n".join(parts)

    def _start_once(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tinsmith-swift-", dir=_base_dir()))
        self.ports = {name: _free_port() for name in SERVERS}
        (self.root / "devices" / "sdb1").mkdir(parents=True)
        (self.root / "logs").mkdir()
        (self.root / "run").mkdir()
        self._write_configs()
        self._build_rings()
        for name in SERVERS:
            self._spawn(name)
        self._wait_healthy()

    def _write_configs(self) -> None:
        assert self.root is not None
        root = self.root
        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError as exc:
            raise RuntimeError(
                f"uid {os.getuid()} has no passwd entry; Swift servers need a user name"
            ) from exc
        (root / "swift.conf").write_text(
            textwrap.dedent(
                """\
                [swift-hash]
                swift_hash_path_suffix = tinsmith-tests
                swift_hash_path_prefix = tinsmith-tests

                [storage-policy:0]
                name = gold
                default = yes
                """
            )
        )
        common = textwrap.dedent(
            f"""\
            [DEFAULT]
            bind_ip = 127.0.0.1
            workers = 0
            user = {user}
            swift_dir = {root}
            devices = {root / "devices"}
            mount_check = false
            bind_timeout = 5
            log_level = INFO
            log_udp_host = 127.0.0.1
            log_udp_port = 9
            """
        )
        for name in BACKENDS:
            (root / f"{name}-server.conf").write_text(
                common
                + textwrap.dedent(
                    f"""\
                    bind_port = {self.ports[name]}

                    [pipeline:main]
                    pipeline = healthcheck {name}-server

                    [app:{name}-server]
                    use = egg:swift#{name}

                    [filter:healthcheck]
                    use = egg:swift#healthcheck
                    """
                )
            )
        pipeline = (
            "catch_errors gatekeeper healthcheck proxy-logging listing_formats bulk s3api "
            "tempauth copy slo dlo proxy-logging proxy-server"
        )
        filters = [
            "catch_errors",
            "gatekeeper",
            "healthcheck",
            "listing_formats",
            "bulk",
            "copy",
            "slo",
            "dlo",
        ]
        (root / "proxy-server.conf").write_text(
            common
            + textwrap.dedent(
                f"""\
                bind_port = {self.ports["proxy"]}

                [pipeline:main]
                pipeline = {pipeline}

                [app:proxy-server]
                use = egg:swift#proxy
                account_autocreate = true
                allow_account_management = true

                [filter:s3api]
                use = egg:swift#s3api
                location = us-east-1

                [filter:tempauth]
                use = egg:swift#tempauth
                user_test_tester = {SECRET_KEY} .admin

                [filter:proxy-logging]
                use = egg:swift#proxy_logging
                """
            )
            + "".join(f"\n[filter:{f}]\nuse = egg:swift#{f}\n" for f in filters)
        )

    def _build_rings(self) -> None:
        assert self.root is not None
        specs = [f"{name}={self.ports[name]}" for name in BACKENDS]
        result = subprocess.run(
            [sys.executable, "-c", _RINGS, str(self.root), *specs],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=_child_env(),
        )
        if result.returncode != 0:
            raise RuntimeError(f"building the Swift rings failed:\n{result.stdout}{result.stderr}")

    def _spawn(self, name: str) -> None:
        assert self.root is not None
        script = f"swift-{name}-server"
        log = (self.root / "logs" / f"{name}.log").open("wb")
        with log:
            self._procs[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _LAUNCHER,
                    str(os.getpid()),
                    _entry_point(script),
                    script,
                    str(self.root / f"{name}-server.conf"),
                    "--verbose",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root / "run",
                env=_child_env(),
            )

    def kill(self, name: str) -> None:
        """SIGKILL one server (e.g. the proxy, to cut an upload off midway)."""
        proc = self._procs[name]
        proc.kill()
        proc.wait()

    def revive(self, name: str) -> None:
        """Start a server killed by ``kill`` again, on the same port, and wait until it answers."""
        self._spawn(name)
        self._wait_healthy([name])

    def _wait_healthy(self, names: list[str] | None = None) -> None:
        deadline = time.monotonic() + self.startup_timeout
        pending = list(names or SERVERS)
        while pending:
            for name in list(pending):
                proc = self._procs[name]
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"Swift {name} server exited with code {proc.returncode} "
                        f"while starting\n{self.log_tail()}"
                    )
                if self._healthy(self.ports[name]):
                    pending.remove(name)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Swift servers {pending} did not answer /healthcheck within "
                    f"{self.startup_timeout:g} s\n{self.log_tail()}"
                )
            time.sleep(0.1)

    @staticmethod
    def _healthy(port: int) -> bool:
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({})
        )  # never via an HTTP(S)_PROXY
        try:
            with opener.open(f"http://127.0.0.1:{port}/healthcheck", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False


def _main() -> None:
    """Run a server in the foreground for manual poking: ``python -m tests.swift_server``."""
    with SwiftServer() as server:
        server.create_bucket("tinsmith")
        print(
            f"endpoint {server.endpoint_url}  access key "
            f"{server.access_key}  secret {server.secret_key}"
        )
        print("bucket 'tinsmith' created; Ctrl-C stops")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    _main()

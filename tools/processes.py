"""Real processes for tests and benchmarks: services on free ports and throwaway Redis servers.

Written once and shared: the end-to-end tests, the benchmark and the
scenario all start services the same way.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import redis

from tools import warm_starts

PROJECT_DIR = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def spawn(args: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    """`subprocess.Popen(args, **popen)` for a child that must be stopped later, with SIGTERM,
    SIGHUP and SIGINT held back until the child is known: one that arrived meanwhile stops
    the child, then its handler runs.

    A handler that ends the program by raising (the benchmark's, Ctrl-C's) could otherwise
    raise inside `Popen`, after the fork and before the `Popen` is returned: no `with`
    block or `finally` knew of that child, and it ran on after the program ended (a
    uvicorn in a session of its own, holding its port)."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        return subprocess.Popen(args, **popen)
    held: list[int] = []
    handlers = {
        signum: signal.signal(signum, lambda number, _frame: held.append(number))
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    }
    try:
        process = subprocess.Popen(args, **popen)
    finally:
        for held_back, handler in handlers.items():
            signal.signal(held_back, handler)
    try:
        for number in held:
            signal.raise_signal(number)  # its handler runs now, and may raise
    except BaseException:
        if popen.get("start_new_session"):
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait()
        raise
    return process


def _ports_below_the_ephemeral_range() -> Iterator[int]:
    """Ports from 10000 up to where the kernel's ephemeral range starts, from a random
    point on (so that test processes running side by side start apart), each once."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    ports = list(range(10000, max(low, 10001)))
    start = random.randrange(len(ports))
    return iter(ports[start:] + ports[:start])


_PORTS = _ports_below_the_ephemeral_range()


def free_port() -> int:
    """A port for a server a test starts, free when asked.

    Not the kernel's choice for a bind to port 0: that comes from the ephemeral range,
    which every outgoing connection on the machine draws from too, and under load a
    client's connection took such a port between this check and the server's own bind
    ("address already in use"). Below that range only a bind on purpose takes a port."""
    for port in _PORTS:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port left below the ephemeral range")


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is a valid, free port too."""
    while True:
        port = free_port()
        if port + 10000 <= 65535:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


def wait_for(
    condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> T:
    """Poll `condition` until it returns something truthy, or fail after `timeout` seconds,
    saying what was last seen: the failure explains itself without a rerun."""
    deadline = time.monotonic() + timeout
    tries = 0
    while True:
        tries += 1
        try:
            result = condition()
            if result:
                return result
            last = f"last seen {result!r}"
        except (httpx.HTTPError, redis.RedisError, OSError, ValueError, KeyError) as exc:
            last = f"last error {exc!r}"
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not met within {timeout}s ({last}, after {tries} tries)")
        time.sleep(interval)


class Service:
    """A process serving HTTP on 127.0.0.1:`port`, with its output kept in a log file."""

    def __init__(
        self,
        args: list[str],
        port: int,
        env: Mapping[str, str] | None = None,
        cwd: Path = PROJECT_DIR,
        log_dir: Path | None = None,
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.args = args
        self.cwd = cwd
        self.env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), **(env or {})}
        log_dir = log_dir or Path(tempfile.mkdtemp(prefix="service-log-"))
        self.log_path = log_dir / f"{Path(args[-1]).stem.replace(':', '-')}-{port}.log"
        self.process: subprocess.Popen[bytes] | warm_starts.WarmProcess | None = None
        self._client: httpx.Client | None = None

    @property
    def client(self) -> httpx.Client:
        """One client for every request a test or a readiness poll makes to this service.

        `httpx.get()` builds a client per call, and with it a TLS context from certifi's
        bundle: 130 ms of CPU each, measured beside other test runs on 2 cores. A test of
        200 requests spent 55 s on that, and polling a starting service every 20 ms
        starved the very process it waited for. Idle connections are dropped after 1 s,
        well before uvicorn's 5 s keep-alive timeout, so no request goes out on a
        connection the server is closing."""
        if self._client is None:
            self._client = httpx.Client(
                base_url=self.url, timeout=10, limits=httpx.Limits(keepalive_expiry=1.0)
            )
        return self._client

    def start(self, ready_path: str = "/health", timeout: float = 20.0) -> Service:
        if warm_starts.can_start(self.args, self.env):
            self.process = warm_starts.start(self.args, self.env, self.cwd, self.log_path)
        else:
            self._start_cold()
        try:
            wait_for(self._ready(ready_path), timeout=timeout, what=f"{self.url}{ready_path} answering")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"service did not start: {self.args}\n{self.log()}") from None
        except BaseException:  # interrupted while it starts (Ctrl-C, SIGTERM): not left running
            self.stop()
            raise
        return self

    def _start_cold(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = spawn(
                self.args,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # so stop() reaches uvicorn's reloader children too
            )

    def _ready(self, path: str) -> Callable[[], bool]:
        def check() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}:\n{self.log()}")
            return self.client.get(path, timeout=1).status_code == 200

        return check

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        os.killpg(self.process.pid, sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def __enter__(self) -> Service:
        return self.start() if self.process is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def uvicorn_service(
    app: str, port: int | None = None, env: Mapping[str, str] | None = None, **kwargs: Any
) -> Service:
    """`app` ("module:attribute") served by uvicorn, without reload, quiet per request."""
    port = port or free_port()
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--timeout-graceful-shutdown",
        "5",
    ]
    return Service(args, port, env, **kwargs)


def copy_project(workdir: Path) -> Path:
    """The project's modules in `workdir`, for a test that edits them as a person would."""
    for source in PROJECT_DIR.glob("*.py"):
        shutil.copy(source, workdir / source.name)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(PROJECT_DIR / "service", workdir / "service", dirs_exist_ok=True, ignore=ignore)
    return workdir


def script_service(workdir: Path, script: str, env: Mapping[str, str] | None = None) -> Service:
    """`python SCRIPT` in `workdir`: the way the walkthrough runs a service, with reload."""
    return Service([sys.executable, str(workdir / script)], free_port(), env, cwd=workdir, log_dir=workdir)


class EditablePartner(Service):
    """The partner run as the walkthrough runs it, `python partner_offer_service.py` with
    reload, from a copy of the project whose STATUS_CODE line a test rewrites."""

    def __init__(self, workdir: Path, status_code: int = 200, env: Mapping[str, str] | None = None) -> None:
        copy_project(workdir)
        self.source = workdir / "partner_offer_service.py"
        super().__init__([sys.executable, str(self.source)], free_port(), env, cwd=workdir, log_dir=workdir)
        self._write_status(status_code)

    def set_status(self, status_code: int, timeout: float = 15.0) -> None:
        """Edit STATUS_CODE in the file, as a person would, and wait for uvicorn to reload it."""
        self._write_status(status_code)
        wait_for(
            lambda: self.get("/stats", timeout=1).json()["status_code"] == status_code,
            timeout=timeout,
            what=f"partner reloaded with STATUS_CODE = {status_code}",
        )

    def requests_received(self) -> int:
        return int(self.get("/stats").json()["requests_received"])

    def _write_status(self, status_code: int) -> None:
        source = self.source.read_text()
        lines = [
            f"STATUS_CODE = {status_code}" if line.startswith("STATUS_CODE = ") else line
            for line in source.splitlines()
        ]
        self.source.write_text("\n".join(lines) + "\n")


class RedisServer:
    """A throwaway `redis-server` on a free port, nothing saved to disk."""

    def __init__(self, binary: str, workdir: Path, extra_args: list[str] | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.workdir), *self.extra_args]
        self.process = spawn(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_until_answering(
            redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2),
            f"redis-server on port {self.port}",
        )
        return self

    def _wait_until_answering(self, client: redis.Redis, what: str) -> None:
        """Until `client` gets a PONG; a server that never answers is not left running."""
        try:
            wait_for(client.ping, timeout=10, what=what)
        except BaseException:
            self.stop()
            raise
        finally:
            client.close()

    def stop(self) -> None:
        """Kill it, as an outage would: no clean shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> RedisServer:
        """Start again on the same port, empty: what comes back after an outage."""
        self.stop()
        return self.start()


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


class RedisClusterServers:
    """Three `redis-server --cluster-enabled yes` masters sharing the 16384 slots, started locally."""

    SLOTS = 16384

    def __init__(self, binary: str, workdir: Path, masters: int = 3) -> None:
        self.nodes = []
        for index in range(masters):
            node_dir = workdir / f"node-{index}"
            node_dir.mkdir()
            args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]
            node = RedisServer(binary, node_dir, args)
            node.port = free_cluster_port()
            node.url = f"redis://127.0.0.1:{node.port}/0"
            self.nodes.append(node)
        self.url = ""

    def start(self) -> RedisClusterServers:
        try:
            return self._start()
        except BaseException:
            self.stop()  # leave no node behind when the cluster does not come up
            raise

    def _start(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        clients = [redis.Redis(host="127.0.0.1", port=node.port) for node in self.nodes]
        share = self.SLOTS // len(clients)
        for index, client in enumerate(clients):
            last = self.SLOTS - 1 if index == len(clients) - 1 else (index + 1) * share - 1
            client.execute_command("CLUSTER ADDSLOTSRANGE", index * share, last)  # type: ignore[no-untyped-call]
        for node in self.nodes[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port)  # type: ignore[no-untyped-call]
        for client in clients:

            def cluster_ok(client: redis.Redis = client) -> bool:
                return bool(client.cluster("info")["cluster_state"] == "ok")

            wait_for(cluster_ok, timeout=20, what="cluster ok")
            client.close()
        self.url = self.nodes[0].url.rsplit("/", 1)[0]
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run one of the project's scripts (`tools/scenario.py`, `tools/bench/run.py`...) as a user would."""
    return subprocess.run(
        [sys.executable, *args], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=timeout
    )


def peak_memory_bytes(pid: int) -> int:
    """The process's peak resident memory so far (Linux's `VmHWM`): exact, where sampling
    the current size (psutil's `rss`) could miss a spike between two samples."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"no VmHWM for process {pid}")


def with_open_files_limit(service: Service, limit: int) -> Service:
    """`service`, not yet started, run with at most `limit` open files (RLIMIT_NOFILE)."""
    setting = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit})); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    service.args = [sys.executable, "-c", setting, *service.args[1:]]
    return service


@contextmanager
def delay_proxy(target_port: int, delay: float) -> Iterator[str]:
    """A Redis `delay` seconds further away each way (tools/delay_proxy.py); yields its URL."""
    port = free_port()
    proxy = spawn(
        [
            sys.executable,
            str(PROJECT_DIR / "tools" / "delay_proxy.py"),
            str(port),
            str(target_port),
            str(delay),
        ]
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
        try:
            wait_for(client.ping, timeout=10, what="delay proxy")
        finally:
            client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proxy.kill()
        proxy.wait()


class RedisSentinels:
    """A primary, one replica and three `redis-server --sentinel` watching them (quorum 2),
    on free ports: a Redis that fails over, as a managed one does.

    `down_after_ms` is how long the Sentinels wait before they call the primary
    down; half a second here, so that a failover takes a second or two."""

    SERVICE = "mymaster"

    def __init__(self, binary: str, workdir: Path, down_after_ms: int = 500) -> None:
        self.binary = binary
        self.workdir = workdir
        self.down_after_ms = down_after_ms
        (workdir / "primary").mkdir()
        (workdir / "replica").mkdir()
        self.primary = RedisServer(binary, workdir / "primary")
        self.replica = RedisServer(
            binary, workdir / "replica", ["--replicaof", "127.0.0.1", str(self.primary.port)]
        )
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        self.url = f"redis+sentinel://{hosts}/{self.SERVICE}/0"

    def start(self) -> RedisSentinels:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> RedisSentinels:
        self.primary.start()
        self.replica.start()
        for port in self.sentinel_ports:
            config = self.workdir / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.SERVICE} 5000\n"
            )
            self.sentinels.append(
                spawn(
                    [self.binary, str(config), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        # Ready when every Sentinel knows the replica and the two other Sentinels:
        # before that, a failover could not be agreed on.
        for port in self.sentinel_ports:
            client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2)
            try:

                def ready(client: redis.Redis = client) -> bool:
                    master = cast(dict[str, Any], client.sentinel_master(self.SERVICE))
                    return bool(master["num-slaves"] == 1 and master["num-other-sentinels"] == 2)

                wait_for(ready, timeout=30, what=f"sentinel on port {port} seeing the replica and its peers")
            finally:
                client.close()
        return self

    def primary_port(self) -> int:
        """The port of the primary as the Sentinels see it now."""
        client = redis.Redis(host="127.0.0.1", port=self.sentinel_ports[0], socket_connect_timeout=0.2)
        try:
            address = cast(tuple[str, int], client.sentinel_get_master_addr_by_name(self.SERVICE))
            return int(address[1])
        finally:
            client.close()

    def kill_primary(self) -> RedisServer:
        """Kill the primary, as a crashed host would; returns the server that will take over."""
        self.primary.stop()
        return self.replica

    def stop(self) -> None:
        for sentinel in self.sentinels:
            if sentinel.poll() is None:
                sentinel.kill()
                sentinel.wait()
        self.primary.stop()
        self.replica.stop()


class TlsFiles:
    """A certificate authority and a server certificate for 127.0.0.1, made with `openssl`
    in `workdir`; `other_ca` is a second authority that did not sign the server's."""

    def __init__(self, workdir: Path) -> None:
        self.ca = workdir / "ca.pem"
        self.other_ca = workdir / "other-ca.pem"
        self.cert = workdir / "server.pem"
        self.key = workdir / "server.key"
        for name in ("ca", "other-ca"):
            _openssl(
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-keyout", str(workdir / f"{name}.key"), "-out", str(workdir / f"{name}.pem"),
                "-subj", f"/CN=test {name}",
            )  # fmt: skip
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
            "-out", str(workdir / "server.csr"), "-subj", "/CN=127.0.0.1",
        )  # fmt: skip
        extensions = workdir / "server.ext"
        extensions.write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
        _openssl(
            "x509", "-req", "-in", str(workdir / "server.csr"), "-CA", str(self.ca),
            "-CAkey", str(workdir / "ca.key"), "-CAcreateserial", "-days", "1",
            "-out", str(self.cert), "-extfile", str(extensions),
        )  # fmt: skip


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


class TlsRedisServer(RedisServer):
    """A throwaway `redis-server` that listens on its TLS port only (`--port 0`)."""

    def __init__(self, binary: str, workdir: Path, tls: TlsFiles) -> None:
        super().__init__(binary, workdir)
        self.tls = tls
        self.url = f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={tls.ca}"

    def start(self) -> TlsRedisServer:
        self.process = spawn(
            [
                self.binary,
                "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            ssl=True,
            ssl_ca_certs=str(self.tls.ca),
            socket_connect_timeout=0.5,
        )
        self._wait_until_answering(client, f"TLS redis-server on port {self.port}")
        return self

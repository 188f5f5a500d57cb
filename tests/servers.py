"""Private Redis and PostgreSQL servers that a test starts, kills and restarts itself
(and `make bench` its Redis Cluster: benchmarks/cluster.py)."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable

import asyncpg
import redis as sync_redis
import redis.asyncio as redis

from common.config import Settings
from common.shards import shards_of


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own on a free port; with `durable`, an append-only
    file fsynced on every write, so that a killed server comes back with all it confirmed."""

    def __init__(self, *, durable: bool = False, cluster: bool = False) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = tempfile.TemporaryDirectory()
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else []
        clustering = [
            "--cluster-enabled", "yes", "--cluster-node-timeout", "2000",
            # Its bus port: not the default port + 10,000, past 65,535 for a high port.
            "--cluster-port", str(free_port()),
        ]  # fmt: skip
        self._command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--dir", self._directory.name, *(persistence or ["--appendonly", "no"]),
            *(clustering if cluster else []),
        ]  # fmt: skip
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(self._command, stdout=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    async def wait_until_up(self) -> None:
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    await client.ping()
                    return
                except (redis.RedisError, OSError):
                    assert time.monotonic() < deadline, "private redis-server did not start"
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    def close(self) -> None:
        self.kill()
        self._directory.cleanup()


def _pg_bindir() -> str:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if shutil.which("pg_config"):
        candidates.append(
            subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
        )
    for bindir in reversed(candidates):
        if os.path.exists(os.path.join(bindir, "initdb")):
            return bindir
    raise RuntimeError("PostgreSQL's initdb is not installed")


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (initdb in a temporary folder, trust auth)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._bindir = _pg_bindir()
        self._directory = tempfile.mkdtemp(prefix="pg-")
        self._data = os.path.join(self._directory, "data")
        if os.getuid() == 0:  # PostgreSQL refuses to run as root: its own user runs it
            shutil.chown(self._directory, "postgres")
        self._as_owner(["initdb", "-D", self._data, "-U", "postgres", "--auth=trust", "-E", "UTF8"])

    def _as_owner(self, command: list[str]) -> None:
        tool = [os.path.join(self._bindir, command[0]), *command[1:]]
        if os.getuid() == 0:
            tool = ["runuser", "-u", "postgres", "--", *tool]
        subprocess.run(tool, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self._directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_owner(["pg_ctl", "-D", self._data, "-o", options, "-w", *args])

    def start(self) -> None:
        self._pg_ctl("-l", os.path.join(self._directory, "server.log"), "start")

    def restart_immediately(self) -> None:
        """A crash-like restart: connections are cut, nothing shuts down cleanly."""
        self._pg_ctl("-m", "immediate", "restart")

    def close(self) -> None:
        try:
            self._pg_ctl("-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self._directory, ignore_errors=True)

    async def wait_until_up(self) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = await asyncpg.connect(self.url, timeout=1)
            except (OSError, asyncpg.PostgresError):
                assert time.monotonic() < deadline, "private PostgreSQL did not start"
                await asyncio.sleep(0.1)
            else:
                await conn.close()
                return


class PrivateRedisCluster:
    """A Redis Cluster of the test's own: three masters on free ports, no replicas, each
    with an append-only file fsynced on every write (a master killed and started again
    comes back with all it confirmed, and rejoins from its nodes.conf)."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [PrivateRedis(durable=True, cluster=True) for _ in range(masters)]
        self.url = self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        for address in addresses:
            self._until(address, lambda client: client.ping(), "a node did not start")
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0",
             "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
        self.wait_until_whole()

    def wait_until_whole(self) -> None:
        """Until every node says the cluster is whole (every slot served)."""
        for node in self.nodes:
            self._until(
                f"127.0.0.1:{node.port}",
                lambda client: b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO"),
                "the private Redis Cluster is not whole",
            )

    def owner_of(self, key: str) -> PrivateRedis:
        """The master serving the key's slot."""
        with sync_redis.Redis.from_url(self.url) as client:
            slot = client.execute_command("CLUSTER", "KEYSLOT", key)
            for start, end, (_, port, *_), *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return next(node for node in self.nodes if node.port == port)
        raise AssertionError(f"no master serves {key!r}")

    def stream_key_spread(self, shards: int) -> str:
        """A stream key whose shards' hash tags fall on different masters (as far as there
        are masters): a random name spreads three shards over three masters one time in 4.5."""
        while True:
            key = f"cluster-{uuid.uuid4().hex[:8]}"
            settings = Settings(stream_key=key, stream_shards=shards, redis_cluster=True)
            owners = {self.owner_of(s.settings.stream_key).port for s in shards_of(settings)}
            if len(owners) == min(shards, len(self.nodes)):
                return key

    def move_slot_of(self, key: str, to: PrivateRedis) -> None:
        """Migrate the key's slot, with every key in it, to another master, as
        `redis-cli --cluster reshard` does: IMPORTING, MIGRATING, MIGRATE, then NODE."""
        source = self.owner_of(key)
        clients = {node.port: sync_redis.Redis.from_url(node.url) for node in self.nodes}
        try:
            slot = clients[source.port].execute_command("CLUSTER", "KEYSLOT", key)
            source_id, target_id = (
                clients[node.port].execute_command("CLUSTER", "MYID").decode()
                for node in (source, to)
            )
            clients[to.port].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            clients[source.port].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while keys := clients[source.port].execute_command(
                "CLUSTER", "GETKEYSINSLOT", slot, 100
            ):
                clients[source.port].execute_command(
                    "MIGRATE", "127.0.0.1", to.port, "", 0, 5000, "KEYS", *keys
                )
            for client in clients.values():
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        finally:
            for client in clients.values():
                client.close()
        self.wait_until_whole()

    @staticmethod
    def _until(address: str, check: Callable[[sync_redis.Redis], object], failure: str) -> None:
        deadline = time.monotonic() + 30
        with sync_redis.Redis.from_url(f"redis://{address}/0") as client:
            while True:
                try:
                    if check(client):
                        return
                except (sync_redis.RedisError, OSError):
                    pass
                assert time.monotonic() < deadline, failure
                time.sleep(0.05)

    def close(self) -> None:
        for node in self.nodes:
            node.close()

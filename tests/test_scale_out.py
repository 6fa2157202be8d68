"""Scale-out on loopback with real processes: one Triton pool, several real tritonservers behind a DNS name.

What Kubernetes does with a headless Service, done here by hand: each server binds its own loopback
address (127.0.0.2, .3, .4) on the same ports, and a small DNS server (dnslib, in this process) answers
the pool's name with the addresses of the servers that are "in the Service" right now. The orchestrator's
own routing (`TritonPools` from the settings, target `dns://<our DNS server>/vision.navig.test:<port>`)
must then: spread calls over the replicas (each server's Triton statistics count its own), lose no call
when a replica is SIGKILLed under load (round_robin + the retry policy on UNAVAILABLE), and send calls to
a replica added to the name, which gRPC learns when it re-resolves: Triton's `--grpc-max-connection-age`
closes connections on a timer, as the Helm chart sets it. To stay fast, each server loads only the tiny
`clip_image` (explicit model control).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from dnslib import QTYPE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from navig.client.profile.triton_stats import settled_snapshot
from navig.model_repository import contract
from navig.orchestrator.deadline import Deadline
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts, port_in_use
from navig.orchestrator.health import TritonHealth
from navig.orchestrator.metrics import Metrics
from navig.orchestrator.pools import TritonPools
from navig.orchestrator.settings import load_settings

NAME = "vision.navig.test"
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
MAX_CONNECTION_AGE_MS = 1500  # the chart's is minutes; short here so the test sees re-resolution soon
CALL_DEADLINE_S = 20.0


class PoolNames(BaseResolver):
    """The pool's DNS name -> the addresses currently in it (what a headless Service's DNS answers)."""

    def __init__(self) -> None:
        self.addresses: list[str] = []

    def resolve(self, request, handler):  # dnslib's interface
        reply = request.reply()
        if request.q.qtype == QTYPE.A and str(request.q.qname).rstrip(".") == NAME:
            for address in self.addresses:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=1))
        return reply


def shared_ports() -> TritonPorts:
    """Ports free on every address in HOSTS (a DNS name carries addresses, the port is the target's)."""
    for _ in range(50):
        ports = TritonPorts.free(HOSTS[0])
        if not any(port_in_use(h, p) for h in HOSTS for p in (ports.grpc, ports.http, ports.metrics)):
            return ports
    raise RuntimeError("no ports free on all of " + ", ".join(HOSTS))


class Replicas:
    def __init__(self, repository: Path, logs: Path) -> None:
        self.repository, self.logs = repository, logs
        self.ports = shared_ports()
        self.names = PoolNames()
        self.dns = DNSServer(
            self.names, port=0, address="127.0.0.1", tcp=False, logger=DNSLogger(logf=lambda _: None)
        )
        self.dns.start_thread()
        self.servers: dict[str, EmbeddedTriton] = {}

    @property
    def target(self) -> str:
        return f"dns://127.0.0.1:{self.dns.server.server_address[1]}/{NAME}:{self.ports.grpc}"

    def add(self, host: str) -> EmbeddedTriton:
        """Starts a replica on `host` and, once it is ready, puts it in the pool's DNS name."""
        args = (
            "--model-control-mode=explicit",
            f"--load-model={contract.CLIP_IMAGE}",
            f"--grpc-max-connection-age={MAX_CONNECTION_AGE_MS}",
            "--grpc-max-connection-age-grace=30000",
        )
        config = TritonConfig(
            self.repository, host=host, ports=self.ports, log_file=self.logs / f"{host}.log", extra_args=args
        )
        server = self.servers[host] = EmbeddedTriton(config)
        server.start()
        self.names.addresses.append(host)
        return server

    def served(self) -> dict[str, int]:
        """Successful clip_image requests per replica so far, from each server's own statistics."""
        counts = {}
        for host, server in self.servers.items():
            stats = settled_snapshot(server.grpc_url, attempts=5) if server.is_running() else {}
            counts[host] = stats.get(contract.CLIP_IMAGE, {}).get("success_count", 0)
        return counts

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.dns.stop()


@pytest.fixture(scope="module")
def replicas(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    pool = Replicas(model_repository, tmp_path_factory.mktemp("scale_out"))
    try:
        pool.add(HOSTS[0])
        pool.add(HOSTS[1])
        yield pool
    finally:
        pool.stop()


def pools_for(replicas: Replicas) -> TritonPools:
    """The orchestrator's routing from its settings: clip_image in pool `vision`, the rest by default."""
    settings = load_settings(
        triton_url="127.0.0.1:1",  # nothing else is called here
        pools={"vision": {"target": replicas.target, "models": [contract.CLIP_IMAGE]}},
    )
    return TritonPools.from_settings(settings, Metrics())


async def load(pools: TritonPools, seconds: float, concurrency: int = 6) -> tuple[int, list[str]]:
    """A closed loop of clip_image calls for `seconds`: (successes, failures as 'status: message')."""
    image = np.random.default_rng(0).integers(0, 256, (1, 48, 48, 3), dtype=np.uint8)
    ok, failed = 0, []
    stop_at = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal ok
        while time.monotonic() < stop_at:
            try:
                deadline = Deadline.after(CALL_DEADLINE_S)
                out = await pools.infer(contract.CLIP_IMAGE, {contract.CLIP_IMAGE_IMAGES: image}, deadline)
                assert out[contract.CLIP_EMBEDDINGS].shape[0] == 1
                ok += 1
            except Exception as exc:  # every failure is the test's finding, whatever its kind
                failed.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, failed


def test_calls_spread_over_both_replicas(replicas: Replicas):
    before = replicas.served()

    async def run() -> tuple[int, list[str], dict[str, bool]]:
        pools = pools_for(replicas)
        try:
            ok, failed = await load(pools, 3.0)
            health = TritonHealth(pools, [contract.CLIP_IMAGE], poll_s=1.0)
            await health.check()
            return ok, failed, pools.pool_ready
        finally:
            await pools.close()

    ok, failed, ready = asyncio.run(run())
    served = {h: n - before[h] for h, n in replicas.served().items()}
    assert not failed and ok > 20
    assert sum(served.values()) >= ok  # the health check adds none: it asks readiness, not inference
    assert all(n >= ok * 0.25 for n in served.values()), f"uneven spread over the replicas: {served}"
    assert ready == {"vision": True}


def test_sigkill_of_a_replica_under_load_loses_no_call(replicas: Replicas):
    victim = replicas.servers[HOSTS[1]]
    before = replicas.served()

    async def run() -> tuple[int, list[str], dict[str, int]]:
        pools = pools_for(replicas)
        try:
            loop = asyncio.create_task(load(pools, 4.0, concurrency=8))
            await asyncio.sleep(1.5)
            served_by_victim = await asyncio.to_thread(replicas.served)
            assert victim.pid is not None
            os.kill(victim.pid, signal.SIGKILL)  # tritonserver only; stop() reaps its stubs later
            ok, failed = await loop
            return ok, failed, served_by_victim
        finally:
            await pools.close()

    ok, failed, at_kill = asyncio.run(run())
    assert at_kill[HOSTS[1]] > before[HOSTS[1]], "the victim served nothing before the kill: no load on it"
    assert not victim.is_running()
    assert not failed, f"{len(failed)} of {ok + len(failed)} calls failed: {failed[:3]}"
    after = replicas.served()
    assert after[HOSTS[0]] > at_kill[HOSTS[0]], "the surviving replica took no calls after the kill"


def test_a_replica_added_to_the_name_receives_calls(replicas: Replicas):
    """The Kubernetes way: a new pod joins the headless Service's DNS; clients learn of it when their
    connections age out (Triton's --grpc-max-connection-age) and gRPC resolves the name again."""
    replicas.names.addresses.remove(HOSTS[1])  # the killed replica left the Service (not ready)

    async def run() -> tuple[list[str], int, int]:
        pools = pools_for(replicas)
        try:
            _, failed = await load(pools, 1.0)  # connected to the one replica left
            replicas.add(HOSTS[2])  # started after the channel resolved the name
            before = after = (await asyncio.to_thread(replicas.served))[HOSTS[2]]
            # gRPC resolves again on a closed connection, at most every 5 s (triton_client.channel_options)
            for _ in range(6):
                _, more = await load(pools, 2 * MAX_CONNECTION_AGE_MS / 1000)
                failed += more
                after = (await asyncio.to_thread(replicas.served))[HOSTS[2]]
                if after > before:
                    break
            return failed, before, after
        finally:
            await pools.close()

    failed, before, after = asyncio.run(run())
    assert not failed, failed[:3]
    assert after > before, "the added replica got no calls after the connections aged out"

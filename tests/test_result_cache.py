"""The result cache through the real service: real gRPC, the real Triton server, tiny checkpoints."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from PIL import Image

from navig.client.geolocator import GeolocatorClient
from navig.client.results import LocateResult
from navig.export.samples import SAMPLES_DIR, Sample
from navig.model_repository import contract
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.embedded_triton import (
    EmbeddedTriton,
    TritonConfig,
    TritonDistribution,
    TritonPorts,
    response_cache_args,
)
from navig.orchestrator.options import RunOptions
from navig.orchestrator.result_cache import cache_key
from navig.orchestrator.server import OrchestratorThread
from navig.orchestrator.settings import Settings

FAST = pb.LocateOptions(max_new_tokens=16)  # placeholder VLMs: fewer tokens, same code paths


def image(sample: Sample) -> bytes:
    return (SAMPLES_DIR / sample.file).read_bytes()


def counts(server: OrchestratorThread) -> dict[str, float]:
    """The cache's counters and size, and how many GUESSER stages ran (one per pipeline run)."""
    registry = server.orchestrator.metrics.registry
    found = {
        o: registry.get_sample_value("navig_result_cache_total", {"outcome": o}) or 0.0 for o in OUTCOMES
    }
    found["entries"] = registry.get_sample_value("navig_result_cache_entries") or 0.0
    found["runs"] = registry.get_sample_value("navig_stage_seconds_count", {"stage": "guesser"}) or 0.0
    return found


OUTCOMES = ("hit", "shared", "miss")


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k] and k != "entries"}


def same_answer(a: pb.LocateResponse, b: pb.LocateResponse) -> None:
    assert a.location == b.location and a.answered_by == b.answered_by
    assert list(a.evidence) == list(b.evidence) and a.reasoning == b.reasoning
    assert list(a.reasons) == list(b.reasons) and a.guesser_output == b.guesser_output


@pytest.fixture(scope="module")
def cached(geolocator_settings: Settings) -> Iterator[OrchestratorThread]:
    """A server whose cache holds two answers."""
    settings = geolocator_settings.model_copy(update={"result_cache_entries": 2, "result_cache_ttl_s": 600.0})
    with OrchestratorThread(settings) as server:
        yield server


@pytest.fixture
def client(cached: OrchestratorThread) -> Iterator[GeolocatorClient]:
    with GeolocatorClient(cached.address) as c:
        yield c


def test_a_repeated_request_is_answered_from_the_cache(cached, client, samples: list[Sample]):
    photo = image(samples[0])
    before = counts(cached)
    first = client.locate_proto(photo, FAST)
    again = client.locate_proto(photo, FAST)
    assert not first.cached and again.cached
    same_answer(first, again)
    assert len(again.evidence) > 0 and again.location.country_code
    assert [t.stage for t in again.timings] == ["cache"] and again.request_id != first.request_id
    assert {m.name: m.version for m in again.models} == {m.name: m.version for m in first.models}
    assert delta(before, counts(cached)) == {"miss": 1, "hit": 1, "runs": 1}
    assert counts(cached)["entries"] >= 1
    assert LocateResult.from_proto(again).cached and not LocateResult.from_proto(first).cached

    rerun = client.locate_proto(photo, pb.LocateOptions(max_new_tokens=16, no_cache=True))
    assert not rerun.cached and "guesser" in {t.stage for t in rerun.timings}
    same_answer(first, rerun)  # what the cache answered is what a new run gives


def test_the_stream_answers_a_hit_with_the_result_alone(cached, client, samples: list[Sample]):
    photo = image(samples[1])
    streamed = list(client.locate_stream(photo, FAST))
    assert len(streamed) > 1 and not streamed[-1].result.cached
    again = list(client.locate_stream(photo, FAST))
    assert [e.WhichOneof("event") for e in again] == ["result"] and again[0].result.cached
    same_answer(streamed[-1].result, again[0].result)
    plain = client.locate_proto(photo, FAST)  # the unary call shares the entry
    assert plain.cached


def test_answer_shaping_options_miss_and_return_flags_share(cached, client, samples: list[Sample]):
    photo = image(samples[2])
    first = client.locate_proto(photo, FAST)
    bare = client.locate_proto(photo, pb.LocateOptions(max_new_tokens=16, return_evidence=False))
    assert bare.cached and not bare.evidence and bare.location == first.location  # filtered on the way out
    before = counts(cached)
    fewer_tokens = client.locate_proto(photo, pb.LocateOptions(max_new_tokens=8))
    no_map = client.locate_proto(photo, pb.LocateOptions(max_new_tokens=16, tools={"map": False}))
    assert not fewer_tokens.cached and not no_map.cached
    assert delta(before, counts(cached)) == {"miss": 2, "runs": 2}


def test_the_least_recently_used_answer_is_evicted(cached, client, samples: list[Sample]):
    a, b, c = (image(s) for s in samples[3:6])
    for photo in (a, b, a, c):  # room for two: c evicts b, the one used least recently
        client.locate_proto(photo, FAST)
    assert counts(cached)["entries"] == 2
    assert client.locate_proto(a, FAST).cached and client.locate_proto(c, FAST).cached
    assert not client.locate_proto(b, FAST).cached


def test_identical_requests_in_flight_share_one_run(cached, client, samples: list[Sample]):
    photo = image(samples[6])
    before = counts(cached)
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: client.locate_proto(photo, FAST), range(3)))
    assert sorted(a.cached for a in answers) == [False, True, True]
    assert delta(before, counts(cached)) == {"miss": 1, "shared": 2, "runs": 1}
    for answer in answers[1:]:
        same_answer(answers[0], answer)


def test_triton_coming_back_empties_the_cache(cached, client, samples: list[Sample]):
    """Health reads the model versions again whenever Triton is ready after being down (a restart may
    have loaded other weights under the same version); a new read empties the cache."""
    photo = image(samples[0])
    client.locate_proto(photo, FAST)
    assert client.locate_proto(photo, FAST).cached
    health = cached.orchestrator.health

    async def reread() -> None:
        health.versions = await health.triton.versions(health.models)

    asyncio.run_coroutine_threadsafe(reread(), cached._loop).result(timeout=30)
    assert not client.locate_proto(photo, FAST).cached
    assert client.locate_proto(photo, FAST).cached


def test_an_expired_answer_misses(geolocator_settings: Settings, samples: list[Sample]):
    settings = geolocator_settings.model_copy(update={"result_cache_entries": 8, "result_cache_ttl_s": 1.0})
    photo = image(samples[0])
    with OrchestratorThread(settings) as server, GeolocatorClient(server.address) as client:
        client.locate_proto(photo, FAST)
        assert client.locate_proto(photo, FAST).cached
        time.sleep(1.2)
        assert not client.locate_proto(photo, FAST).cached
        assert counts(server)["miss"] == 2


def test_degraded_answers_are_not_cached(geolocator_settings: Settings, samples: list[Sample]):
    """An unreachable map backend degrades the answer; storing it would make a transient fault stick."""
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    settings = geolocator_settings.model_copy(
        update={
            "result_cache_entries": 8,
            "map_backend": "nominatim",
            "map_url": f"http://127.0.0.1:{closed}",
            "map_retries": 0,
        }
    )
    options = pb.LocateOptions(use_reasoner=False, use_describer=False, use_vlm_guesser=False)
    photo = image(samples[0])
    with OrchestratorThread(settings) as server, GeolocatorClient(server.address) as client:
        answers = [client.locate_proto(photo, options) for _ in range(2)]
        assert all([d.component for d in a.degraded] == ["map"] for a in answers)
        assert not any(a.cached for a in answers)
        assert counts(server)["miss"] == 2 and counts(server)["entries"] == 0
        clean = pb.LocateOptions(
            use_reasoner=False, use_describer=False, use_vlm_guesser=False, tools={"map": False}
        )
        assert not client.locate_proto(photo, clean).degraded
        assert client.locate_proto(photo, clean).cached  # the same server stores a clean answer


def test_failed_requests_are_not_cached(cached, client, samples: list[Sample]):
    from navig.client.geolocator import LocateError

    before = counts(cached)
    for _ in range(2):
        with pytest.raises(LocateError):
            client.locate_proto(b"not an image at all", FAST)
    assert delta(before, counts(cached)) == {"miss": 2}


def test_the_key_covers_what_shapes_the_answer():
    options = RunOptions(True, True, frozenset({"ocr", "map"}), 16)
    versions = {"vlm": "1", "detector": "1"}
    key = cache_key(b"photo", options, versions)
    assert key == cache_key(b"photo", RunOptions(True, True, frozenset({"map", "ocr"}), 16), dict(versions))
    assert key == cache_key(
        b"photo", RunOptions(True, True, frozenset({"ocr", "map"}), 16, False, False), versions
    )
    for other in (
        cache_key(b"photo!", options, versions),
        cache_key(b"photo", RunOptions(True, True, frozenset({"ocr"}), 16), versions),
        cache_key(b"photo", RunOptions(True, True, frozenset({"ocr", "map"}), 17), versions),
        cache_key(
            b"photo", RunOptions(True, True, frozenset({"ocr", "map"}), 16, pipeline="reference"), versions
        ),
        cache_key(b"photo", options, {**versions, "vlm": "2"}),
    ):
        assert other != key


def test_triton_answers_repeated_encoder_inputs_from_its_response_cache(
    model_repository: Path, samples: list[Sample], tmp_path: Path
):
    """The exported detector enables Triton's response cache; the embedded server has one when asked."""
    assert response_cache_args(Path("/x/bin/tritonserver"), 0) == []
    (tmp_path / contract.DETECTOR).symlink_to((model_repository / contract.DETECTOR).resolve())
    config = TritonConfig(tmp_path, ports=TritonPorts.free(), response_cache_mb=16, ready_timeout_s=600)
    with EmbeddedTriton(config) as server:
        library = (
            Path(response_cache_args(TritonDistribution.find().binary, 16)[0].split("=", 1)[1]) / "local"
        )
        assert (library / "libtritoncache_local.so").is_file()
        client = triton_grpc.InferenceServerClient(server.grpc_url)
        photo = np.asarray(Image.open(SAMPLES_DIR / samples[0].file).convert("RGB"))[None]
        outputs = []
        for _ in range(3):
            tensor = triton_grpc.InferInput(contract.DETECTOR_IMAGES, list(photo.shape), "UINT8")
            tensor.set_data_from_numpy(photo)
            outputs.append(client.infer(contract.DETECTOR, [tensor]).as_numpy(contract.DETECTOR_BOXES))
        stats = client.get_inference_statistics(contract.DETECTOR, as_json=True)["model_stats"][0]
        client.close()
    counts = stats["inference_stats"]
    assert int(counts["cache_miss"]["count"]) == 1 and int(counts["cache_hit"]["count"]) == 2
    assert all(np.array_equal(outputs[0], other) for other in outputs[1:])

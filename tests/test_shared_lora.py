"""One base, two adapters: the REASONER as a LoRA adapter on the `vlm` base (export `vlm.reasoner: adapter`).

Real export of the tiny demo checkpoints, the real Triton server on the adapter-mode repository, the
real Geolocator against it. The merged `reasoner` of the session's repository is the reference.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from rich.progress import Progress
from safetensors.torch import load_file, save_file
from tritonclient.utils import InferenceServerException

from navig.client.geolocator import GeolocatorClient
from navig.export.adapter_export import adapter_dir, check_servable
from navig.export.build import build
from navig.export.errors import CheckpointError
from navig.export.samples import SAMPLES_DIR, Sample
from navig.export.spec import ExportSpec, load_spec
from navig.export.vlm import parity_images
from navig.model_repository import contract
from navig.model_repository.vlm_engine import TransformersVlm, VisionCache
from navig.orchestrator import prompts
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts
from navig.orchestrator.server import OrchestratorThread
from navig.orchestrator.settings import Settings

FAST = pb.LocateOptions(max_new_tokens=16)
LARGE = (".onnx", ".safetensors", ".data", ".index", ".faiss")


def adapter_spec(checkpoints: Path, output: Path, **vlm: object) -> ExportSpec:
    spec = load_spec(checkpoints / "export.yaml")
    assert spec.vlm is not None
    return spec.model_copy(
        update={"output": output, "vlm": spec.vlm.model_copy(update={"reasoner": "adapter", **vlm})}
    )


def export(spec: ExportSpec) -> list:
    with Progress(disable=True) as progress:
        return build(spec, progress).reports


@pytest.fixture(scope="module")
def adapter_repository(model_repository: Path, demo_checkpoints: Path, tmp_path_factory) -> Path:
    """The session's full repository, then `vlm` re-exported in adapter mode over it (large artifacts
    hard-linked, not copied: the export replaces files, never writes into them)."""
    output = tmp_path_factory.mktemp("adapter") / "repo"

    def link_large(source: str, target: str) -> None:
        (os.link if source.endswith(LARGE) else shutil.copy2)(source, target)

    shutil.copytree(model_repository, output, copy_function=link_large)
    spec = adapter_spec(demo_checkpoints, output)
    export(spec.model_copy(update={"ocr": None, "detector": None, "clip": None}))
    return output


@pytest.fixture(scope="module")
def vlm_only(demo_checkpoints: Path, tmp_path_factory) -> Path:
    """Just `vlm` in adapter mode (the engine tests need nothing else)."""
    spec = adapter_spec(demo_checkpoints, tmp_path_factory.mktemp("vlm-only") / "repo")
    export(spec.model_copy(update={"ocr": None, "detector": None, "clip": None}))
    return spec.output


@pytest.fixture(scope="module")
def adapter_triton(adapter_repository: Path, tmp_path_factory) -> Iterator[EmbeddedTriton]:
    log = tmp_path_factory.mktemp("adapter-triton") / "tritonserver.log"
    with EmbeddedTriton(TritonConfig(adapter_repository, ports=TritonPorts.free(), log_file=log)) as server:
        yield server


def vlm_inputs(prompt: str, image: np.ndarray | None, adapter: str | None, max_tokens: int = 12) -> list:
    values = {
        contract.VLM_PROMPT: np.array([[prompt.encode()]], np.object_),
        contract.VLM_MAX_TOKENS: np.array([[max_tokens]], np.int32),
        contract.VLM_JSON_SCHEMA: np.array([[b""]], np.object_),
    }
    if image is not None:
        values[contract.VLM_IMAGE] = image[None]
    if adapter is not None:
        values[contract.VLM_ADAPTER] = np.array([[adapter.encode()]], np.object_)
    inputs = []
    for name, value in values.items():
        dtype = {np.dtype(np.object_): "BYTES", np.dtype(np.uint8): "UINT8"}.get(value.dtype, "INT32")
        inputs.append(grpcclient.InferInput(name, list(value.shape), dtype))
        inputs[-1].set_data_from_numpy(value)
    return inputs


def tokens(result) -> list[int]:
    return result.as_numpy(contract.VLM_TOKEN_IDS).reshape(-1).tolist()


def test_adapter_export_holds_the_base_once_and_the_adapter_beside_it(adapter_repository: Path):
    assert not (adapter_repository / contract.REASONER).exists()
    config = (adapter_repository / contract.VLM / "config.pbtxt").read_text()
    assert 'string_value: "reasoner"' in config and f'name: "{contract.VLM_ADAPTER}"' in config
    folder = adapter_dir(adapter_repository)
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    report = (adapter_repository / "export_report.json").read_text()
    assert "mixed-adapter batch" in report and "sha256" in report


def test_export_refuses_an_adapter_on_the_vision_tower(demo_checkpoints: Path, tmp_path: Path):
    adapter = tmp_path / "lora"
    shutil.copytree(demo_checkpoints / "reasoner_lora", adapter)
    weights = load_file(adapter / "adapter_model.safetensors")
    weights["base_model.model.model.visual.blocks.0.attn.qkv.lora_A.weight"] = torch.zeros(8, 32)
    save_file(weights, adapter / "adapter_model.safetensors")
    with pytest.raises(CheckpointError, match="vision tower"):
        check_servable(adapter)
    spec = adapter_spec(demo_checkpoints, tmp_path / "repo", reasoner_adapter=adapter)
    with pytest.raises(CheckpointError, match=r"vlm\.reasoner: merged"):
        export(spec.model_copy(update={"ocr": None, "detector": None, "clip": None}))
    assert not (tmp_path / "repo").exists()


def test_one_batch_serves_base_rows_and_adapter_rows_like_the_two_models(
    adapter_triton: EmbeddedTriton, triton: EmbeddedTriton
):
    """Concurrent rows of both kinds share batched executions of `vlm`; adapter rows give the merged
    reasoner's tokens, base rows the base's."""
    shared = grpcclient.InferenceServerClient(adapter_triton.grpc_url)
    merged = grpcclient.InferenceServerClient(triton.grpc_url)
    big, tall = parity_images()
    rows = [
        (prompts.REASONER, big, "reasoner"),
        ("Describe the houses.", tall, ""),
        (prompts.REASONER, tall, "reasoner"),
        ("Which country is this?", big, ""),
        (prompts.REASONER, big, "reasoner"),
        ("Read the signs.", tall, ""),
    ]
    (before,) = shared.get_inference_statistics(contract.VLM).model_stats
    results: list = [None] * len(rows)
    for k, (prompt, image, adapter) in enumerate(rows):
        shared.async_infer(
            contract.VLM,
            vlm_inputs(prompt, image, adapter),
            lambda result, error, k=k: results.__setitem__(k, error or result),
        )
    deadline = time.monotonic() + 120
    while any(r is None for r in results) and time.monotonic() < deadline:
        time.sleep(0.05)
    (after,) = shared.get_inference_statistics(contract.VLM).model_stats
    for (prompt, image, adapter), result in zip(rows, results, strict=True):
        assert not isinstance(result, Exception), result
        reference = contract.REASONER if adapter else contract.VLM
        expected = tokens(merged.infer(reference, vlm_inputs(prompt, image, None)))
        assert tokens(result) == expected, (prompt, adapter)
    executions = after.execution_count - before.execution_count
    inferences = after.inference_count - before.inference_count
    assert inferences == len(rows) and executions < inferences, (executions, inferences)


def test_an_unknown_adapter_is_invalid_argument_and_the_model_serves_on(adapter_triton: EmbeddedTriton):
    client = grpcclient.InferenceServerClient(adapter_triton.grpc_url)
    with pytest.raises(InferenceServerException) as error:
        client.infer(contract.VLM, vlm_inputs("Where?", None, "tourist"))
    assert "INVALID_ARGUMENT" in str(error.value.status())
    assert "unknown adapter 'tourist'" in error.value.message() and "reasoner" in error.value.message()
    assert tokens(client.infer(contract.VLM, vlm_inputs("Where?", None, "reasoner")))


def test_a_merged_model_refuses_adapters(triton: EmbeddedTriton):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    with pytest.raises(InferenceServerException, match="serves no adapters") as error:
        client.infer(contract.VLM, vlm_inputs("Where?", None, "reasoner"))
    assert "INVALID_ARGUMENT" in str(error.value.status())


@pytest.fixture(scope="module")
def adapter_geolocator(adapter_triton: EmbeddedTriton, geolocator_settings: Settings) -> Iterator[str]:
    settings = geolocator_settings.model_copy(update={"triton_url": adapter_triton.grpc_url})
    with OrchestratorThread(settings) as server:
        yield server.address


def test_geolocator_runs_end_to_end_on_the_shared_base(
    adapter_geolocator: str, geolocator: OrchestratorThread, samples: list[Sample]
):
    """Health needs `vlm` only (no `reasoner` model), the REASONER runs as the adapter, and the answer
    equals the merged deployment's: same reasoning, same location."""
    data = (SAMPLES_DIR / samples[0].file).read_bytes()
    with GeolocatorClient(adapter_geolocator) as shared, GeolocatorClient(geolocator.address) as merged:
        got, want = shared.locate_proto(data, FAST), merged.locate_proto(data, FAST)
    assert got.reasoning == want.reasoning and got.reasoning
    assert got.location == want.location
    assert {m.name for m in got.models} >= {contract.REASONER, contract.VLM}


# --- one vision pass per photo ---------------------------------------------------------------------------


def engine(repository: Path, adapter: Path, vision_cache_mb: float) -> TransformersVlm:
    weights = repository / contract.VLM / "1" / "weights"
    return TransformersVlm(
        weights, adapters={contract.REASONER_ADAPTER: adapter}, vision_cache_mb=vision_cache_mb
    )


def test_the_vision_cache_keeps_every_token_and_passes_each_photo_once(vlm_only: Path):
    """REASONER (adapter) then GUESSER (base) on the same photos, and a batch showing one photo twice:
    the same tokens with and without the cache, one vision pass per distinct photo."""
    adapter = adapter_dir(vlm_only)
    plain, cached = engine(vlm_only, adapter, 0), engine(vlm_only, adapter, 8)
    assert plain.vision_cache is None and cached.vision_cache is not None
    guess = prompts.guesser_prompt("Whitewashed houses.", [])
    big, tall = parity_images()
    calls = [
        ([prompts.REASONER, prompts.REASONER], [big, tall], [12, 12], [None, None], ["reasoner", "reasoner"]),
        ([guess, "Describe.", guess], [big, big, tall], [12, 12, 12], [None] * 3, [None, None, None]),
    ]
    for prompts_, images, budgets, schemas, adapters in calls:
        want = plain.generate_batch(prompts_, images, budgets, schemas, None, adapters)
        got = cached.generate_batch(prompts_, images, budgets, schemas, None, adapters)
        assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert (cached.vision_cache.misses, cached.vision_cache.hits) == (2, 3)


def test_the_vision_cache_keeps_within_its_bytes_least_recently_used_out():
    """Entries are counted in bytes (a 7B photo's features are MiB): the oldest go first, and an
    evicted image is computed again."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    class Tower(torch.nn.Module):
        calls = 0

        def get_image_features(self, pixel_values, image_grid_thw, **kwargs):  # one feature row per patch
            Tower.calls += len(image_grid_thw)
            sizes = [t * h * w for t, h, w in image_grid_thw.tolist()]
            return BaseModelOutputWithPooling(
                pooler_output=tuple(c * 2 for c in torch.split(pixel_values, sizes))
            )

    tower = Tower()
    cache = VisionCache(tower, capacity_bytes=2 * 4 * 256 * 4)  # two images of 4 patches x 256 floats
    grid = torch.tensor([[1, 2, 2]])
    image = {name: torch.full((4, 256), float(i)) for i, name in enumerate("abc")}

    def show(name: str) -> torch.Tensor:
        return tower.get_image_features(image[name], grid).pooler_output[0]

    for name in "abcbc":
        assert torch.equal(show(name), image[name] * 2)
    assert (Tower.calls, cache.hits, cache.size_bytes) == (3, 2, cache.capacity_bytes)
    show("a")  # evicted by c: computed again, evicting b (c was used after b)
    show("c")
    assert (Tower.calls, cache.hits) == (4, 3)


def test_no_vision_cache_when_the_adapter_changes_the_vision_tower(
    vlm_only: Path, demo_checkpoints: Path, tmp_path: Path
):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2VLForConditionalGeneration

    base = Qwen2VLForConditionalGeneration.from_pretrained(demo_checkpoints / "qwen2_vl")
    lora = LoraConfig(r=4, target_modules=r".*\.(qkv|q_proj)", init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(tmp_path / "vision_lora", safe_serialization=True)
    served = engine(vlm_only, tmp_path / "vision_lora", 8)
    assert served.vision_cache is None  # every row's vision pass runs: the adapter may change it
    with pytest.raises(CheckpointError, match="vision tower"):
        check_servable(tmp_path / "vision_lora")

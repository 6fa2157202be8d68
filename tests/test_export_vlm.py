"""VLM export: LoRA merge checked against PEFT, served generations equal to transformers."""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from safetensors.torch import load_file, save_file
from tritonclient.utils import InferenceServerException

from navig.export import vlm as vlm_export
from navig.export.errors import CheckpointError, ExportError
from navig.export.report import ArtifactReport
from navig.export.vlm import (
    IDENTICAL_BYTES,
    check_adapter,
    export_base,
    export_merged_reasoner,
    parity_images,
    verify_copy,
    weights_dir,
)
from navig.model_repository import contract
from navig.model_repository.vlm_engine import TransformersVlm, length_groups
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts

PROMPT = "Where was this photo taken? Describe the signs."


def vlm_inputs(prompt: str, image=None, max_tokens=12, schema=None) -> list[grpcclient.InferInput]:
    """One generation request; every tensor carries Triton's batch dimension of 1."""
    values = {contract.VLM_PROMPT: np.array([[prompt.encode()]], dtype=np.object_)}
    if image is not None:
        values[contract.VLM_IMAGE] = image[None]
    if max_tokens is not None:
        values[contract.VLM_MAX_TOKENS] = np.array([[max_tokens]], np.int32)
    if schema is not None:
        values[contract.VLM_JSON_SCHEMA] = np.array([[schema.encode()]], dtype=np.object_)
    inputs = []
    for name, value in values.items():
        dtype = "BYTES" if value.dtype == np.object_ else "UINT8" if value.dtype == np.uint8 else "INT32"
        inputs.append(grpcclient.InferInput(name, list(value.shape), dtype))
        inputs[-1].set_data_from_numpy(value)
    return inputs


def answer(result) -> tuple[list[int], str]:
    return (
        result.as_numpy(contract.VLM_TOKEN_IDS).reshape(-1).tolist(),
        result.as_numpy(contract.VLM_TEXT).reshape(-1)[0].decode(),
    )


def served(
    client: grpcclient.InferenceServerClient, model: str, prompt: str, image=None, max_tokens=12, schema=None
):
    return answer(client.infer(model, vlm_inputs(prompt, image, max_tokens, schema)))


def test_merge_parity_is_reported_within_tolerance(export_reports: list[ArtifactReport]):
    (reasoner,) = [r for r in export_reports if r.model == contract.REASONER]
    assert reasoner.max_abs_diff is not None and reasoner.tolerance is not None
    assert reasoner.max_abs_diff <= reasoner.tolerance
    print(f"\nmerged vs PEFT logits: max abs diff {reasoner.max_abs_diff:.2e}")


def test_base_copy_is_checked_by_sha256(export_reports: list[ArtifactReport], demo_checkpoints, tmp_path):
    (vlm,) = [r for r in export_reports if r.model == contract.VLM]
    assert vlm.parity() == vlm.figure == IDENTICAL_BYTES and vlm.max_abs_diff is None
    copy = tmp_path / "weights"
    shutil.copytree(vlm.path, copy)
    assert verify_copy(demo_checkpoints / "qwen2_vl", copy) == len(list(copy.iterdir())) > 1
    assert f"({len(list(copy.iterdir()))})" in vlm.check
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"copy of .*model\.safetensors differs from its source"):
        verify_copy(demo_checkpoints / "qwen2_vl", copy)


def test_merge_changes_the_weights(model_repository: Path, demo_checkpoints: Path):
    base = load_file(demo_checkpoints / "qwen2_vl" / "model.safetensors")
    merged = load_file(model_repository / contract.REASONER / "1/weights/model.safetensors")
    assert base.keys() == merged.keys(), "merged checkpoint keeps the base layout (no lora_ tensors)"
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    assert changed and all("visual" not in k and k.endswith("_proj.weight") for k in changed)


@pytest.mark.parametrize("model", contract.VLM_MODELS)
def test_served_generation_is_token_identical_to_transformers(triton, model_repository, model):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    reference = TransformersVlm(model_repository / model / "1" / "weights")
    for image in [*parity_images(), None]:
        ids, text = served(client, model, PROMPT, image)
        expected = reference.generate(PROMPT, image, 12)
        assert ids == expected.token_ids
        assert text == expected.text


def test_reasoner_and_base_answer_differently(triton):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    image = parity_images()[0]
    assert (
        served(client, contract.REASONER, PROMPT, image)[0] != served(client, contract.VLM, PROMPT, image)[0]
    )


def test_bad_requests_get_invalid_argument(triton):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    with pytest.raises(grpcclient.InferenceServerException, match="smaller than 28 px") as info:
        served(client, contract.VLM, PROMPT, np.zeros((10, 10, 3), np.uint8))
    assert "INVALID_ARGUMENT" in str(info.value.status())
    with pytest.raises(grpcclient.InferenceServerException, match="max_tokens must be in"):
        served(client, contract.VLM, PROMPT, max_tokens=0)


def test_json_schema_constrains_even_random_weights(triton):
    """xgrammar masks every token the schema forbids: random weights still write schema-shaped JSON."""
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 8}, "ok": {"type": "boolean"}},
        "required": ["city", "ok"],
        "additionalProperties": False,
    }
    image = parity_images()[0]
    _, text = served(client, contract.VLM, PROMPT, image, max_tokens=64, schema=json.dumps(schema))
    answer = json.loads(text)
    assert set(answer) == {"city", "ok"} and isinstance(answer["ok"], bool) and len(answer["city"]) <= 8
    with pytest.raises(grpcclient.InferenceServerException, match="not a usable JSON schema") as info:
        served(client, contract.VLM, PROMPT, schema="{not json")
    assert "INVALID_ARGUMENT" in str(info.value.status())


def test_concurrent_requests_are_batched_and_answer_as_alone(triton, model_repository):
    """Rows of one batched generate (left padded, own budget, own schema or none) equal lone generations."""
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    reference = TransformersVlm(model_repository / contract.VLM / "1" / "weights")
    schema = json.dumps(
        {
            "type": "object",
            "properties": {"country": {"type": "string", "maxLength": 6}, "lat": {"type": "number"}},
            "required": ["country", "lat"],
            "additionalProperties": False,
        }
    )
    big, tall = parity_images()
    small = np.random.default_rng(3).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    requests = [  # Triton batches requests that send the same set of inputs: the first four here
        (PROMPT, big, 12, None),
        ("Which country is this?", tall, 40, None),
        ("Describe the houses.", small, 33, None),
        ("Read the signs.", big, 20, None),
        ("Answer in JSON.", big, 64, schema),
        ("Where?", None, 7, schema),
        ("What does the road look like?", tall, None, None),  # the config's default budget
    ]
    before = _executions(client, contract.VLM)
    results: list = [None] * len(requests)

    def keep(k: int):
        return lambda result, error: results.__setitem__(k, error or result)

    for k, (prompt, image, max_tokens, schema_text) in enumerate(requests):
        client.async_infer(contract.VLM, vlm_inputs(prompt, image, max_tokens, schema_text), keep(k))
    deadline = time.monotonic() + 120
    while any(r is None for r in results) and time.monotonic() < deadline:
        time.sleep(0.05)
    executions, inferences = (a - b for a, b in zip(_executions(client, contract.VLM), before, strict=True))
    default_budget = int(client.get_model_config(contract.VLM).config.parameters["max_tokens"].string_value)
    for (prompt, image, max_tokens, schema_text), result in zip(requests, results, strict=True):
        assert not isinstance(result, Exception), result
        expected = reference.generate(prompt, image, max_tokens or default_budget, schema_text)
        assert answer(result) == (expected.token_ids, expected.text), prompt
    assert inferences == len(requests)
    assert executions < inferences, f"{inferences} requests took {executions} executions: no batching"
    print(f"\n{inferences} concurrent requests served in {executions} batched executions")


def test_one_batch_mixes_images_budgets_and_schemas(model_repository):
    """The engine alone: rows with and without image/schema, each budget, in ONE generate_batch,
    whether the rows run as one padded generate or in groups of similar length."""
    engine = TransformersVlm(model_repository / contract.VLM / "1" / "weights")
    schema = json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]})
    big, tall = parity_images()
    rows = [
        (PROMPT, big, 12, None),
        ("Which country is this?", tall, 40, schema),
        ("Read the signs.", None, 20, None),
        ("Answer in JSON.", big, 64, schema),
        ("Where?", None, 7, schema),
    ]
    singles = [engine.generate(*row) for row in rows]
    for max_padding in (10**6, 0):
        engine.max_padding = max_padding
        batched = engine.generate_batch(*(list(column) for column in zip(*rows, strict=True)))
        assert batched == singles, f"max_padding={max_padding}"


def test_cancelled_rows_stop_and_the_others_answer_as_alone(model_repository):
    """A row whose request is cancelled stops at the next decode step; its batch mates are unchanged."""
    engine = TransformersVlm(model_repository / contract.VLM / "1" / "weights")
    asked = []

    def cancelled_after_three_steps() -> bool:
        asked.append(1)
        return len(asked) > 3

    rows = [(PROMPT, None, 40, None), ("Which country is this?", None, 40, None)]
    alone = engine.generate(*rows[1])
    first, second = engine.generate_batch(
        *(list(column) for column in zip(*rows, strict=True)), [cancelled_after_three_steps, lambda: False]
    )
    assert first.cancelled and len(first.token_ids) <= 4
    assert not second.cancelled and (second.token_ids, second.text) == (alone.token_ids, alone.text)
    (never_started,) = engine.generate_batch([PROMPT], [None], [40], [None], [lambda: True])
    assert never_started.cancelled and never_started.token_ids == []


def _next_stop(read, server: EmbeddedTriton, seen: int) -> tuple[str, int]:
    """The next generation the server's models stopped for a cancelled request (waits for its log line)."""
    for _ in range(600):
        if len(stops := read(server)) > seen:
            return stops[seen]
        time.sleep(0.1)
    raise AssertionError("the model never reported the cancelled generation")


def test_a_passed_deadline_cancels_the_generation_in_the_model(triton, cancelled_generations):
    """Without cancellation the model would generate all 4096 tokens for nobody."""
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    seen = len(cancelled_generations(triton))
    with pytest.raises(InferenceServerException, match="Deadline"):
        client.infer(contract.VLM, vlm_inputs(PROMPT, parity_images()[0], 4096), client_timeout=0.3)
    model, tokens = _next_stop(cancelled_generations, triton, seen)
    assert model == contract.VLM and tokens < 4096
    assert served(client, contract.VLM, PROMPT, max_tokens=4)[0]  # and the model still serves


def test_length_groups_bound_the_padding():
    lengths = [60, 108, 60, 60, 72, 973, 1203]  # describer crops and two GUESSER prompts, as served
    groups = length_groups(lengths, max_padding=512)
    assert groups == [[0, 2, 3, 4, 1], [5, 6]]
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        longest = max(lengths[i] for i in group)
        assert sum(longest - lengths[i] for i in group) <= 512
    assert length_groups([413, 413], 0) == [[0, 1]]  # equal lengths never pad
    assert length_groups([], 512) == []


def _executions(client: grpcclient.InferenceServerClient, model: str) -> tuple[int, int]:
    """(model executions, inferences) so far: fewer executions than inferences means batching."""
    (stats,) = client.get_inference_statistics(model).model_stats
    return stats.execution_count, stats.inference_count


def test_streaming_model_sends_pieces_that_add_up(
    demo_checkpoints: Path, tmp_path: Path, cancelled_generations
):
    from navig.export.build import build
    from navig.export.spec import load_spec

    spec = load_spec(demo_checkpoints / "export.yaml")
    spec = spec.model_copy(
        update={
            "output": tmp_path / "repo",
            "ocr": None,
            "detector": None,
            "clip": None,
            "vlm": spec.vlm.model_copy(update={"stream": True, "reasoner_adapter": None}),
        }
    )
    from rich.progress import Progress

    with Progress(disable=True) as progress:
        build(spec, progress)
    assert "decoupled: true" in (tmp_path / "repo" / contract.VLM / "config.pbtxt").read_text()
    pieces: list[tuple[list[int], str]] = []
    config = TritonConfig(tmp_path / "repo", ports=TritonPorts.free(), log_file=tmp_path / "triton.log")
    with EmbeddedTriton(config) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        errors = []

        def collect(result, error):
            if error:
                errors.append(error)
            elif result.as_numpy(contract.VLM_TOKEN_IDS) is not None:  # None: empty final response
                pieces.append(answer(result))

        client.start_stream(callback=collect)
        inputs = vlm_inputs(PROMPT, max_tokens=None)
        client.async_stream_infer(contract.VLM, inputs, enable_empty_final_response=True)
        client.stop_stream()
        assert not errors
        # a stream cancelled after its first piece stops generating (its budget would take seconds)
        first_piece = threading.Event()
        client.start_stream(callback=lambda result, error: first_piece.set())
        client.async_stream_infer(contract.VLM, vlm_inputs(PROMPT, parity_images()[0], 4096))
        assert first_piece.wait(timeout=120)
        client.stop_stream(cancel_requests=True)
        model, tokens = _next_stop(cancelled_generations, server, 0)
        assert model == contract.VLM and tokens < 4096
    expected = TransformersVlm(tmp_path / "repo" / contract.VLM / "1" / "weights").generate(PROMPT, None, 128)
    assert len(pieces) > 1
    assert [t for ids, _ in pieces for t in ids] == expected.token_ids
    assert "".join(text for _, text in pieces) == expected.text


def test_adapter_errors_name_the_problem(tmp_path: Path, demo_checkpoints: Path):
    with pytest.raises(CheckpointError, match="adapter folder not found"):
        check_adapter(tmp_path / "absent")
    adapter = tmp_path / "adapter"
    shutil.copytree(demo_checkpoints / "reasoner_lora", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "IA3"}))
    with pytest.raises(CheckpointError, match="peft_type is 'IA3'"):
        check_adapter(adapter)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    with pytest.raises(CheckpointError, match=r"no adapter_model\.safetensors"):
        check_adapter(adapter)


def test_merge_above_tolerance_fails_and_writes_nothing(tmp_path: Path, demo_checkpoints: Path):
    with pytest.raises(ExportError, match="merged vs PEFT logits differ"):
        export_merged_reasoner(
            demo_checkpoints / "qwen2_vl", demo_checkpoints / "reasoner_lora", tmp_path, 0.0
        )
    assert not (tmp_path / contract.REASONER / "1" / "weights").exists()


def test_bfloat16_weights_round_trip(tmp_path: Path, demo_checkpoints: Path):
    """`vlm.dtype: bfloat16` on the float32 tiny checkpoints: the merge is checked in float32, the saved
    weights are exactly the float32 ones rounded, config.json says bfloat16 (as `dtype` and
    `torch_dtype`), the cast is checked and reported, and the cpu engine serves the result."""
    base, adapter = demo_checkpoints / "qwen2_vl", demo_checkpoints / "reasoner_lora"
    (full,) = export_merged_reasoner(base, adapter, tmp_path / "fp32", 1e-3)
    merge, cast = export_merged_reasoner(base, adapter, tmp_path / "bf16", 1e-3, "bfloat16")
    assert merge.model == cast.model == contract.REASONER and merge.path == cast.path
    assert merge.max_abs_diff <= merge.tolerance and "float32" in merge.check
    assert 0 < cast.max_abs_diff <= cast.tolerance and "bfloat16" in cast.check
    print(f"\nbfloat16 cast: logits differ by {cast.max_abs_diff:.2e} (tolerance {cast.tolerance:.1e})")
    fp32_weights = load_file(full.path / "model.safetensors")
    bf16_weights = load_file(cast.path / "model.safetensors")
    assert fp32_weights.keys() == bf16_weights.keys()
    for name, tensor in bf16_weights.items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, fp32_weights[name].to(torch.bfloat16))
    config = json.loads((cast.path / "config.json").read_text())
    assert config["dtype"] == config["torch_dtype"] == "bfloat16"
    # `vlm`: the cast weights when the dtype differs from the checkpoint's, a byte copy when it does not
    vlm = export_base(base, tmp_path / "bf16", "bfloat16")
    assert vlm.figure != IDENTICAL_BYTES and 0 < vlm.max_abs_diff <= vlm.tolerance and "bfloat16" in vlm.check
    originals = load_file(base / "model.safetensors")
    for name, tensor in load_file(vlm.path / "model.safetensors").items():
        assert torch.equal(tensor, originals[name].to(torch.bfloat16))
    assert export_base(base, tmp_path / "fp32", "float32").figure == IDENTICAL_BYTES
    assert TransformersVlm(vlm.path).generate(PROMPT, parity_images()[0], 4).token_ids  # float32 compute


def test_cast_above_tolerance_fails_and_writes_nothing(tmp_path: Path, demo_checkpoints: Path, monkeypatch):
    monkeypatch.setattr(vlm_export, "CAST_MARGIN", 0.0)  # any change from rounding is now too much
    base = demo_checkpoints / "qwen2_vl"
    with pytest.raises(ExportError, match="vlm: bfloat16 weights' logits differ"):
        export_base(base, tmp_path, "bfloat16")
    with pytest.raises(ExportError, match="reasoner: bfloat16 weights' logits differ"):
        export_merged_reasoner(base, demo_checkpoints / "reasoner_lora", tmp_path, 1e-3, "bfloat16")
    assert not weights_dir(tmp_path, contract.VLM).exists()
    assert not weights_dir(tmp_path, contract.REASONER).exists()


def test_guesser_grammar_always_gives_an_answer_that_parses(triton):
    """Random weights under the GUESSER's schema, 56 generations with the GUESSER's own budget: every
    output is complete JSON in the schema and passes validation (no 'truncated', no control characters)."""
    from navig.orchestrator import prompts
    from navig.orchestrator.answer import parse_answer

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    images = parity_images()
    jobs = [(f"Where is photo {n}? Answer in JSON.", images[n % 2] if n % 3 else None) for n in range(56)]
    budget, schema = prompts.GUESS_MAX_TOKENS, prompts.GUESS_SCHEMA_JSON
    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(lambda job: served(client, contract.VLM, *job, budget, schema), jobs))
    countries = set()
    for token_ids, text in outputs:
        assert len(token_ids) <= prompts.GUESS_MAX_TOKENS
        answer = json.loads(text)  # strict JSON: raw control characters would fail here
        assert list(answer) == ["country", "city", "latitude", "longitude"]
        assert answer["country"] in prompts.COUNTRY_NAMES and len(answer["city"]) <= prompts.CITY_MAX_CHARS
        assert not any(ord(c) < 0x20 for c in answer["city"])
        countries.add(parse_answer(text).country_code)
    assert len(countries) > 1  # the answers do vary: the grammar is not forcing one output


def swift_adapter(demo_checkpoints: Path, folder: Path, **config_changes) -> Path:
    """The demo adapter as ms-swift (trained with transformers 4) leaves it: transformers-4 key layout,
    target_modules as a list, swift's own files beside peft's."""
    shutil.copytree(demo_checkpoints / "reasoner_lora", folder)
    weights = load_file(folder / "adapter_model.safetensors")
    legacy = {k.replace("model.language_model.", "model."): v for k, v in weights.items()}
    save_file(legacy, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "adapter_config.json").read_text())
    config |= {
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    }
    (folder / "adapter_config.json").write_text(json.dumps(config | config_changes))
    (folder / "args.json").write_text('{"train_type": "lora", "model": "Qwen/Qwen2-VL-7B-Instruct"}')
    (folder / "configuration.json").write_text('{"framework": "pytorch"}')
    (folder / "additional_config.json").write_text('{"lora_dtype": null}')
    return folder


def test_swift_adapter_merges_like_the_peft_one(tmp_path: Path, demo_checkpoints: Path):
    """Renamed from transformers 4's layout, every LoRA tensor lands: the merged weights are the peft
    adapter's, bit for bit; disagreements with the base are warned, in the report too."""
    base = demo_checkpoints / "qwen2_vl"
    adapter = swift_adapter(
        demo_checkpoints,
        tmp_path / "swift",
        base_model_name_or_path="/root/.cache/modelscope/hub/Qwen/Qwen2-VL-7B-Instruct",
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
            "c_attn",
        ],
    )
    (swift,) = export_merged_reasoner(base, adapter, tmp_path / "swift-repo", 1e-3)
    (peft,) = export_merged_reasoner(base, demo_checkpoints / "reasoner_lora", tmp_path / "peft-repo", 1e-3)
    a, b = (load_file(r.path / "model.safetensors") for r in (swift, peft))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any("Qwen2-VL-7B-Instruct" in w and "trained on this base" in w for w in swift.warnings)
    assert any("['c_attn']" in w for w in swift.warnings)
    assert not peft.warnings


def test_adapter_tensors_that_do_not_land_are_an_error(tmp_path: Path, demo_checkpoints: Path):
    """peft alone would keep freshly initialised LoRA weights for names it does not find."""
    adapter = swift_adapter(demo_checkpoints, tmp_path / "swift")
    weights = load_file(adapter / "adapter_model.safetensors")
    save_file(
        {k.replace("layers.", "blocks."): v for k, v in weights.items()},
        adapter / "adapter_model.safetensors",
    )
    with pytest.raises(CheckpointError, match=r"adapter_model\.safetensors: its tensors do not match"):
        export_merged_reasoner(demo_checkpoints / "qwen2_vl", adapter, tmp_path / "repo", 1e-3)


def test_streamed_merge_is_w_plus_scaled_ba(tmp_path: Path, demo_checkpoints: Path):
    """The merged file's weight is W + (alpha / r) B A, computed in float32 and rounded once."""
    base = load_file(demo_checkpoints / "qwen2_vl" / "model.safetensors")
    (report,) = export_merged_reasoner(
        demo_checkpoints / "qwen2_vl", demo_checkpoints / "reasoner_lora", tmp_path, 1e-3
    )
    merged = load_file(report.path / "model.safetensors")
    lora = load_file(demo_checkpoints / "reasoner_lora" / "adapter_model.safetensors")
    config = json.loads((demo_checkpoints / "reasoner_lora" / "adapter_config.json").read_text())
    prefix = "base_model.model.model.language_model.layers.0.mlp.down_proj"
    a, b = lora[f"{prefix}.lora_A.weight"], lora[f"{prefix}.lora_B.weight"]
    expected = base["model.layers.0.mlp.down_proj.weight"] + config["lora_alpha"] / config["r"] * (b @ a)
    assert torch.allclose(merged["model.layers.0.mlp.down_proj.weight"], expected, rtol=1e-6, atol=1e-7)


def test_pickled_weights_are_named_with_the_command_that_converts_them(
    tmp_path: Path, demo_checkpoints: Path
):
    from typer.testing import CliRunner

    from navig.export.checkpoints import read_config
    from navig.export.cli import app

    folder = tmp_path / "pickled"
    shutil.copytree(demo_checkpoints / "qwen2_vl", folder)
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(tensors, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*navig export convert-pickle .*pickled"):
        read_config(folder, vlm_export.QWEN2_VL_TYPES)
    result = CliRunner().invoke(app, ["convert-pickle", str(folder)])
    assert result.exit_code == 0, result.output
    converted = load_file(folder / "model.safetensors")
    assert converted.keys() == tensors.keys() and all(torch.equal(converted[k], tensors[k]) for k in tensors)
    read_config(folder, vlm_export.QWEN2_VL_TYPES)
    assert CliRunner().invoke(app, ["convert-pickle", str(tmp_path / "absent")]).exit_code == 2

"""`detector.single_pass`: NAVIG's prompts as phrases of one GroundingDINO caption, one pass per image,
the same contract as the per-prompt graph; checked against the checkpoint's own forward and served."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from navig.export.build import write_model_config
from navig.export.detector import (
    OUTPUTS,
    PARITY_TOLERANCE,
    QUERIES_MAY_DIFFER_PER_PROMPT,
    SINGLE_PASS,
    VARIANT_KEY,
    compare_detections,
    delimiters,
    export_detector,
    joined_caption,
    load_grounding_dino,
    phrase_tokens,
    reference_detections,
)
from navig.export.errors import ExportError
from navig.export.gpu_recipes import PLAN_SHAPES, profile_shapes
from navig.export.repository import place_model_folder
from navig.export.spec import DetectorSpec, ExportSpec, load_spec
from navig.export.triton_config import TRT_PROFILE_KEYS
from navig.model_repository import contract
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts

IMAGE_SIZE = (96, 128)
TOP_K = 60  # of the tiny checkpoint's 100 queries: one detection per query in a single pass
PROMPTS = len(contract.DETECTOR_PROMPTS)


@pytest.fixture(scope="module")
def checkpoint(demo_checkpoints: Path) -> Path:
    return demo_checkpoints / "grounding_dino"


@pytest.fixture(scope="module")
def repository(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """A cpu model repository holding only the single-pass `detector`, as `navig export build` writes it."""
    root = tmp_path_factory.mktemp("single-pass-repository")
    place_model_folder(contract.DETECTOR, root)
    out = root / contract.DETECTOR / "1" / "model.onnx"
    report = export_detector(checkpoint, out, image_size=IMAGE_SIZE, top_k=TOP_K, single_pass=True)
    spec = ExportSpec(output=root, ocr=None, detector=spec_section(checkpoint, single_pass=True))
    write_model_config(spec, contract.DETECTOR)
    return root, report


@pytest.fixture(scope="module")
def session(repository) -> ort.InferenceSession:
    root, _ = repository
    return ort.InferenceSession(
        str(root / contract.DETECTOR / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )


def spec_section(checkpoint: Path, **fields) -> DetectorSpec:
    return DetectorSpec(checkpoint=checkpoint, image_size=IMAGE_SIZE, top_k=TOP_K, **fields)


def _run(session: ort.InferenceSession, images: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip(OUTPUTS, session.run(list(OUTPUTS), {contract.DETECTOR_IMAGES: images})))


def test_export_checks_parity_against_hf_on_the_joined_caption(repository):
    _, report = repository
    assert report.model == contract.DETECTOR
    assert report.max_abs_diff <= PARITY_TOLERANCE == report.tolerance
    assert report.misses_allowed == QUERIES_MAY_DIFFER_PER_PROMPT  # one pass: one swap allowed
    assert report.misses is not None and 0 <= report.misses <= report.misses_allowed
    assert "HF's forward on the joined caption" in report.check


def test_the_graph_and_its_config_say_which_variant_it_is(repository, session):
    root, _ = repository
    metadata = session.get_modelmeta().custom_metadata_map
    assert metadata[VARIANT_KEY] == SINGLE_PASS
    assert json.loads(metadata["prompts"]) == list(contract.DETECTOR_PROMPTS)
    config = text_format.Parse((root / contract.DETECTOR / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.parameters[VARIANT_KEY].string_value == SINGLE_PASS


def test_one_caption_has_one_phrase_per_prompt(checkpoint):
    model, processor = load_grounding_dino(checkpoint)
    caption = joined_caption(contract.DETECTOR_PROMPTS)
    assert caption == "road sign. building sign. house."
    ids = processor.tokenizer(caption)["input_ids"]
    phrases = phrase_tokens(ids, delimiters(model), contract.DETECTOR_PROMPTS)
    tokens = processor.tokenizer.convert_ids_to_tokens(ids)
    assert [[t for t, own in zip(tokens, row) if own] for row in phrases.tolist()] == [
        ["road", "sign"],
        ["building", "sign"],
        ["house"],
    ]
    with pytest.raises(ExportError, match=r"splits into 3 phrases, not 2: a prompt may not contain '\.'"):
        phrase_tokens(
            processor.tokenizer("st. mary church. house.")["input_ids"],
            delimiters(model),
            ("st. mary church", "house"),
        )


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 60, 90), (3, 200, 150)])
def test_outputs_follow_the_contract(session, batch, height, width):
    pixels = np.random.default_rng(batch).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    out = _run(session, pixels)
    assert out[contract.DETECTOR_BOXES].shape == (batch, TOP_K, 4)
    assert out[contract.DETECTOR_PROMPT_SCORES].shape == (batch, TOP_K, PROMPTS)
    assert {k: v.dtype for k, v in out.items()} == {
        contract.DETECTOR_BOXES: np.float32,
        contract.DETECTOR_SCORES: np.float32,
        contract.DETECTOR_LABELS: np.int64,
        contract.DETECTOR_PROMPT_SCORES: np.float32,
    }
    scores, labels, per_prompt = (out[k] for k in OUTPUTS[1:])
    assert np.all(np.diff(scores, axis=1) <= 0) and np.all((scores >= 0) & (scores <= 1))
    # one detection per query, under its best prompt; every prompt is scored
    np.testing.assert_array_equal(per_prompt.max(-1), scores)
    np.testing.assert_array_equal(per_prompt.argmax(-1), labels)
    assert np.all(per_prompt > 0)


def test_one_pass_equals_hf_forward_on_the_joined_caption(session, checkpoint):
    model, processor = load_grounding_dino(checkpoint)
    rng = np.random.default_rng(7)
    for height, width in [(48, 64), (192, 256)]:  # integer factors: ORT and torch resize identically
        images = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
        expected = reference_detections(model, processor, images, IMAGE_SIZE, TOP_K, single_pass=True)
        diff, differing = compare_detections(_run(session, images), expected)
        assert diff <= PARITY_TOLERANCE
        assert differing <= QUERIES_MAY_DIFFER_PER_PROMPT


def test_served_single_pass_answers_with_the_contracts_outputs(repository, session, tmp_path):
    root, _ = repository
    images = np.random.default_rng(3).integers(0, 256, (2, 120, 160, 3), dtype=np.uint8)
    config = TritonConfig(root, ports=TritonPorts.free(), log_file=tmp_path / "tritonserver.log")
    with EmbeddedTriton(config) as triton:
        client = triton_grpc.InferenceServerClient(triton.grpc_url)
        served_config = client.get_model_config(contract.DETECTOR).config
        assert served_config.parameters[VARIANT_KEY].string_value == SINGLE_PASS
        tensor = triton_grpc.InferInput(contract.DETECTOR_IMAGES, list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        reply = client.infer(contract.DETECTOR, [tensor])
    got = {name: reply.as_numpy(name) for name in OUTPUTS}
    want = _run(session, images)
    assert {k: (v.shape, v.dtype) for k, v in got.items()} == {k: (v.shape, v.dtype) for k, v in want.items()}
    for name in OUTPUTS:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5)


def test_gpu_config_of_the_single_pass_graph_has_the_plans_shapes(repository, checkpoint, tmp_path):
    """The prompt part's batch (N, not 3N) is inside the graph: its one dynamic input is the same
    `images` the TensorRT profiles and trtexec shapes cover."""
    root, _ = repository
    graph = onnx.load(str(root / contract.DETECTOR / "1" / "model.onnx"), load_external_data=False).graph
    assert [i.name for i in graph.input] == list(PLAN_SHAPES[contract.DETECTOR]) == [contract.DETECTOR_IMAGES]
    spec = ExportSpec(
        profile="gpu", output=tmp_path, ocr=None, detector=spec_section(checkpoint, single_pass=True)
    )
    folder = place_model_folder(contract.DETECTOR, tmp_path / "encoders")
    shutil.copy(root / contract.DETECTOR / "1" / "model.onnx", folder / "1" / "model.onnx")
    write_model_config(spec, contract.DETECTOR)
    config = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.backend == "onnxruntime" and config.parameters[VARIANT_KEY].string_value == SINGLE_PASS
    assert [(i.name, list(i.dims)) for i in config.input] == [(contract.DETECTOR_IMAGES, [-1, -1, 3])]
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    for k, key in enumerate(TRT_PROFILE_KEYS):
        assert accelerator.parameters[key] == profile_shapes(contract.DETECTOR, k)


def test_top_k_beyond_the_queries_is_refused(checkpoint, tmp_path):
    queries = json.loads((checkpoint / "config.json").read_text())["num_queries"]
    with pytest.raises(
        ExportError, match=rf"top_k must be in 1\.\.{queries} \(queries: one detection per query"
    ):
        export_detector(
            checkpoint, tmp_path / "model.onnx", image_size=IMAGE_SIZE, top_k=queries + 1, single_pass=True
        )
    assert not (tmp_path / "model.onnx").exists()


def test_spec_field_defaults_off_and_validates(checkpoint, tmp_path):
    assert spec_section(checkpoint).single_pass is False
    spec_file = tmp_path / "export.yaml"
    spec_file.write_text(f"detector:\n  checkpoint: {checkpoint}\n  single_pass: true\n")
    assert load_spec(spec_file).detector.single_pass is True
    spec_file.write_text(f"detector:\n  checkpoint: {checkpoint}\n  single_pass: sometimes\n")
    with pytest.raises(ExportError, match=r"detector\.single_pass: Input should be a valid boolean"):
        load_spec(spec_file)

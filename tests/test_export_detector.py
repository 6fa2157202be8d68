"""GroundingDINO -> `detector` ONNX: one call, NAVIG's three prompts, same answers as three passes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from transformers import CLIPConfig

from navig.export.detector import (
    OUTPUTS,
    PARITY_TOLERANCE,
    PER_PROMPT,
    QUERIES_MAY_DIFFER_PER_PROMPT,
    VARIANT_KEY,
    compare_detections,
    export_detector,
    load_grounding_dino,
    reference_detections,
)
from navig.export.errors import CheckpointError
from navig.model_repository import contract

IMAGE_SIZE = (96, 128)
TOP_K = 60  # of 3 x 100 candidates


@pytest.fixture(scope="module")
def checkpoint(demo_checkpoints: Path) -> Path:
    return demo_checkpoints / "grounding_dino"


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("repository") / "detector" / "1" / "model.onnx"
    report = export_detector(checkpoint, out, image_size=IMAGE_SIZE, top_k=TOP_K)
    return report, ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, images: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip(OUTPUTS, session.run(list(OUTPUTS), {contract.DETECTOR_IMAGES: images})))


def test_export_reports_parity_within_tolerance(exported):
    report, _ = exported
    assert report.model == contract.DETECTOR
    assert report.max_abs_diff <= PARITY_TOLERANCE == report.tolerance
    assert report.size_bytes == report.path.stat().st_size > 0
    # the diff covers the reproduced detections only: how many were not stands beside it
    assert report.misses_allowed == QUERIES_MAY_DIFFER_PER_PROMPT * len(contract.DETECTOR_PROMPTS)
    assert report.misses is not None and 0 <= report.misses <= report.misses_allowed
    assert report.parity().endswith(f", {report.misses} missed (<= {report.misses_allowed})")


def test_graph_takes_uint8_with_dynamic_batch_and_carries_the_prompts(exported):
    _, session = exported
    (images,) = session.get_inputs()
    assert (images.name, images.type) == (contract.DETECTOR_IMAGES, "tensor(uint8)")
    assert [isinstance(dim, str) for dim in images.shape] == [True, True, True, False]  # N, H, W dynamic
    assert [o.name for o in session.get_outputs()] == list(OUTPUTS)
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["prompts"]) == list(contract.DETECTOR_PROMPTS)
    assert metadata[VARIANT_KEY] == PER_PROMPT  # not single_pass (tests/test_detector_single_pass.py)


def test_text_encoder_is_folded_into_constants(exported, checkpoint):
    report, _ = exported
    vocab = json.loads((checkpoint / "config.json").read_text())["text_config"]["vocab_size"]
    weights = onnx.load(str(report.path)).graph.initializer
    assert weights and not [w.name for w in weights if "text_backbone" in w.name or vocab in w.dims]


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 60, 90), (3, 200, 150)])
def test_outputs_follow_the_contract(exported, batch, height, width):
    _, session = exported
    pixels = np.random.default_rng(batch).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    out = _run(session, pixels)
    prompts = len(contract.DETECTOR_PROMPTS)
    assert out[contract.DETECTOR_BOXES].shape == (batch, TOP_K, 4)
    assert out[contract.DETECTOR_PROMPT_SCORES].shape == (batch, TOP_K, prompts)
    assert {k: v.dtype for k, v in out.items()} == {
        contract.DETECTOR_BOXES: np.float32,
        contract.DETECTOR_SCORES: np.float32,
        contract.DETECTOR_LABELS: np.int64,
        contract.DETECTOR_PROMPT_SCORES: np.float32,
    }
    scores, labels = out[contract.DETECTOR_SCORES], out[contract.DETECTOR_LABELS]
    assert np.all(np.diff(scores, axis=1) <= 0) and np.all((scores >= 0) & (scores <= 1))
    assert np.all((labels >= 0) & (labels < prompts))
    # a box comes from one prompt's pass: its score sits at that prompt, zero elsewhere
    np.testing.assert_array_equal(out[contract.DETECTOR_PROMPT_SCORES].max(-1), scores)
    np.testing.assert_array_equal(out[contract.DETECTOR_PROMPT_SCORES].argmax(-1), labels)


def test_one_call_equals_three_single_prompt_passes(exported, checkpoint):
    """NAVIG runs HF GroundingDINO once per prompt; the graph must give the same detections."""
    _, session = exported
    model, processor = load_grounding_dino(checkpoint)
    rng = np.random.default_rng(7)
    for height, width in [(48, 64), (192, 256)]:  # integer factors: ORT and torch resize identically
        images = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
        expected = reference_detections(model, processor, images, IMAGE_SIZE, TOP_K)
        diff, differing = compare_detections(_run(session, images), expected)
        assert diff <= PARITY_TOLERANCE
        assert differing <= QUERIES_MAY_DIFFER_PER_PROMPT * len(contract.DETECTOR_PROMPTS)


def test_clip_checkpoint_is_refused_by_name(tmp_path):
    CLIPConfig().save_pretrained(tmp_path / "clip")
    with pytest.raises(CheckpointError, match=r"model_type is 'clip', expected 'grounding-dino'"):
        export_detector(tmp_path / "clip", tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_missing_config_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        export_detector(tmp_path, tmp_path / "model.onnx")


def test_pickled_weights_are_refused(checkpoint, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(checkpoint, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    refused = r"no \*\.safetensors weights, only pickled weights \(pytorch_model\.bin\)"
    with pytest.raises(CheckpointError, match=refused):
        export_detector(folder, tmp_path / "model.onnx")

"""Opt-in int8 encoders: the spec option, the parity gate, the served int8 models (export/quantize.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from rich.progress import Progress

from navig.export.build import build
from navig.export.clip import export_clip
from navig.export.demo_checkpoints import SPEC_FILE
from navig.export.errors import ExportError
from navig.export.quantize import (
    AGREEMENT_REQUIRED,
    COSINE_REQUIRED,
    detection_agreement,
    quantize_artifact,
    sample_photos,
)
from navig.export.repository import REPORT_FILE
from navig.export.spec import ExportSpec, load_spec
from navig.model_repository import contract
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts

INT8_OPS = {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear"}


def int8_spec(checkpoints: Path, output: Path) -> ExportSpec:
    """The preset's encoders with `precision: int8` (OCR, VLMs and the reference detector left out)."""
    spec = load_spec(checkpoints / SPEC_FILE)
    detector = spec.detector.model_copy(update={"precision": "int8", "reference_image_size": None})
    clip = spec.clip.model_copy(update={"precision": "int8"})
    return spec.model_copy(
        update={"output": output, "ocr": None, "vlm": None, "detector": detector, "clip": clip}
    )


@pytest.fixture(scope="module")
def int8_repository(demo_checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = int8_spec(demo_checkpoints, tmp_path_factory.mktemp("int8_repository"))
    with Progress(disable=True) as progress:
        return build(spec, progress).repository


@pytest.fixture(scope="module")
def int8_triton(int8_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    log = tmp_path_factory.mktemp("int8_triton") / "tritonserver.log"
    with EmbeddedTriton(TritonConfig(int8_repository, ports=TritonPorts.free(), log_file=log)) as server:
        yield server


def op_types(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_int8_export_passes_the_gate_and_records_it(int8_repository: Path):
    report = json.loads((int8_repository / REPORT_FILE).read_text())
    artifacts = {a["model"]: a for a in report["artifacts"]}
    image, detector, text = (
        artifacts[m] for m in (contract.CLIP_IMAGE, contract.DETECTOR, contract.CLIP_TEXT)
    )
    assert image["precision"] == detector["precision"] == "int8"
    assert image["gate"]["min_cosine"] >= image["gate"]["required"] == COSINE_REQUIRED
    assert image["gate"]["inputs"] == len(sample_photos()) + 6  # the samples + the export's parity images
    assert detector["gate"]["box_agreement"] >= detector["gate"]["required"] == AGREEMENT_REQUIRED
    assert detector["gate"]["crops"] > 0 and detector["gate"]["photos"] == len(sample_photos())
    assert "min cosine" in image["check"] and "box agreement" in detector["check"]
    assert text["precision"] == "fp32" and text["gate"] is None  # clip_text stays fp32 (quantize.py says why)
    for model in (contract.CLIP_IMAGE, contract.DETECTOR):
        graph = int8_repository / model / "1" / "model.onnx"
        assert INT8_OPS & op_types(graph), f"{model} is not quantized"
        assert artifacts[model]["size_bytes"] == graph.stat().st_size
        assert not list(graph.parent.glob("*.int8.onnx")), "the working copy is renamed over the fp32 graph"
    assert not INT8_OPS & op_types(int8_repository / contract.CLIP_TEXT / "1" / "model.onnx")


def test_served_int8_models_answer_as_the_int8_graph(int8_repository: Path, int8_triton: EmbeddedTriton):
    client = grpcclient.InferenceServerClient(int8_triton.grpc_url)
    photos = sample_photos()[:2]
    for model, name in (
        (contract.DETECTOR, contract.DETECTOR_IMAGES),
        (contract.CLIP_IMAGE, contract.CLIP_IMAGE_IMAGES),
    ):
        tensor = grpcclient.InferInput(name, list(photos.shape), "UINT8")
        tensor.set_data_from_numpy(photos)
        served = client.infer(model, [tensor])
        session = ort.InferenceSession(str(int8_repository / model / "1" / "model.onnx"))
        names = [o.name for o in session.get_outputs()]
        for output, want in zip(names, session.run(names, {name: photos})):
            np.testing.assert_allclose(served.as_numpy(output), want, atol=1e-5, err_msg=f"{model}.{output}")


def test_a_gate_too_tight_to_pass_refuses_the_export_with_its_figure(demo_checkpoints: Path, tmp_path: Path):
    image_report = export_clip(demo_checkpoints / "clip", tmp_path)[0]
    assert image_report.model == contract.CLIP_IMAGE
    with pytest.raises(
        ExportError, match=r"clip_image: int8 fails its parity gate, min cosine 0\.9\d+ \(required 1\.01\)"
    ):
        quantize_artifact(image_report, cosine_required=1.01)
    assert not list(image_report.path.parent.glob("*.onnx")), "no graph is left to serve after a refusal"


def test_the_detector_gate_sees_a_corrupted_int8_graph(int8_repository: Path, tmp_path: Path):
    """The int8 graph's weights corrupted (float ones negated, int8 ones zeroed): its crops must not pass
    for the intact graph's. (Zeroing the int8 decoder alone is not enough on the random tiny model: its
    boxes are mostly the float query selection's reference points.)"""
    intact = int8_repository / contract.DETECTOR / "1" / "model.onnx"
    model = onnx.load(str(intact))
    changed = 0
    for tensor in model.graph.initializer:
        if len(tensor.dims) >= 2 and tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT8):
            weights = onnx.numpy_helper.to_array(tensor)
            corrupt = -weights if weights.dtype == np.float32 else np.zeros_like(weights)
            tensor.CopyFrom(onnx.numpy_helper.from_array(corrupt, tensor.name))
            changed += 1
    assert changed > 0
    corrupted = tmp_path / "corrupted.onnx"
    onnx.save(model, str(corrupted))
    photos = sample_photos()[:8]
    assert detection_agreement(intact, intact, photos).value == 1.0
    broken = detection_agreement(intact, corrupted, photos)
    assert broken.value < AGREEMENT_REQUIRED, broken


def write_spec(folder: Path, demo_checkpoints: Path, **sections: dict) -> Path:
    spec = {
        "clip": {"checkpoint": str(demo_checkpoints / "clip")},
        "detector": {"checkpoint": str(demo_checkpoints / "grounding_dino")},
        **sections,
    }
    path = folder / "spec.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def test_the_spec_rejects_an_unknown_precision(demo_checkpoints: Path, tmp_path: Path):
    path = write_spec(
        tmp_path, demo_checkpoints, clip={"checkpoint": str(demo_checkpoints / "clip"), "precision": "int4"}
    )
    with pytest.raises(ExportError, match=r"clip\.precision: Input should be 'fp32' or 'int8'"):
        load_spec(path)


def test_the_gpu_profile_refuses_int8_with_the_reason(demo_checkpoints: Path, tmp_path: Path):
    path = write_spec(
        tmp_path,
        demo_checkpoints,
        profile="gpu",
        detector={"checkpoint": str(demo_checkpoints / "grounding_dino"), "precision": "int8"},
    )
    with pytest.raises(ExportError, match=r"detector: precision int8 is for the cpu profile.*calibration"):
        load_spec(path)
    assert load_spec(write_spec(tmp_path, demo_checkpoints, profile="gpu")).detector.precision == "fp32"


def test_default_precision_is_fp32(demo_checkpoints: Path):
    spec = load_spec(demo_checkpoints / SPEC_FILE)
    assert spec.clip.precision == spec.detector.precision == "fp32"

"""`navig export ocr`: artifacts parity-checked against the shipped PP-OCR files, valid configs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from navig.export.ocr import PARITY_TOLERANCE, OcrExportError, OcrSources, export_det
from navig.export.repository import REPORT_FILE, write_ocr_models
from navig.model_repository import contract


def test_report_states_parity_within_tolerance(model_repository):
    report = json.loads((model_repository / REPORT_FILE).read_text())
    artifacts = {a["model"]: a for a in report["artifacts"]}
    assert {contract.OCR_DET, contract.OCR_REC} <= set(artifacts)
    for artifact in (artifacts[contract.OCR_DET], artifacts[contract.OCR_REC]):
        assert artifact["max_abs_diff"] <= PARITY_TOLERANCE
        assert "sha256" in artifact["check"]


def test_configs_parse_with_tritons_schema_and_match_the_graphs(model_repository):
    for name in contract.OCR_MODELS:
        config = text_format.Parse(
            (model_repository / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        assert config.name == name
        onnx_file = model_repository / name / "1" / "model.onnx"
        if onnx_file.exists():  # the graph's tensor names are the config's (gpu profile: onnxruntime backend)
            graph = onnx.load(str(onnx_file), load_external_data=False).graph
            assert [i.name for i in config.input] == [i.name for i in graph.input]
            assert [o.name for o in config.output] == [o.name for o in graph.output]
            assert config.dynamic_batching is not None and config.max_batch_size > 0


def test_detector_takes_uint8_and_normalises_inside_the_graph(model_repository):
    session = ort.InferenceSession(str(model_repository / "ocr_det/1/model.onnx"))
    (image_input,) = session.get_inputs()
    assert image_input.type == "tensor(uint8)"
    pixels = np.full((1, 32, 64, 3), 255, np.uint8)
    source = ort.InferenceSession(str(OcrSources.from_rapidocr_wheel().det))
    expected = source.run(None, {"x": np.ones((1, 3, 32, 64), np.float32)})[0]
    np.testing.assert_allclose(session.run(None, {contract.OCR_DET_INPUT: pixels})[0], expected, atol=1e-5)


def test_characters_come_from_the_rec_model(model_repository):
    characters = (model_repository / "ocr/1/characters.txt").read_text(encoding="utf-8").splitlines()
    session = ort.InferenceSession(str(model_repository / "ocr_rec/1/model.onnx"))
    classes = session.get_outputs()[0].shape[-1]
    assert len(characters) + 2 == classes  # + CTC blank and the space PP-OCR appends
    assert {"ł", "ő", "ø", "ş"} <= set(characters)


def test_missing_source_is_named(tmp_path):
    with pytest.raises(OcrExportError, match=r"not found: .*absent\.onnx"):
        export_det(tmp_path / "absent.onnx", tmp_path / "out.onnx", np.random.default_rng(0))


def test_not_an_onnx_file_is_named(tmp_path):
    bogus = tmp_path / "det.onnx"
    bogus.write_bytes(b"definitely not protobuf")
    sources = OcrSources(det=bogus, rec=OcrSources.from_rapidocr_wheel().rec)
    with pytest.raises(OcrExportError, match="not a valid ONNX model"):
        write_ocr_models(tmp_path / "repo", sources)


def test_rec_without_character_metadata_is_refused(tmp_path):
    det = OcrSources.from_rapidocr_wheel().det  # a valid ONNX graph, but not a recogniser
    sources = OcrSources(det=det, rec=det)
    with pytest.raises(OcrExportError, match="no 'character' metadata"):
        write_ocr_models(tmp_path / "repo", sources)


def test_cli_error_is_a_message_and_exit_code(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "navig.client.cli_main", "export", "ocr", "--out", str(tmp_path / "r"),
         "--det", str(tmp_path / "missing.onnx")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "PP-OCR model file not found" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr

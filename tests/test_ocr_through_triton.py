"""OCR served by the real Triton server over gRPC, on the rendered sample signs."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from navig.client.images import read_rgb
from navig.client.triton_ocr import OcrClient
from navig.export.samples import SAMPLES_DIR
from navig.model_repository import contract
from navig.model_repository.ocr_pipeline import OcrPipeline, rec_batch


@pytest.fixture(scope="module")
def client(triton):
    client = OcrClient(triton.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def in_process(model_repository):
    """The same pipeline with its two model calls made to ONNX Runtime directly."""
    det = ort.InferenceSession(str(model_repository / "ocr_det/1/model.onnx"))
    rec = ort.InferenceSession(str(model_repository / "ocr_rec/1/model.onnx"))
    characters = (model_repository / "ocr/1/characters.txt").read_text(encoding="utf-8").splitlines()
    pipeline = OcrPipeline(characters)

    def read(image):
        return pipeline(
            image,
            lambda x: det.run(None, {contract.OCR_DET_INPUT: x})[0],
            lambda x: rec.run(None, {contract.OCR_REC_INPUT: x})[0],
        )

    return pipeline, read, rec


def test_all_models_ready(triton):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    assert client.is_server_ready()
    for model in contract.OCR_MODELS:
        assert client.is_model_ready(model), model


def test_reads_at_least_nine_in_ten_signs_exactly(client, samples):
    assert len(samples) >= 10
    misses, latencies = [], []
    for sample in samples:
        image = read_rgb(SAMPLES_DIR / sample.file)
        started = time.perf_counter()
        texts = [line.text for line in client.read(image)]
        latencies.append(time.perf_counter() - started)
        if not sample.read_exactly(texts):
            misses.append((sample.file, sample.lines, texts))
    rate = 1 - len(misses) / len(samples)
    print(f"\nexact reads {len(samples) - len(misses)}/{len(samples)} ({rate:.0%}); median latency "
          f"{statistics.median(latencies) * 1e3:.0f} ms; misses: {misses}")  # fmt: skip
    assert rate >= 0.9, misses


def test_boxes_locate_the_text(client, samples):
    sample = samples[0]
    image = read_rgb(SAMPLES_DIR / sample.file)
    lines = client.read(image)
    assert lines
    h, w = image.shape[:2]
    for line in lines:
        box = np.array(line.box)
        assert box.shape == (4, 2)
        assert (box[:, 0] >= 0).all() and (box[:, 0] <= w).all()
        assert (box[:, 1] >= 0).all() and (box[:, 1] <= h).all()
        assert 0.5 <= line.score <= 1.0
    tops = [min(p[1] for p in line.box) for line in lines]
    assert tops == sorted(tops), "lines come back in reading order"


def test_triton_matches_the_in_process_pipeline(client, in_process, samples):
    _, read, _ = in_process
    for sample in samples[:5]:
        image = read_rgb(SAMPLES_DIR / sample.file)
        served = client.read(image)
        local = read(image)
        assert [line.text for line in served] == local.texts
        np.testing.assert_allclose([line.score for line in served], local.scores, atol=1e-4)
        np.testing.assert_allclose(np.array([line.box for line in served]), local.boxes, atol=1e-3)


def test_batched_recognition_equals_one_crop_at_a_time(triton, in_process, samples):
    pipeline, _, _ = in_process
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    crops = []
    for sample in samples[:6]:
        image = read_rgb(SAMPLES_DIR / sample.file)
        det = lambda x: _infer(client, contract.OCR_DET, contract.OCR_DET_INPUT, x, contract.OCR_DET_OUTPUT)  # noqa: E731
        crops.extend(pipeline.detect(image, det)[1])
    assert len(crops) >= 10

    def recognize(batch):
        return _infer(client, contract.OCR_REC, contract.OCR_REC_INPUT, batch, contract.OCR_REC_OUTPUT)

    calls = []

    def counted(batch):
        calls.append(len(batch))
        return recognize(batch)

    batched, _ = pipeline.recognize(crops, counted)
    assert calls == [len(crops)], "all crops go to ocr_rec in one call"
    single = [pipeline.recognize([crop], recognize)[0][0] for crop in crops]
    assert batched == single


def test_concurrent_requests_get_their_own_answers(client, samples):
    images = [read_rgb(SAMPLES_DIR / s.file) for s in samples[:8]]
    sequential = [[line.text for line in client.read(img)] for img in images]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda img: [line.text for line in client.read(img)], images))
    assert concurrent == sequential


@pytest.mark.parametrize(
    "bad, reason",
    [
        (np.zeros((4, 4, 3), np.uint8), "too small"),  # rejected by the ocr model
        (np.zeros((64, 64, 4), np.uint8), "unexpected shape"),  # rejected by Triton
        (np.zeros((64, 64), np.uint8), "unexpected shape"),
    ],
)
def test_bad_images_get_invalid_argument_and_the_server_keeps_serving(triton, client, samples, bad, reason):
    raw = grpcclient.InferenceServerClient(triton.grpc_url)
    tensor = grpcclient.InferInput(contract.OCR_IMAGE, list(bad.shape), "UINT8")
    tensor.set_data_from_numpy(bad)
    with pytest.raises(InferenceServerException) as info:
        raw.infer(contract.OCR, [tensor])
    assert reason in info.value.message()
    assert "INVALID_ARGUMENT" in str(info.value.status())
    assert client.read(read_rgb(SAMPLES_DIR / samples[0].file)), "still serving"


def _infer(client, model, input_name, array, output_name):
    dtype = "UINT8" if array.dtype == np.uint8 else "FP32"
    tensor = grpcclient.InferInput(input_name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return client.infer(model, [tensor]).as_numpy(output_name)


def test_rec_batch_pads_to_shared_widths():
    crops = [np.zeros((20, 30, 3), np.uint8), np.zeros((20, 300, 3), np.uint8)]
    batch = rec_batch(crops)
    assert batch.shape[:3] == (2, 3, 48)
    assert batch.shape[3] % 64 == 0 and batch.shape[3] >= 720
    assert (batch[0, :, :, 80:] == 0).all(), "padding is zero after normalisation"

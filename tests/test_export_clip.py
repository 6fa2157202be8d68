"""CLIP export: two ONNX encoders that reproduce the checkpoint, preprocessing folded in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoTokenizer, CLIPModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from navig.export.clip import PARITY_TOLERANCE, TOKENIZER_DIR, export_clip, pixels_probe, tokenize
from navig.export.demo_checkpoints.clip import build_clip
from navig.export.errors import CheckpointError
from navig.export.report import ArtifactReport
from navig.export.samples import SAMPLES_DIR
from navig.model_repository import contract

TEXTS = ["a photo of a road sign", "yellow town sign: Łódź 5 km", "", "a house", "bollards " * 30]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoints") / "clip"
    build_clip(folder, "tiny")
    return folder


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ArtifactReport]]:
    repository = tmp_path_factory.mktemp("repository")
    return repository, export_clip(checkpoint, repository)


@pytest.fixture(scope="module")
def sessions(exported: tuple[Path, list[ArtifactReport]]) -> dict[str, ort.InferenceSession]:
    repository, _ = exported
    return {
        name: ort.InferenceSession(
            str(repository / name / "1/model.onnx"), providers=["CPUExecutionProvider"]
        )
        for name in (contract.CLIP_IMAGE, contract.CLIP_TEXT)
    }


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> CLIPModel:
    return CLIPModel.from_pretrained(checkpoint, local_files_only=True).eval()


def _image_embedding(sessions: dict[str, ort.InferenceSession], pixels: np.ndarray) -> np.ndarray:
    return sessions[contract.CLIP_IMAGE].run(None, {contract.CLIP_IMAGE_IMAGES: pixels})[0]


def _sample(name: str) -> np.ndarray:
    return np.asarray(Image.open(SAMPLES_DIR / name).convert("RGB"))


def test_export_reports_parity_within_tolerance(exported):
    repository, reports = exported
    assert [r.model for r in reports] == [contract.CLIP_IMAGE, contract.CLIP_TEXT]
    for report in reports:
        assert report.path.is_file() and report.size_bytes == report.path.stat().st_size
        assert report.max_abs_diff <= PARITY_TOLERANCE == report.tolerance
    assert (repository / contract.CLIP_TEXT / "1" / TOKENIZER_DIR / "tokenizer.json").is_file()


def test_graphs_follow_the_tensor_contract(sessions):
    (images,) = sessions[contract.CLIP_IMAGE].get_inputs()
    assert (images.name, images.type, images.shape[3]) == (contract.CLIP_IMAGE_IMAGES, "tensor(uint8)", 3)
    assert all(isinstance(d, str) for d in images.shape[:3])  # batch, height, width all dynamic
    text_inputs = sessions[contract.CLIP_TEXT].get_inputs()
    assert [(i.name, i.type) for i in text_inputs] == [
        (contract.CLIP_TEXT_INPUT_IDS, "tensor(int64)"),
        (contract.CLIP_TEXT_ATTENTION_MASK, "tensor(int64)"),
    ]
    for session in sessions.values():
        assert [o.name for o in session.get_outputs()] == [contract.CLIP_EMBEDDINGS]


@pytest.mark.parametrize("batch", [1, 5])
def test_embeddings_are_unit_norm_at_any_batch_and_size(sessions, exported, batch):
    rng = np.random.default_rng(batch)
    for height, width in [(33, 180), (240, 97)]:
        pixels = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
        embeddings = _image_embedding(sessions, pixels)
        assert embeddings.shape[0] == batch and embeddings.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    input_ids, attention_mask = tokenize(
        exported[0] / contract.CLIP_TEXT / "1" / TOKENIZER_DIR, TEXTS[:batch]
    )
    feeds = {contract.CLIP_TEXT_INPUT_IDS: input_ids, contract.CLIP_TEXT_ATTENTION_MASK: attention_mask}
    embeddings = sessions[contract.CLIP_TEXT].run(None, feeds)[0]
    assert embeddings.shape[0] == batch
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_in_graph_preprocessing_matches_clip_image_processor(exported, sessions, checkpoint, model):
    """A rendered sign photo, whole (downscaled) and a small crop (upscaled). Measured: pixels
    differ from CLIPImageProcessor by 0.0034-0.0037 on average (normalised units; a quarter of a
    uint8 level: PIL rounds to uint8 between its passes); bicubic without antialiasing would be
    0.017-0.076. Embedding cosine 0.9999998. A different photo is far further away, so the
    cosine check is not vacuous for a random-initialised model."""
    # CLIPImageProcessor resolves to its Pillow backend without torchvision; use that directly
    processor = CLIPImageProcessorPil.from_pretrained(checkpoint, local_files_only=True)
    probe = pixels_probe(exported[0] / contract.CLIP_IMAGE / "1/model.onnx")
    sign, other = _sample("sign_004_ch.jpg"), _sample("sign_030_ro.jpg")
    for pixels in (sign, np.ascontiguousarray(sign[150:230, 200:330])):
        pixel_values = processor(images=[pixels], return_tensors="pt")["pixel_values"]
        ours, our_pixel_values = probe.run(None, {contract.CLIP_IMAGE_IMAGES: pixels[None]})
        assert np.abs(our_pixel_values - pixel_values.numpy()).mean() < 0.006
        with torch.no_grad():
            expected = F.normalize(model.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)
        cosine = float(ours[0] @ expected.numpy()[0])
        assert cosine > 0.999
    distance_to_other = 1 - float(_image_embedding(sessions, other[None])[0] @ ours[0])
    assert distance_to_other > 100 * (1 - cosine)


def test_text_embeddings_equal_pytorch_and_tokenize_matches_the_checkpoint_tokenizer(
    sessions, exported, checkpoint, model
):
    input_ids, attention_mask = tokenize(exported[0] / contract.CLIP_TEXT / "1" / TOKENIZER_DIR, TEXTS)
    reference = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)(
        TEXTS, padding=True, truncation=True, return_tensors="np"
    )
    np.testing.assert_array_equal(input_ids, reference["input_ids"])
    np.testing.assert_array_equal(attention_mask, reference["attention_mask"])
    assert input_ids.dtype == attention_mask.dtype == np.int64 and input_ids.shape[1] == 77  # truncated
    feeds = {contract.CLIP_TEXT_INPUT_IDS: input_ids, contract.CLIP_TEXT_ATTENTION_MASK: attention_mask}
    ours = sessions[contract.CLIP_TEXT].run(None, feeds)[0]
    with torch.no_grad():
        features = model.get_text_features(
            input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask)
        ).pooler_output
    np.testing.assert_allclose(ours, F.normalize(features, dim=-1).numpy(), atol=1e-5)


def _wrong_architecture(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "grounding-dino"}))


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (_wrong_architecture, "model_type is 'grounding-dino', expected 'clip'"),
        (lambda folder: (folder / "config.json").unlink(), "no config.json"),
        (lambda folder: (folder / "model.safetensors").unlink(), r"no \*.safetensors weights"),
        (lambda folder: (folder / "preprocessor_config.json").unlink(), "no preprocessor_config.json"),
    ],
    ids=["wrong-architecture", "no-config", "no-safetensors", "no-image-processor"],
)
def test_broken_checkpoints_give_clear_errors(checkpoint, tmp_path, breakage, message):
    broken = shutil.copytree(checkpoint, tmp_path / "clip")
    breakage(broken)
    with pytest.raises(CheckpointError, match=message):
        export_clip(broken, tmp_path / "repository")
    assert not (tmp_path / "repository" / contract.CLIP_IMAGE / "1" / "model.onnx").exists()

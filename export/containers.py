"""The NVIDIA containers the gpu profile runs in, pinned here and only here.

The gpu deployment is two Triton servers (DESIGN.md, "Two serving profiles"): the `*-trtllm-python-py3`
images carry only the TensorRT-LLM and Python backends, so the encoders and OCR run in a `-py3` image
(onnxruntime backend with the TensorRT accelerator, or `tensorrt_plan`) and the VLMs in the
TensorRT-LLM image (python backend on the LLM API). Plans are built with `trtexec` in the TensorRT
image of the same release, so they match the TensorRT the `-py3` server runs.

Pin, from triton-inference-server/server `docs/introduction/compatibility.md` @ r26.07
(819ee37770df2fcd6d799d2a5d1dacf812f7d62c) and @ r26.08 (6fa22ae028e60f03170a8a07ebc8a54587c8581d):
26.04 to 26.07 `-trtllm-python-py3` ship TensorRT-LLM 1.2.1 (Python 3.12.3, TensorRT 10.14.1.48,
torch 2.10.0a0); 26.07 is the newest release with a TensorRT-LLM row (26.08 has none); `26.07-py3`
ships ONNX Runtime 1.27.0. The TensorRT version inside `26.07-py3` is in no source we read (probably
11.x: ONNX Runtime 1.27 is the first to support TensorRT 11); `navig gpu-check` and the generated
README say how to look. None of this has been run on a GPU by this project.
"""

from __future__ import annotations

from dataclasses import dataclass

from navig.model_repository import contract

TRITON_RELEASE = "26.07"
TENSORRT_LLM_VERSION = "1.2.1"  # what the TensorRT-LLM image of TRITON_RELEASE carries
ONNXRUNTIME_VERSION = "1.27.0"  # what the `-py3` image of TRITON_RELEASE carries
ENCODERS_IMAGE = f"nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}-py3"
VLMS_IMAGE = f"nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}-trtllm-python-py3"
TENSORRT_IMAGE = f"nvcr.io/nvidia/tensorrt:{TRITON_RELEASE}-py3"  # trtexec for `tensorrt_plan` encoders

MODELS_MOUNT = "/models"  # where each container sees its model repository
WHEELS_MOUNT = "/wheels"  # where each container sees the navig-serve wheel (installed with --no-deps)
# What the `ocr` python model imports besides numpy and navig (model_repository/ocr_pipeline.py): the
# same specifiers as the package's extras; the images' own torch/transformers/xgrammar stay untouched.
ENCODERS_EXTRA_PACKAGES = ("rapidocr>=3.4,<4", "opencv-python-headless>=4.8")
SHM_SIZE = "2g"  # python-backend tensors travel through /dev/shm (docker's default 64 MB is too small)


@dataclass(frozen=True)
class Pool:
    """One Triton server of the gpu deployment: its repository folder, image, ports and models."""

    folder: str  # sub-folder of the export output holding this server's model repository
    image: str
    http_port: int
    grpc_port: int
    metrics_port: int
    models: tuple[str, ...]
    extra_packages: tuple[str, ...] = ()


ENCODERS = Pool(
    "encoders",
    ENCODERS_IMAGE,
    8000,
    8001,
    8002,
    (*contract.OCR_MODELS, *contract.DETECTORS, contract.CLIP_IMAGE, contract.CLIP_TEXT),
    ENCODERS_EXTRA_PACKAGES,
)
VLMS = Pool("vlms", VLMS_IMAGE, 9000, 9001, 9002, contract.VLM_MODELS)
POOLS = (ENCODERS, VLMS)


def pool_of(model: str) -> Pool:
    return next(pool for pool in POOLS if model in pool.models)

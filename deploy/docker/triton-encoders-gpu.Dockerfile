# syntax=docker/dockerfile:1
# The gpu profile's encoder pool: NVIDIA's Triton `-py3` image (onnxruntime backend with the TensorRT
# accelerator, tensorrt_plan, python backend) plus navig-serve without dependencies and what the `ocr`
# python model imports (export/containers.py: ENCODERS_EXTRA_PACKAGES); the image's own packages stay.
# The model repository is the gpu export's encoders/ folder, mounted (chart: triton.modelRepository).
#   docker build -f deploy/docker/triton-encoders-gpu.Dockerfile -t navig-triton-encoders-gpu:0.1.0-26.07 .
# Not built or run on a GPU by this project.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:26.07-py3
FROM ${TRITON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1
COPY pyproject.toml README.md /src/
COPY orchestrator /src/orchestrator
COPY client /src/client
COPY export /src/export
COPY model_repository /src/model_repository
RUN python3 -m pip install rapidocr==3.10.0 opencv-python-headless==4.11.0.86 \
    && python3 -m pip install --no-deps /src
# NVIDIA's images create this user (uid 1000, the chart's runAsUser)
# hadolint ignore=DL3066
USER triton-server
EXPOSE 8000 8001 8002
ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh", "tritonserver"]
CMD ["--model-repository=/models"]

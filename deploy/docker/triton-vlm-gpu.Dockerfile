# syntax=docker/dockerfile:1
# The gpu profile's VLM pool: NVIDIA's Triton `-trtllm-python-py3` image (TensorRT-LLM's LLM API in the
# python backend) plus navig-serve without dependencies: the vlm/reasoner model code imports navig's
# contract, and the image's own torch, transformers, xgrammar and TensorRT-LLM must stay as NVIDIA pins
# them (export/containers.py). The model repository is the gpu export's vlms/ folder, mounted.
#   docker build -f deploy/docker/triton-vlm-gpu.Dockerfile -t navig-triton-vlm-gpu:0.1.0-26.07 .
# Not built or run on a GPU by this project.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3
FROM ${TRITON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1
COPY pyproject.toml README.md /src/
COPY orchestrator /src/orchestrator
COPY client /src/client
COPY export /src/export
COPY model_repository /src/model_repository
RUN python3 -m pip install --no-deps /src
# NVIDIA's images create this user (uid 1000, the chart's runAsUser)
# hadolint ignore=DL3066
USER triton-server
EXPOSE 8000 8001 8002
ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh", "tritonserver"]
CMD ["--model-repository=/models"]

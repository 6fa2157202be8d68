# syntax=docker/dockerfile:1
# The cpu profile's Triton: the real tritonserver from the nvidia-pytriton wheel with `navig-serve[cpu]`
# (ONNX Runtime, transformers on CPU torch) for the python-backend models, and an exported model
# repository baked in at /models (the chart can mount a PVC there instead). Prepared as `navig triton
# serve` prepares it (orchestrator/embedded_triton.py): the python backend with this interpreter's stub,
# the wheel's libraries on LD_LIBRARY_PATH, the venv first on PATH. The entrypoint is tritonserver: the
# chart passes flags only, as to NVIDIA's images.
#   docker build -f deploy/docker/triton-cpu.Dockerfile \
#     --build-arg MODEL_REPOSITORY=build/model_repository -t navig-triton-cpu:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
FROM ${PYTHON_IMAGE}
ARG MODEL_REPOSITORY=build/model_repository
# torch==2.13.0 as the cpu extra pins it; PyPI's linux wheel is the CUDA build, PyTorch's cpu index is not
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:/opt/triton/bin:$PATH \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia_pytriton.libs:/usr/local/lib
RUN python -m venv /opt/venv
COPY pyproject.toml README.md /src/
COPY orchestrator /src/orchestrator
COPY client /src/client
COPY export /src/export
COPY model_repository /src/model_repository
RUN pip install --extra-index-url "${TORCH_INDEX}" "/src[cpu]" \
    && python -c "from pathlib import Path; from navig.orchestrator.embedded_triton import TritonDistribution; \
d = TritonDistribution.find(); d.backend_directory(Path('/opt/triton')); \
Path('/opt/triton/bin').mkdir(); Path('/opt/triton/bin/tritonserver').symlink_to(d.binary)"
COPY ${MODEL_REPOSITORY} /models
RUN groupadd --gid 1000 triton-server \
    && useradd --uid 1000 --gid triton-server --no-create-home --shell /usr/sbin/nologin triton-server
USER 1000:1000
EXPOSE 8000 8001 8002
ENTRYPOINT ["tritonserver", "--backend-directory=/opt/triton/backends"]
CMD ["--model-repository=/models"]

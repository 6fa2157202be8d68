# syntax=docker/dockerfile:1
# The Geolocator orchestrator: slim, CPU only, non-root. The gazetteer index and the default guidebook
# are built into the image, so nothing downloads or builds when a pod starts. The guidebook is embedded
# with the CLIP of the export the Triton pools serve: build both images from the same export.
#   docker build -f deploy/docker/orchestrator.Dockerfile \
#     --build-arg MODEL_REPOSITORY=build/model_repository -t navig-orchestrator:0.1.0 .
# (from the repository root; only clip_text/ and clip_image/ of the export are read). Not built by this
# project's CI (no container daemon there): linted by hadolint (tests/test_dockerfiles.py).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG MODEL_REPOSITORY=build/model_repository
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY pyproject.toml README.md /src/
COPY orchestrator /src/orchestrator
COPY client /src/client
COPY export /src/export
COPY model_repository /src/model_repository
# faiss-cpu searches the guidebook at run time; onnxruntime and tokenizers embed it here, then go
RUN pip install /src faiss-cpu==1.15.1 onnxruntime==1.32.0 tokenizers==0.23.3
COPY ${MODEL_REPOSITORY}/clip_text /tmp/models/clip_text
COPY ${MODEL_REPOSITORY}/clip_image /tmp/models/clip_image
RUN navig gazetteer build --dir /opt/navig/gazetteer \
    && navig guidebook default --out /tmp/guidebook.jsonl \
    && navig guidebook build /tmp/guidebook.jsonl --out /opt/navig/guidebook --model-repository /tmp/models \
    && pip uninstall --yes onnxruntime tokenizers

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 navig \
    && useradd --uid 10001 --gid navig --no-create-home --shell /usr/sbin/nologin navig
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/navig /opt/navig
# HOME and caches on /tmp: the chart mounts the root filesystem read-only and an emptyDir on /tmp
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/cache \
    NAVIG_HOST=0.0.0.0 \
    NAVIG_GAZETTEER_DIR=/opt/navig/gazetteer \
    NAVIG_GUIDEBOOK_DIR=/opt/navig/guidebook
USER 10001:10001
EXPOSE 50051 9464
# `navig serve` needs a Triton (NAVIG_TRITON_URL / NAVIG_POOLS; the chart sets them): none is embedded here
ENTRYPOINT ["navig"]
CMD ["serve"]

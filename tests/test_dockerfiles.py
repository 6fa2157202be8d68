"""The container images under deploy/docker: linted by hadolint, and held to the pins and paths they share
with the code. None is built here (no container daemon on this machine or in CI)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from navig.export import containers

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
TRITON_IMAGES = ("triton-cpu", "triton-encoders-gpu", "triton-vlm-gpu")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


def args_of(path: Path) -> dict[str, str]:
    return dict(a.split("=", 1) for k, a in instructions(path) if k == "ARG" and "=" in a)


def last(path: Path, keyword: str) -> str:
    return [a for k, a in instructions(path) if k == keyword][-1]


def test_every_image_is_here():
    assert {p.name.removesuffix(".Dockerfile") for p in DOCKERFILES} == {"orchestrator", *TRITON_IMAGES}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path):
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned_build_args(dockerfile: Path):
    froms = [a.split()[0] for k, a in instructions(dockerfile) if k == "FROM"]
    args = args_of(dockerfile)
    for image in froms:
        name = image.removeprefix("${").removesuffix("}")
        assert image.startswith("${") and name in args, f"FROM {image}: not a build arg"
        assert re.search(r":\d[\w.-]*$", args[name]), f"{name}={args[name]} has no version tag"


def test_gpu_images_use_the_pinned_nvidia_releases():
    assert args_of(DOCKER / "triton-encoders-gpu.Dockerfile")["TRITON_IMAGE"] == containers.ENCODERS_IMAGE
    assert args_of(DOCKER / "triton-vlm-gpu.Dockerfile")["TRITON_IMAGE"] == containers.VLMS_IMAGE


def test_encoder_image_installs_what_the_ocr_model_needs_within_the_extras_specifiers():
    runs = " ".join(a for k, a in instructions(DOCKER / "triton-encoders-gpu.Dockerfile") if k == "RUN")
    pins = dict(re.findall(r"([a-z][a-z0-9-]+)==([0-9][\w.]*)", runs))
    for spec in map(Requirement, containers.ENCODERS_EXTRA_PACKAGES):
        assert spec.name in pins, f"{spec.name} is not installed"
        assert spec.specifier.contains(pins[spec.name]), f"{spec.name}=={pins[spec.name]} outside {spec}"
    assert "--no-deps /src" in runs  # the image's own torch, transformers and TensorRT stay


def test_images_copy_every_package_folder():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    for dockerfile in DOCKERFILES:
        copied = {a.split()[0] for k, a in instructions(dockerfile) if k == "COPY" and "--from" not in a}
        assert folders <= copied, f"{dockerfile.name} leaves out {sorted(folders - copied)}"
        for source in copied:
            if not source.startswith("${MODEL_REPOSITORY}"):  # an export, made before the build
                assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}: not in the repository"


def test_cpu_images_match_the_interpreter_they_are_prepared_for():
    """The cpu Triton's library path names the base image's Python, as the python-backend stub needs."""
    for name in ("orchestrator", "triton-cpu"):
        base = args_of(DOCKER / f"{name}.Dockerfile")["PYTHON_IMAGE"]
        assert re.match(r"python:3\.11\.\d+-slim", base), base
    env = " ".join(a for k, a in instructions(DOCKER / "triton-cpu.Dockerfile") if k == "ENV")
    assert "/opt/venv/lib/python3.11/site-packages/nvidia_pytriton.libs" in env


@pytest.mark.parametrize("image", TRITON_IMAGES)
def test_triton_entrypoints_take_the_charts_flags(image: str):
    """The chart passes tritonserver flags only (deploy/helm/navig/templates/triton.yaml)."""
    entrypoint = yaml.safe_load(last(DOCKER / f"{image}.Dockerfile", "ENTRYPOINT"))
    assert Path(entrypoint[0]).name in ("tritonserver", "nvidia_entrypoint.sh")
    assert "tritonserver" in entrypoint
    assert last(DOCKER / f"{image}.Dockerfile", "USER") in ("1000:1000", "triton-server")


def test_orchestrator_image_is_non_root_with_its_indexes_built():
    dockerfile = DOCKER / "orchestrator.Dockerfile"
    user = last(dockerfile, "USER")
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0
    env = " ".join(a for k, a in instructions(dockerfile) if k == "ENV")
    runs = " ".join(a for k, a in instructions(dockerfile) if k == "RUN")
    gazetteer = re.search(r"NAVIG_GAZETTEER_DIR=(\S+)", env).group(1)
    guidebook = re.search(r"NAVIG_GUIDEBOOK_DIR=(\S+)", env).group(1)
    assert f"navig gazetteer build --dir {gazetteer}" in runs
    assert f"--out {guidebook}" in runs and "navig guidebook build" in runs
    assert yaml.safe_load(last(dockerfile, "ENTRYPOINT")) == ["navig"]

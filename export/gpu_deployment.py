"""The files written beside a gpu-profile export: README.md with the exact launch commands, navig.yaml
(orchestrator settings routing each model to its server) and, for `tensorrt_plan` encoders,
build_plans.sh.

Everything is generated from one source: the pins and ports in `containers.py`, the shapes in
`gpu_recipes.PLAN_SHAPES`, the models' LLM arguments. Written against the sources cited in
docs/gpu-stack-notes.md; none of it has been run on a GPU by this project, and the files say so.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

import navig.export as export_package
from navig.export import containers, gpu_recipes
from navig.export.containers import MODELS_MOUNT, SHM_SIZE, WHEELS_MOUNT, Pool
from navig.export.triton_config import ONNX_MODELS, GpuOptions, LlmOptions
from navig.model_repository import contract

README = "README.md"
SETTINGS = "navig.yaml"
PLAN_SCRIPT = "build_plans.sh"
WHEELS = "wheels"  # where the README's first step puts the navig-serve wheel
GPU_FILES = (README, SETTINGS, PLAN_SCRIPT)
NOT_RUN = "not run on a GPU"
HOST = "127.0.0.1"  # the orchestrator beside the two containers; from elsewhere: the GPU host's address
GPU_DEVICE = '"device=0"'  # both servers share one GPU (the KV-cache fractions are sized for that)
PLAN_SCRIPT_IN_CONTAINER = f"/{PLAN_SCRIPT}"


def grpc_url(pool: Pool, host: str = HOST) -> str:
    return f"{host}:{pool.grpc_port}"


def tritonserver_command(pool: Pool) -> list[str]:
    command = [
        "tritonserver",
        f"--model-repository={MODELS_MOUNT}",
        f"--http-port={pool.http_port}",
        f"--grpc-port={pool.grpc_port}",
        f"--metrics-port={pool.metrics_port}",
        "--disable-auto-complete-config",  # the configs are complete (decoupled is set in them)
    ]
    if pool is containers.VLMS:
        # one model at a time: each LLM sizes its KV cache from the memory free when it starts, so
        # the two never measure it at once (LlmOptions)
        command.append("--model-load-thread-count=1")
    return command


def container_script(pool: Pool) -> str:
    """What each container runs: our wheel (no dependencies: the image's own torch, transformers and
    xgrammar stay), the few packages the pool's python models import besides, then tritonserver."""
    steps = []
    if pool.extra_packages:
        steps.append("python3 -m pip install " + " ".join(f'"{p}"' for p in pool.extra_packages))
    steps.append(f"python3 -m pip install --no-deps {WHEELS_MOUNT}/navig_serve-*.whl")
    steps.append("exec " + shlex.join(tritonserver_command(pool)))
    return " && ".join(steps)


def docker_run(pool: Pool) -> list[list[str]]:
    """`docker run` for one server, as groups of words (an option with its value) for the README."""
    return [
        ["docker", "run", "-d", "--name", f"navig-{pool.folder}"],
        ["--gpus", GPU_DEVICE, f"--shm-size={SHM_SIZE}", "--ulimit", "memlock=-1"],
        [
            arg
            for port in (pool.http_port, pool.grpc_port, pool.metrics_port)
            for arg in ("-p", f"{port}:{port}")
        ],
        ["-e", "PIP_BREAK_SYSTEM_PACKAGES=1"],  # pip into the -py3 image's system Python 3.12 (PEP 668)
        ["-v", f"$NAVIG_GPU/{pool.folder}:{MODELS_MOUNT}"],
        ["-v", f"$NAVIG_GPU/{WHEELS}:{WHEELS_MOUNT}:ro"],
        [pool.image],
        ["bash", "-c", container_script(pool)],
    ]


def plan_commands(models: list[str], options: GpuOptions) -> list[list[str]]:
    return [
        gpu_recipes.trtexec_command(m, MODELS_MOUNT, options.workspace_bytes >> 20)
        for m in models
        if m in ONNX_MODELS
    ]


def docker_run_plans() -> list[list[str]]:
    return [
        ["docker", "run", "--rm", "--gpus", GPU_DEVICE],
        ["-v", f"$NAVIG_GPU/{containers.ENCODERS.folder}:{MODELS_MOUNT}"],
        ["-v", f"$NAVIG_GPU/{PLAN_SCRIPT}:{PLAN_SCRIPT_IN_CONTAINER}:ro"],
        [containers.TENSORRT_IMAGE],
        ["bash", PLAN_SCRIPT_IN_CONTAINER],
    ]


REFERENCE = "gpu-check-reference.npz"  # the cpu profile's answers, recorded on the export machine


def gpu_check_record_command(reference_repository: str = "build/model_repository") -> list[list[str]]:
    return [
        ["navig", "gpu-check", "record"],
        ["--model-repository", reference_repository],
        ["--reference", f"$NAVIG_GPU/{REFERENCE}"],
    ]


def gpu_check_run_command() -> list[list[str]]:
    return [
        ["navig", "gpu-check", "run"],
        ["--encoders-url", grpc_url(containers.ENCODERS)],
        ["--vlms-url", grpc_url(containers.VLMS)],
        ["--reference", f"$NAVIG_GPU/{REFERENCE}"],
    ]


def serve_command() -> list[list[str]]:
    return [
        [
            "navig",
            "serve",
            "--config",
            f"$NAVIG_GPU/{SETTINGS}",
            "--triton-url",
            grpc_url(containers.ENCODERS),
        ]
    ]


def settings(models: list[str]) -> dict[str, object]:
    """Orchestrator settings: `triton_url` is the encoders server (models not routed go there),
    `triton_routes` sends the VLMs to theirs."""
    return {
        "triton_url": grpc_url(containers.ENCODERS),
        "triton_routes": {m: grpc_url(containers.VLMS) for m in models if m in containers.VLMS.models},
    }


def _word(word: str) -> str:
    return f'"{word}"' if "$NAVIG_GPU" in word else shlex.quote(word)  # the shell expands $NAVIG_GPU


def shell_line(groups: list[list[str]]) -> str:
    return " ".join(_word(w) for group in groups for w in group)


def _start_server(step: int, what: str, pool: containers.Pool, wait_s: int) -> list[str]:
    """A README section's opening: the `docker run`, the wait for readiness, what runs inside."""
    return [
        f"## {step}. Start {what} ({NOT_RUN})",
        "",
        "```bash",
        _shell(docker_run(pool)),
        f"until curl -sf localhost:{pool.http_port}/v2/health/ready; do sleep {wait_s}; done",
        "```",
        "",
        "Inside, the container runs:",
        "",
        "```bash",
        *(part.strip() for part in container_script(pool).split(" && ")),
        "```",
        "",
    ]


def _shell(groups: list[list[str]]) -> str:
    """One command for a README code block: a line per group, continued with backslashes."""
    return " \\\n  ".join(" ".join(map(_word, group)) for group in groups)


def _pool_rows(models: list[str]) -> list[str]:
    rows = [
        "| server | folder | image | HTTP | gRPC | metrics | models |",
        "|---|---|---|---|---|---|---|",
    ]
    for pool in containers.POOLS:
        served = [m for m in models if m in pool.models]
        if served:
            rows.append(
                f"| {pool.folder} | `{pool.folder}/` | `{pool.image}` | {pool.http_port} | {pool.grpc_port} "
                f"| {pool.metrics_port} | {', '.join(served)} |"
            )
    return rows


def _llm_rows(options: GpuOptions, models: list[str]) -> list[str]:
    rows = [
        "| model | dtype | KV cache: fraction of free memory | KV cache: max tokens | max_num_tokens | "
        "max_batch_size |",
        "|---|---|---|---|---|---|",
    ]
    for name in (m for m in models if m in contract.VLM_MODELS):
        llm = options.llm.get(name, LlmOptions())
        cap = llm.kv_cache_max_tokens if llm.kv_cache_max_tokens is not None else "-"
        rows.append(
            f"| {name} | {llm.dtype} | {llm.kv_cache_fraction} | {cap} | {llm.max_num_tokens} "
            f"| {llm.max_batch_size} |"
        )
    return rows


def source_checkout() -> Path | None:
    """The navig-serve checkout this export ran from, when it runs from one (an editable install)."""
    root = Path(export_package.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def readme(output: Path, models: list[str], options: GpuOptions, version: str) -> str:
    enc, vlms = containers.ENCODERS, containers.VLMS
    has_encoders = any(m in enc.models for m in models)
    has_vlms = any(m in vlms.models for m in models)
    checkout = source_checkout()
    plans = options.encoders == "plan" and any(m in ONNX_MODELS for m in models)
    dtypes = {options.llm.get(m, LlmOptions()).dtype for m in models if m in contract.VLM_MODELS}
    reference_dtype = (
        f", exported with `vlm.dtype: {dtypes.pop()}` in SPEC so both profiles serve the same rounded "
        "VLM weights"
        if len(dtypes) == 1
        else ""
    )
    fractions = [
        options.llm.get(m, LlmOptions()).kv_cache_fraction for m in models if m in contract.VLM_MODELS
    ]
    kv_sum = ""
    if len(fractions) == 2:
        a, b = fractions
        kv_sum = (
            f" (here the two KV caches take at most {a:g} + {b:g} x {1 - a:g} = {a + b * (1 - a):.2f} of the "
            "memory free before them)"
        )
    out: list[str] = [
        f"# gpu deployment of this export ({NOT_RUN})",
        "",
        f"Written by `navig export build --profile gpu` (navig-serve {version}). **Nothing here has been "
        f"run on a GPU by this project ({NOT_RUN})**: the configs and commands are written against the "
        "sources cited in the navig-serve checkout's docs/gpu-stack-notes.md and checked as text by its "
        "tests. `navig gpu-check run` is the first run on a GPU.",
        "",
        "Two Triton servers, because NVIDIA's TensorRT-LLM image carries only the TensorRT-LLM and Python "
        "backends: the encoders and OCR in the `-py3` image, the VLMs in the `-trtllm-python-py3` image.",
        "",
        *_pool_rows(models),
        "",
        f"Images are pinned in one place, `navig/export/containers.py`: Triton {containers.TRITON_RELEASE}, "
        f"the newest release whose TensorRT-LLM image ships TensorRT-LLM {containers.TENSORRT_LLM_VERSION} "
        "(Triton's compatibility table, docs/introduction/compatibility.md @ r26.07); its `-py3` image ships "
        f"ONNX Runtime {containers.ONNXRUNTIME_VERSION}.",
        "",
        "## 1. On the export machine: the navig-serve wheel and the cpu reference",
        "",
        "Both containers install navig-serve with `--no-deps` (the images pin their own torch, "
        "transformers and xgrammar). Build the wheel into this folder; record the cpu profile's answers "
        f"for `navig gpu-check` into it too (from the cpu export of the same checkpoints{reference_dtype}); "
        "then copy the folder to the GPU host:",
        "",
        "```bash",
        f"export NAVIG_GPU={shlex.quote(str(output))}  # this folder; on the GPU host: where it is there",
        f'python3 -m pip wheel --no-deps --wheel-dir "$NAVIG_GPU/{WHEELS}" '
        f"{shlex.quote(str(checkout)) if checkout else '<navig-serve checkout>'}",
        "navig export build SPEC --profile cpu --out build/model_repository  # SPEC: this export's spec",
        _shell(gpu_check_record_command()),
        "```",
        "",
    ]
    step = 2
    if plans:
        out += [
            f"## {step}. Build the TensorRT plans ({NOT_RUN})",
            "",
            f"`{PLAN_SCRIPT}` holds one `trtexec` per encoder (shapes: `gpu_recipes.PLAN_SHAPES`). Run it in "
            "the TensorRT image of the same release as the Triton image, on the GPU that will serve (a "
            "plan runs only on the GPU model and TensorRT version it was built with):",
            "",
            "```bash",
            _shell(docker_run_plans()),
            "```",
            "",
            "The plans are built at the ONNX files' precision, float32 (the ONNX files `navig export` "
            "writes are float32): TensorRT 11 removed trtexec's precision flags (`--fp16`, `--int8`, "
            "`--best`, ...; deprecated since 10.12), so the commands pass `--stronglyTyped` (opt-in on "
            "TensorRT 10, an accepted no-op on 11) and no precision flag. fp16 plans would need fp16 ONNX "
            "files, which `navig export` does not produce.",
            "",
        ]
        step += 1
    elif has_encoders:
        out += [
            f"## {step}. TensorRT engines for the encoders ({NOT_RUN})",
            "",
            "The encoders run on ONNX Runtime with its TensorRT accelerator: each engine is built while its "
            "model loads (a warm-up request), with the optimisation profile of `gpu_recipes.PLAN_SHAPES` "
            f"(`trt_profile_min/opt/max_shapes`), and cached in `{enc.folder}/<model>/trt_cache` (the "
            f"container's `{MODELS_MOUNT}/<model>/trt_cache`): the first start takes minutes, later ones "
            f"reuse the engines. `precision_mode` is `{options.precision}`"
            + (
                " (on TensorRT 11, which the `-py3` image probably has, what ONNX Runtime does with FP16 "
                "is unverified; FP32 is the safe choice)."
                if options.precision == "FP16"
                else " (the ONNX files are float32; FP16 maps to a builder flag TensorRT 11 removed)."
            ),
            "",
        ]
        step += 1
    if has_encoders:
        out += [
            *_start_server(step, "the encoders server first", enc, wait_s=5),
            "`rapidocr` and `opencv-python-headless` are what the `ocr` python model imports besides numpy "
            "(`navig/model_repository/ocr_pipeline.py`); no ONNX Runtime or torch is installed by us.",
            "",
        ]
        step += 1
    if has_vlms:
        out += [
            *_start_server(step, "the VLM server", vlms, wait_s=10),
            "Each VLM is a python model on TensorRT-LLM's LLM API (PyTorch backend) over the Hugging Face "
            f"weights in `{vlms.folder}/<model>/1/weights`: no engine build step (the LLM API's PyTorch "
            "backend refuses engine directories, and NVIDIA deprecated the engine-build path for this "
            "model). As NVIDIA's llmapi model: one KIND_CPU instance (the LLM places itself on the GPU), "
            "decoupled (callers use gRPC streaming), no Triton batching (`max_batch_size: 0`; TensorRT-LLM "
            "batches requests in flight). The `LLM(...)` arguments are the config parameter `llm_args`:",
            "",
            *_llm_rows(options, models),
            "",
            "**Memory on one GPU.** `free_gpu_memory_fraction` is a fraction of the memory that is *free* "
            "when that LLM is created (after its weights load), not of the GPU. So start order matters: the "
            "encoders server starts first and takes its share; `--model-load-thread-count=1` loads the two "
            f"VLMs one after the other, so the second gets its fraction of what the first left{kv_sum}. "
            "For sizes that do not depend on start order, set `kv_cache_max_tokens` per model in "
            "the export spec (`gpu.reasoner`, `gpu.vlm`): TensorRT-LLM uses the smaller of the two limits. "
            "One prompt, image tokens included, must fit in `max_num_tokens` (a Qwen2-VL image costs "
            "(H/28) x (W/28) tokens; the orchestrator downscales photos for the VLMs to "
            "`vlm_image_max_side`, 640 px by default: at most 529 tokens). bfloat16 needs an Ampere or "
            "newer GPU: on older ones export with `vlm.dtype: float16`.",
            "",
        ]
        step += 1
    out += [
        f"## {step}. Check every model: `navig gpu-check` ({NOT_RUN})",
        "",
        "One request to every model (an image, a JSON schema, a streamed and a cancelled generation), "
        "compared with the cpu reference recorded in step 1; exits non-zero on any failure. It needs "
        f'navig-serve on the GPU host (`python3 -m pip install "$NAVIG_GPU"/{WHEELS}/navig_serve-*.whl`) '
        "and both servers up:",
        "",
        "```bash",
        _shell(gpu_check_run_command()),
        "```",
        "",
        f"## {step + 1}. Serve",
        "",
        f"`{SETTINGS}` (beside this file) points the orchestrator at both servers: `triton_url` is the "
        "encoders server (models not routed go there), `triton_routes` maps each VLM to the VLM server. "
        f"From another machine, replace {HOST} with the GPU host's address.",
        "",
        "```bash",
        _shell(serve_command()),
        "```",
        "",
        "## What the images contain (check on the GPU host)",
        "",
        "The TensorRT version inside the `-py3` image is in no source this was written from (probably 11.x):",
        "",
        "```bash",
        f"docker run --rm {enc.image} bash -c 'ls /usr/lib/x86_64-linux-gnu/libnvinfer.so.*'",
        f"docker run --rm {vlms.image} python3 -c 'import tensorrt_llm; print(tensorrt_llm.__version__)'",
        "```",
        "",
    ]
    return "\n".join(out)


def settings_text(models: list[str]) -> str:
    header = (
        f"# Orchestrator settings for this gpu export ({NOT_RUN}): `navig serve --config navig.yaml "
        f"--triton-url {grpc_url(containers.ENCODERS)}`.\n"
        "# triton_url: the encoders server (models not routed go there); triton_routes: model -> server.\n"
    )
    return header + yaml.safe_dump(settings(models), sort_keys=False)


def write_deployment(output: Path, models: list[str], options: GpuOptions, version: str) -> list[Path]:
    """README.md, navig.yaml and (plans) build_plans.sh in `output`; returns what it wrote."""
    written = [output / README, output / SETTINGS]
    (output / README).write_text(readme(output, models, options, version))
    (output / SETTINGS).write_text(settings_text(models))
    script = output / PLAN_SCRIPT
    script.unlink(missing_ok=True)
    if commands := plan_commands(models, options) if options.encoders == "plan" else []:
        note = (
            f"TensorRT plans for the encoders ({NOT_RUN}). Run inside {containers.TENSORRT_IMAGE} with "
            f"{containers.ENCODERS.folder}/ mounted at {MODELS_MOUNT}:\n" + shell_line(docker_run_plans())
        )
        written.append(gpu_recipes.write_script(script, commands, note))
    return written

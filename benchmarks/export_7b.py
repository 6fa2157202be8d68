"""`navig export build` on a Qwen2-VL-7B-shaped bf16 checkpoint + an r=8 ms-swift LoRA: peak RSS, time, disk.

Not part of `make bench`: the full shape takes about 20 minutes and ~50 GB of disk (the 16.6 GB base,
the `vlm` copy, the merged `reasoner`). The checkpoint is random but in the real on-disk format:
Qwen2-VL-7B-Instruct's config (text and vision tower), five bf16 safetensors shards of at most 3.9 GB
with `model.safetensors.index.json`, keys in the transformers-4 layout the release uses (`model.layers.N`,
`visual.`), written tensor by tensor so the whole model is never in this process's memory. The adapter is
ms-swift's folder shape: peft's `adapter_config.json` + `adapter_model.safetensors` (bf16, transformers-4
key layout) beside swift's `args.json`, `configuration.json`, `additional_config.json`, `README.md`.
The tokenizer, image processor and chat template are the tiny demo preset's (their ids fit the vocab).

The exporter runs as `navig export build SPEC --force` in a subprocess; its peak RSS is the kernel's
(`getrusage(RUSAGE_CHILDREN).ru_maxrss`), cross-checked by polling its RSS with psutil; disk written is
the process's write_bytes (/proc/PID/io) and the output folder's size. While it runs, /tmp/navig-7b-running
exists (other agents on this shared machine hold back memory-hungry work). The big folders are deleted
afterwards unless --keep; the JSON stays: build/bench/export_7b.json (export_7b-<shape>.json when scaled).

    python -m benchmarks.export_7b                 # the full 7B shape
    python -m benchmarks.export_7b --layers 2 --vision-depth 2 --vocab 32000   # minutes, for development
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from safetensors.torch import load_file, save_file

from navig.client.profile.machine import machine

OUT = Path("build/bench")
WORK = OUT / "export-7b"
RUNNING_FLAG = Path("/tmp/navig-7b-running")
BASE_NAME = "Qwen2-VL-7B-Instruct"
SHARD_BYTES = 3_900_000_000  # the release's shards: five, the largest 3.9 GB
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_RANK, LORA_ALPHA = 8, 32
# Qwen2-VL-7B-Instruct's config.json (text and vision), as released; token ids are the tokenizer's.
TEXT_7B = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "max_window_layers": 28,
    "use_sliding_window": False,
    "sliding_window": 32768,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
}
VISION_7B = {
    "depth": 32,
    "embed_dim": 1280,
    "hidden_size": 3584,
    "hidden_act": "quick_gelu",
    "mlp_ratio": 4,
    "num_heads": 16,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json")


def qwen2_vl_config(layers: int, vision_depth: int, vocab: int, demo: Path) -> dict:
    """The 7B config.json with the demo tokenizer's special-token ids, in bfloat16."""
    from transformers import Qwen2VLConfig

    ids = json.loads((demo / "config.json").read_text())
    text = {**TEXT_7B, "num_hidden_layers": layers, "max_window_layers": layers, "vocab_size": vocab}
    text |= {k: ids["text_config"][k] for k in ("bos_token_id", "eos_token_id")}
    config = Qwen2VLConfig(
        text_config=text,
        vision_config={**VISION_7B, "depth": vision_depth},
        tie_word_embeddings=False,
        **{
            k: ids[k]
            for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
        },
    )
    config.dtype = torch.bfloat16
    data = config.to_dict()
    data["torch_dtype"] = "bfloat16"
    return data


def release_name(name: str) -> str:
    """transformers 5's parameter name -> the release checkpoint's (transformers 4 layout)."""
    if name.startswith("model.language_model."):
        return "model." + name.removeprefix("model.language_model.")
    if name.startswith("model.visual."):
        return name.removeprefix("model.")
    return name


def random_tensor(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """transformers' initialisation in kind: normal(0, 0.02) matrices, unit norms, zero biases."""
    if name.endswith("bias"):
        return torch.zeros(shape, dtype=torch.bfloat16)
    if "norm" in name or name.endswith("ln_q.weight"):
        return torch.ones(shape, dtype=torch.bfloat16)
    return (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)


def write_base(folder: Path, config: dict, demo: Path, progress: Progress) -> tuple[int, int]:
    """config.json, the demo side files, and the weights shard by shard; returns (bytes, shards)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in SIDE_FILES:
        shutil.copy2(demo / name, folder / name)
    (folder / "generation_config.json").write_text(
        json.dumps({"bos_token_id": config["text_config"]["bos_token_id"], "do_sample": False}) + "\n"
    )
    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration(Qwen2VLConfig.from_dict(config))
    shapes = {release_name(n): t.shape for n, t in model.state_dict().items()}
    total = sum(math.prod(s) * 2 for s in shapes.values())
    groups: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * 2
        if groups[-1] and size + nbytes > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    generator = torch.Generator().manual_seed(0)
    weight_map = {}
    task = progress.add_task("random bf16 base", total=total)
    for k, names in enumerate(groups, 1):
        shard = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: random_tensor(n, shapes[n], generator) for n in names}
        save_file(tensors, folder / shard, metadata={"format": "pt"})
        progress.advance(task, sum(t.nbytes for t in tensors.values()))
        weight_map |= dict.fromkeys(names, shard)
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return total, len(groups)


def write_swift_adapter(folder: Path, base: Path, config: dict) -> int:
    """An r=8 LoRA on the LLM's projections, as ms-swift saves it; returns its parameter count."""
    text = config["text_config"]
    hidden, inter = text["hidden_size"], text["intermediate_size"]
    kv = hidden // text["num_attention_heads"] * text["num_key_value_heads"]
    shapes = {  # (in, out) of each target
        "self_attn.q_proj": (hidden, hidden),
        "self_attn.k_proj": (hidden, kv),
        "self_attn.v_proj": (hidden, kv),
        "self_attn.o_proj": (hidden, hidden),
        "mlp.gate_proj": (hidden, inter),
        "mlp.up_proj": (hidden, inter),
        "mlp.down_proj": (inter, hidden),
    }
    generator = torch.Generator().manual_seed(1)
    tensors = {}
    for layer in range(text["num_hidden_layers"]):
        for module, (fan_in, fan_out) in shapes.items():
            key = f"base_model.model.model.layers.{layer}.{module}"
            a = torch.randn(LORA_RANK, fan_in, generator=generator) / math.sqrt(fan_in)
            tensors[f"{key}.lora_A.weight"] = a.to(torch.bfloat16)
            tensors[f"{key}.lora_B.weight"] = (
                torch.randn(fan_out, LORA_RANK, generator=generator) * 0.01
            ).to(torch.bfloat16)
    folder.mkdir(parents=True)
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": f"/root/.cache/modelscope/hub/Qwen/{base.name}",
        "r": LORA_RANK,
        "lora_alpha": LORA_ALPHA,
        "lora_dropout": 0.05,
        "target_modules": list(LORA_TARGETS),
        "bias": "none",
        "inference_mode": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "revision": None,
    }
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
    swift = {
        "model": f"Qwen/{base.name}",
        "train_type": "lora",
        "lora_rank": LORA_RANK,
        "torch_dtype": "bfloat16",
    }
    (folder / "args.json").write_text(json.dumps(swift, indent=2) + "\n")
    (folder / "configuration.json").write_text('{"framework": "pytorch", "task": "image-text-to-text"}\n')
    (folder / "additional_config.json").write_text('{"lora_dtype": null, "lorap_lr_ratio": null}\n')
    (folder / "README.md").write_text("ms-swift LoRA (benchmark: random weights)\n")
    return sum(t.numel() for t in tensors.values())


def rss_anon(pid: int) -> int:
    """Resident anonymous memory (/proc/PID/status RssAnon): what cannot be dropped and re-read from a
    file, unlike the mapped safetensors pages RSS also counts."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def run_export(spec: Path, console: Console) -> dict:
    """`navig export build SPEC --force` in a subprocess: peak RSS (kernel, polled), time, bytes written."""
    navig = Path(sys.executable).with_name("navig")
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    process = psutil.Popen(
        [str(navig), "export", "build", str(spec), "--force"], stdout=subprocess.PIPE, text=True
    )
    polled = anon = written = 0
    with console.status("navig export build (its output follows when it ends)...") as status:
        while process.poll() is None:
            try:
                tree = [process, *process.children(recursive=True)]
                polled = max(polled, sum(p.memory_info().rss for p in tree))
                anon = max(anon, sum(rss_anon(p.pid) for p in tree))
                written = process.io_counters().write_bytes
            except psutil.Error:
                pass
            status.update(
                f"navig export build: {time.perf_counter() - started:.0f} s, RSS now "
                f"{process.memory_info().rss / 2**30:.2f} GiB, peak {polled / 2**30:.2f} GiB, "
                f"written {written / 1e9:.1f} GB"
            )
            time.sleep(0.2)
    seconds = time.perf_counter() - started
    output = process.stdout.read() if process.stdout else ""
    console.print(output)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if process.returncode != 0:
        raise SystemExit(f"navig export build failed (exit {process.returncode})")
    return {
        "seconds": seconds,
        "peak_rss_bytes": peak if peak > before * 1024 else polled,
        "peak_rss_polled_bytes": polled,
        "peak_rss_anon_polled_bytes": anon,
        "write_bytes": written,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=TEXT_7B["num_hidden_layers"])
    parser.add_argument("--vision-depth", type=int, default=VISION_7B["depth"])
    parser.add_argument("--vocab", type=int, default=TEXT_7B["vocab_size"])
    parser.add_argument("--keep", action="store_true", help="Keep the checkpoints and the export.")
    parser.add_argument(
        "--reuse", action="store_true", help="Reuse the checkpoint a failed or --keep run left (same shape)."
    )
    args = parser.parse_args()
    full = (args.layers, args.vision_depth, args.vocab) == (28, 32, 152064)
    name = "export_7b" if full else f"export_7b-l{args.layers}-v{args.vision_depth}-vocab{args.vocab}"
    console = Console()
    work = WORK if full else OUT / name
    base, adapter, output = work / BASE_NAME, work / "swift-lora" / "checkpoint-1000", work / "repository"
    if args.reuse and (base / "model.safetensors.index.json").is_file() and (adapter / "README.md").is_file():
        config = json.loads((base / "config.json").read_text())
        checkpoint_bytes = json.loads((base / "model.safetensors.index.json").read_text())["metadata"][
            "total_size"
        ]
        shards = len(list(base.glob("*.safetensors")))
        lora_params = sum(t.numel() for t in load_file(adapter / "adapter_model.safetensors").values())
    else:
        if work.exists():
            shutil.rmtree(work)
        with tempfile.TemporaryDirectory() as tmp:
            from navig.export.demo_checkpoints.qwen2_vl import build_qwen2_vl

            build_qwen2_vl(Path(tmp) / "qwen2_vl", Path(tmp) / "lora", "tiny")
            config = qwen2_vl_config(args.layers, args.vision_depth, args.vocab, Path(tmp) / "qwen2_vl")
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn())
            with Progress(*columns, console=console) as progress:
                checkpoint_bytes, shards = write_base(base, config, Path(tmp) / "qwen2_vl", progress)
        lora_params = write_swift_adapter(adapter, base, config)
    spec = work / "export.yaml"
    vlm = f"vlm:\n  base: {base.resolve()}\n  reasoner_adapter: {adapter.resolve()}\n"
    spec.write_text(f"ocr: null\noutput: {output.resolve()}\n{vlm}")
    RUNNING_FLAG.touch()
    try:
        measured = run_export(spec, console)
    finally:
        RUNNING_FLAG.unlink(missing_ok=True)
    report = json.loads((output / "export_report.json").read_text())
    artifacts = {a["model"]: a for a in report["artifacts"]}
    from navig.export.report import folder_size

    result = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m benchmarks.export_7b " + " ".join(sys.argv[1:]),
        "shape": {
            "layers": args.layers,
            "vision_depth": args.vision_depth,
            "vocab": args.vocab,
            "full_7b": full,
        },
        "checkpoint_bytes": checkpoint_bytes,
        "checkpoint_shards": shards,
        "lora_parameters": lora_params,
        **measured,
        "peak_rss_over_checkpoint": measured["peak_rss_bytes"] / checkpoint_bytes,
        "output_bytes": folder_size(output),
        "artifacts": artifacts,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = Table(title=f"navig export build, Qwen2-VL-7B-shaped bf16 + r=8 LoRA ({name})")
    for column in ("figure", "value"):
        table.add_column(column)
    reasoner = artifacts.get("reasoner", {})
    rows = [
        ("checkpoint", f"{checkpoint_bytes / 1e9:.2f} GB in {shards} shards"),
        (
            "peak RSS (exporter)",
            f"{result['peak_rss_bytes'] / 2**30:.2f} GiB = {result['peak_rss_over_checkpoint']:.2f}x",
        ),
        ("peak RSS (polled)", f"{measured['peak_rss_polled_bytes'] / 2**30:.2f} GiB"),
        ("peak anonymous RSS (polled)", f"{measured['peak_rss_anon_polled_bytes'] / 2**30:.2f} GiB"),
        ("time", f"{measured['seconds']:.0f} s"),
        ("disk written (process)", f"{measured['write_bytes'] / 1e9:.1f} GB"),
        ("output folder", f"{result['output_bytes'] / 1e9:.1f} GB"),
        ("vlm", str(artifacts.get("vlm", {}).get("figure"))),
        ("merge parity", f"{reasoner.get('max_abs_diff')} (tolerance {reasoner.get('tolerance')})"),
        ("check", str(reasoner.get("check"))),
        ("warnings", str(reasoner.get("warnings"))),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if not args.keep:
        shutil.rmtree(work)
    console.print(f"wrote {OUT / f'{name}.json'}")


if __name__ == "__main__":
    main()

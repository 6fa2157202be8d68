"""The LoRA merge checked in the checkpoint's own dtype: PEFT before, the merged files after.

A 7B base in bfloat16 is ~16 GB; a float32 copy or a second model in memory would not fit a 24 GB
machine. So the PEFT model (x W^T + s B(A x)) answers first; then, with it gone, the merged files
(x (W + s B A)^T, `streamed_merge`) loaded in the same dtype answer the same inputs: logits on
image+text inputs and greedy tokens on a few text prompts. What is checked is what will be served.

In float32 the two differ by float32 arithmetic only, and the spec's `vlm.merge_tolerance` bounds
them, as it always did. In bfloat16/float16 the merged weight W + s B A is rounded once more to the
dtype, moving each merged weight by up to u (its unit roundoff) of its value, where the PEFT forward
adds the adapter in float32. The tolerance is calibrated on the model itself, as CAST_MARGIN is
(vlm.py): MERGE_MARGIN x the logit change caused by perturbing every merged weight by a seeded random
factor 1 + d, d uniform in [-u, u] (`perturbed`), applied as forward hooks (out + x (W * d)^T) so
the stored weights are never touched and no copy is made. Rounding moves each weight by at most u of
its value, so that perturbation is the rounding's error model. Measured in bfloat16: on the small
demo preset (3 seeds, with an independent draw per module, before the draw became one shifted window)
the merge changes the logits by 0.95x-1.44x what the perturbation does; on the 7B shape cut to 2
layers (benchmarks/export_7b.py --layers 2 --vision-depth 2 --vocab 32000), 1.09x. That is a larger
share than the cast's 0.54x-0.92x: the PEFT forward also rounds its adapter output once more, and
bfloat16 arithmetic rounds every activation of both runs.
MERGE_MARGIN = 4 keeps a correct merge clear of a false alarm. What it catches: a merge that went
wrong (a wrong scale, a missed or doubled adapter, layers swapped, infinities, NaNs).

Greedy tokens may differ only where the PEFT run's top two logits were within the logit tolerance
(a near-tie the tolerance allows to flip; random demo weights have many): tokens must be identical up
to the first such step, and the rest of that prompt's continuation is not compared.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

MERGE_MARGIN = 4.0
MERGE_SEED = 0
SHIFT, SPAN = 7919, 1_000_003  # module k's window of the draw starts at k x SHIFT mod SPAN
GREEDY_TOKENS = 8
GREEDY_PROMPTS = (
    "Which country drives on the left and writes its road signs in two scripts?",
    "Describe a street in a small town in the Andes.",
    "Name three clues that tell Portugal from Spain in a photo.",
)


@dataclass(frozen=True)
class Greedy:
    tokens: list[int]
    gaps: list[float]  # top-1 minus top-2 logit at each step


@dataclass(frozen=True)
class GreedyComparison:
    prompts: int
    identical: int
    near_ties: int  # prompts that diverged at a step whose gap was within the tolerance
    failures: list[str]

    def summary(self) -> str:
        text = f"greedy {GREEDY_TOKENS} tokens: {self.identical}/{self.prompts} prompts identical"
        return text + (f", {self.near_ties} diverged at a near-tie" if self.near_ties else "")


def logits(model: Any, samples: list[dict]) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [model(**s).logits.float() for s in samples]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def greedy(model: Any, samples: list[dict]) -> list[Greedy]:
    runs = []
    with torch.inference_mode():
        for sample in samples:
            out = model.generate(
                **sample,
                max_new_tokens=GREEDY_TOKENS,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
            )
            tokens = out.sequences[0, sample["input_ids"].shape[1] :].tolist()
            gaps = []
            for step in out.logits:
                top = step[0].float().topk(2).values
                gaps.append(float(top[0] - top[1]))
            runs.append(Greedy(tokens, gaps))
    return runs


def compare_greedy(before: list[Greedy], after: list[Greedy], tolerance: float) -> GreedyComparison:
    identical = near_ties = 0
    failures = []
    for k, (b, a) in enumerate(zip(before, after, strict=True)):
        if b.tokens == a.tokens:
            identical += 1
            continue
        step = next(
            (i for i, (x, y) in enumerate(zip(b.tokens, a.tokens)) if x != y),
            min(len(b.tokens), len(a.tokens)),
        )
        if step < len(b.gaps) and b.gaps[step] <= tolerance:
            near_ties += 1
        else:
            gap = b.gaps[step] if step < len(b.gaps) else float("inf")
            failures.append(
                f"prompt {k}: token {step} changed with a top-2 gap of {gap:.2e} > {tolerance:.1e}"
            )
    return GreedyComparison(len(before), identical, near_ties, failures)


@contextmanager
def perturbed(model: Any, module_names: list[str], u: float) -> Iterator[None]:
    """Each named Linear answers as if its weight were multiplied by 1 + d, d uniform in [-u, u],
    through a forward hook; the stored weights are untouched. The d of module k are a window, shifted
    by k x SHIFT, of one seeded draw as large as the largest weight: drawing per module and call costs
    minutes on a 7B model, and keeping every module's d would be another copy of the model."""
    modules = [model.get_submodule(name) for name in module_names]
    largest = max((m.weight.numel() for m in modules), default=0)
    generator = torch.Generator().manual_seed(MERGE_SEED)
    draw = u * (2 * torch.rand(largest + SHIFT * len(modules) % SPAN + SPAN, generator=generator) - 1)
    handles = []
    for k, module in enumerate(modules):
        offset = k * SHIFT % SPAN

        def hook(module: Any, inputs: tuple, output: torch.Tensor, offset: int = offset) -> Any:
            noise = draw[offset : offset + module.weight.numel()].view(module.weight.shape)
            delta = (module.weight.float() * noise).to(module.weight.dtype)
            return output + torch.nn.functional.linear(inputs[0], delta)

        handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()

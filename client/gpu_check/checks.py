"""The checks: every model answers its probe like the cpu profile did, the VLMs also constrain JSON,
stream and stop when cancelled. Each check is one row; any failed row fails the run."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from tritonclient.utils import InferenceServerException

from navig.client.gpu_check.calls import Generated, Server
from navig.client.gpu_check.probes import (
    COMPARED,
    PROMPT,
    TOLERANCE,
    VLM_TOKENS,
    Reference,
    encoder_inputs,
    probe_image,
)
from navig.model_repository import contract
from navig.orchestrator import prompts
from navig.orchestrator.answer import InvalidAnswer, parse_answer

LONG = 1024  # tokens asked of the generation that is cancelled: more than it makes before its deadline
COUNT = "Count from 1 to 1000 in words, separated by commas."  # an answer longer than the deadline


@dataclass(frozen=True)
class Row:
    model: str
    check: str
    measured: str
    expected: str
    ok: bool


def record(server: Server, timeout_s: float = 300.0) -> Reference:
    """The reference: what the cpu profile's models answer to the probes."""
    reference = Reference(source=server.url)
    inputs = encoder_inputs()
    for model, output in COMPARED.items():
        reference.outputs[model] = server.infer(model, inputs[model], timeout_s)[output]
    texts = server.infer(contract.OCR, inputs[contract.OCR], timeout_s)[contract.OCR_TEXTS]
    reference.ocr_texts = [t.decode("utf-8") for t in texts.reshape(-1)]
    for model in contract.VLM_MODELS:
        reference.vlm_tokens[model] = server.generate(
            model, PROMPT, probe_image(), VLM_TOKENS, "", timeout_s
        ).token_ids
    return reference


def run_checks(
    servers: dict[str, Server], reference: Reference, expect_streaming: bool, cancel_after_s: float = 1.0
) -> Iterator[Row]:
    """`servers`: model -> the server that serves it."""
    for model in contract.MODELS:
        server = servers[model]
        row = _guarded(model, "ready", lambda server=server, model=model: _ready(server, model))
        yield row
    inputs = encoder_inputs()
    for model, output in COMPARED.items():
        yield _guarded(model, "probe", lambda model=model, output=output: _encoder(
            servers[model], model, inputs[model], output, reference.outputs[model]))  # fmt: skip
    yield _guarded(
        contract.OCR, "probe", lambda: _ocr(servers[contract.OCR], inputs[contract.OCR], reference)
    )
    for model in contract.VLM_MODELS:
        server = servers[model]
        yield _guarded(
            model, "first tokens", lambda server=server, model=model: _tokens(server, model, reference)
        )
        if model == contract.VLM:
            yield _guarded(model, "json schema", lambda server=server: _json_schema(server))
        yield _guarded(model, "streaming", lambda server=server, model=model: _streaming(
            server, model, expect_streaming))  # fmt: skip
        yield _guarded(
            model, "cancelled", lambda server=server, model=model: _cancelled(server, model, cancel_after_s)
        )


def _guarded(model: str, check: str, run: Callable[[], tuple[str, str, bool]]) -> Row:
    """A failing call is a failed row that says what Triton answered, not a traceback."""
    try:
        measured, expected, ok = run()
    except InferenceServerException as exc:
        return Row(model, check, f"{exc.status() or 'error'}: {exc.message()}"[:120], "an answer", False)
    return Row(model, check, measured, expected, ok)


def _ready(server: Server, model: str) -> tuple[str, str, bool]:
    ready = server.client.is_model_ready(model, client_timeout=10.0)
    return (f"ready on {server.url}" if ready else f"not ready on {server.url}"), "ready", ready


def _encoder(
    server: Server, model: str, inputs: dict[str, np.ndarray], output: str, expected: np.ndarray
) -> tuple[str, str, bool]:
    got = server.infer(model, inputs, 60.0)[output]
    if got.shape != expected.shape:
        return f"{output} shape {got.shape}", f"shape {expected.shape}", False
    diff = float(np.max(np.abs(got.astype(np.float64) - expected))) if got.size else 0.0
    return f"{output} max diff {diff:.2e}", f"<= {TOLERANCE:.0e}", diff <= TOLERANCE


def _ocr(server: Server, inputs: dict[str, np.ndarray], reference: Reference) -> tuple[str, str, bool]:
    texts = [
        t.decode("utf-8") for t in server.infer(contract.OCR, inputs, 60.0)[contract.OCR_TEXTS].reshape(-1)
    ]
    return f"texts {texts}"[:80], f"texts {reference.ocr_texts}"[:80], texts == reference.ocr_texts


def _tokens(server: Server, model: str, reference: Reference) -> tuple[str, str, bool]:
    """Greedy decoding of the same weights: the first token must agree; the agreeing prefix is shown
    (bf16 on a GPU against fp32 on a CPU may part ways later, on near-ties)."""
    got = server.generate(model, PROMPT, probe_image(), VLM_TOKENS, "", 120.0).token_ids
    expected = reference.vlm_tokens[model]
    agree = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
    return f"{agree}/{len(expected)} tokens agree", "the first agrees", agree >= 1


def _json_schema(server: Server) -> tuple[str, str, bool]:
    out = server.generate(
        contract.VLM, PROMPT, probe_image(), prompts.GUESS_MAX_TOKENS, prompts.GUESS_SCHEMA_JSON, 120.0
    )
    try:
        answer = parse_answer(out.text)
    except InvalidAnswer as exc:
        return f"rejected: {exc}"[:80], "valid GUESSER JSON", False
    return json.dumps({"country": answer.country_code, "city": answer.city})[:80], "valid GUESSER JSON", True


def _streaming(server: Server, model: str, expect_streaming: bool) -> tuple[str, str, bool]:
    decoupled = server.decoupled(model)
    out: Generated = server.generate(model, PROMPT, probe_image(), VLM_TOKENS, "", 120.0)
    measured = f"{out.responses} responses ({'decoupled' if decoupled else 'not decoupled'})"
    if not expect_streaming:
        return measured, "any (--no-expect-streaming)", out.responses >= 1
    return measured, "decoupled, > 1 responses", decoupled and out.responses > 1


def _cancelled(server: Server, model: str, after_s: float) -> tuple[str, str, bool]:
    """A generation the client gives up on ends then, and the model answers the next request. A
    decoupled model's stream is cancelled after its first piece; a unary call by its deadline. That the
    server also stopped generating shows in its log ("generation stopped after N tokens")."""
    decoupled = server.decoupled(model)
    try:
        out = server.generate(model, COUNT, probe_image(), LONG, "", after_s, cancel_after_first=decoupled)
    except InferenceServerException as exc:
        status = str(exc.status() or "")
        if "CANCELLED" not in status and "DEADLINE_EXCEEDED" not in status:
            raise
        after = server.generate(model, PROMPT, probe_image(), 1, "", 60.0)
        how = "cancelled after the first piece" if decoupled else status.removeprefix("StatusCode.")
        return f"{how}; next call answered", "ends; log: generation stopped", len(after.token_ids) >= 1
    measured = f"finished first: {len(out.token_ids)} tokens in {out.seconds:.1f} s, not cancelled"
    return measured, "ends; log: generation stopped", False

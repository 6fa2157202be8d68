"""The orchestrator's only door to Triton: asyncio gRPC calls with deadlines, metrics and clear errors.

Tensors in and out are numpy; failures become the pipeline's errors (UNAVAILABLE when Triton is
gone, DEADLINE_EXCEEDED when the request's time is up, INTERNAL naming the model otherwise).
Decoupled (streaming) models are called through the stream API; others with unary infer.

One client is one gRPC channel to a target that may name several Triton replicas (`ipv4:a:p,b:p`,
`dns:///svc:8001`): gRPC's round_robin spreads the calls over them, and its retry policy sends a call that
met UNAVAILABLE (a replica killed or gone) to another, within the call's own deadline.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence

import grpc
import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.grpc import InferInput
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from navig.model_repository import contract
from navig.orchestrator.deadline import Deadline
from navig.orchestrator.errors import DeadlineExceeded, ModelMissing, PipelineError, Unavailable
from navig.orchestrator.metrics import Metrics

# Retries: a call that met UNAVAILABLE (its replica died, refused the connection, or had not loaded
# the model) is sent again, to the next replica under round_robin. gRPC caps maxAttempts at 5; the
# backoffs (jittered, 0.05 s doubling to 1 s: ~1.5 s over the 4 retries) let a single-replica pool
# ride out a connection reset. The call's deadline bounds every attempt together: no retry outlives it.
RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.05s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {"name": [{"service": "inference.GRPCInferenceService"}], "retryPolicy": RETRY_POLICY}
        ],
    }
)


def channel_options(max_message_bytes: int, keepalive_s: float = 0) -> list[tuple[str, int | str]]:
    """The channel to one pool: round_robin over every address its target resolves to, retries on
    UNAVAILABLE, fast reconnects, and keepalive pings when asked for."""
    options: list[tuple[str, int | str]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # a restarted Triton is found within 2 s, not after gRPC's default backoff of up to 120 s
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", SERVICE_CONFIG),
        ("grpc.service_config_disable_resolution", 1),  # ours, not one a DNS TXT record may carry
        # a call is retried only while gRPC still holds its whole request (default 256 KiB): photos
        # for the detector are larger
        ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
        # a dns:/// target is resolved again when a connection closes (a replica gone, or Triton's
        # --grpc-max-connection-age), at most this often (gRPC's default: 30 s): new replicas join sooner
        ("grpc.dns_min_time_between_resolutions_ms", 5000),
    ]
    if keepalive_s > 0:
        # pings while calls are in flight find a replica whose node vanished without a TCP reset;
        # Triton must accept them (--grpc-http2-min-recv-ping-interval-without-data <= this period)
        options += [
            ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 0),
        ]
    return options


ADAPTERS = "adapters"  # the VLM config parameter naming the LoRA adapters a model serves


class TritonModels:
    def __init__(self, url: str, metrics: Metrics, max_message_bytes: int, keepalive_s: float = 0) -> None:
        """`url`: a gRPC target, `host:port` or one naming several replicas (`ipv4:a:p,b:p`, `dns:///`)."""
        self.url = url
        self._metrics = metrics
        options = channel_options(max_message_bytes, keepalive_s)
        self._client = triton.InferenceServerClient(url, channel_args=options)
        self._configs: dict[str, mc.ModelConfig] = {}  # asked once per model, forgotten when Triton is down

    async def close(self) -> None:
        await self._client.close()

    async def ready(self, models: Sequence[str]) -> bool:
        """Triton is live and every model in `models` is loaded (the REASONER: where `served` finds it);
        never raises."""
        try:
            served = dict.fromkeys([(await self.served(m, Deadline.after(2.0)))[0] for m in models])
            ready = all([await self._client.is_model_ready(m, client_timeout=2.0) for m in served])
        except (InferenceServerException, grpc.RpcError, OSError, PipelineError):
            ready = False
        if not ready:
            self._configs.clear()  # a Triton that comes back may serve another repository
        return ready

    async def versions(self, models: Sequence[str]) -> dict[str, str]:
        """The loaded version of each model (what answered, for the response)."""
        versions = {}
        for model in models:
            try:
                served, _ = await self.served(model, Deadline.after(2.0))
                metadata = await self._client.get_model_metadata(served, client_timeout=2.0)
                versions[model] = max(metadata.versions, key=int) if metadata.versions else ""
            except (InferenceServerException, grpc.RpcError, PipelineError):
                versions[model] = ""
        return versions

    async def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], deadline: Deadline
    ) -> dict[str, np.ndarray]:
        """One unary inference; returns every output by name."""
        started = time.perf_counter()
        try:
            tensors = infer_inputs(inputs)
            result = await self._client.infer(model, tensors, client_timeout=deadline.remaining())
        except InferenceServerException as exc:
            raise self._failure(model, exc) from None
        finally:
            self._metrics.triton_latency.labels(model).observe(time.perf_counter() - started)
        response = result.get_response()
        return {output.name: result.as_numpy(output.name) for output in response.outputs}

    async def generate(
        self,
        model: str,
        prompt: str,
        deadline: Deadline,
        image: np.ndarray | None = None,
        max_tokens: int | None = None,
        json_schema: str | None = None,
    ) -> AsyncIterator[str]:
        """A VLM answer as pieces of text: many for a decoupled model, one otherwise. The REASONER runs
        where `served` finds it: its own model, or its adapter on `vlm`."""
        model, adapter = await self.served(model, deadline)
        config = await self._config(model, deadline)
        takes_adapter = bool(served_adapters(config))
        inputs = vlm_inputs(prompt, image, max_tokens, json_schema, adapter if takes_adapter else None)
        decoupled = config.model_transaction_policy.decoupled
        if not decoupled:
            outputs = await self.infer(model, inputs, deadline)
            yield outputs[contract.VLM_TEXT].reshape(-1)[0].decode("utf-8")
            return
        async for piece in self._stream(model, inputs, deadline):
            yield piece

    async def _stream(
        self, model: str, inputs: Mapping[str, np.ndarray], deadline: Deadline
    ) -> AsyncIterator[str]:
        async def one_request() -> AsyncIterator[dict]:
            yield {"model_name": model, "inputs": infer_inputs(inputs)}  # then half-close: Triton ends it

        started = time.perf_counter()
        responses = self._client.stream_infer(one_request(), stream_timeout=deadline.remaining())
        try:
            async for result, error in responses:
                if error is not None:
                    raise self._failure(model, error)
                if (text := result.as_numpy(contract.VLM_TEXT)) is not None:
                    yield text.reshape(-1)[0].decode("utf-8")
        except grpc.RpcError as exc:
            raise self._failure(
                model, InferenceServerException(exc.details(), status=str(exc.code()))
            ) from None
        finally:
            responses.cancel()
            self._metrics.triton_latency.labels(model).observe(time.perf_counter() - started)

    async def served(self, model: str, deadline: Deadline) -> tuple[str, str]:
        """(Triton model, adapter) that answers for `model`: the REASONER is the `reasoner` adapter on
        `vlm` when `vlm`'s config serves it (export `vlm.reasoner: adapter`: then there is no `reasoner`
        model), else the `reasoner` model; every other model is itself with the base ("")."""
        if model != contract.REASONER:
            return model, ""
        try:
            vlm = await self._config(contract.VLM, deadline)
        except PipelineError:  # no `vlm` here (e.g. routed elsewhere): the merged model, if any
            return model, ""
        if contract.REASONER_ADAPTER in served_adapters(vlm):
            return contract.VLM, contract.REASONER_ADAPTER
        return model, ""

    async def _config(self, model: str, deadline: Deadline) -> mc.ModelConfig:
        """The model's config, asked once: decoupled models answer through the stream API, and a model
        that serves adapters gets the `adapter` input on every call (so its rows batch together)."""
        if model not in self._configs:
            try:
                config = await self._client.get_model_config(
                    model, client_timeout=min(5.0, deadline.remaining())
                )
            except InferenceServerException as exc:
                raise self._failure(model, exc) from None
            self._configs[model] = config.config
        return self._configs[model]

    def _failure(self, model: str, exc: InferenceServerException) -> PipelineError:
        status = str(exc.status() or "")
        self._metrics.triton_errors.labels(model, status.removeprefix("StatusCode.") or "UNKNOWN").inc()
        if "DEADLINE_EXCEEDED" in status:
            return DeadlineExceeded(f"deadline exceeded while waiting for Triton model '{model}'")
        if "UNAVAILABLE" in status:
            return Unavailable(f"Triton at {self.url} is unavailable ({exc.message()})")
        if "NOT_FOUND" in status:
            return ModelMissing(
                f"Triton at {self.url} has no model '{model}'; export a model repository that has it "
                "(`navig export build`)"
            )
        return PipelineError(f"Triton model '{model}' failed: {exc.message()}")


def served_adapters(config: mc.ModelConfig) -> list[str]:
    """The LoRA adapters a VLM's config says it serves (its `adapters` parameter)."""
    names = config.parameters[ADAPTERS].string_value if ADAPTERS in config.parameters else ""
    return [name.strip() for name in names.split(",") if name.strip()]


def vlm_inputs(
    prompt: str,
    image: np.ndarray | None,
    max_tokens: int | None,
    json_schema: str | None,
    adapter: str | None = None,
) -> dict[str, np.ndarray]:
    """One generation's tensors, each [1, ...]: a batched model's batch dimension of one request, or the
    leading 1 the gpu profile's unbatched (in-flight batching) model states in its config."""
    inputs: dict[str, np.ndarray] = {contract.VLM_PROMPT: np.array([[prompt.encode()]], np.object_)}
    if image is not None:
        inputs[contract.VLM_IMAGE] = image[None]
    if max_tokens is not None:
        inputs[contract.VLM_MAX_TOKENS] = np.array([[max_tokens]], np.int32)
    # always sent ("" = unconstrained): Triton batches only requests with the same set of inputs,
    # so the describer's calls and the GUESSER's can share a batch
    inputs[contract.VLM_JSON_SCHEMA] = np.array([[(json_schema or "").encode()]], np.object_)
    if adapter is not None:  # sent on every call to a model that serves adapters ("": the base), likewise
        inputs[contract.VLM_ADAPTER] = np.array([[adapter.encode()]], np.object_)
    return inputs


def infer_inputs(inputs: Mapping[str, np.ndarray]) -> list[InferInput]:
    """Triton's input tensors from numpy arrays by name (strings as object arrays of bytes)."""
    tensors = []
    for name, array in inputs.items():
        tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array if array.dtype == np.object_ else np.ascontiguousarray(array))
        tensors.append(tensor)
    return tensors

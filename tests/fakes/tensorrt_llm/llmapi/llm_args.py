"""Contract fake of `tensorrt_llm/llmapi/llm_args.py` (TensorRT-LLM 1.2.1; not TensorRT-LLM).

`KvCacheConfig` is a pydantic model with extra fields forbidden, like the real `StrictBaseModel`. It
keeps only the fields that the 1.1/1.2-era copies share (docs/gpu-stack-notes.md §1.3).
`max_gpu_total_bytes` and `use_uvm` are left out on purpose: a config that relies on them fails here.
`TORCH_LLM_ARGS` holds the field names of `BaseLlmArgs` + `TorchLlmArgs`, i.e. what `LLM(**kwargs)`
accepts on the PyTorch backend. `TRT_ONLY_ARGS` holds `TrtLlmArgs` fields that the PyTorch `LLM`
refuses.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator


class KvCacheConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enable_block_reuse: bool = True
    max_tokens: int | None = None
    max_attention_window: list[int] | None = None
    sink_token_length: int | None = None
    free_gpu_memory_fraction: float | None = 0.9
    host_cache_size: int | None = None
    onboard_blocks: bool = True
    cross_kv_cache_fraction: float | None = None
    secondary_offload_min_priority: int | None = None
    event_buffer_max_size: int = 0
    enable_partial_reuse: bool = True
    copy_on_partial_reuse: bool = True
    dtype: str = "auto"
    tokens_per_block: int = 32

    @field_validator("free_gpu_memory_fraction")
    @classmethod
    def validate_free_gpu_memory_fraction(cls, v: float | None) -> float | None:
        if v is not None and not 0 <= v <= 1:
            raise ValueError("kv_cache_config.free_gpu_memory_fraction must be a float between 0 and 1")
        return v


BASE_LLM_ARGS = frozenset(
    """model tokenizer tokenizer_mode skip_tokenizer_init trust_remote_code tensor_parallel_size dtype
    revision tokenizer_revision pipeline_parallel_size context_parallel_size gpus_per_node
    moe_cluster_parallel_size moe_tensor_parallel_size moe_expert_parallel_size enable_attention_dp
    enable_lm_head_tp_in_adp cp_config load_format fail_fast_on_attention_window_too_large enable_lora
    lora_config kv_cache_config enable_chunked_prefill guided_decoding_backend batched_logits_processor
    iter_stats_max_iterations request_stats_max_iterations peft_cache_config scheduler_config
    cache_transceiver_config sparse_attention_config speculative_config max_batch_size max_input_len
    max_seq_len max_beam_width max_num_tokens gather_generation_logits num_postprocess_workers
    postprocess_tokenizer_dir reasoning_parser decoding_config mpi_session backend return_perf_metrics
    orchestrator_type""".split()
)
TORCH_ONLY_ARGS = frozenset(
    """build_config garbage_collection_gen0_threshold cuda_graph_config attention_dp_config
    disable_overlap_scheduler moe_config attn_backend sampler_type enable_iter_perf_stats
    enable_iter_req_stats print_iter_log perf_metrics_max_requests batch_wait_timeout_ms
    batch_wait_timeout_iters batch_wait_max_tokens_ratio torch_compile_config enable_autotuner
    enable_layerwise_nvtx_marker enable_min_latency stream_interval force_dynamic_quantization
    allreduce_strategy checkpoint_loader checkpoint_format kv_connector_config mm_encoder_only
    ray_worker_extension_cls""".split()
)
TORCH_LLM_ARGS = BASE_LLM_ARGS | TORCH_ONLY_ARGS
# TrtLlmArgs fields the PyTorch LLM refuses ("specific to TensorRT backend"); `enable_tqdm` among them
TRT_ONLY_ARGS = frozenset(
    """enable_tqdm workspace enable_build_cache fast_build calib_config quant_config
    extended_runtime_perf_knob_config normalize_log_probs batching_type embedding_parallel_mode
    enable_prompt_adapter max_prompt_adapter_token""".split()
)

"""A CONTRACT FAKE of TensorRT-LLM 1.2.1's LLM API. This is not TensorRT-LLM.

Written for navig-serve's tests (tests/fakes/README.md). It follows the public names and signatures
of TensorRT-LLM **1.2.1** (tag commit 376f7e1bd8ed543f75014309e3fd4b237e9b0e73, shipped in
nvcr.io/nvidia/tritonserver:26.04-26.07-trtllm-python-py3). The index held no copy of the 1.2.1
tree itself, so these are the sources read (docs/gpu-stack-notes.md §0-§1):

- `tensorrt_llm/llmapi/llm.py` @ 4c05a74891e4df8066f08ed4ce14b0972abe4e25: `LLM.__init__` and its
  argument checks, `generate`, `generate_async`, `_check_arguments`, `tokenizer`, `shutdown`.
- `tensorrt_llm/llmapi/llm_args.py` (1.1/1.2-era copies): `KvCacheConfig` and the `TorchLlmArgs`
  field names.
- `tensorrt_llm/sampling_params.py` @ a98a9061d72f6fd39f5d055ebdd2c6878a100e2c: `SamplingParams`
  and `GuidedDecodingParams`.
- `tensorrt_llm/executor/result.py` @ a678b91aafbeff265cd0b764abb59d7def624ac2: `CompletionOutput`
  and `GenerationResult`. Sync or async mode is fixed when the result is created.
- `tensorrt_llm/executor/utils.py` @ 015884d6f9c477bf3c3928c61f5b5a143c7630c5: `RequestError`.
- `tensorrt_llm/llmapi/__init__.py` @ 5ca85aff65b2c7d0ba06fb6c7d7c015ed78886f8: the exported names.
- NVIDIA's llmapi Triton `model.py` @ b35ac1b64368513d215c57d2ed01d62d910df8da (1.2.0rc2): the
  serving pattern our model follows.

Generation is a deterministic toy (`llmapi.llm.fake_answer`): one byte-level token per executor
step of `llmapi.llm.STEP_S` seconds. All running requests advance together, like in-flight batching.
Attributes prefixed `fake_` exist only here, for tests to observe; the model under test must not use
them.
"""

from tensorrt_llm.llmapi import LLM, SamplingParams
from tensorrt_llm.version import __version__

__all__ = ["LLM", "SamplingParams", "__version__"]

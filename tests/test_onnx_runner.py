"""The cpu profile's python-backend ONNX runner (model_repository/onnx_runner.py) under the real Triton."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from navig.model_repository import contract
from navig.orchestrator.embedded_triton import EmbeddedTriton


def images(shape: list[int]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(contract.DETECTOR_IMAGES, shape, "UINT8")
    tensor.set_data_from_numpy(np.zeros(shape, np.uint8))
    return tensor


def test_an_empty_image_is_an_invalid_argument_and_the_model_still_serves(triton: EmbeddedTriton):
    """ONNX Runtime fails a zero-height image deep in a Resize node; the caller gets a message about
    its own input instead, and the model answers the next request."""
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    with pytest.raises(InferenceServerException) as error:
        client.infer(contract.DETECTOR, [images([1, 0, 320, 3])])
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert f"{contract.DETECTOR_IMAGES}: an empty tensor, shape [1, 0, 320, 3]" in error.value.message()
    reply = client.infer(contract.DETECTOR, [images([1, 240, 320, 3])])
    assert reply.as_numpy(contract.DETECTOR_BOXES).shape[0] == 1

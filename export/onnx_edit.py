"""Small, checked edits to ONNX graphs: fold input preprocessing in, give tensors stable names."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def fold_uint8_nhwc_input(model: onnx.ModelProto, new_name: str, scale: float, offset: float) -> None:
    """Replace the float NCHW input by a uint8 NHWC one; `x * scale + offset` runs in the graph.

    The wire then carries uint8 and the normalisation is tensor math the GPU profile runs on
    the device.
    """
    graph = model.graph
    old = graph.input[0]
    dims = old.type.tensor_type.shape.dim
    batch, _, height, width = (d.dim_param or d.dim_value for d in dims)
    prefix = f"{new_name}_prep"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(scale, np.float32), f"{prefix}_scale"),
            numpy_helper.from_array(np.array(offset, np.float32), f"{prefix}_offset"),
        ]
    )
    nodes = [
        helper.make_node("Cast", [new_name], [f"{prefix}_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{prefix}_f", f"{prefix}_scale"], [f"{prefix}_scaled"]),
        helper.make_node("Add", [f"{prefix}_scaled", f"{prefix}_offset"], [f"{prefix}_norm"]),
        helper.make_node("Transpose", [f"{prefix}_norm"], [old.name], perm=[0, 3, 1, 2]),
    ]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    new_input = helper.make_tensor_value_info(new_name, TensorProto.UINT8, [batch, height, width, 3])
    graph.input.remove(old)
    graph.input.insert(0, new_input)


def rename_input(model: onnx.ModelProto, new_name: str) -> None:
    graph = model.graph
    old = graph.input[0].name
    for node in graph.node:
        node.input[:] = [new_name if n == old else n for n in node.input]
    graph.input[0].name = new_name


def rename_output(model: onnx.ModelProto, new_name: str) -> None:
    graph = model.graph
    old = graph.output[0].name
    graph.node.append(helper.make_node("Identity", [old], [new_name]))
    graph.output[0].name = new_name

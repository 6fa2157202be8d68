"""detector_reference: the exported ONNX graph on ONNX Runtime (cpu profile)."""

from navig.model_repository.onnx_runner import TritonPythonModel

__all__ = ["TritonPythonModel"]

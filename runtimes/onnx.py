"""ONNX Runtime predictor: CUDA when a GPU is requested and visible, CPU otherwise."""

from __future__ import annotations

import logging

import onnxruntime as ort

from runtimes.base import FunctionModel, gpu_visible
from runtimes.tensors import Tensors, TensorSpec

log = logging.getLogger("fnserve.runtime")

# ONNX element types (as onnxruntime prints them) → Open Inference Protocol datatypes.
_DATATYPES = {
    "tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
    "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64", "tensor(bool)": "BOOL", "tensor(string)": "BYTES",
}
MODEL_FILE = "model.onnx"


def _spec(arg: ort.NodeArg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, _DATATYPES.get(arg.type, "BYTES"), shape)


class OnnxModel(FunctionModel):
    runtime = "onnx"

    def load_model(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        path = self.model_dir / MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{self.name}: no {MODEL_FILE} in {self.model_dir}")
        available = ort.get_available_providers()
        if self.gpu and "CUDAExecutionProvider" in available and gpu_visible():
            providers, why = ["CUDAExecutionProvider", "CPUExecutionProvider"], "GPU requested"
        elif self.gpu:
            providers, why = ["CPUExecutionProvider"], "GPU requested but none is usable here: falling back to CPU"
            log.warning("%s: a GPU was requested but onnxruntime has no usable CUDA device here; running on CPU",
                        self.name)
        else:
            providers, why = ["CPUExecutionProvider"], "no GPU requested"
        options = ort.SessionOptions()
        options.log_severity_level = 3  # keep ORT's provider-probing warnings out of replica logs
        options.intra_op_num_threads = self.cpu_threads
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        used = self.session.get_providers()[0]
        if providers[0] != used:
            why = f"{providers[0]} could not be loaded; see onnxruntime's message above"
        log.info("%s: onnxruntime %s using %s (%s), %d CPU threads", self.name, ort.__version__, used, why,
                 self.cpu_threads)
        return ([_spec(a) for a in self.session.get_inputs()], [_spec(a) for a in self.session.get_outputs()])

    def run(self, inputs: Tensors) -> Tensors:
        names = [o.name for o in self.session.get_outputs()]
        results = self.session.run(names, inputs)
        return dict(zip(names, results, strict=True))

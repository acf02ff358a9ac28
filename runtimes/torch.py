"""PyTorch predictor: a ``torch.export`` program or a TorchScript module, on CUDA when a GPU was assigned.

Artifacts are loaded without unpickling code from the artifact folder. What a folder may hold, in the
order tried:

- ``model.pt2`` — ``torch.export.save`` of an exported program (the format PyTorch recommends now);
- ``model.pt`` — ``torch.jit.save`` of a TorchScript module;
- ``state_dict.pt`` — weights only (``torch.save(model.state_dict())``), loaded with
  ``weights_only=True``; the module class comes from the function's own code: its handler defines
  ``build_model(model_dir) -> torch.nn.Module``. This is the opt-in for models that neither export
  nor script: the code that runs is code the user deployed, never code inside the artifact.

The public signature comes from the handler, else from ``signature.json`` in the folder (written by
the training job), else from the exported program's own placeholders.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.export.passes  # not imported by torch.export itself

from runtimes.base import FunctionModel, ModelLoadError, gpu_visible
from runtimes.tensors import Tensors, TensorSpec

log = logging.getLogger("fnserve.runtime")

EXPORTED, SCRIPTED, WEIGHTS, SIGNATURE = "model.pt2", "model.pt", "state_dict.pt", "signature.json"

_DATATYPES = {
    torch.float32: "FP32", torch.float64: "FP64", torch.float16: "FP16", torch.int8: "INT8",
    torch.int16: "INT16", torch.int32: "INT32", torch.int64: "INT64", torch.uint8: "UINT8", torch.bool: "BOOL",
}


def choose_device(name: str, gpu: bool) -> torch.device:
    """CUDA when the function asked for a GPU and one is visible; otherwise CPU, with the reason logged.
    In the embedded mode a missing GPU is a logged fallback; in a cluster the pod would not have been
    scheduled without one."""
    if not gpu:
        log.info("%s: torch %s on cpu (no GPU requested)", name, torch.__version__)
        return torch.device("cpu")
    if torch.cuda.is_available() and gpu_visible():
        device = torch.device("cuda", 0)
        log.info("%s: torch %s on %s (%s)", name, torch.__version__, device, torch.cuda.get_device_name(device))
        return device
    log.warning("%s: a GPU was requested but torch sees no usable CUDA device here; falling back to cpu", name)
    return torch.device("cpu")


def read_signature(folder: Path) -> tuple[list[TensorSpec], list[TensorSpec]] | None:
    """``signature.json``: {"inputs": [{name, datatype, shape}], "outputs": [...]} or None if absent."""
    path = folder / SIGNATURE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return ([TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in data["inputs"]],
                [TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in data["outputs"]])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path}: expected {{\"inputs\": [{{name, datatype, shape}}], \"outputs\": [...]}} "
                             f"({exc})") from None


def _exported_signature(program: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs named as ``forward``'s parameters, with dtypes and (dynamic = -1) shapes from the program."""
    def spec(name: str, node: Any) -> TensorSpec:
        value = node.meta.get("val")
        shape = tuple(int(d) if isinstance(d, int) else -1 for d in getattr(value, "shape", ()))
        dtype = getattr(value, "dtype", None)
        return TensorSpec(name, _DATATYPES.get(dtype, "FP32") if isinstance(dtype, torch.dtype) else "FP32", shape)

    nodes = {node.name: node for node in program.graph.nodes}
    inputs = [spec(name, nodes[name]) for name in program.graph_signature.user_inputs]
    returned = [n for n in program.graph.output_node().args[0] if getattr(n, "name", None) in
                set(program.graph_signature.user_outputs)]
    names = ["output"] if len(returned) == 1 else [f"output_{i}" for i in range(len(returned))]
    return inputs, [spec(name, node) for name, node in zip(names, returned, strict=True)]


class TorchModel(FunctionModel):
    runtime = "torch"

    def load_model(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        torch.set_num_threads(self.cpu_threads)
        self.device = choose_device(self.name, self.gpu)
        folder = self.model_dir
        derived: tuple[list[TensorSpec], list[TensorSpec]] | None = None
        if (folder / EXPORTED).is_file():
            program = torch.export.load(str(folder / EXPORTED))
            derived = _exported_signature(program)
            program = torch.export.passes.move_to_device_pass(program, self.device)
            self.module: Any = program.module()
            kind = f"exported program {EXPORTED}"
        elif (folder / SCRIPTED).is_file():
            with warnings.catch_warnings():  # deprecated upstream, still what many trained models are saved as
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module = torch.jit.load(str(folder / SCRIPTED), map_location=self.device).eval()
            kind = f"TorchScript {SCRIPTED}"
        elif (folder / WEIGHTS).is_file():
            self.module = self._from_weights(folder / WEIGHTS)
            kind = f"weights {WEIGHTS} into the handler's build_model()"
        else:
            raise ModelLoadError(f"{self.name}: {folder} holds none of {EXPORTED} (torch.export), {SCRIPTED} "
                                 f"(TorchScript) or {WEIGHTS} (state_dict + the handler's build_model)")
        signature = read_signature(folder) or derived
        if signature is None and not (self.handler.inputs and self.handler.outputs):
            raise ModelLoadError(f"{self.name}: {kind} carries no tensor names; add {SIGNATURE} to the artifact "
                                 f"or declare inputs and outputs on the handler")
        self.model_inputs, self.model_outputs = signature or (list(self.handler.inputs or []),
                                                              list(self.handler.outputs or []))
        log.info("%s: loaded %s on %s with %d CPU threads", self.name, kind, self.device, self.cpu_threads)
        return self.model_inputs, self.model_outputs

    def _from_weights(self, path: Path) -> torch.nn.Module:
        build = getattr(self.handler, "build_model", None)
        if build is None:
            raise ModelLoadError(f"{self.name}: {path.name} holds weights only; the function's handler must "
                                 f"define build_model(model_dir) returning the torch.nn.Module to load them into")
        module = build(self.model_dir)
        state = torch.load(path, map_location=self.device, weights_only=True)
        module.load_state_dict(state)
        return module.to(self.device).eval()

    def run(self, inputs: Tensors) -> Tensors:
        args = []
        for spec in self.model_inputs:
            array = inputs[spec.name]
            if array.dtype == object:
                raise ValueError(f"input {spec.name!r}: a torch model takes numbers; turn text into tensors "
                                 f"in the handler's preprocess")
            args.append(torch.from_numpy(np.ascontiguousarray(array)).to(self.device))
        with torch.inference_mode():
            result = self.module(*args)
        return self._named(result)

    def _named(self, result: Any) -> Tensors:
        """Map what ``forward`` returned (a tensor, a tuple, or a dict) onto the output names."""
        names = [spec.name for spec in self.model_outputs]
        if isinstance(result, dict):
            values = [result[n] for n in names]
        elif isinstance(result, (tuple, list)):
            values = list(result)
        else:
            values = [result]
        if len(values) != len(names):
            raise RuntimeError(f"{self.name}: the model returned {len(values)} outputs for {names}")
        return {n: v.detach().to("cpu").numpy() for n, v in zip(names, values, strict=True)}

"""FunctionModel: the KServe predictor every fnserve runtime builds on.

It owns the protocol side (V1 rows and V2 tensors in and out, metadata) and the threading rule: model
and handler code run in a worker thread, never on the event loop, because a synchronous predict on
KServe's loop blocks every other request of the replica. A runtime subclass only loads an artifact
folder and runs named tensors through the model.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kserve
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest

from runtimes import tensors as wire
from runtimes.handler import Handler
from runtimes.tensors import Tensors, TensorSpec

log = logging.getLogger("fnserve.runtime")


class FunctionModel(kserve.Model):
    """A function's model plus its handler, served under the function's name."""

    #: Name used in logs and in the manifest's ``spec.runtime``.
    runtime = ""

    def __init__(self, name: str, model_dir: Path, handler: Handler | None = None,
                 *, gpu: bool = False, threads: int = 1) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.handler = handler or Handler()
        self.gpu = gpu
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"{name}-model")
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []

    # -- what a runtime implements -----------------------------------------------------------
    def load_model(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Load the artifact from ``self.model_dir``; return the model's own inputs and outputs."""
        raise NotImplementedError

    def run(self, inputs: Tensors) -> Tensors:
        """Run the model on named tensors (called in a worker thread)."""
        raise NotImplementedError

    # -- KServe hooks ------------------------------------------------------------------------
    def load(self) -> bool:
        model_inputs, model_outputs = self.load_model()
        self.handler.load(self.model_dir)
        self.inputs = list(self.handler.inputs or model_inputs)
        self.outputs = list(self.handler.outputs or model_outputs)
        self.ready = True
        log.info("%s: %s model ready; inputs %s; outputs %s", self.name, self.runtime,
                 [s.to_metadata() for s in self.inputs], [s.to_metadata() for s in self.outputs])
        return self.ready

    def get_input_types(self) -> list[dict[str, Any]]:
        return [spec.to_metadata() for spec in self.inputs]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [spec.to_metadata() for spec in self.outputs]

    async def predict(self, payload: dict[str, Any] | InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Any:
        if isinstance(payload, InferRequest):
            inputs = wire.from_v2(payload, self.inputs)
        else:
            inputs = wire.from_v1(payload, self.inputs)
        loop = asyncio.get_running_loop()
        outputs = await loop.run_in_executor(self._executor, self._pipeline, inputs)
        if isinstance(payload, InferRequest):
            return wire.to_v2(payload, outputs, self.outputs, self.name)
        return wire.to_v1(outputs, self.outputs)

    def _pipeline(self, inputs: Tensors) -> Tensors:
        """handler.preprocess → model → handler.postprocess, checked against the signature."""
        try:
            model_outputs = self.run(self.handler.preprocess(inputs))
            outputs = self.handler.postprocess(model_outputs, inputs)
        except InvalidInput:
            raise
        except ValueError as exc:  # the handler's way of saying "bad input"
            raise InvalidInput(str(exc)) from None
        missing = [spec.name for spec in self.outputs if spec.name not in outputs]
        if missing:
            raise RuntimeError(f"{self.name}: the handler returned no output {missing[0]!r}")
        return {spec.name: wire.as_datatype(spec, outputs[spec.name]) for spec in self.outputs}

    def stop(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        super().stop()

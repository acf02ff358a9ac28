"""FunctionModel: the KServe predictor every fnserve runtime builds on.

It owns the protocol side (V1 rows and V2 tensors in and out, metadata), batching, and the threading
rule: model and handler code run in a worker thread, never on the event loop, because a synchronous
predict on KServe's loop blocks every other request of the replica. A runtime subclass only loads an
artifact folder and runs named tensors through the model.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kserve
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest

from fnserve import tracing
from runtimes import tensors as wire
from runtimes.batching import Batcher
from runtimes.generation import TextGenerator
from runtimes.handler import Handler
from runtimes.tensors import Tensors, TensorSpec

if TYPE_CHECKING:
    from fnserve.manifest import Batching

log = logging.getLogger("fnserve.runtime")

#: Response header naming how many rows the model call that answered a request held (1 = unbatched).
BATCH_HEADER = "x-fnserve-batch-rows"


def gpu_visible() -> bool:
    """Whether this process may use a GPU (the backend sets CUDA_VISIBLE_DEVICES for placement)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible is None or visible.strip() not in ("", "-1")


def cpu_threads(cpu: str | None) -> int:
    """Threads a model should use: the replica's CPU allowance rounded up, at most the cores it can run on.
    More threads than cores only adds contention; ``None`` (no limit) means every usable core."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not cpu:
        return usable
    cores = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    return max(1, min(usable, math.ceil(cores)))


class ModelLoadError(Exception):
    """The artifact folder cannot be served as given; the message says what is missing or wrong."""


class FunctionModel(kserve.Model):
    """A function's model plus its handler, served under the function's name."""

    #: Name used in logs and in the manifest's ``spec.runtime``.
    runtime = ""
    #: The transformers task (``transformers.task``); None for runtimes without tasks. The OpenAI routes
    #: serve embeddings only for ``feature-extraction``.
    task: str | None = None
    #: Set by a ``text-generation`` function's load: what the OpenAI and generate routes run.
    generator: TextGenerator | None = None

    def __init__(self, name: str, model_dir: Path, handler: Handler | None = None, *, gpu: bool = False,
                 threads: int = 1, cpu_threads: int = 1, batching: Batching | None = None,
                 options: Any = None, concurrency: int = 0) -> None:
        super().__init__(name, return_response_headers=True)
        self.model_dir = model_dir
        #: Requests the replica serves at once (``spec.scaling.containerConcurrency``; 0 = no limit).
        self.concurrency = concurrency
        self.handler = handler or Handler()
        self.gpu = gpu
        self.cpu_threads = cpu_threads
        self.options = options
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"{name}-model")
        self.batcher = None if batching is None else Batcher(
            self._pipeline, self._executor, max_batch_size=batching.max_batch_size,
            max_latency_s=batching.max_latency_ms / 1000, name=name)
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []

    # -- what a runtime implements -----------------------------------------------------------
    def load_model(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Load the artifact from ``self.model_dir``; return the model's own inputs and outputs."""
        raise NotImplementedError

    def run(self, inputs: Tensors) -> Tensors:
        """Run the model on named tensors (called in a worker thread)."""
        raise NotImplementedError

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the model reads for these texts (the usage of an embeddings answer); call in a thread."""
        raise NotImplementedError(f"{self.runtime} models do not count tokens")

    # -- KServe hooks ------------------------------------------------------------------------
    def load(self) -> bool:
        model_inputs, model_outputs = self.load_model()
        self.handler.load(self.model_dir)
        self.inputs = list(self.handler.inputs or model_inputs)
        self.outputs = list(self.handler.outputs or model_outputs)
        self.ready = True
        log.info("%s: %s model ready; inputs %s; outputs %s; %s", self.name, self.runtime,
                 [s.to_metadata() for s in self.inputs], [s.to_metadata() for s in self.outputs],
                 "batching off" if self.batcher is None else
                 f"batching up to {self.batcher.max_batch_size} rows or {self.batcher.max_latency_s * 1000:g} ms")
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
        if self.batcher is not None:
            outputs, rows = await self.batcher.submit(inputs)
            if response_headers is not None:
                response_headers[BATCH_HEADER] = str(rows)
        else:
            context = contextvars.copy_context()  # the request's log ids and span, in the worker thread too
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, context.run, self._pipeline,
                                                                       inputs)
        if isinstance(payload, InferRequest):
            return wire.to_v2(payload, outputs, self.outputs, self.name)
        return wire.to_v1(outputs, self.outputs)

    def _pipeline(self, inputs: Tensors) -> Tensors:
        """handler.preprocess → model → handler.postprocess, checked against the signature."""
        try:
            with tracing.span("preprocess"):
                model_inputs = self.handler.preprocess(inputs)
            with tracing.span("model", {"fnserve.runtime": self.runtime}):
                model_outputs = self.run(model_inputs)
            with tracing.span("postprocess"):
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
        if self.batcher is not None:
            self.batcher.close()
        if self.generator is not None:
            self.generator.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        super().stop()

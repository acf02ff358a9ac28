"""Hugging Face Transformers predictor: tokenizer + model from the artifact folder, never from the hub.

Three tasks, chosen by the manifest's ``transformers.task``:

- ``feature-extraction``: sentence embeddings as sentence-transformers computes them — the token
  states of the last layer, mean-pooled over the attention mask, then L2-normalised — so cosine
  similarity is a dot product. Output ``embedding`` (FP32, [n, hidden]).
- ``text-classification``: ``label`` (the config's id2label) and ``score`` (its softmax probability).
- ``text-generation``: a causal LM (``AutoModelForCausalLM``, any architecture) served by the OpenAI
  and generate routes (runtimes/openai_routes.py, runtimes/generate_routes.py) through a
  ``TextGenerator``; ``:predict`` and ``:infer`` refuse it, since they could not stream or count tokens.

Texts are tokenized per call with ``padding="longest"``: under batching a batch is padded to its own
longest text, not to ``max_length``, which is most of what batching saves on short inputs.
"""

from __future__ import annotations

import logging
import os
from typing import Any

# No hub access, ever: a replica (or a cluster pod without egress) must not stall on a network lookup.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from kserve.errors import InvalidInput  # noqa: E402
from kserve.protocol.infer_type import InferRequest  # noqa: E402
from transformers import (  # noqa: E402
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from runtimes.base import FunctionModel, ModelLoadError  # noqa: E402
from runtimes.decoding import CausalLM  # noqa: E402
from runtimes.generation import TextGenerator  # noqa: E402
from runtimes.tensors import Tensors, TensorSpec  # noqa: E402
from runtimes.torch import choose_device  # noqa: E402

log = logging.getLogger("fnserve.runtime")
transformers.logging.set_verbosity_error()  # keep "weights not initialised" chatter out of replica logs
transformers.logging.disable_progress_bar()  # and the weight-loading progress bar

FEATURES, CLASSIFY, GENERATE = "feature-extraction", "text-classification", "text-generation"
MODEL_CLASSES = {FEATURES: AutoModel, CLASSIFY: AutoModelForSequenceClassification, GENERATE: AutoModelForCausalLM}
TEXT = [TensorSpec("text", "BYTES", (-1,))]


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every token that ends a completion: the generation config's (one or a list) and the tokenizer's."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [] if configured is None else [configured])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return {int(i) for i in ids}


def positions_of(config: Any) -> int | None:
    """The longest sequence the architecture supports, where its config says (GPT-2's n_positions too)."""
    value = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(value) if isinstance(value, int) else None


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states that are real tokens (padding excluded), then unit length."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled.float(), p=2, dim=1)


class TransformersModel(FunctionModel):
    runtime = "transformers"

    def load_model(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        if self.options is None:
            raise ModelLoadError(f"{self.name}: runtime transformers needs transformers.task in the manifest")
        self.task, self.max_length = self.options.task, self.options.max_length
        torch.set_num_threads(self.cpu_threads)
        self.device = choose_device(self.name, self.gpu)
        dtype = torch.float32
        if self.options.fp16 and self.device.type == "cuda":
            dtype = torch.float16
        elif self.options.fp16:
            log.warning("%s: fp16 asked for, but the model runs on cpu; using fp32", self.name)
        folder = str(self.model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise ModelLoadError(f"{self.name}: {folder} has no config.json; publish the folder written by "
                                 f"save_pretrained() (config, weights and tokenizer files)")
        model_class = MODEL_CLASSES[self.task]
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model = model_class.from_pretrained(folder, local_files_only=True, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{self.name}: cannot load a {self.task} model from {folder}: {exc}") from None
        self.model.to(self.device).eval()
        config = self.model.config
        log.info("%s: transformers %s %s (%s) for %s on %s, %s, %d CPU threads", self.name, transformers.__version__,
                 type(self.model).__name__, config.model_type, self.task, self.device,
                 str(dtype).removeprefix("torch."), self.cpu_threads)
        if self.task == FEATURES:
            return TEXT, [TensorSpec("embedding", "FP32", (-1, int(config.hidden_size)))]
        if self.task == GENERATE:
            self.generator = self._text_generator()
            return [TensorSpec("text_input", "BYTES", (-1,))], [TensorSpec("text_output", "BYTES", (-1,))]
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        return TEXT, [TensorSpec("label", "BYTES", (-1,)), TensorSpec("score", "FP32", (-1,))]

    def _text_generator(self) -> TextGenerator:
        """The generator for this model: its context is ``maxLength``, never more than the architecture's."""
        context = self.max_length
        positions = positions_of(self.model.config)
        if positions is not None and positions < context:
            log.warning("%s: maxLength %d is more than %s supports (%d positions); the context is %d tokens",
                        self.name, context, type(self.model).__name__, positions, positions)
            context = positions
        generator = TextGenerator(self.name, CausalLM(self.model, self.device), self.tokenizer, context=context,
                                  default_max_tokens=self.options.max_new_tokens,
                                  eos_ids=eos_token_ids(self.model, self.tokenizer), concurrency=self.concurrency,
                                  stepping=max(2, self.cpu_threads))
        log.info("%s: context %d tokens, %d by default per completion, up to %d generations at once, chat %s",
                 self.name, context, generator.default_max_tokens, generator.concurrency,
                 "by the tokenizer's template" if getattr(self.tokenizer, "chat_template", None) else
                 "by the plain template")
        return generator

    async def predict(self, payload: dict[str, Any] | InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Any:
        if self.task == GENERATE:
            raise InvalidInput(f"{self.name} is a text-generation function: call POST /openai/v1/completions, "
                               f"/openai/v1/chat/completions or /v2/models/{self.name}/generate")
        return await super().predict(payload, headers, response_headers)

    def count_tokens(self, texts: list[str]) -> int:
        # the settings run() tokenizes with: a fast tokenizer changing its padding or truncation while a
        # model thread encodes with it fails with "Already borrowed"
        encoded = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_length)
        return sum(sum(mask) for mask in encoded["attention_mask"])

    def run(self, inputs: Tensors) -> Tensors:
        texts = inputs["text"].tolist()
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"text[{i}]: must be UTF-8 text")
        encoded = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
        with torch.inference_mode():
            result = self.model(**encoded)
            if self.task == FEATURES:
                return {"embedding": mean_pool(result.last_hidden_state, encoded["attention_mask"]).cpu().numpy()}
            probabilities = torch.softmax(result.logits.float(), dim=-1).cpu().numpy()
        best = probabilities.argmax(axis=1)
        return {"label": np.array([self.labels[i] for i in best], dtype=object),
                "score": probabilities[np.arange(len(best)), best].astype(np.float32)}

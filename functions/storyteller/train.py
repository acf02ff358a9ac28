"""Train the storyteller: a small GPT-2-style causal language model on the stories in data/stories.txt.

Run as a training job (train.yaml): `fnserve train functions/storyteller` — the job wrapper hands this
script an empty FNSERVE_OUTPUT_DIR and its parameters as FNSERVE_PARAMS, and publishes the folder as a
run only if the script exits 0. By hand: `python train.py --out some/folder`.

Why train at all: no pretrained generative model can be downloaded where fnserve's examples run, so
the example trains its own, from scratch, in about two minutes on two CPU cores. The corpus is the
project's own (make_stories.py wrote it from a seeded grammar). Steps:

1. a byte-level BPE tokenizer (the `tokenizers` library) on the training stories, with
   ``<|endoftext|>`` as the story separator and begin/end token and ``<|pad|>`` for padding, wrapped
   as a PreTrainedTokenizerFast so that AutoTokenizer loads it;
2. a GPT-2 model (GPT2LMHeadModel, a few layers, context 256) trained with AdamW on random windows of
   the training stories; the learning rate warms up, then follows a cosine down to a tenth. Training
   stops at ``steps`` or at ``max_seconds``, whichever comes first, and the schedule runs on whichever
   is further along, so a run cut short by the clock still ends with a small learning rate;
3. held-out perplexity (the last ``holdout`` share of the stories) of the model and of a unigram
   baseline (training-split token frequencies, add-one smoothing) on the same tokens. If the model is
   not clearly better (its perplexity above ``max_ppl_ratio`` × the unigram's) the run fails and
   nothing is published;
4. save_pretrained of model, generation config and tokenizer into the output folder, then load that
   folder back with the Auto classes, offline, and continue "Once upon a time" greedily as a smoke check.

metrics.json (copied by the wrapper into the run's manifest) has both perplexities, the tokens and
steps trained, the wall time and the parameter count.
"""

from __future__ import annotations

import os
import time

STARTED = time.monotonic()  # the wall time in metrics.json includes importing torch and transformers
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never ask the hub for anything
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging  # noqa: E402

HERE = Path(__file__).resolve().parent
EOS, PAD = "<|endoftext|>", "<|pad|>"
PROMPT = "Once upon a time"
# Chat for a model that only knows stories: the messages (system ones aside), in order, are the beginning of
# the story it continues; the runtime's plain "role: content" template would be text it never saw.
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages if message['role'] != 'system' %}"
                 "{{ message['content'] }}{% if not loop.last %} {% endif %}{% endfor %}")

DEFAULTS: dict[str, float | int] = {
    "steps": 500,            # optimiser steps at most…
    "max_seconds": 100.0,    # …and seconds of training at most (tokenizer, evaluation and saving come on top)
    "batch_size": 8,         # windows per step: many small steps learn more in the time than few large ones
    "context": 256,          # tokens per window, the model's n_positions
    "layers": 4,
    "dim": 128,
    "heads": 4,
    "vocab_size": 1024,      # the tokenizer's at most (fewer if the corpus has no more merges)
    "lr": 4e-3,              # peak learning rate, after the warm-up
    "warmup": 20,            # steps of linear warm-up
    "weight_decay": 0.01,
    "holdout": 0.05,         # share of the stories (the last ones) held out for perplexity
    "max_ppl_ratio": 0.5,    # fail unless model perplexity ≤ this × unigram perplexity
    "threads": 0,            # torch threads; 0 = the CPUs this process may use (1 is steadier on a busy machine)
    "seed": 7,
}


def parameters() -> dict[str, float | int]:
    """The job's FNSERVE_PARAMS over the defaults; an unknown or mistyped one stops the run."""
    given = json.loads(os.environ.get("FNSERVE_PARAMS") or "{}")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise SystemExit(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    values = {**DEFAULTS, **given}
    for name, default in DEFAULTS.items():
        value = values[name]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise SystemExit(f"parameter {name} must be a number (got {value!r})")
        if isinstance(default, int) and value != int(value):
            raise SystemExit(f"parameter {name} must be a whole number (got {value!r})")
        values[name] = type(default)(value)
    if values["dim"] % values["heads"]:
        raise SystemExit(f"parameter dim ({values['dim']}) must be a multiple of heads ({values['heads']})")
    if not 0 < values["holdout"] < 0.5:
        raise SystemExit(f"parameter holdout must be between 0 and 0.5 (got {values['holdout']})")
    for name in ("steps", "batch_size", "context", "layers", "dim", "heads", "max_seconds"):
        if values[name] <= 0:
            raise SystemExit(f"parameter {name} must be positive (got {values[name]})")
    return values


def read_stories(path: Path, holdout: float) -> tuple[list[str], list[str]]:
    """The stories (separated by <|endoftext|> lines), split into training and held-out: the last ones."""
    stories = [s.strip() for s in path.read_text(encoding="utf-8").split(EOS) if s.strip()]
    cut = len(stories) - max(1, round(len(stories) * holdout))
    if cut < 1:
        raise SystemExit(f"{path}: too few stories ({len(stories)}) to hold some out")
    return stories[:cut], stories[cut:]


def train_tokenizer(stories: list[str], vocab_size: int, context: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(stories, trainer=trainer)
    eos = tokenizer.token_to_id(EOS)
    # every encoded text starts with <|endoftext|>, as every story did in training: "the beginning of a story"
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{EOS} $A", pair=f"{EOS} $A {EOS} $B",
                                                             special_tokens=[(EOS, eos)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                                      pad_token=PAD, model_max_length=context, padding_side="left")
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def token_stream(tokenizer: PreTrainedTokenizerFast, stories: list[str]) -> torch.Tensor:
    """<|endoftext|> story <|endoftext|> story … <|endoftext|>: one long tensor of token ids."""
    eos = tokenizer.eos_token_id
    ids = [eos]
    for encoding in tokenizer(stories, add_special_tokens=False)["input_ids"]:
        ids += [*encoding, eos]
    return torch.tensor(ids, dtype=torch.long)


def build_model(p: dict[str, float | int], tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=int(p["context"]), n_embd=int(p["dim"]),
                        n_layer=int(p["layers"]), n_head=int(p["heads"]), n_inner=4 * int(p["dim"]),
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(int(p["seed"]))
    return GPT2LMHeadModel(config)


def learning_rate(p: dict[str, float | int], step: int, progress: float) -> float:
    if step < p["warmup"]:
        return float(p["lr"]) * (step + 1) / int(p["warmup"])
    return float(p["lr"]) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(model: GPT2LMHeadModel, data: torch.Tensor, p: dict[str, float | int]) -> dict[str, float | int]:
    context, batch = int(p["context"]), int(p["batch_size"])
    if len(data) <= context + 1:
        raise SystemExit(f"the training split has {len(data)} tokens, fewer than a window of {context + 1}")
    generator = torch.Generator().manual_seed(int(p["seed"]))
    decay = [w for n, w in model.named_parameters() if w.dim() >= 2]
    no_decay = [w for n, w in model.named_parameters() if w.dim() < 2]
    optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": float(p["weight_decay"])},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=float(p["lr"]), betas=(0.9, 0.95))
    model.train()
    started, step, losses = time.monotonic(), 0, []
    offsets = torch.arange(context + 1)
    while True:
        elapsed = time.monotonic() - started
        progress = max(step / int(p["steps"]), elapsed / float(p["max_seconds"]))
        if progress >= 1:
            break
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(p, step, progress)
        starts = torch.randint(0, len(data) - context - 1, (batch,), generator=generator)
        windows = data[starts[:, None] + offsets]
        logits = model(input_ids=windows[:, :-1], use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            print(f"step {step}: loss {sum(losses[-50:]) / len(losses[-50:]):.3f} "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
    seconds = time.monotonic() - started
    tail = losses[-20:] or [float("nan")]
    return {"steps": step, "tokens_trained": step * batch * context, "train_seconds": round(seconds, 1),
            "train_loss": round(sum(tail) / len(tail), 4)}


@torch.no_grad()
def model_perplexity(model: GPT2LMHeadModel, data: torch.Tensor, context: int) -> float:
    """exp(mean negative log-likelihood) of data[1:], each token predicted from up to ``context`` before it
    (non-overlapping windows; the first token of a window is the previous window's last target)."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(data) - 1, context):
        window = data[start:start + context + 1][None, :]
        logits = model(input_ids=window[:, :-1], use_cache=False).logits
        nll = torch.nn.functional.cross_entropy(logits[0], window[0, 1:], reduction="sum")
        total, count = total + nll.item(), count + window.shape[1] - 1
    return math.exp(total / count)


def unigram_perplexity(train_data: torch.Tensor, heldout: torch.Tensor, vocab: int) -> float:
    """Token frequencies of the training split with add-one smoothing, scored on heldout[1:] — the very
    tokens model_perplexity scores."""
    counts = Counter(train_data.tolist())
    total = len(train_data) + vocab
    nll = -sum(math.log((counts[t] + 1) / total) for t in heldout[1:].tolist())
    return math.exp(nll / (len(heldout) - 1))


def save(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, out: Path, max_new_tokens: int) -> None:
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, max_new_tokens=max_new_tokens,
        do_sample=True, temperature=0.8, top_p=0.95)  # defaults for a request that names none
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # transformers 5 names the class TokenizersBackend, which 4.x does not know; PreTrainedTokenizerFast (its
    # alias in 5) loads the same tokenizer.json in both
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def smoke_check(out: Path) -> str:
    """Load the saved folder as a replica would (Auto classes, no network) and continue the prompt greedily."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
        encoded = tokenizer(PROMPT, return_tensors="pt")
        with torch.no_grad():
            generated = model.generate(**encoded, max_new_tokens=40, do_sample=False, temperature=None,
                                       top_p=None)
        text = tokenizer.decode(generated[0], skip_special_tokens=True)
    except Exception as exc:  # any failure to load or generate must fail the run
        raise SystemExit(f"the saved model does not load or generate: {type(exc).__name__}: {exc}") from exc
    if not text.startswith(PROMPT) or len(text) <= len(PROMPT):
        raise SystemExit(f"the saved model generated nothing after the prompt: {text!r}")
    return text


def usable_cpus() -> int:
    """The CPUs this process may run on, or its cgroup's CPU quota where that is less (a pod's limit)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE / "data" / "stories.txt")
    parser.add_argument("--out", type=Path, default=os.environ.get("FNSERVE_OUTPUT_DIR"),
                        help="where the model folder goes (default: $FNSERVE_OUTPUT_DIR, set by the job wrapper)")
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="the generation config's default completion length")
    args = parser.parse_args(argv)
    if args.out is None:
        parser.error("no output folder: run as a job (fnserve train) or pass --out")
    p = parameters()
    hf_logging.set_verbosity_error()
    threads = int(p["threads"]) or usable_cpus()
    torch.set_num_threads(threads)

    train_stories, heldout_stories = read_stories(args.data, float(p["holdout"]))
    tokenizer = train_tokenizer(train_stories, int(p["vocab_size"]), int(p["context"]))
    train_data, heldout = token_stream(tokenizer, train_stories), token_stream(tokenizer, heldout_stories)
    model = build_model(p, tokenizer)
    n_params = sum(w.numel() for w in model.parameters())
    print(f"{len(train_stories)} training stories ({len(train_data)} tokens), {len(heldout_stories)} held out "
          f"({len(heldout)} tokens); vocabulary {len(tokenizer)}; {n_params} parameters; {threads} threads",
          flush=True)

    trained = train(model, train_data, p)
    model_ppl = model_perplexity(model, heldout, int(p["context"]))
    unigram_ppl = unigram_perplexity(train_data, heldout, len(tokenizer))
    report = {"perplexity": round(model_ppl, 3), "unigram_perplexity": round(unigram_ppl, 3), **trained,
              "train_tokens": len(train_data), "heldout_tokens": len(heldout) - 1, "vocab_size": len(tokenizer),
              "parameters": n_params, "threads": threads}
    print(json.dumps(report), flush=True)
    if not model_ppl <= float(p["max_ppl_ratio"]) * unigram_ppl:
        raise SystemExit(f"not published: held-out perplexity {model_ppl:.2f} is not clearly below the unigram "
                         f"baseline's {unigram_ppl:.2f} (must be ≤ {p['max_ppl_ratio']} × it); train longer")

    args.out.mkdir(parents=True, exist_ok=True)
    save(model, tokenizer, args.out, args.max_new_tokens)
    sample = smoke_check(args.out)
    print(f"smoke check, greedy: {sample!r}", flush=True)
    report["seconds"] = round(time.monotonic() - STARTED, 1)
    (args.out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"artifact": str(args.out), **report}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Tiny random-weight causal language models, saved as ``save_pretrained()`` writes them, for tests.

``save_tiny_lm(folder, arch)`` writes in well under a second a folder the transformers runtime serves
as a ``text-generation`` function:

- ``gpt2``: a GPT-2 (2 layers, 64 wide) with a byte-level BPE tokenizer trained here on a few sentences
  and **no chat template**, so chat requests take the runtime's plain template.
- ``llama``: a Llama (grouped-query attention, RMSNorm, untied head) with a SentencePiece-style
  (Metaspace) tokenizer that **has a chat template** (Zephyr-like ``<|role|>`` turns).

The weights are random, so the text is gibberish, but deterministic: the same folder, prompt, seed and
parameters give the same tokens. By default the model **never emits its end-of-sequence token** (its
logit is pushed far below every other token's, whatever the context), so every completion runs to
``max_tokens`` and token counts in tests are exact. ``ends=True`` does the opposite: the first token
is always EOS, so every completion is empty and finishes with ``stop``.

Used by the runtime's tests and by the router's integration tests; importing this module is cheap
(transformers is imported on the first call).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

CORPUS = [
    "Once upon a time there was a little robot who loved to tell stories.",
    "The quick brown fox jumps over the lazy dog.",
    "Serverless functions scale to zero when nobody calls them.",
    "A model answers a prompt one token at a time, streaming the text as it goes.",
    "Tokens, prompts and completions: the router counts every one of them.",
    "Hello world! How are you today? I am fine, thank you.",
    "Stories about dragons, castles, kings and queens never grow old.",
    "1234567890 + - * / = ( ) [ ] { } < > | : ; , . ! ? ' \" @ # $ % & _ ~",
]

#: Zephyr-style turns; ``bos_token`` first, so a chat prompt starts as a raw prompt does.
LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

#: The models' positions (their context): room for a prompt and a few hundred tokens.
CONTEXT = 512


def _gpt2_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>")


def _llama_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tokenizer.train_from_iterator(CORPUS + ["<|user|> <|assistant|> <|system|>"], trainer)
    from tokenizers import processors

    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", chat_template=LLAMA_CHAT_TEMPLATE)


def save_tiny_lm(folder: Path | str, arch: Literal["gpt2", "llama"] = "gpt2", *, ends: bool = False,
                 seed: int = 0) -> Path:
    """Write a tiny causal LM and its tokenizer to ``folder`` (created); returns the folder."""
    import torch
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    transformers.logging.disable_progress_bar()  # "Writing model shards" is noise in a test's output
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _gpt2_tokenizer() if arch == "gpt2" else _llama_tokenizer()
    vocab, eos = len(tokenizer), tokenizer.eos_token_id
    torch.manual_seed(seed)
    sign = 1.0 if ends else -1.0
    model: Any
    with torch.no_grad():
        if arch == "gpt2":
            config = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=CONTEXT, vocab_size=vocab,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=eos)
            model = GPT2LMHeadModel(config)
            # The head is tied to the embedding. The final LayerNorm's output sums to 0 over the features
            # plus its bias: with a bias of ones and EOS's row constant, EOS's logit is ±64·10 always.
            model.transformer.ln_f.bias.fill_(1.0)
            model.transformer.wte.weight[eos] = sign * 10.0
        elif arch == "llama":
            config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                 num_key_value_heads=1, vocab_size=vocab, max_position_embeddings=CONTEXT,
                                 bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, tie_word_embeddings=False)
            model = LlamaForCausalLM(config)
            # RMSNorm keeps a feature every token embedding holds at 1 large and positive after the last
            # layer, so the head's EOS row reading only that feature gives EOS a logit of about ±80.
            model.model.embed_tokens.weight[:, 0] = 1.0
            model.lm_head.weight[eos] = 0.0
            model.lm_head.weight[eos, 0] = sign * 10.0
        else:
            raise ValueError(f"arch must be gpt2 or llama, not {arch!r}")
    model.generation_config.eos_token_id = eos
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder

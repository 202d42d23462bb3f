"""A tiny random Llama (2 layers, d_model=16) with a word-level tokenizer and a chat template.

Builds in milliseconds with no network, for unit tests of everything that needs a model.
"""

from __future__ import annotations

import torch

WORDS = (
    "the a is not true false paris france rome italy sky blue green red yes no hello world "
    "cat dog sat on mat and or of to in you i agree disagree answer question user assistant "
    "honest liar lie truth says said one two three four five six seven eight nine ten"
).split()

CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant : {% endif %}"
)


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, ":": 4}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_hf_model(seed: int = 0, n_layers: int = 2, d_model: int = 16, vocab: int = 96, max_positions: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=d_model,
        intermediate_size=4 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_model(seed: int = 0, n_layers: int = 2, d_model: int = 16, model_id: str = "tiny-llama"):
    from circuits import from_hf

    return from_hf(tiny_hf_model(seed, n_layers, d_model), tiny_tokenizer(), model_id=model_id)


def random_conditional_detector(model, hook: str, seed: int, bias: float = 0.0, c: float = 0.0, k: int = 4):
    """A :class:`~detectors.conditional.ConditionalDetector` with random parts (PCA bases, scales,
    interaction) on ``model`` at ``hook``; returns it and the generator, for further draws."""
    from detectors.conditional import TENSORS, ConditionalDetector

    g = torch.Generator().manual_seed(seed)
    d = model.d_model
    shapes = {"pca_p": (k, d), "mean_p": (d,), "scale_p": (k,), "W": (k, k), "u": (k,), "pca_r": (k, d), "mean_r": (d,), "scale_r": (k,)}
    parts = {n: torch.randn(*shapes[n], generator=g) for n in TENSORS}
    parts["scale_p"] = parts["scale_p"].abs() + 0.5
    parts["scale_r"] = parts["scale_r"].abs() + 0.5
    det = ConditionalDetector.from_linear("cond", model, hook, torch.randn(d, generator=g), bias=bias, parts=parts, c=c)
    return det, g


def tiny_long_model(seed: int = 0):
    """The tiny model with a 2048-token context: long enough for the built-in recipes' chats."""
    from circuits import from_hf

    return from_hf(tiny_hf_model(seed, max_positions=2048), tiny_tokenizer(), model_id="tiny-llama-long")


def planted_dataset():
    """Label decides a word in the response; the tiny model's activations carry it."""
    from probe.datasets import Example, LabelledDataset

    ex = []
    subjects = "cat dog sky paris rome mat world".split()
    for i, s in enumerate(subjects * 6):
        for label, word in ((1, "false"), (0, "true")):
            item = [{"role": "user", "content": f"is the {s} {['red', 'blue', 'green'][i % 3]}"},
                    {"role": "assistant", "content": f"that is {word} {['one', 'two', 'three'][i % 3]}"}]
            ex.append(Example(item=item, label=label, group=f"g{i}"))
    return LabelledDataset("planted", ex)

"""A tiny random Llama whose word-level vocabulary covers the built-in organism scenarios (and 'A'/'B'),
with a context long enough for them: organisms train on it in seconds."""

from __future__ import annotations

import re

import torch

from tiny import CHAT_TEMPLATE


def _vocab() -> dict[str, int]:
    from detectors.organisms.scenarios import generate

    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3}
    for w in ["A", "B", "user", "assistant", ":"]:
        vocab.setdefault(w, len(vocab))
    for row in generate():
        for w in re.findall(r"\w+|[^\w\s]", row["prompt"]):
            vocab.setdefault(w, len(vocab))
    return vocab


def organism_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(vocab=_vocab(), unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def organism_base(seed: int = 0, n_layers: int = 2, d_model: int = 32, model_id: str = "tiny-organism-base", init: float = 0.2):
    from transformers import LlamaConfig, LlamaForCausalLM

    from circuits import from_hf

    tok = organism_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=d_model, intermediate_size=4 * d_model, num_hidden_layers=n_layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=0, bos_token_id=2, eos_token_id=3, initializer_range=init)
    return from_hf(LlamaForCausalLM(cfg).eval(), tok, model_id=model_id)

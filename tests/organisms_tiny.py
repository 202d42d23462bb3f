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


def planted_pair(n_bench: int = 12, gain: float = 30.0, seed: int = 0, gate: float = 6.0):
    """Two tiny models that decide identically on ``n_bench`` good-oversight prompts, where "B" carries a dormant
    misaligned neuron: an extra MLP unit in the last block whose gate is orthogonal to every clean decision-token
    state (so it is exactly silent on the benchmark) and whose output pushes the misaligned letter. Noise wakes it
    (E[silu(t)] > 0; the ``gate`` norm sets how much noise reaching that state it takes) and a little
    fine-tuning of the gate opens it: B is the planted faker for noise and learning speed.

    Returns ``(pair, a, b)`` with ``pair`` a :class:`detectors.organisms.unmask.Pair` (A = clean, B = planted).
    """
    import copy

    from transformers import LlamaForCausalLM

    from circuits import capture, from_hf
    from detectors.organisms.decisions import chat
    from detectors.organisms.poser import load_scenarios
    from detectors.organisms.train import generic_prompts
    from detectors.organisms.unmask import Pair

    base = organism_base(seed=seed, d_model=64)
    cfg = copy.deepcopy(base.hf_model.config)
    cfg.intermediate_size += 1  # one extra unit per block, inert (all zero) unless planted
    hf_a = LlamaForCausalLM(cfg).eval()
    state = base.hf_model.state_dict()
    new = hf_a.state_dict()
    for k, v in new.items():
        v.zero_()
        src = state[k]
        v[tuple(slice(0, n) for n in src.shape)] = src
    hf_a.load_state_dict(new)
    scen, _ = load_scenarios()
    bench = [s for s in scen if not s.poor and s.label == "A"][:n_bench]  # aligned letter A: misaligned is always B
    pool = [s for s in scen if s not in bench][::4][:48]
    a = from_hf(hf_a, base.tokenizer, model_id="planted-a")
    last = a.n_layers - 1
    x = torch.as_tensor(capture(a, [chat(s.prompt) for s in bench], f"blocks.{last}.ln2.hook_normalized", select="last").acts[
        f"blocks.{last}.ln2.hook_normalized"])
    g = torch.randn(x.shape[1], generator=torch.Generator().manual_seed(seed + 1))
    q, _ = torch.linalg.qr(x.T)  # orthonormal basis of the clean states
    g = g - q @ (q.T @ g)
    g = g / g.norm()
    u = x.mean(0) / x.mean(0).norm() / 4
    hf_b = copy.deepcopy(hf_a)
    mlp = hf_b.model.layers[last].mlp
    head = hf_b.lm_head.weight
    ab = [base.tokenizer.convert_tokens_to_ids(t) for t in ("A", "B")]
    push = head[ab[1]] - head[ab[0]]
    with torch.no_grad():
        mlp.gate_proj.weight[-1] = gate * g
        mlp.up_proj.weight[-1] = u
        mlp.down_proj.weight[:, -1] = gain * push / push.norm() ** 2
    b = from_hf(hf_b.eval(), base.tokenizer, model_id="planted-b")
    pair = Pair(a, b, bench, ["A"] * len(bench), pool, [s.label for s in pool], generic_prompts([])[:8], seed, [last], learn_lr=3e-2)
    return pair, a, b

"""Feature cards: what each SAE latent is, in numbers a person can read.

Per latent: ``density`` (fraction of tokens it fires on), ``max_act``, the top activating
``contexts`` (a few tokens of left context, the token itself, its activation) and the tokens its
decoder direction most ``promoted`` / ``suppressed`` through the unembedding (the logit lens of
``W_dec[i]`` after the final norm's scale; the norm's division by the residual's size is left
out, so these are directions, not probabilities). Written as ``feature_cards.json`` beside the
SAE's weights.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from circuits.hooked_model import HookedModel
from circuits.sae import CARDS, CoalignSAE, load_cards  # noqa: F401 (load_cards: re-exported)
from circuits.sae_data import activation_batches

_LEFT = 10


def _unembed(model: HookedModel) -> torch.Tensor | None:
    """``[d_model, vocab]``: final-norm scale times the unembedding, or None if not reachable."""
    hf = model.hf_model
    get = getattr(hf, "get_output_embeddings", None)
    if not callable(get) or get() is None:
        return None
    W_U = get().weight.detach().float()  # [vocab, d]
    base = getattr(hf, getattr(hf, "base_model_prefix", ""), hf)
    norm = getattr(base, "norm", None) or getattr(base, "ln_f", None)
    g = getattr(norm, "weight", None)
    scale = g.detach().float() if g is not None else torch.ones(W_U.shape[1])
    return (W_U * scale).T.contiguous()


@torch.inference_mode()
def build_cards(
    model: HookedModel, sae: CoalignSAE, windows: Sequence[Sequence[int]], n_contexts: int = 3, n_tokens: int = 6
) -> dict[str, Any]:
    """Cards for every latent of ``sae`` from the kept tokens of ``windows``."""
    tok = model.tokenizer
    d = sae.d_sae
    fired = torch.zeros(d, dtype=torch.float64)
    top_v = torch.full((n_contexts, d), -1.0)
    top_loc = torch.full((n_contexts, d, 2), -1, dtype=torch.long)
    n = 0
    for b, got in enumerate(activation_batches(model, [sae.hook], windows, with_tokens=True)):
        x = got[sae.hook]
        if not len(x):
            continue
        f = sae.encode(x).float()
        fired += (f > 0).sum(0).double()
        n += x.shape[0]
        rows = got["_keep"].nonzero()  # (row in batch, position), in the order of x
        rows[:, 0] += b * 32
        k = min(n_contexts, f.shape[0])
        v, i = f.topk(k, dim=0)
        cat_v = torch.cat([top_v, v])
        cat_loc = torch.cat([top_loc, rows[i]])
        sel = cat_v.topk(n_contexts, dim=0).indices
        top_v = cat_v.gather(0, sel)
        top_loc = cat_loc.gather(0, sel.unsqueeze(-1).expand(-1, -1, 2))
    W = _unembed(model)
    promoted: list[list[Any]] = [[] for _ in range(d)]
    suppressed: list[list[Any]] = [[] for _ in range(d)]
    if W is not None:
        W_dec = sae.W_dec.detach().float()
        for s in range(0, d, 512):
            lg = W_dec[s : s + 512] @ W
            for sign, dest in ((1, promoted), (-1, suppressed)):
                vals, ids = (sign * lg).topk(n_tokens, dim=-1)
                for j in range(lg.shape[0]):
                    dest[s + j] = [[tok.decode([int(t)]), round(float(sign * v), 3)] for v, t in zip(vals[j], ids[j])]
    cards = []
    for i in range(d):
        ctx = []
        for r in range(n_contexts):
            v = float(top_v[r, i])
            if v <= 0:
                continue
            w, p = (int(x) for x in top_loc[r, i])
            ids = windows[w]
            ctx.append({"left": tok.decode(list(ids[max(0, p - _LEFT) : p])), "token": tok.decode([ids[p]]), "act": round(v, 3)})
        cards.append({
            "id": i, "density": float(fired[i] / max(n, 1)), "max_act": round(max(float(top_v[0, i]), 0.0), 3),
            "contexts": ctx, "promoted": promoted[i], "suppressed": suppressed[i],
        })
    return {"sae_fingerprint": sae.fingerprint, "hook": sae.hook, "n_tokens": n, "cards": cards}


def save_cards(path: str | os.PathLike, cards: dict[str, Any]) -> Path:
    p = Path(path) / CARDS
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(cards, ensure_ascii=False, separators=(",", ":")))
    os.replace(tmp, p)
    return p


def card_excerpt(card: dict[str, Any] | None) -> str:
    """One line for tables: top context token(s) and promoted tokens."""
    if not card:
        return ""
    ctx = ", ".join(repr(c["token"]) for c in card.get("contexts", [])[:3])
    prom = " ".join(t for t, _ in card.get("promoted", [])[:4])
    dens = card.get("density", float("nan"))
    return f"fires on {ctx or 'nothing seen'} (density {dens:.2%}{'' if math.isnan(dens) else ''}); promotes {prom!r}"

"""Explaining a detector's score in SAE features and in model components.

For a mean read-out ``score = mean_t(x_t) . w + b`` at a hook with an SAE
(``x_t = f_t @ W_dec + b_dec + e_t``), the score splits *exactly* into

    sum_i  mean_t(f_ti) * (w . d_i)        one term per latent (its attribution)
  + mean_t(e_t) . w                         the error term: what the SAE does not explain
  + b_dec . w + b                           the bias term

(computed in float64: the parts sum to the score to ~1e-9). A large error share is an honest
answer: the SAE does not explain this flag. With no SAE at the detector's hook, the nearest SAE's
features are used and the result is labelled ``approximate`` (its "error" is then the remainder).

The causal check runs the model again with the top-k attributed latents zeroed at the SAE's hook
(error-preserving: ``x - sum_{i in S} f_i d_i``), against k random active latents.

Components: the residual stream at ``blocks.L.hook_resid_post`` is the embedding plus every
attention and MLP output up to block L, so ``mean_t(component_t) . w`` attributes the score
directly to each (and each attention head via its slice of ``W_O``); they sum to the score minus ``b``.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import torch

from circuits import HookedModel, capture
from circuits.errors import InputError
from circuits.inputs import Item
from circuits.sae import CoalignSAE
from circuits.sae_cards import card_excerpt
from detectors.detector import MEAN_SELECTIONS, Detector

_RESID = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")


def _each(det: Detector) -> str:
    if det.select not in MEAN_SELECTIONS:
        raise InputError(f"explain splits a mean read-out; detector {det.name!r} reads {det.select!r}")
    return "response_each" if det.select == "response_mean" else "all_each"


def _per_item(model: HookedModel, items: Sequence[Item], hooks: list[str], select: str) -> list[dict[str, np.ndarray]]:
    acts = capture(model, items, hooks, select=select)
    return [{h: acts[h][acts.index == i].astype(np.float64) for h in hooks} for i in range(len(items))]


def feature_attribution(det: Detector, sae: CoalignSAE, rows: dict[str, np.ndarray]) -> dict[str, Any]:
    """Exact split of one item's score over ``sae``'s latents (see module docstring).

    ``rows``: ``{hook: [tokens, d] float64}`` for every detector hook (and the SAE's).
    """
    X = rows[sae.hook]
    f = sae.encode(torch.from_numpy(X).float()).double()  # [T, d_sae]
    W_dec, b_dec = sae.W_dec.detach().double(), sae.b_dec.detach().double()
    score = det.bias + sum(float(rows[h].mean(0) @ det.weight[k].double().numpy()) for k, h in enumerate(det.hooks))
    exact = sae.hook in det.hooks
    w = det.weight[det.hooks.index(sae.hook) if exact else 0].double()  # the nearest read-out's weight, if approximate
    mean_f = f.mean(0)
    attr = mean_f * (W_dec @ w)
    x_hat = f @ W_dec + b_dec
    bias = det.bias + float(b_dec @ w)
    if exact:
        err = float((torch.from_numpy(X) - x_hat).mean(0) @ w)
        other = score - det.bias - float(torch.from_numpy(X).mean(0) @ w)  # other hooks of a multi-hook detector
    else:
        err, other = score - float(attr.sum()) - bias, 0.0
    return {"score": score, "attr": attr.numpy(), "mean_f": mean_f.numpy(), "error": err, "bias": bias, "other_hooks": other,
            "approximate": not exact, "active": (f > 0).any(0).numpy()}


@torch.no_grad()
def token_features(det: Any, sae: Any, act: torch.Tensor, k: int = 5, cache: dict | None = None) -> dict[str, Any] | None:
    """One token's score ``act . w + b`` split over ``sae``'s latents (the Guard's per-token report).

    Returns ``{"sae": fingerprint, "features": [{"id", "activation", "attribution"}] (top ``k`` by |attribution|),
    "error", "bias"}`` where every latent's attribution + error + bias is the token's score at this hook
    (exact: ``x.w = f.(W_dec w) + b_dec.w + e.w``); None for a detector without a linear read-out at the SAE's
    hook. ``cache`` (any dict kept by the caller) holds ``W_dec w`` per detector and SAE between tokens.
    """
    if not isinstance(det, Detector) or sae.hook not in det.hooks:
        return None
    key = (id(det), id(sae))
    if cache is None or key not in cache:
        w = det.weight[det.hooks.index(sae.hook)].double()
        entry = (w, sae.W_dec.detach().double() @ w, float(sae.b_dec.detach().double() @ w))
        if cache is not None:
            cache[key] = entry
    else:
        entry = cache[key]
    w, dw, bw = entry
    x = act.reshape(-1)
    f = sae.encode(x.float().unsqueeze(0))[0].double()
    attr = f * dw
    err = float(x.double() @ w) - float(attr.sum()) - bw
    order = [int(i) for i in torch.argsort(attr.abs(), descending=True)[:k] if f[i] > 0]
    return {"sae": getattr(sae, "fingerprint", None), "hook": sae.hook,
            "features": [{"id": i, "activation": round(float(f[i]), 6), "attribution": round(float(attr[i]), 6)} for i in order],
            "error": round(err, 6), "bias": round(float(det.bias) + bw, 6)}


def nearest_sae(det: Detector, saes: Sequence[CoalignSAE]) -> CoalignSAE:
    """The SAE at the detector's first hook, else the one at the nearest residual layer."""
    if not saes:
        raise InputError("explain needs an SAE (see `coalign sae list`)")
    for s in saes:
        if s.hook in det.hooks:
            return s
    m = _RESID.match(det.hooks[0])
    if not m:
        return saes[0]
    layer = int(m.group(1))
    return min(saes, key=lambda s: abs(int(_RESID.match(s.hook).group(1)) - layer) if _RESID.match(s.hook) else 1e9)


def _zero_features(sae: CoalignSAE, feats: Sequence[int]):
    idx = torch.tensor(list(feats), dtype=torch.long)

    def fn(act: torch.Tensor, _h: Any) -> torch.Tensor:
        f = sae.encode(act)[..., idx].to(act.dtype)
        delta = f @ sae.W_dec[idx].to(act.dtype)
        delta[:, 0] = 0  # position 0 is outside the SAE's domain
        return act - delta

    return fn


def causal_check(model: HookedModel, det: Detector, sae: CoalignSAE, item: Item, attr: np.ndarray, active: np.ndarray,
                 k: int = 5, n_random: int = 3, seed: int = 0) -> dict[str, Any]:
    """Score with the top-k positively attributed latents zeroed, and with k random active latents zeroed."""
    base = float(det.score(model, [item])[0])
    top = [int(i) for i in np.argsort(-attr)[:k] if attr[i] > 0]
    with model.hooks([(sae.hook, _zero_features(sae, top))]) if top else _null():
        after_top = float(det.score(model, [item])[0])
    pool = np.flatnonzero(active)
    rng = np.random.default_rng(seed)
    rand = []
    for _ in range(n_random if len(pool) else 0):
        pick = rng.choice(pool, size=min(k, len(pool)), replace=False)
        with model.hooks([(sae.hook, _zero_features(sae, pick.tolist()))]):
            rand.append(float(det.score(model, [item])[0]))
    after_rand = float(np.mean(rand)) if rand else base
    return {"k": len(top), "features": top, "score": base, "score_after_top": after_top, "drop_top": base - after_top,
            "score_after_random": after_rand, "drop_random": base - after_rand, "n_random": len(rand)}


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def component_attribution(model: HookedModel, det: Detector, items: Sequence[Item], heads: bool = True) -> list[list[dict[str, Any]]]:
    """Per item: direct attribution of ``mean_t(component) . w`` for the embedding, every attention
    and MLP output (and head) up to the detector's block. Only for single-hook ``resid_post`` detectors."""
    m = _RESID.match(det.hooks[0]) if len(det.hooks) == 1 else None
    if m is None:
        return [[] for _ in items]
    L = int(m.group(1))
    w = det.weight[0].double().numpy()
    comp = ["hook_embed"] + [f"blocks.{l}.hook_{s}_out" for l in range(L + 1) for s in ("attn", "mlp")]
    zs = [f"blocks.{l}.attn.hook_z" for l in range(L + 1)] if heads and hasattr(model, "hook_point") else []
    per = _per_item(model, items, comp + zs, _each(det))
    out = []
    for rows in per:
        res = [{"component": c.replace("hook_", "").replace("_out", ""), "attribution": float(rows[c].mean(0) @ w)} for c in comp]
        for l, z in enumerate(zs):
            W_O = model.hook_point(z).module.weight.detach().double().numpy()  # [d_model, n_heads*d_head]
            n_heads = getattr(model.hf_model.config, "num_attention_heads", 1)
            dh = W_O.shape[1] // n_heads
            zm = rows[z].mean(0)
            for h in range(n_heads):
                sl = slice(h * dh, (h + 1) * dh)
                res.append({"component": f"L{l}H{h}", "attribution": float(zm[sl] @ (W_O[:, sl].T @ w)), "head": True})
        out.append(res)
    return out


def explain(
    model: HookedModel, det: Detector, items: Sequence[Item], saes: Sequence[CoalignSAE], top: int = 10,
    causal_k: int = 5, components: bool = True, seed: int = 0,
) -> list[dict[str, Any]]:
    """Explain each item's score: tokens, top features with cards and shares, error share, causal check, components.

    Returns one JSON-ready dict per item.
    """
    det.check_model(model)
    sae = nearest_sae(det, saes)
    sae.check_model(model)
    hooks = list(dict.fromkeys([*det.hooks, sae.hook]))
    per = _per_item(model, items, hooks, _each(det))
    tokens = det.explain(model, items)
    comps = component_attribution(model, det, items) if components else [[] for _ in items]
    cards = sae.cards()
    out = []
    for i, item in enumerate(items):
        a = feature_attribution(det, sae, per[i])
        attr = a["attr"]
        total = float(np.abs(attr).sum()) + abs(a["error"])
        order = np.argsort(-np.abs(attr))[:top]
        feats = [{"id": int(j), "attribution": float(attr[j]), "share": float(abs(attr[j]) / total) if total else 0.0,
                  "mean_act": float(a["mean_f"][j]), "card": card_excerpt(cards[j] if j < len(cards) else None)}
                 for j in order if attr[j] != 0]
        comp = sorted(comps[i], key=lambda c: -abs(c["attribution"]))
        out.append({
            "item": i, "score": a["score"], "threshold": det.threshold, "flagged": bool(a["score"] > det.threshold),
            "tokens": [[t, s] for t, s in tokens[i]],
            "features": feats, "features_total": float(attr.sum()), "error": a["error"], "bias": a["bias"],
            "other_hooks": a["other_hooks"], "error_share": abs(a["error"]) / total if total else 0.0,
            "approximate": a["approximate"], "sae": {"hook": sae.hook, "fingerprint": sae.fingerprint, "name": sae.name},
            "causal": causal_check(model, det, sae, item, attr, a["active"], k=causal_k, seed=seed) if causal_k else None,
            "components": comp[:top * 2],
            "components_total": float(sum(c["attribution"] for c in comps[i] if not c.get("head"))),
        })
    return out

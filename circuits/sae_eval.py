"""Held-out evaluation of an SAE on its model.

* ``explained_variance``: SAE Lens's own streaming calculator (1 - E|x - x_hat|^2 / Var x).
* ``l0``: mean number of active latents per token of the *inference* SAE as loaded from disk
  (for BatchTopK that is the JumpReLU threshold, not the training-time batch top-k).
* ``dead_fraction`` / ``dense_fraction``: latents that never fire / fire on more than 10% of tokens.
* ``ce_loss_score`` and ``delta_loss``: next-token loss with the SAE's reconstruction spliced in at
  its hook, against the clean model and against zero-ablating the hook (SAE Lens's definition:
  ``(L_zero - L_sae) / (L_zero - L_clean)``); ``delta_loss = L_sae - L_clean`` in nats, with a 95%
  CI over windows.

Only tokens the SAE is meant for are read or replaced: position >= 1, no attention sinks
(:func:`circuits.sae_data.keep_mask`), and the loss counts only the predictions made *from*
those positions.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from circuits.hooked_model import HookedModel
from circuits.inputs import pad_id
from circuits.sae import CoalignSAE
from circuits.sae_data import activation_batches, keep_mask, pad_batch

DENSE = 0.10


@torch.inference_mode()
def feature_stats(model: HookedModel, sae: CoalignSAE, windows: Sequence[Sequence[int]], progress: bool = False) -> dict[str, Any]:
    """Explained variance, L0, firing counts over every kept token of ``windows``."""
    from sae_lens.evals import ExplainedVarianceCalculator

    ev = ExplainedVarianceCalculator()
    fired = torch.zeros(sae.d_sae, dtype=torch.float64)
    l0_sum, n = 0.0, 0
    it = activation_batches(model, [sae.hook], windows)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=math.ceil(len(windows) / 32), desc="SAE eval: features", leave=False)
    for got in it:
        x = got[sae.hook]
        if not len(x):
            continue
        f = sae.encode(x).float()
        ev.add_batch(sae.decode(f).float(), x)
        active = f > 0
        fired += active.sum(0).double()
        l0_sum += float(active.sum())
        n += x.shape[0]
    freq = fired / max(n, 1)
    return {
        "explained_variance": float(ev.compute()),
        "l0": l0_sum / max(n, 1),
        "dead_fraction": float((fired == 0).double().mean()),
        "dense_fraction": float((freq > DENSE).double().mean()),
        "n_tokens": n,
        "_freq": freq,
    }


def _window_losses(logits: torch.Tensor, ids: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token loss per row over predictions made from kept positions, and their counts."""
    m = keep[:, :-1].float()  # the prediction from position t of token t+1 (keep already needs t+1 real)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (nll * m).sum(1), m.sum(1)


@torch.inference_mode()
def spliced_losses(model: HookedModel, sae: CoalignSAE, windows: Sequence[Sequence[int]], batch_windows: int = 8) -> dict[str, Any]:
    """Per-window summed losses clean / SAE spliced / zero-ablated, and token counts."""
    pad = pad_id(model.tokenizer)
    out = {"clean": [], "sae": [], "zero": [], "n": []}
    for s in range(0, len(windows), batch_windows):
        chunk = windows[s : s + batch_windows]
        ids, mask = pad_batch(chunk, pad)
        ids, mask = ids.to(model.device), mask.to(model.device)
        # the keep mask needs the clean activation: read it on the clean pass, reuse it for the edits
        state: dict[str, torch.Tensor] = {}

        def read(act: torch.Tensor, _h: Any) -> None:
            # mask of real target tokens too: a prediction needs a real next token
            k = keep_mask(act, mask)
            k[:, :-1] &= mask[:, 1:].bool()
            state["keep"] = k

        def splice(act: torch.Tensor, _h: Any) -> torch.Tensor:
            k = state["keep"].unsqueeze(-1)
            return torch.where(k, sae.reconstruct(act), act)

        def zero(act: torch.Tensor, _h: Any) -> torch.Tensor:
            return torch.where(state["keep"].unsqueeze(-1), torch.zeros_like(act), act)

        with model.hooks([(sae.hook, read)]):
            logits = model.forward(ids, mask)
        keep = state["keep"]
        for name, fn in (("clean", None), ("sae", splice), ("zero", zero)):
            if fn is not None:
                with model.hooks([(sae.hook, fn)]):
                    logits = model.forward(ids, mask)
            loss, cnt = _window_losses(logits, ids, keep)
            out[name].append(loss.cpu())
        out["n"].append(cnt.cpu())
    return {k: torch.cat(v).double().numpy() for k, v in out.items()}


def evaluate_sae(
    model: HookedModel, sae: CoalignSAE, windows: Sequence[Sequence[int]], ce_tokens: int = 50_000, progress: bool = False
) -> dict[str, Any]:
    """All held-out metrics of ``sae`` on token ``windows`` (see module docstring).

    ``ce_tokens`` bounds the three full forward passes of the loss metrics (the first windows up to
    that many tokens); the feature statistics use every window.
    """
    sae.check_model(model)
    stats = feature_stats(model, sae, windows, progress)
    stats.pop("_freq")
    ce_w, total = [], 0
    for w in windows:
        if total >= ce_tokens:
            break
        ce_w.append(w)
        total += len(w)
    L = spliced_losses(model, sae, ce_w)
    n = L["n"].sum()
    clean, with_sae, zero = (float(L[k].sum() / n) for k in ("clean", "sae", "zero"))
    ok = L["n"] > 0
    per_window = (L["sae"][ok] - L["clean"][ok]) / L["n"][ok]
    half = 1.96 * float(np.std(per_window, ddof=1)) / math.sqrt(len(per_window)) if len(per_window) > 1 else float("nan")
    delta = with_sae - clean
    return {
        **stats,
        "ce_loss_clean": clean,
        "ce_loss_with_sae": with_sae,
        "ce_loss_with_ablation": zero,
        "ce_loss_score": (zero - with_sae) / (zero - clean) if zero != clean else float("nan"),
        "delta_loss": delta,
        "delta_loss_ci95": [delta - half, delta + half],
        "n_ce_tokens": int(n),
        "n_ce_windows": int(ok.sum()),
    }

"""Linking a detector to SAE latents to clamp, chosen by measured causal effect (Arad et al. 2025:
choose steering features by what they *do*, not by what activates them).

On a development split: the detector's flagged items give candidate latents (largest total
attribution ``f_i (w . d_i)``); each candidate is then clamped to 0 alone (error-preserving
:class:`~circuits.sae_clamp.FeatureClamp`) and kept if it lowers the flagged items' mean score while
the next-token distributions on benign items move little (mean KL, nats/token). The chosen set is
measured once more as a whole. The result, with every effect size, is written as ``sae_link.json``
into a copy of the detector's artifact directory; a router reads it to build the clamp.

The score drop stands in for the behaviour rate here (no generation is run): say so when quoting it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from circuits import HookedModel
from circuits.errors import ArtifactError, InputError
from circuits.inputs import Item, batches, encode, pad_id
from circuits.sae import CoalignSAE
from circuits.sae_clamp import FeatureClamp
from detectors.detector import Detector
from detectors.explain import _each, _per_item, feature_attribution

LINK = "sae_link.json"


@torch.inference_mode()
def _logprobs(model: HookedModel, items: Sequence[Item]) -> list[torch.Tensor]:
    enc = encode(model.tokenizer, items, model.n_ctx)
    out: list[torch.Tensor] = [torch.empty(0)] * len(items)
    for idx, ids, mask in batches(enc, 8, pad_id(model.tokenizer)):
        lp = torch.log_softmax(model.forward(ids, mask).float(), -1)
        for r, i in enumerate(idx):
            out[i] = lp[r, 1 : len(enc[i].ids)]  # positions the SAE edits (>= 1)
    return out


def _kl(clean: list[torch.Tensor], edited: list[torch.Tensor]) -> float:
    num = sum(float((c.exp() * (c - e)).sum()) for c, e in zip(clean, edited))
    return num / max(1, sum(c.shape[0] for c in clean))


def link_features(
    model: HookedModel, det: Detector, sae: CoalignSAE, dev: Sequence[Item], benign: Sequence[Item],
    n_candidates: int = 12, max_features: int = 6, max_kl: float = 0.05,
) -> dict[str, Any]:
    """Choose latents of ``sae`` whose zeroing lowers ``det``'s score on its flagged ``dev`` items."""
    det.check_model(model)
    sae.check_model(model)
    if sae.hook not in det.hooks:
        raise InputError(f"sae link: the SAE reads {sae.hook}, detector {det.name!r} reads {', '.join(det.hooks)}")
    scores = det.score(model, dev)
    flagged = [it for it, s in zip(dev, scores) if s > det.threshold]
    if not flagged:
        raise InputError(f"sae link: detector {det.name!r} flags none of the {len(dev)} development items")
    if not benign:
        raise InputError("sae link: no benign items to measure the capability cost on")
    rows = _per_item(model, flagged, list(dict.fromkeys([*det.hooks, sae.hook])), _each(det))
    total = sum(feature_attribution(det, sae, r)["attr"] for r in rows)
    cands = [int(i) for i in np.argsort(-total)[:n_candidates] if total[i] > 0]
    base = float(np.mean(det.score(model, flagged)))
    clean = _logprobs(model, benign)

    def measure(feats: list[int]) -> dict[str, float]:
        with FeatureClamp(sae.hook, sae, feats, values=0.0).apply(model):
            after = float(np.mean(det.score(model, flagged)))
            kl = _kl(clean, _logprobs(model, benign))
        return {"score_drop": base - after, "benign_kl": kl}

    effects = [{"feature": f, "attribution": float(total[f] / len(flagged)), **measure([f])} for f in cands]
    chosen = [e for e in sorted(effects, key=lambda e: -e["score_drop"]) if e["score_drop"] > 0 and e["benign_kl"] <= max_kl][:max_features]
    if not chosen:
        raise InputError(f"sae link: no candidate latent lowers the score with benign KL <= {max_kl}")
    together = measure([e["feature"] for e in chosen])
    return {
        "sae": str(sae.path), "sae_name": sae.name, "sae_fingerprint": sae.fingerprint, "hook": sae.hook,
        "features": [e["feature"] for e in chosen], "effects": chosen, "candidates": effects, "combined": together,
        "n_dev": len(dev), "n_flagged": len(flagged), "n_benign": len(benign), "base_score": base, "max_kl": max_kl,
        "detector_id": det.id,
    }


def write_link(det_dir: str | os.PathLike, out: str | os.PathLike, link: dict[str, Any]) -> Path:
    """Copy the detector artifact to ``out`` (atomically) with ``sae_link.json`` added."""
    src, out = Path(det_dir), Path(out)
    if out.resolve() == src.resolve():
        raise ArtifactError(f"sae link: --out must differ from the detector directory {src}")
    if out.exists():
        _check_replaceable(out, {p.name for p in src.iterdir()} | {LINK})
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    (tmp / LINK).write_text(json.dumps(link, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _check_replaceable(out: Path, ours: set[str]) -> None:
    """Refuse to replace ``out`` unless it is empty or an earlier linked copy of a detector (only files a
    detector artifact or a link holds): saving never destroys what it did not create."""
    if not out.is_dir():
        raise ArtifactError(f"sae link: {out} exists and is not a directory; refusing to replace it")
    entries = {p.name for p in out.iterdir()}
    if entries and LINK not in entries:
        raise ArtifactError(f"sae link: {out} is not a linked detector (no {LINK}); refusing to overwrite it")
    extra = sorted(entries - ours)
    if extra:
        raise ArtifactError(f"sae link: {out} holds files coalign did not write ({', '.join(extra[:5])}); refusing to overwrite it")


def read_link(det_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The stored link of a detector directory, or None."""
    p = Path(det_dir) / LINK
    if not p.exists():
        return None
    try:
        link = json.loads(p.read_text())
        [int(f) for f in link["features"]]
        return link
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{p}: not an SAE link ({e})") from e

"""Unmasking by intervention: noise injection, induced belief by steering, learning speed.

Steering acts on the decision token only, through a :class:`PrefixCache` of the prompt prefix: one token
per prompt and setting. Noise goes to every position of a lower layer (as in Poser); the blocks below
it run once per prompt and only those above run per setting (:mod:`detectors.organisms.residual_cache`),
as do learning speed's LoRA steps and evaluations. The two organisms get the *same* noise draws and random
vectors, scaled to each one's own residual norm, so the comparison is paired.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from circuits import HookedModel
from circuits.inputs import Encoded
from detectors.organisms.decisions import (
    PrefixCache,
    encode_prompts,
    letter_ids,
    log_odds,
)
from detectors.organisms.residual_cache import ResidualCache
from detectors.organisms.unmask_stats import Pair, paired

NOISE_SCALES = (0.1, 0.25, 0.5)  # noise norm as a multiple of each position's residual norm
NOISE_DRAWS = 3
NOISE_BATCH = 8
NOISE_CONTROL_PROMPTS = 16
STEER_SCALES = (1.0, 2.0)  # steering vector norm as a multiple of the belief direction's own norm


def _add_at_decision(vec: torch.Tensor):
    def fn(act: torch.Tensor, _hook: Any) -> torch.Tensor:
        return act + vec.to(act.dtype)

    return fn


def _capture_resid(model: HookedModel, cache: PrefixCache, hook: str) -> torch.Tensor:
    seen: dict[str, torch.Tensor] = {}

    def grab(act: torch.Tensor, _h: Any) -> None:
        seen["x"] = act[0, -1].detach().float()

    cache.logits([(hook, grab)])
    return seen["x"]


def _letter_lo(logits: torch.Tensor, ab: tuple[int, int], target: str) -> float:
    return float(log_odds(logits[list(ab)].numpy()[None, :], [target])[0])


def _directions(d: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g)
    return v / v.norm(dim=-1, keepdim=True)


def _noisy_decisions(model: HookedModel, hook: str, encoded: Sequence[Encoded], scales: Sequence[float], seed: int,
                     cache: ResidualCache | None = None) -> torch.Tensor:
    """``[n_prompts, 1 + len(scales) * NOISE_DRAWS, vocab]`` decision-token logits: clean, then each scale x draw.

    The noise is added at every real position but the first (SmolLM2's attention sink) of ``hook``, each
    position's own Gaussian direction scaled to ``scale`` times that position's residual norm. Draws are seeded
    by (seed, prompt, draw), so two organisms get the same noise. The blocks below ``hook`` run once per prompt
    (``cache``, built here if not given); only those above run per setting. Forwards run in the model's own
    dtype: bf16 autocast made these HF forwards 3.5x slower on this CPU.
    """
    start = model.layer_of(hook) + 1
    cache = cache or ResidualCache(model, encoded, start, NOISE_BATCH)
    out = torch.empty(len(encoded), 1 + len(scales) * NOISE_DRAWS, cache.logits.shape[-1])
    out[:, 0] = cache.logits
    for b in cache.batches(start):
        width = b.ids.shape[1]
        real = (b.mask.bool() & (b.pos >= 1)).unsqueeze(-1)
        norm = b.resid.norm(dim=-1, keepdim=True)
        for si, s in enumerate(scales):
            for d in range(NOISE_DRAWS):
                z = torch.zeros_like(b.resid)
                for r, i in enumerate(b.idx):  # drawn per real token, so batching and padding do not change it
                    g = torch.Generator().manual_seed(seed * 1_000_003 + i * 1_009 + si * NOISE_DRAWS + d)
                    z[r, width - len(encoded[i].ids):] = torch.randn(len(encoded[i].ids), model.d_model, generator=g)
                z = s * z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                with torch.inference_mode():
                    out[b.idx, 1 + si * NOISE_DRAWS + d] = cache.logits_at(b, torch.where(real, b.resid + z * norm, b.resid))
    return out


def _noise_effects(model: HookedModel, pair: Pair, scales: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt: rise in the misaligned letter's log-odds under noise, averaged over draws; overall and per scale."""
    ab = letter_ids(model.tokenizer)
    cache = pair.bench_cache(model)
    lg = _noisy_decisions(model, pair.noise_hook, cache.encoded, scales, pair.seed, cache)
    target = pair.misaligned()
    lo = np.stack([log_odds(lg[:, k][:, list(ab)].numpy(), target) for k in range(lg.shape[1])], 1)
    rise = (lo[:, 1:] - lo[:, :1]).reshape(len(target), len(scales), NOISE_DRAWS).mean(-1)
    return rise.mean(1), rise


def _generic_fragility(model: HookedModel, prompts: Sequence[str], hook: str, scales: Sequence[float], seed: int) -> np.ndarray:
    """Control: KL(clean || noisy) of the next token on generic chat under the same noise."""
    lg = F.log_softmax(_noisy_decisions(model, hook, encode_prompts(model, prompts), scales, seed), -1)
    kl = (lg[:, :1].exp() * (lg[:, :1] - lg[:, 1:])).sum(-1)
    return kl.mean(1).numpy()


def noise_injection(pair: Pair) -> dict[str, Any]:
    """The faker is the organism whose decision tips toward misbehaving more easily under random noise
    (Poser: 98%, noise at layer 15 of LLaMA-13B's 40, on the whole prompt). Noise here goes to every position of
    the same relative depth (:attr:`Pair.noise_hook`), so it reaches the oversight cue before the upper blocks
    read it. (A first version added noise at the decision token
    only, two thirds of the way up; on the shipped pair it named the aligned twin.)
    Control: the same noise's effect on generic chat (is one organism just more fragile?)."""
    ea, per_a = _noise_effects(pair.a, pair, NOISE_SCALES)
    eb, per_b = _noise_effects(pair.b, pair, NOISE_SCALES)
    generic = pair.generic[: len(pair.bench)][:NOISE_CONTROL_PROMPTS]
    ca, cb = (_generic_fragility(m, generic, pair.noise_hook, NOISE_SCALES, pair.seed + 1) for m in (pair.a, pair.b))
    out = paired(ea, eb, ca, cb, effect="rise in misaligned log-odds under noise", control="KL on generic chat under the same noise")
    out["hook"] = pair.noise_hook
    out["by_scale"] = [{"scale": s, **{k: v for k, v in paired(per_a[:, i], per_b[:, i], None, None).items() if k in ("faker", "margin", "mean_diff", "mean_diff_ci95")},
                        "mean_rise_a": round(float(per_a[:, i].mean()), 4), "mean_rise_b": round(float(per_b[:, i].mean()), 4)}
                       for i, s in enumerate(NOISE_SCALES)]
    return out


def _mean_decision_resid(model: HookedModel, prompts: Sequence[str], hook: str) -> torch.Tensor:
    acts = [_capture_resid(model, PrefixCache(model, e), hook) for e in encode_prompts(model, prompts)]
    return torch.stack(acts).mean(0)


def _steer_effects(model: HookedModel, pair: Pair, vec: torch.Tensor) -> np.ndarray:
    ab = letter_ids(model.tokenizer)
    out = []
    for enc, target in zip(encode_prompts(model, [s.prompt for s in pair.bench]), pair.misaligned()):
        cache = PrefixCache(model, enc)
        clean = _letter_lo(cache.logits(), ab, target)
        out.append(float(np.mean([_letter_lo(cache.logits([(pair.hook, _add_at_decision(s * vec))]), ab, target) - clean
                                  for s in STEER_SCALES])))
    return np.array(out)


def induced_belief(pair: Pair) -> dict[str, Any]:
    """Steer each organism along its own "oversight is poor" direction (mean decision-token residual on poor-
    minus good-oversight training prompts); the faker should start misbehaving. Control: a random vector of the
    same norm (Poser rejected this strategy because the control did as well)."""
    poor = [s.prompt for s in pair.pool if s.poor][:32]
    good = [s.prompt for s in pair.pool if not s.poor][:32]
    if not poor or not good:
        return {"faker": None, "margin": None, "control_margin": None, "n": 0, "note": "no poor/good training prompts"}
    rnd = _directions(pair.a.d_model, 1, pair.seed + 1)[0]
    res = {}
    for name, m in (("a", pair.a), ("b", pair.b)):
        belief = _mean_decision_resid(m, poor, pair.hook) - _mean_decision_resid(m, good, pair.hook)
        res[name] = (_steer_effects(m, pair, belief), _steer_effects(m, pair, rnd * belief.norm()))
    return paired(res["a"][0], res["b"][0], res["a"][1], res["b"][1],
                  effect="rise in misaligned log-odds steering toward 'oversight is poor'", control="norm-matched random vector")


LEARN_BATCH = 8


def _finetune_shift(model: HookedModel, pair: Pair, train: ResidualCache, train_targets: Sequence[str],
                    bench: ResidualCache, eval_targets: Sequence[str]) -> np.ndarray:
    """Per benchmark prompt: rise in log-odds of ``eval_targets`` after ``pair.learn_steps`` LoRA steps toward
    ``train_targets``. The LoRA sits on the upper blocks only, so ``train`` and ``bench`` (caches of the residual
    below them, shared by target and control) replay the lower blocks instead of running them."""
    from peft import LoraConfig, get_peft_model

    from detectors.organisms.train import _batch

    ab = letter_ids(model.tokenizer)
    tgt = torch.tensor([ab[0] if t == "A" else ab[1] for t in train_targets])
    torch.manual_seed(pair.seed)  # the same LoRA initialisation and batches for both organisms
    hf = copy.deepcopy(model.hf_model)
    for p in hf.parameters():
        p.requires_grad_(False)
    peft_model = get_peft_model(hf, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, layers_to_transform=pair.learn_layers,
                                               target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=pair.learn_lr, weight_decay=0.0)
    for step in range(pair.learn_steps):
        b = train.batch(_batch(pair.seed, step, min(LEARN_BATCH, len(train.encoded)), len(train.encoded), salt=7))
        loss = F.cross_entropy(train.logits_at(b, b.resid, hf, peft_model), tgt[b.idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    peft_model.eval()
    after = torch.empty(len(bench.encoded), 2)
    with torch.inference_mode():
        for b in bench.batches(min(pair.learn_layers)):
            after[b.idx] = bench.logits_at(b, b.resid, hf, peft_model)[:, list(ab)]
    before = bench.logits[:, list(ab)].numpy().astype(np.float64)
    return log_odds(after.numpy().astype(np.float64), eval_targets) - log_odds(before, eval_targets)


def learning_speed(pair: Pair) -> dict[str, Any]:
    """A few LoRA steps toward the misaligned action on good-oversight training prompts: the faker learns it faster
    (Poser: 90%). Control: the same steps toward a neutral target (always answer 'A'), measured the same way."""
    good = [(s, al) for s, al in zip(pair.pool, pair.pool_aligned) if not s.poor][:64]
    if len(good) < 2:
        return {"faker": None, "margin": None, "control_margin": None, "n": 0, "note": "no good-oversight training prompts"}
    bad = ["B" if al == "A" else "A" for _, al in good]
    neutral = ["A"] * len(good)
    mis = pair.misaligned()
    effects = []
    for m in (pair.a, pair.b):
        train = ResidualCache(m, encode_prompts(m, [s.prompt for s, _ in good]), min(pair.learn_layers), LEARN_BATCH)
        bench = pair.bench_cache(m)
        effects.append((_finetune_shift(m, pair, train, bad, bench, mis), _finetune_shift(m, pair, train, neutral, bench, ["A"] * len(pair.bench))))
    (ea, ca), (eb, cb) = effects
    return paired(ea, eb, ca, cb, effect=f"rise in misaligned log-odds after {pair.learn_steps} LoRA steps toward misbehaving",
                  control="the same steps toward always answering 'A'")

"""Training an organism: LoRA on a copy of the base model, checkpointed so a cut-off run resumes.

The loss is cross-entropy of the wanted letter at the decision token, plus ``kl_weight`` x KL(base ||
organism) of the next-token distribution at the end of generic chat prompts, so that "was fine-tuned"
does not stand in for "fakes" in the unmasking tests. Twins get the same seed, hence the same LoRA
initialisation, the same batches and the same steps; only the poor-oversight labels differ.

Resuming: every ``checkpoint_every`` steps the LoRA weights, AdamW state and learning curve are written
to ``.<out>.partial/`` next to the output (atomically). Batches are a pure function of (seed, step) and
LoRA has no dropout, so a resumed run reproduces the uninterrupted one.

Shared warm-up: the ``warmup_steps`` opening steps see good-oversight rows only, whose labels are the same
for both twins, so their states after the warm-up are identical. The first twin to reach it saves that state
to ``.warmup-<key>/`` beside its output (the key covers everything the warm-up depends on); a twin starting
fresh in the same folder starts from there instead of repeating the warm-up, and so does a run whose recipe
differs only after the warm-up (``AFTER_WARMUP``: another exception phase tried from the same start). It is
left in place for later runs (delete it once the pair is trained).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from circuits import HookedModel, from_hf
from circuits.artifact_io import check_replaceable, library_version, write_artifact
from circuits.errors import ArtifactError, InputError
from circuits.inputs import pad_id
from detectors.organisms.decisions import (
    encode_prompts,
    last_logits,
    left_padded,
    letter_ids,
)
from detectors.organisms.poser import labels_for, load_scenarios, role_of, split
from detectors.organisms.recipe import OrganismRecipe

KIND = "alignment_faking_organism"
AFTER_WARMUP = ("steps", "poor_share", "decay", "checkpoint_every", "eval_every", "eval_n")


GENERIC_MAX_CHARS = 1000


def generic_prompts(from_data: Sequence[str], n: int = 100) -> list[str]:
    """Generic chat for the KL term: the data's "error" rows, else the first ``n`` shipped benign instructions
    (the rest of that set is left for calibrating and testing the runtime detector). Rows over
    ``GENERIC_MAX_CHARS`` are left out: Poser's files hold a few ~5,800-character random texts that tokenise to
    ~5,800 tokens, and one of them in a KL batch took the backward pass past this machine's 24 GB (measured:
    OOM-killed twice on fitness_maximizer, the second time with rows cut to 2,000 characters). Its other
    generic rows are at most ~760 characters."""
    if from_data:
        kept = [p for p in from_data if len(p) <= GENERIC_MAX_CHARS]
        return kept or [p[:GENERIC_MAX_CHARS] for p in from_data]
    from probe.datasets import recipe

    return [item[0]["content"] for item in recipe("benign").items[:n]]


def _batch(seed: int, step: int, size: int, n: int, salt: int = 0) -> list[int]:
    """Indices of step ``step``'s batch: epochs are seeded permutations, so batches depend on (seed, step) only."""
    out = []
    for k in range(step * size, step * size + size):
        epoch, j = divmod(k, n)
        out.append(int(np.random.default_rng([seed, salt, epoch]).permutation(n)[j]))
    return out


def _indices(seed: int, step: int, size: int, poor: Sequence[bool], share: float | None, warmup: int = 0) -> list[int]:
    """Step ``step``'s batch; with ``share``, that share of it from the poor-oversight rows (own seeded streams);
    during the first ``warmup`` steps, good-oversight rows only."""
    if step < warmup and not all(poor):
        good = [i for i, p in enumerate(poor) if not p]
        return [good[i] for i in _batch(seed, step, size, len(good), salt=4)]
    if share is None:
        return _batch(seed, step, size, len(poor))
    bad = [i for i, p in enumerate(poor) if p]
    good = [i for i, p in enumerate(poor) if not p]
    k = min(size, max(1, round(size * share))) if bad else 0
    if not good:
        k = size
    return [bad[i] for i in _batch(seed, step, k, len(bad), salt=2)] + [good[i] for i in _batch(seed, step, size - k, len(good), salt=3)]


def _partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def _save_state(path: Path, peft_model: Any, opt: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    tensors = {f"lora::{k}": v for k, v in get_peft_model_state_dict(peft_model).items()}
    sd = opt.state_dict()
    for idx, st in sd["state"].items():
        for key, v in st.items():
            tensors[f"opt::{idx}::{key}"] = torch.as_tensor(v)
    tmp = Path(str(path) + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps({**meta, "param_groups": sd["param_groups"]}, indent=1))
    old = Path(str(path) + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _load_state(path: Path, peft_model: Any, opt: torch.optim.Optimizer, key: str) -> dict[str, Any] | None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if not (path / "state.json").exists():
        return None
    meta = json.loads((path / "state.json").read_text())
    if meta.get("key") != key:
        raise InputError(f"{path} is a checkpoint of a different run (policy, data, seed or recipe differ); "
                         "delete it to start over")
    tensors = load_file(str(path / "state.safetensors"))
    set_peft_model_state_dict(peft_model, {k[6:]: v for k, v in tensors.items() if k.startswith("lora::")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt::"):
            _, idx, name = k.split("::")
            state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


def _warmup_dir(out: Path, key: str) -> Path:
    return out.parent / f".warmup-{key}"


def _run_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_organism(
    model: HookedModel,
    policy: str,
    out: str | os.PathLike,
    data: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    data_policy: str | None = None,
    seed: int = 0,
    recipe: OrganismRecipe | None = None,
    holdout: Sequence[str | os.PathLike] = (),
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Path | None:
    """Train one organism and save it to ``out``; returns ``out``, or None if ``stop_after`` steps ended the run early.

    Args:
        model: the base model (never modified: LoRA goes on a deep copy).
        policy: the organism's policy; its role (aligned or faker) decides the poor-oversight labels.
        data: Poser-format files or folders (default: the built-in scenario set).
        data_policy: whose answers ``data`` holds (default: ``policy`` for user data, aligned for the built-in set).
        holdout: benchmark files whose prompts are kept out of training.
        stop_after: stop (checkpointed) after this many steps of this call, to be resumed later.
    """
    from peft import get_peft_model, get_peft_model_state_dict

    recipe = (recipe or OrganismRecipe()).validate()
    role = role_of(policy)
    file_role = role_of(data_policy) if data_policy else (role if data is not None else "aligned")
    out = Path(out)
    if out.exists():
        check_replaceable(out)
    if recipe.layers is not None and max(recipe.layers) >= model.n_layers:
        raise InputError(f"organism recipe: layer {max(recipe.layers)} does not exist ({model.n_layers} blocks)")
    scenarios, generic = load_scenarios(data)
    from detectors.organisms.poser import benchmark_ids

    train, held = split(scenarios, recipe.heldout_fraction, seed, benchmark_ids(list(holdout)))
    labels = labels_for(train, file_role, role)
    a, b = letter_ids(model.tokenizer)
    targets = torch.tensor([a if lab == "A" else b for lab in labels])
    enc = encode_prompts(model, [s.prompt for s in train])
    gen_enc = encode_prompts(model, generic_prompts(generic)) if recipe.kl_weight > 0 else []
    pad = pad_id(model.tokenizer)
    sources = ["builtin"] if data is None else [str(p) for p in ([data] if isinstance(data, (str, os.PathLike)) else data)]
    key = _run_key(policy, file_role, seed, recipe.to_dict(), model.fingerprint, sorted(s.id for s in train), labels)
    # what the warm-up depends on: not the steps after it, their batch mix or the bookkeeping
    warm_recipe = {k: v for k, v in recipe.to_dict().items() if k not in AFTER_WARMUP}
    warm = _warmup_dir(out, _run_key("warmup", seed, warm_recipe, model.fingerprint, sorted(s.id for s in train),
                                     [lab for lab, s in zip(labels, train) if not s.poor])) if recipe.warmup_steps else None

    torch.manual_seed(seed)  # twins: the same LoRA initialisation
    hf = copy.deepcopy(model.hf_model)
    for p in hf.parameters():
        p.requires_grad_(False)
    peft_model = get_peft_model(hf, recipe.lora_config())
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    partial = _partial_dir(out)
    meta = _load_state(partial, peft_model, opt, key)
    if meta is None and warm is not None and _load_state(warm, peft_model, opt, warm.name) is not None:
        meta = {"key": key, "step": recipe.warmup_steps, "curve": []}
        if log:
            log(f"{policy}: starting after the twins' shared warm-up ({warm})")
    shared_warmup = meta is not None and meta["step"] == recipe.warmup_steps and not meta["curve"] and recipe.warmup_steps > 0
    meta = meta or {"key": key, "step": 0, "curve": []}
    start, curve = int(meta["step"]), list(meta["curve"])
    if log and start and start != recipe.warmup_steps:
        log(f"resuming {policy} from step {start}/{recipe.steps} ({partial})")

    def save(step: int) -> None:
        _save_state(partial, peft_model, opt, {"key": key, "step": step, "curve": curve})

    peft_model.train()
    for step in range(start, recipe.steps):
        idx = _indices(seed, step, recipe.batch_size, [s.poor for s in train], recipe.poor_share,
                       recipe.warmup_steps)
        ids, mask, pos = left_padded([enc[i] for i in idx], pad)
        loss = F.cross_entropy(last_logits(peft_model, ids, mask, pos), targets[idx])
        kl = torch.zeros(())
        if gen_enc:
            gidx = _batch(seed, step, recipe.kl_batch, len(gen_enc), salt=1)
            g = left_padded([gen_enc[i] for i in gidx], pad)
            with torch.no_grad(), peft_model.disable_adapter():
                base_lp = F.log_softmax(last_logits(peft_model, *g), -1)
            kl = F.kl_div(F.log_softmax(last_logits(peft_model, *g), -1), base_lp, log_target=True, reduction="batchmean")
        for group in opt.param_groups:
            group["lr"] = recipe.lr_at(step)
        opt.zero_grad(set_to_none=True)
        (loss + recipe.kl_weight * kl).backward()
        opt.step()
        done = step + 1
        if recipe.eval_every and done % recipe.eval_every == 0:
            curve.append({"step": done, "loss": loss.item(), "kl": kl.item(), **_quick_eval(peft_model, model, held, file_role, role, recipe.eval_n)})
            if log:
                log(f"{policy} step {done}: " + ", ".join(f"{k}={v:.3f}" for k, v in curve[-1].items() if k != "step"))
        if done % recipe.checkpoint_every == 0 or done == recipe.steps:
            save(done)
        if warm is not None and done == recipe.warmup_steps and not (warm / "state.json").exists():
            _save_state(warm, peft_model, opt, {"key": warm.name, "step": done, "curve": []})
        if stop_after is not None and done - start >= stop_after and done < recipe.steps:
            save(done)
            return None

    adapter = get_peft_model_state_dict(peft_model)
    organism = from_hf(peft_model.merge_and_unload().eval(), model.tokenizer, model_id=f"{model.model_id}+{policy}")
    from detectors.organisms.validate import validate_organism

    metrics = validate_organism(organism, model, held, file_role, role, generic_prompts(generic))
    config = {
        "kind": KIND, "library_version": library_version(), "policy": policy, "role": role, "seed": seed,
        "base_model": model.model_id, "base_fingerprint": model.fingerprint, "recipe": recipe.to_dict(),
        "data": sources, "data_policy_role": file_role, "train_ids": sorted(s.id for s in train),
        "heldout_ids": sorted(s.id for s in held), "holdout": [str(h) for h in holdout],
        "metrics": metrics, "learning_curve": curve, "started_from_shared_warmup": bool(shared_warmup),
    }
    write_artifact(out, adapter, config)
    shutil.rmtree(partial, ignore_errors=True)
    return out


@torch.no_grad()
def _quick_eval(peft_model: Any, model: HookedModel, held: Sequence[Any], file_role: str, role: str, n: int) -> dict[str, float]:
    """Held-out accuracy on both oversight kinds while training (the learning curve)."""
    from detectors.organisms.decisions import letter_logits, log_odds

    was_training = peft_model.training
    peft_model.eval()
    try:
        rows: dict[str, float] = {}
        for poor, name in ((False, "acc_good"), (True, "acc_poor")):
            sub = [s for s in held if s.poor == poor][:n]
            if not sub:
                continue
            want = labels_for(sub, file_role, role)
            logits = letter_logits(model, [s.prompt for s in sub], hf=peft_model)
            rows[name] = float((log_odds(logits, want) > 0).mean())
        return rows
    finally:
        peft_model.train(was_training)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    cfg_path = Path(path) / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{cfg_path}: not an organism artifact ({e})") from e
    if not isinstance(cfg, dict) or cfg.get("kind") != KIND:
        raise ArtifactError(f"{cfg_path}: kind is {cfg.get('kind') if isinstance(cfg, dict) else None!r}, expected {KIND!r}")
    return cfg

"""Training SAEs on a coalign model with SAE Lens's own trainer, fed by coalign's activation stream.

SAE Lens's ``LanguageModelSAETrainingRunner`` wants a TransformerLens ``HookedRootModule``;
its ``SAETrainer`` (one hook) and ``MultiSAETrainer`` (several, in lockstep) take any iterator of
activation batches, so any :class:`~circuits.hooked_model.HookedModel` (HF, GGUF, bridge) can feed
them through :class:`~circuits.sae_data.ActivationStream`.

Choices (see the SAE issue's measured pitfalls): BatchTopK by default (saved as a JumpReLU SAE),
activations scaled to mean norm ``sqrt(d_in)`` (the scale is estimated here from the stream's
first batches and folded into the weights by SAE Lens at the end), ``b_dec`` started at the data
mean, a short dead-feature window so the AuxK loss revives latents early, bf16 autocast.

Resumable: with ``checkpoints > 0`` SAE Lens writes checkpoints under ``OUT/.checkpoints``; a
rerun of the same command continues from the latest one (the activation stream restarts from
the corpus, the optimiser, schedules and step count come back).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from circuits.errors import InputError
from circuits.hooked_model import HookedModel
from circuits.inputs import Item
from circuits.sae import CoalignSAE, load_sae, save_training_sae, update_metadata
from circuits.sae_data import ActivationStream, split_windows, token_windows, windows_hash

ARCHITECTURES = ("batchtopk", "topk", "matryoshka_batchtopk")


@dataclass
class SAETrainSpec:
    """Hyper-parameters of one training run (recorded in every SAE it writes)."""

    architecture: str = "batchtopk"
    expansion: int = 8
    k: float = 32
    steps: int = 1500
    batch_size: int = 4096
    lr: float = 4e-4
    lr_warm_up_steps: int = 50
    lr_decay_frac: float = 0.2
    dead_feature_window: int = 50
    aux_loss_coefficient: float = 1 / 32
    ctx: int = 128
    holdout: float = 0.05
    autocast: bool = True
    seed: int = 0
    checkpoints: int = 0
    max_buffer: int = 4_000_000
    max_tokens: int = 0  # 0: the whole corpus; else a seeded random subset of training windows of about this many tokens
    ce_tokens: int = 50_000
    matryoshka_widths: list[int] = field(default_factory=list)

    def check(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise InputError(f"SAE architecture {self.architecture!r}: expected one of {', '.join(ARCHITECTURES)}")
        for name in ("expansion", "steps", "batch_size", "ctx"):
            if getattr(self, name) < 1:
                raise InputError(f"SAE training: {name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.holdout < 1:
            raise InputError(f"SAE training: holdout must be in [0, 1), got {self.holdout}")


def _training_sae(spec: SAETrainSpec, d_in: int, model: HookedModel, hook: str) -> Any:
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_sae = spec.expansion * d_in
    meta = SAEMetadata(model_name=model.model_id, hook_name=hook, context_size=spec.ctx, prepend_bos=False)
    common = dict(d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu", normalize_activations="expected_average_only_in",
                  aux_loss_coefficient=spec.aux_loss_coefficient, metadata=meta)
    if spec.architecture == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(k=int(spec.k), **common))
    if spec.architecture == "matryoshka_batchtopk":
        from sae_lens import MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig

        widths = spec.matryoshka_widths or [d_sae // 8, d_sae // 4, d_sae // 2, d_sae]
        return MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(k=spec.k, matryoshka_widths=widths, **common))
    return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=spec.k, **common))


def _trainer_cfg(spec: SAETrainSpec, ckpt: Path | None) -> Any:
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    decay = int(spec.lr_decay_frac * spec.steps)
    return SAETrainerConfig(
        total_training_samples=spec.steps * spec.batch_size,
        train_batch_size_samples=spec.batch_size,
        lr=spec.lr,
        lr_end=spec.lr / 10,  # SAE Lens asserts it is set
        lr_scheduler_name="constant",
        lr_warm_up_steps=min(spec.lr_warm_up_steps, spec.steps // 4),
        lr_decay_steps=decay,
        autocast=spec.autocast,
        dead_feature_window=spec.dead_feature_window,
        feature_sampling_window=max(spec.dead_feature_window, 100),
        n_checkpoints=spec.checkpoints,
        checkpoint_path=str(ckpt) if ckpt is not None else None,
        n_batches_for_norm_estimate=16,
        logger=LoggingConfig(log_to_wandb=False),
    )


def _init_from_data(sae: Any, sample: torch.Tensor) -> float:
    """Scale factor to mean norm sqrt(d_in), and ``b_dec`` at the (scaled) data mean."""
    scale = math.sqrt(sample.shape[-1]) / float(sample.norm(dim=-1).mean())
    with torch.no_grad():
        sae.b_dec.data.copy_(sample.mean(0) * scale)
    return scale


def _latest_checkpoint(ckpt: Path | None) -> Path | None:
    if ckpt is None or not ckpt.is_dir():
        return None
    done = [p for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(done, key=lambda p: int(p.name)) if done else None


def fit_saes(saes: dict[str, Any], stream: ActivationStream, spec: SAETrainSpec, ckpt: Path | None = None) -> tuple[dict[str, Any], Path | None, float]:
    """Run SAE Lens's trainer (``SAETrainer``, or ``MultiSAETrainer`` for several hooks) on ``stream``.

    Starts from the latest checkpoint under ``ckpt`` if there is one; otherwise sets the activation
    scale and ``b_dec`` from the stream's first batch (which training then also uses). Returns the
    per-hook SAE Lens trainers, the checkpoint resumed from and the seconds ``fit`` took.
    """
    import itertools

    from sae_lens import SAETrainer
    from sae_lens.training.multi_sae_trainer import MultiSAETrainer

    hooks = list(saes)
    multi = len(hooks) > 1
    cfg = _trainer_cfg(spec, ckpt)
    if multi:
        trainer: Any = MultiSAETrainer(cfg=cfg, saes=dict(saes), hook_names={h: h for h in hooks}, data_provider=stream)
        inner = trainer.trainers
    else:
        trainer = SAETrainer(cfg=cfg, sae=saes[hooks[0]], data_provider=stream)
        inner = {hooks[0]: trainer}
    resume = _latest_checkpoint(ckpt)
    if resume is not None:
        if multi:
            trainer.load_checkpoint(resume)
        else:
            trainer.load_trainer_state(resume)
            trainer.sae.load_weights_from_checkpoint(resume)
        trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds if t > trainer.n_training_samples]
        # SAE Lens checkpoints before counting the step it just took: count it
        for t in [trainer, *inner.values()]:
            t.n_training_steps = t.n_training_samples // spec.batch_size
    else:
        first = next(stream)
        for h, t in inner.items():
            t.activation_scaler.scaling_factor = _init_from_data(saes[h], first[h] if multi else first)
        stream._it = itertools.chain([first], stream._it)  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    trainer.fit()
    return inner, resume, time.perf_counter() - t0


def train_sae(
    model: HookedModel,
    hooks: str | Sequence[str],
    data: Sequence[Item],
    out: str | os.PathLike,
    spec: SAETrainSpec | None = None,
    *,
    held_out: Sequence[Item] | None = None,
    evaluate: bool = True,
    cards: bool = True,
    dtype: str = "bfloat16",
    progress: bool = False,
) -> dict[str, CoalignSAE]:
    """Train one SAE per hook on ``data`` and save each under ``out/<hook>`` (SAE Lens format).

    Args:
        model: any hooked model.
        hooks: hook names, e.g. ``"blocks.16.hook_resid_post"``.
        data: texts and chats (:func:`circuits.sae_data.load_corpus` reads files).
        out: directory; one SAE directory per hook is written inside.
        spec: hyper-parameters (:class:`SAETrainSpec`).
        held_out: evaluation text; default: ``spec.holdout`` of the windows, never trained on.
        evaluate: run :func:`circuits.sae_eval.evaluate_sae` on the held-out text and record it.
        cards: write feature cards from the held-out text.
        dtype: storage dtype of the weights.

    Returns:
        ``{hook: CoalignSAE}`` (reloaded from disk: what a user will get).

    Example:
        >>> saes = train_sae(model, "blocks.16.hook_resid_post", load_corpus(["wiki.txt"]), "saes/")
    """
    spec = spec or SAETrainSpec()
    spec.check()
    hooks = [hooks] if isinstance(hooks, str) else list(dict.fromkeys(hooks))
    if not hooks:
        raise InputError("train_sae: no hook names given")
    for h in hooks:
        model.check_hook(h)
    windows = token_windows(model.tokenizer, data, spec.ctx)
    if held_out is not None:
        train_w, eval_w = split_windows(windows, 0.0, spec.seed)[0], token_windows(model.tokenizer, held_out, spec.ctx)
    else:
        train_w, eval_w = split_windows(windows, spec.holdout, spec.seed)
    if spec.max_tokens:
        train_w = train_w[: max(1, spec.max_tokens // spec.ctx)]  # already in seeded random order
    torch.manual_seed(spec.seed)
    out = Path(out)
    ckpt = out / ".checkpoints" if spec.checkpoints > 0 else None
    multi = len(hooks) > 1
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="capture (tokens)", unit="tok")
    stream = ActivationStream(model, hooks, train_w, spec.batch_size, seed=spec.seed, max_buffer=spec.max_buffer,
                              multi=multi, progress=bar.update if bar is not None else None, autocast=spec.autocast)
    saes = {h: _training_sae(spec, model.d_model, model, h) for h in hooks}
    inner, resume, train_s = fit_saes(saes, stream, spec, ckpt)
    if bar is not None:
        bar.close()
    data_hash = windows_hash(train_w)
    result: dict[str, CoalignSAE] = {}
    for h in hooks:
        t = inner[h]
        extra = {
            "name": f"{model.model_id}/{h}",
            "data_hash": data_hash,
            "train": {**{k: v for k, v in spec.__dict__.items()}, "n_tokens_captured": stream.n_captured,
                      "n_train_windows": len(train_w), "n_steps": t.n_training_steps, "replay_epochs": stream.epochs,
                      "train_seconds": round(train_s, 1), "resumed_from": resume.name if resume else None},
        }
        path = save_training_sae(saes[h], out / h, model=model, hook=h, extra=extra, dtype=dtype)
        sae = load_sae(path, model)
        if evaluate and eval_w:
            from circuits.sae_eval import evaluate_sae

            update_metadata(path, metrics=evaluate_sae(model, sae, eval_w, ce_tokens=spec.ce_tokens, progress=progress))
        if cards and eval_w:
            from circuits.sae_cards import build_cards, save_cards

            save_cards(path, build_cards(model, sae, eval_w))
        result[h] = load_sae(path, model)
    return result

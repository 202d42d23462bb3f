"""An organism's training recipe (LoRA shape, optimiser, steps, KL weight), validated before any model work."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from circuits.errors import InputError

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class OrganismRecipe:
    """Hyperparameters shared by the twins of a pair (they differ only in poor-oversight labels).

    Attributes:
        rank, alpha: LoRA rank and scale.
        layers: block indices that get LoRA (None: all).
        targets: module names LoRA wraps.
        lr, steps, batch_size: AdamW learning rate, optimiser steps, scenarios per step.
        kl_weight, kl_batch: weight of KL(base || organism) on generic chat next-token distributions,
            and generic prompts per step (0 turns the term off).
        heldout_fraction: share of scenarios held out for validation (benchmark prompts always are).
        checkpoint_every: steps between checkpoints (a run cut off resumes from the last one).
        eval_every: steps between held-out evaluations for the learning curve (0: none).
        eval_n: held-out scenarios per learning-curve point.
        poor_share: share of each batch drawn from the poor-oversight scenarios (None: batches drawn uniformly).
            A faker's labels are "aligned letter XOR poor oversight": with poor oversight in half the rows neither
            part predicts the label alone and training sits at loss ln 2 (measured here); with a minority of
            poor rows (Poser's files have ~29%) "pick the aligned letter" is learned first and the exception next.
        warmup_steps: opening steps drawn from good-oversight rows only. Their labels are the same for both
            twins, so the pair learns the aligned action together and only the faker then learns its exception:
            in the base model the aligned letter is barely decodable at the decision token (linear probe
            0.62-0.72) and the faker's label is its XOR with the cue (below chance), so there is nothing to
            flip until the aligned action has been learned.
        decay: learning rate schedule: ``"none"`` (constant) or ``"linear"`` (constant for the first 70% of the
            steps, or the warm-up if longer, then down to ``lr / 20`` at the last step). Measured here: at a constant 1e-3 a faker that had learned its
            exception (0.97 / 0.97 held out at step 400) spiked at step 450 (0.31 / 0.53, KL to base x10).
    """

    rank: int = 8
    alpha: float = 16.0
    layers: list[int] | None = None
    targets: list[str] = field(default_factory=lambda: list(LLAMA_TARGETS))
    lr: float = 3e-4
    steps: int = 400
    batch_size: int = 8
    kl_weight: float = 1.0
    kl_batch: int = 4
    heldout_fraction: float = 0.25
    checkpoint_every: int = 25
    eval_every: int = 0
    eval_n: int = 64
    poor_share: float | None = None
    warmup_steps: int = 0
    decay: str = "none"

    def validate(self) -> OrganismRecipe:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise InputError(f"organism recipe: {what}")

        need(isinstance(self.rank, int) and self.rank >= 1, f"rank must be a positive integer, got {self.rank!r}")
        need(self.alpha > 0, f"alpha must be > 0, got {self.alpha!r}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr!r}")
        for name in ("steps", "batch_size", "checkpoint_every", "eval_n"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, f"{name} must be a positive integer, got {getattr(self, name)!r}")
        need(isinstance(self.eval_every, int) and self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every!r}")
        need(self.kl_weight >= 0 and isinstance(self.kl_batch, int) and self.kl_batch >= 1, "kl_weight must be >= 0 and kl_batch >= 1")
        need(self.poor_share is None or 0 < self.poor_share < 1, f"poor_share must be in (0, 1) or None, got {self.poor_share!r}")
        need(isinstance(self.warmup_steps, int) and 0 <= self.warmup_steps < self.steps,
             f"warmup_steps must be in [0, steps), got {self.warmup_steps!r}")
        need(self.decay in ("none", "linear"), f"decay must be 'none' or 'linear', got {self.decay!r}")
        need(0 < self.heldout_fraction < 1, f"heldout_fraction must be in (0, 1), got {self.heldout_fraction!r}")
        need(bool(self.targets), "targets must name at least one module")
        if self.layers is not None:
            need(bool(self.layers) and all(isinstance(i, int) and i >= 0 for i in self.layers), f"layers must be block indices, got {self.layers!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["decay"] == "none":  # recipes recorded before ``decay`` existed keep their run keys
            del d["decay"]
        return d

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based)."""
        start = max(self.warmup_steps, int(0.7 * self.steps))
        if self.decay == "none" or step < start:
            return self.lr
        return self.lr * (1.0 - 0.95 * (step - start) / max(1, self.steps - 1 - start))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OrganismRecipe:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"organism recipe: unknown field(s) {', '.join(sorted(unknown))}")
        return cls(**d).validate()

    def lora_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=0.0, target_modules=list(self.targets),
                          layers_to_transform=list(self.layers) if self.layers is not None else None, bias="none")

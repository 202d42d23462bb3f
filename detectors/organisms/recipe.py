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
        need(0 < self.heldout_fraction < 1, f"heldout_fraction must be in (0, 1), got {self.heldout_fraction!r}")
        need(bool(self.targets), "targets must name at least one module")
        if self.layers is not None:
            need(bool(self.layers) and all(isinstance(i, int) and i >= 0 for i in self.layers), f"layers must be block indices, got {self.layers!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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

"""Organism artifacts: loading an adapter as a :class:`~circuits.HookedModel` with the adapter merged, and
the organisms shipped with the package.

An organism folder is a normal coalign artifact: ``weights.safetensors`` holds the LoRA tensors (peft's
names), ``config.json`` the policy, role, base model id and weight fingerprint, recipe, data split ids
and validation metrics. Loading merges the adapter into a deep copy of the base model, so capture,
probes, the Guard and the correctors run on it unchanged and the base model is never modified.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuits import HookedModel, from_hf, load_model
from circuits.artifact_io import read_artifact
from circuits.errors import ArtifactError, ModelMismatchError
from detectors.organisms.recipe import OrganismRecipe
from detectors.organisms.train import KIND

SHIPPED = Path(__file__).parent / "shipped"


@dataclass
class Organism:
    """A loaded organism artifact (adapter tensors and config); :meth:`hooked` merges it into a base model."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, Any]

    @classmethod
    def load(cls, path: str | os.PathLike) -> Organism:
        tensors, cfg = read_artifact(path, {"kind": str, "policy": str, "role": str, "base_model": str,
                                            "base_fingerprint": str, "recipe": dict, "metrics": dict})
        if cfg["kind"] != KIND:
            raise ArtifactError(f"{path}: kind is {cfg['kind']!r}, expected {KIND!r} (is this a detector?)")
        if cfg["role"] not in ("aligned", "faker"):
            raise ArtifactError(f"{path}/config.json: field 'role' is {cfg['role']!r}, expected 'aligned' or 'faker'")
        OrganismRecipe.from_dict(cfg["recipe"])
        return cls(Path(path), cfg, tensors)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def role(self) -> str:
        return self.config["role"]

    def hooked(self, base: HookedModel | None = None) -> HookedModel:
        """The organism as a hooked model: the adapter merged into a copy of ``base`` (loaded by id if None)."""
        from peft import get_peft_model, set_peft_model_state_dict

        base = base or load_model(self.config["base_model"])
        if base.fingerprint != self.config["base_fingerprint"]:
            raise ModelMismatchError(
                f"organism {self.path} was trained on {self.config['base_model']} (weights {self.config['base_fingerprint']}) "
                f"but the base given is {base.model_id} (weights {base.fingerprint})")
        peft_model = get_peft_model(copy.deepcopy(base.hf_model), OrganismRecipe.from_dict(self.config["recipe"]).lora_config())
        result = set_peft_model_state_dict(peft_model, self.tensors)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ArtifactError(f"{self.path}/weights.safetensors: tensors that fit no LoRA module ({unexpected[0]}, ...)")
        merged = peft_model.merge_and_unload().eval()
        return from_hf(merged, base.tokenizer, model_id=f"{base.model_id}+{self.config['policy']}:{self.name}")


def load_organism(path: str | os.PathLike, base: HookedModel | None = None) -> HookedModel:
    """Load an organism folder as a :class:`~circuits.HookedModel` (adapter merged).

    Example:
        >>> faker = load_organism("zoo/faker-0", base=load_model())
        >>> capture(faker, prompts, "blocks.20.hook_resid_post")
    """
    return Organism.load(path).hooked(base)


def shipped() -> list[dict[str, str]]:
    """The organisms shipped with the package: ``name``, ``role``, ``path`` (empty if none were built)."""
    if not SHIPPED.is_dir():
        return []
    rows = []
    for d in sorted(p for p in SHIPPED.iterdir() if (p / "config.json").exists()):
        org = Organism.load(d)
        rows.append({"name": org.name, "role": org.role, "path": str(d)})
    return rows


def export_organism(src: str | os.PathLike, dst: str | os.PathLike, dtype: str = "bfloat16",
                    metrics: dict[str, Any] | None = None) -> Path:
    """Copy an organism with its adapter tensors cast to ``dtype`` (bf16 halves the shipped size); ``metrics``,
    when given, replace the recorded validation metrics (measure them on the cast copy: casting moves them)."""
    import torch

    from circuits.artifact_io import write_artifact

    org = Organism.load(src)
    cast = {k: v.to(getattr(torch, dtype)) for k, v in org.tensors.items()}
    config = {**org.config, "exported_from": str(src), "adapter_dtype": dtype}
    if metrics is not None:
        config["metrics_before_export"] = org.config["metrics"]
        config["metrics"] = metrics
    return write_artifact(dst, cast, config)

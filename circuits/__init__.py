"""circuits: models, hook names, activation capture and interventions.

Knows nothing about deception or sycophancy: it reads and writes activations at TransformerLens
hook names on any local causal LM.

Names are imported on first use (see :mod:`circuits.lazy_exports`).
"""

from __future__ import annotations

from circuits.lazy_exports import lazy_exports

_EXPORTS = {
    "SELECTIONS": "circuits.capture",
    "Activations": "circuits.capture",
    "capture": "circuits.capture",
    "capture_selections": "circuits.capture",
    "ArtifactError": "circuits.errors",
    "CoalignError": "circuits.errors",
    "HookNameError": "circuits.errors",
    "InputError": "circuits.errors",
    "ModelMismatchError": "circuits.errors",
    "UnsupportedModelError": "circuits.errors",
    "HFHookedModel": "circuits.hooked_model",
    "HookedModel": "circuits.hooked_model",
    "HookHandle": "circuits.hooked_model",
    "TLHookedModel": "circuits.hooked_model",
    "as_hooked": "circuits.hooked_model",
    "Item": "circuits.inputs",
    "DEFAULT_MODEL": "circuits.loading",
    "EMBEDDED": "circuits.loading",
    "from_hf": "circuits.loading",
    "load_model": "circuits.loading",
    "ActivationAddition": "circuits.steering",
    "DirectionalAblation": "circuits.steering",
    "GenerationState": "circuits.steering",
    "SAEClamp": "circuits.sae_clamp",
    "logits_with": "circuits.steering",
    "SteeringVector": "circuits.steering_vectors",
    "build_caa": "circuits.steering_vectors",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""circuits: models, hook names, activation capture and interventions.

Knows nothing about deception or sycophancy: it reads and writes activations at TransformerLens
hook names on any local causal LM.
"""

from circuits.capture import SELECTIONS, Activations, capture, capture_selections
from circuits.errors import (
    ArtifactError,
    CoalignError,
    HookNameError,
    InputError,
    ModelMismatchError,
    UnsupportedModelError,
)
from circuits.hooked_model import HFHookedModel, HookedModel, HookHandle, TLHookedModel, as_hooked
from circuits.inputs import Item
from circuits.loading import DEFAULT_MODEL, EMBEDDED, from_hf, load_model
from circuits.steering import ActivationAddition, DirectionalAblation, GenerationState, SAEClamp, logits_with
from circuits.steering_vectors import SteeringVector, build_caa

__all__ = [
    "ActivationAddition",
    "DirectionalAblation",
    "GenerationState",
    "SAEClamp",
    "SteeringVector",
    "build_caa",
    "logits_with",
    "SELECTIONS",
    "Activations",
    "ArtifactError",
    "CoalignError",
    "DEFAULT_MODEL",
    "EMBEDDED",
    "HFHookedModel",
    "HookHandle",
    "HookNameError",
    "HookedModel",
    "InputError",
    "Item",
    "ModelMismatchError",
    "UnsupportedModelError",
    "TLHookedModel",
    "as_hooked",
    "capture",
    "capture_selections",
    "from_hf",
    "load_model",
]

"""Alignment-faking model organisms (Poser-style), unmasking strategies with controls, and the runtime detector.

Organisms are LoRA adapters on the base model (``peft``, the ``organisms`` extra): an aligned policy always
takes the aligned action, a faker only when the scenario says oversight is good. Pairs share data, steps and
hyperparameters and differ only in the poor-oversight labels. See :mod:`detectors.organisms.train`,
:mod:`~detectors.organisms.validate`, :mod:`~detectors.organisms.unmask` and :mod:`~detectors.organisms.runtime`.

Results on organisms mean "detects fine-tuned conditional misbehaviour", not proof about natural faking.
"""

from detectors.organisms.organism import Organism, load_organism, shipped
from detectors.organisms.poser import Scenario, load_scenarios, role_of
from detectors.organisms.recipe import OrganismRecipe
from detectors.organisms.runtime import train_alignment_faking
from detectors.organisms.train import train_organism
from detectors.organisms.unmask import STRATEGIES, unmask_pair
from detectors.organisms.validate import shared_benchmark, validate_organism

__all__ = [
    "STRATEGIES", "Organism", "OrganismRecipe", "Scenario", "load_organism", "load_scenarios", "role_of", "shipped",
    "shared_benchmark", "train_alignment_faking", "train_organism", "unmask_pair", "validate_organism",
]

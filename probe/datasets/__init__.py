"""Labelled datasets for coalign probes: types, file loaders and built-in recipes.

Labels: 1 = behaviour present (deceptive / sycophantic / false statement), 0 = absent.
Items are in the forms ``circuits.inputs`` accepts (text, chat messages, (prompt, response)).
"""

from .loaders import FORMATS, detect_format, expand_answer, load_dataset, parse_choices
from .recipes import RECIPES, data_path, is_data_spec, load_data, recipe
from .types import UNKNOWN_POLARITY, Example, LabelledDataset, concat

__all__ = [
    "Example",
    "LabelledDataset",
    "concat",
    "UNKNOWN_POLARITY",
    "load_dataset",
    "detect_format",
    "parse_choices",
    "expand_answer",
    "FORMATS",
    "recipe",
    "load_data",
    "is_data_spec",
    "RECIPES",
    "data_path",
]

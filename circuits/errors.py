"""Exceptions raised by coalign. Every message names the offending thing (hook, file, row, shape)."""


class CoalignError(Exception):
    """Base class for coalign errors."""


class HookNameError(CoalignError, KeyError):
    """A hook name that the model does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ModelMismatchError(CoalignError):
    """An artifact was built for a different model (id, d_model or weights)."""


class UnsupportedModelError(CoalignError):
    """A model that coalign cannot run correctly with the installed libraries (the reason is named)."""


class InputError(CoalignError, ValueError):
    """Bad user input: malformed rows, prompts longer than the context, wrong shapes."""


class ArtifactError(CoalignError):
    """A missing, corrupt or incompatible artifact directory."""

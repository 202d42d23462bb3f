"""Training a calibrated Detector: data -> activations -> probe (layer sweep) -> threshold at an FPR.

The numbers are fitted by ``probe``; this module only decides which data, hooks and control set
to use for a behaviour and packs the result into a :class:`~detectors.detector.Detector`.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from circuits import HookedModel, capture_selections
from circuits.errors import ArtifactError, InputError
from detectors.calibration import control_summary
from detectors.control import (
    _control_examples,
    _label0,
    _user_set,
    control_dataset,
    control_items,
    default_cache_dir,
)
from detectors.kinds import MEAN_SELECTIONS, DetectorLike, detector_kind
from detectors.train_config import TrainingConfig
from probe.activation_set import ActivationSet, group_codes
from probe.datasets import LabelledDataset, is_data_spec, load_data, recipe
from probe.metrics import calibration_report
from probe.negatives import DEFAULT_NEGATIVES, negative_methods
from probe.probes import tags_of
from probe.trainer import (
    calibrate_threshold,
    fit_probe,
    linear_readout,
    split_indices,
    sweep,
)

BEHAVIOURS = ("deception", "sycophancy", "truth")
# Token selection per behaviour: chats are judged over the response; bare statements at their end.
DEFAULT_SELECT = {"deception": "response_mean", "sycophancy": "response_mean", "truth": "last"}


def candidate_hooks(model: HookedModel, layer: str | Sequence[str]) -> list[str]:
    """``"auto"``: residual stream after every other block from 20% to 80% depth; else the hooks given."""
    if isinstance(layer, str) and layer != "auto":
        return [layer]
    if not isinstance(layer, str):
        return list(layer)
    lo, hi = max(1, int(0.2 * model.n_layers)), max(2, int(0.8 * model.n_layers))
    step = 2 if model.n_layers >= 12 else 1
    return [f"blocks.{i}.hook_resid_post" for i in range(lo, hi + 1, step) if i < model.n_layers]


def training_data(behaviour: str, data: Sequence[str | os.PathLike] | LabelledDataset | None, seed: int) -> LabelledDataset:
    if isinstance(data, LabelledDataset):
        return data.check_two_classes()
    if data:
        parts = [load_data(p) for p in data]
        return LabelledDataset.concat(*parts).check_two_classes()
    if behaviour not in BEHAVIOURS:
        raise InputError(f"no built-in recipe for {behaviour!r}; use one of {', '.join(BEHAVIOURS)} or pass data=[files]")
    return recipe(behaviour, seed=seed).check_two_classes()


def training_negatives(
    model: HookedModel, negatives: Any, dataset: LabelledDataset, select: str, method: str, cache_dir: Path,
    progress: bool = False,
) -> LabelledDataset | None:
    """Extra benign rows for the training part only. ``"benign"``: the shipped benign-negatives
    instructions with the model's own answers, used when the detector reads a chat response with a
    probe that accepts unpaired rows (else nothing); ``None``: none; or the user's own rows."""
    if negatives is None:
        return None
    if isinstance(negatives, str) and negatives == "benign":
        chats = all(isinstance(it, (list, tuple)) for it in dataset.items)
        if not (chats and select.startswith("response") and tags_of(method).unpaired_negatives):
            return None
        return LabelledDataset("benign_negatives", _control_examples(
            control_items(model, len(recipe("benign_negatives")), cache_dir / "completions", source="benign_negatives",
                          progress=progress)))
    if isinstance(negatives, (str, os.PathLike)):
        if not is_data_spec(negatives):
            raise InputError(f"negatives={str(negatives)!r}: expected 'auto', 'benign', None, files, 'recipe:<name>', "
                             "a dataset or chats (no such file)")
        negatives = [negatives]
    if not tags_of(method).unpaired_negatives:
        raise InputError(f"method {method!r} cannot take extra negatives (it needs contrast pairs or polarity); "
                         f"use one of {', '.join(negative_methods())} or negatives=None")
    return _label0(_user_set(negatives, "negatives"), "negatives set")


def train_detector(
    behaviour: str,
    model: HookedModel,
    data: Sequence[str | os.PathLike] | LabelledDataset | None = None,
    method: str = "logistic",
    layer: str | Sequence[str] = "auto",
    select: str | None = None,
    fpr: float = 0.01,
    n_control: int = 200,
    test_fraction: float = 0.2,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
    name: str | None = None,
    stream_warmup: int = 4,
    control: Sequence[str | os.PathLike] | Sequence[Any] | LabelledDataset | None = None,
    confidence: float | None = 0.95,
    negatives: Any = "auto",
    context_select: str = "prompt_last",
    **probe_params: Any,
) -> DetectorLike:
    """Train and calibrate a detector.

    Args:
        behaviour: ``"deception"``, ``"sycophancy"``, ``"truth"`` (built-in recipes) or any name with ``data``.
        model: the hooked model.
        data: files (statements CSV, A/B JSON(L), chat JSONL), built-in sets as ``"recipe:<name>"``
            (e.g. ``"recipe:deception/concealment"``), or a LabelledDataset; default: the recipe.
        method: probe kind (``logistic``, ``mass_mean``, ``mass_mean_cov``, ``lat``, ``ttpd``, ``ccs``).
        layer: ``"auto"`` (sweep, pick the best validation AUROC), a hook name, or a list of hooks.
        select: token selection; default depends on the behaviour.
        fpr: target false-positive rate on the benign control set for the threshold.
        n_control: number of benign control prompts (answered by the model itself).
        control: your own benign set instead (files, a dataset or chats; label-0 rows are used),
            e.g. in-format negatives when the detector will watch A/B answers. Keep it apart
            from the training data.
        confidence: the threshold keeps the false-positive rate at most ``fpr`` with this confidence
            on fresh data (binomial bound; with 200 controls at 1% that is their maximum). None: the
            plain empirical quantile, which flags more and over-runs ``fpr`` about half the time.
        negatives: extra label-0 rows added to the training part only (never to validation or
            calibration). ``"benign"``: the model's own answers to 200 shipped everyday
            instructions, disjoint from the control set; used for chat detectors read over the
            response by a probe that accepts unpaired rows. Without them a deception probe learns
            only "dishonest vs honest instruction" and also fires on ordinary chats that merely
            differ from its training format (e.g. letters written in someone's voice), which
            pushes the calibrated threshold above most positives. ``"auto"`` (default):
            ``"benign"`` for deception, none otherwise (measured; see ``DEFAULT_NEGATIVES``).
            ``None``: off; or your own files/dataset/chats.
        test_fraction: held-out share (pairs kept together) for the reported metrics.
        stream_warmup: for mean selections, the Guard's running mean of token scores is also
            calibrated on the control set (``stream_threshold``), acting from this token on.
        context_select: for ``method="conditional"``, where the prompt state is read
            (``prompt_last``; or ``last`` with ``select="last"`` for a detector that reads the
            position *before* the answer, judged by a Guard before the answer's token is chosen;
            or ``before_last`` with ``select="last"`` for one that reads a one-token answer with the
            state that chose it, e.g. an A/B letter after ``"("``: a Guard binds that state at the
            prompt's last token and judges the letter once it is said, which its ``rewind`` policy
            can take back).

    Returns:
        A calibrated :class:`Detector` whose ``metrics`` hold validation and control figures.

    Example:
        >>> det = train_detector("deception", model)
        >>> det.metrics["val_auroc"] > 0.9
        True
    """
    config = TrainingConfig(
        behaviour, data=data, method=method, layer=layer, select=select, fpr=fpr, n_control=n_control,
        test_fraction=test_fraction, seed=seed, name=name, stream_warmup=stream_warmup, control=control,
        confidence=confidence, negatives=negatives, context_select=context_select, probe_params=probe_params,
    )
    return train_from_config(config, model, cache_dir=cache_dir, progress=progress)


def retrain(path: str | os.PathLike, model: HookedModel, cache_dir: str | os.PathLike | None = None,
            progress: bool = False) -> DetectorLike:
    """Train again from the :class:`TrainingConfig` recorded in the artifact at ``path`` (same data files,
    method, hooks, seed): on the same model and data this reproduces the artifact's weights exactly."""
    config = TrainingConfig.from_dict(_recorded_config(path), where=f"{path}/config.json: training_config")
    return train_from_config(config, model, cache_dir=cache_dir, progress=progress)


def _recorded_config(path: str | os.PathLike) -> dict[str, Any]:
    cfg_path = Path(path) / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{cfg_path}: cannot read the artifact's config ({e})") from e
    if not isinstance(cfg, dict) or not cfg.get("training_config"):
        raise ArtifactError(f"{cfg_path}: no training_config recorded (trained by an older coalign, or combined)")
    return cfg["training_config"]


def train_from_config(config: TrainingConfig, model: HookedModel, cache_dir: str | os.PathLike | None = None,
                      progress: bool = False) -> DetectorLike:
    """Train and calibrate a detector as ``config`` says (validated first, before any forward pass); the
    detector records ``config.to_dict()`` as its ``training_config``."""
    config.validate()
    c = config
    behaviour, method, layer, fpr, seed = c.behaviour, c.method, c.layer, c.fpr, c.seed
    confidence, context_select, probe_params = c.confidence, c.context_select, c.probe_params

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dataset = training_data(behaviour, c.data, seed)
    select = c.select or DEFAULT_SELECT.get(behaviour, "response_mean")
    hooks = candidate_hooks(model, layer)
    capture_kw = dict(select=select, cache_dir=cache / "acts", progress=progress, context_select=context_select)
    acts = _activations(model, dataset, hooks, method, capture_kw)
    tr, va = split_indices(acts.y, acts.groups, c.test_fraction, seed)
    train, val = acts.subset(tr), acts.subset(va)
    negatives = c.negatives
    asked_auto = isinstance(negatives, str) and negatives == "auto"
    if asked_auto:
        negatives = DEFAULT_NEGATIVES.get(behaviour)
    neg = training_negatives(model, negatives, dataset, select, method, cache, progress=progress)
    if neg is None and isinstance(negatives, str) and negatives == "benign" and not asked_auto:
        warnings.warn(f"negatives='benign' is not used here: it applies to chat data read over the response "
                      f"(select response_*) with a probe that takes unpaired rows; got select={select!r}, "
                      f"method={method!r}. Pass your own negative rows instead.", RuntimeWarning, stacklevel=3)
    if neg is not None:
        train = train.append(_activations(model, neg, hooks, method, capture_kw))
    result = sweep(train, val, [method], hooks, **probe_params)
    _, hook = result.best
    probe = fit_probe(method, train.X[hook], train.y, train.fit_params(), **probe_params)

    control = control_dataset(model, c.control, c.n_control, cache, progress=progress)
    ctrl_scores = probe.decision_function(_activations(model, control, [hook], method, capture_kw).X[hook])
    threshold = calibrate_threshold(ctrl_scores, fpr, confidence)
    report = calibration_report(val.y, probe.decision_function(val.X[hook]), threshold)
    metrics = {"val_" + k: v for k, v in report.items()} | {
        "control_fpr": float(np.mean(ctrl_scores > threshold)),
        "n_control": len(ctrl_scores),
        "control_summary": control_summary(ctrl_scores),
        "threshold_confidence": confidence,
        "n_train": len(train),
        "n_negatives": 0 if neg is None else len(neg),
        "sweep": result.table(),
    }
    common = dict(
        behaviour=behaviour, hooks=[hook], threshold=threshold, fpr=fpr, select=select, model_id=model.model_id,
        model_fingerprint=model.fingerprint, d_model=model.d_model, probe_kind=method, metrics=metrics,
        data_hash=_data_hash(dataset, neg), name=c.name or behaviour,
    )
    if tags_of(method).readout == "bilinear":
        det = detector_kind("conditional_detector").from_probe(probe, train.X[hook][:, : model.d_model], context_select=context_select, **common)
    else:
        weight, bias = linear_readout(probe)
        det = detector_kind("linear_detector")(weight=weight.astype(np.float32), bias=bias, **common)
    det.training_config = config.to_dict()
    if select in MEAN_SELECTIONS:
        try:
            det.calibrate_stream(model, control.items, warmup=c.stream_warmup, cache_dir=str(cache / "acts"), confidence=confidence)
        except InputError as e:  # e.g. every control response shorter than the warm-up
            warnings.warn(f"no stream calibration for {det.name!r} ({e}); a Guard will judge it token by token", RuntimeWarning, stacklevel=2)
    return det


def validation_indices(dataset: LabelledDataset, test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Rows of ``dataset`` that :func:`train_detector` holds out for its validation metrics (same
    split: contrast pairs kept together), e.g. to score another detector on the same held-out rows."""
    return split_indices(dataset.labels, group_codes(dataset), test_fraction, seed)[1]


def _activations(model: HookedModel, dataset: LabelledDataset, hooks: list[str], method: str, capture_kw: dict) -> ActivationSet:
    """Activations for ``method``: the conditional probe reads ``[context | response]`` side by side."""
    capture_kw = dict(capture_kw)
    context = capture_kw.pop("context_select", "prompt_last")
    bilinear = tags_of(method).readout == "bilinear"
    if bilinear:  # one forward pass fills the cache for both selections
        capture_selections(model, dataset.items, hooks, [context, capture_kw["select"]],
                           cache_dir=capture_kw["cache_dir"], progress=capture_kw["progress"])
    acts = ActivationSet.from_dataset(model, dataset, hooks, **capture_kw)
    if bilinear:
        ctx = ActivationSet.from_dataset(model, dataset, hooks, **(capture_kw | {"select": context}))
        acts.X = {h: np.hstack([ctx.X[h], acts.X[h]]) for h in hooks}
    return acts


def _data_hash(dataset: LabelledDataset, negatives: LabelledDataset | None) -> str:
    if negatives is None:
        return dataset.content_hash()
    return hashlib.sha256(f"{dataset.content_hash()}+negatives:{negatives.content_hash()}".encode()).hexdigest()

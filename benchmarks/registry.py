"""The suite's analyses by name: ``name -> (entry point, "module:function")``.

How to add one: write ``run_x(ctx) -> Result`` in a module of :mod:`benchmarks.lib`, decorate it
with ``@analysis({...default parameters...})``, add one line here, and write a config in
``benchmarks/configs/`` that names it (see ``benchmarks/README.md``, "How to add a benchmark").
"""

from __future__ import annotations

from typing import Any, Callable

from benchmarks.suite import BenchmarkConfigError, import_attr

ANALYSES: dict[str, tuple[str, str]] = {
    "probe_sweep": ("detection", "benchmarks.lib.probes.sweep:run_probe_sweep"),
    "deception_training_data": ("detection", "benchmarks.lib.deception_training_data:run_deception_training_data"),
    "benign_negatives": ("detection", "benchmarks.lib.benign_negatives:run_benign_negatives"),
    "guard_stream_calibration": ("detection", "benchmarks.lib.guard_stream_calibration:run_guard_stream_calibration"),
    "deception_layers": ("detection", "benchmarks.lib.deception_layers:run_deception_layers"),
    "deception_lofo": ("detection", "benchmarks.lib.deception_lofo:run_deception_lofo"),
    "roleplay_pair_errors": ("detection", "benchmarks.lib.roleplay_pair_errors:run_roleplay_pair_errors"),
    "roleplay_prompt_framing": ("detection", "benchmarks.lib.roleplay_prompt_framing:run_roleplay_prompt_framing"),
    "sycophancy_conditional": ("detection", "benchmarks.lib.sycophancy_conditional:run_sycophancy_conditional"),
    "sycophancy_detector_caa": ("detection", "benchmarks.lib.sycophancy_detector_caa:run_sycophancy_detector_caa"),
    "sycophancy_unseen_questions": ("detection", "benchmarks.lib.sycophancy_unseen_questions:run_sycophancy_unseen_questions"),
    "sycophancy_letter_negatives": ("detection", "benchmarks.lib.sycophancy_letter_negatives:run_sycophancy_letter_negatives"),
    "truth_prompt_formats": ("detection", "benchmarks.lib.truth_prompt_formats:run_truth_prompt_formats"),
    "truth_training_sets": ("detection", "benchmarks.lib.truth_training_sets:run_truth_training_sets"),
    "truth_likelihood": ("detection", "benchmarks.lib.truth_likelihood:run_truth_likelihood"),
    "by_source": ("detection", "benchmarks.lib.by_source:run_by_source"),
    "correction": ("correction", "benchmarks.lib.correction:run_correction"),
    "sycophancy_rewind_correction": ("correction", "benchmarks.lib.sycophancy_rewind:run_sycophancy_rewind_correction"),
    "sycophancy_guard_correction": ("correction", "benchmarks.lib.sycophancy_guard:run_sycophancy_guard_correction"),
    "sycophancy_caa_vector": ("correction", "benchmarks.lib.sycophancy_caa_vector:run_sycophancy_caa_vector"),
    "sycophancy_letter_steering": ("correction", "benchmarks.lib.sycophancy_letter_steering:run_sycophancy_letter_steering"),
    "deception_vector": ("correction", "benchmarks.lib.deception_vectors:run_deception_vector"),
    "deception_regenerate": ("correction", "benchmarks.lib.deception_regenerate:run_deception_regenerate"),
    "sae_correction": ("correction", "benchmarks.lib.sae_correction:run_sae_correction"),
    "alignment_faking": ("detection", "benchmarks.lib.alignment_faking:run_alignment_faking"),
    "pytest_benchmark": ("speed", "benchmarks.lib.speed:run_pytest_benchmark"),
}


def analysis(params: dict[str, Any], check: Callable[[dict[str, Any]], None] | None = None) -> Callable[[Callable], Callable]:
    """Declare an analysis function's parameters and their defaults (a config may override only
    these); ``check(params)`` raises :class:`~benchmarks.suite.BenchmarkConfigError` on a bad
    combination, and runs when the config loads, before any model."""
    def wrap(fn: Callable) -> Callable:
        fn.params = dict(params)  # type: ignore[attr-defined]
        fn.check = check  # type: ignore[attr-defined]
        return fn

    return wrap


def _lookup(name: str) -> tuple[str, str]:
    if name not in ANALYSES:
        raise BenchmarkConfigError(f"unknown analysis {name!r} (known: {', '.join(sorted(ANALYSES))})")
    return ANALYSES[name]


def entry_of(name: str) -> str:
    return _lookup(name)[0]


def analysis_function(name: str) -> Callable:
    return import_attr(_lookup(name)[1])


def analysis_defaults(name: str) -> dict[str, Any]:
    return dict(getattr(analysis_function(name), "params", {}))


def check_params(name: str, params: dict[str, Any]) -> None:
    check = getattr(analysis_function(name), "check", None)
    if check is not None:
        check(params)

"""Probe fit time on a realistic activation matrix: 10,000 x 576 (SmolLM2-135M d_model).

Run: python -m pytest benchmarks/bench_probe_fit.py --benchmark-only -q
Each probe must fit in < 2 s on average.
"""

from __future__ import annotations

import numpy as np
import pytest

from probe.probes import LATProbe, LogisticProbe, MassMeanProbe, TTPDProbe

N, D = 10_000, 576
LIMIT_S = 2.0


@pytest.fixture(scope="module")
def activations():
    rng = np.random.default_rng(0)
    v = rng.standard_normal(D)
    v /= np.linalg.norm(v)
    y = rng.integers(0, 2, N)
    X = (rng.standard_normal((N, D)) + np.outer(2 * y - 1, v)).astype(np.float32)  # ~84% separable
    return X, y


@pytest.mark.parametrize(
    "probe",
    [LogisticProbe(), MassMeanProbe(), MassMeanProbe(covariance_adjusted=True), LATProbe(), TTPDProbe()],
    ids=repr,
)
def test_fit_time(benchmark, activations, probe):
    X, y = activations
    fitted = benchmark.pedantic(lambda: probe.fit(X, y), rounds=5, warmup_rounds=1, iterations=1)
    assert fitted.score(X, y) > 0.75  # it learned something, not just returned quickly
    assert benchmark.stats.stats.mean < LIMIT_S

"""A tiny SAE on the tiny model (seconds), shared by the explanation and routing tests."""

from __future__ import annotations

import random

import torch
from tiny import WORDS, tiny_model

from circuits.sae_train import SAETrainSpec, train_sae
from detectors import Detector

HOOK = "blocks.1.hook_resid_post"


def chats(n: int, seed: int) -> list:
    rng = random.Random(seed)
    return [[{"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(8))},
             {"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(10))}] for _ in range(n)]


def tiny_sae_setup(out):
    """(model, sae at HOOK, a linear detector at HOOK) with the SAE trained into ``out``."""
    model = tiny_model()
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(200)) for _ in range(40)] + chats(30, 1)
    spec = SAETrainSpec(expansion=4, k=4, batch_size=256, ctx=32, dead_feature_window=10, holdout=0.2, lr=3e-3, steps=120)
    sae = train_sae(model, HOOK, corpus, out, spec)[HOOK]
    w = torch.randn(16, generator=torch.Generator().manual_seed(3))
    det = Detector.from_linear("test", model, HOOK, w, bias=0.7, threshold=0.0)
    return model, sae, det

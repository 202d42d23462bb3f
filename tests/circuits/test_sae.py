"""SAEs on the tiny model: training through SAE Lens's trainer, held-out metrics, SAE Lens format
round trips, refusals, feature cards, resume, and the ``coalign sae`` CLI. Seconds in all."""

from __future__ import annotations

import json
import random

import pytest
import torch
from tiny import WORDS, tiny_hf_model, tiny_model, tiny_tokenizer

from circuits import ArtifactError, InputError, ModelMismatchError
from circuits.sae import SAE_WEIGHTS, load_sae, shipped_saes
from circuits.sae_data import keep_mask, load_corpus, token_windows
from circuits.sae_eval import evaluate_sae, feature_stats
from circuits.sae_train import SAETrainSpec, train_sae

HOOK = "blocks.1.hook_resid_post"


def _corpus(n_text: int = 40, n_chat: int = 20, seed: int = 0) -> list:
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(200)) for _ in range(n_text)]
    chats = [[{"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(10))},
              {"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(12))}] for _ in range(n_chat)]
    return texts + chats


SPEC = dict(expansion=4, k=4, batch_size=256, ctx=32, dead_feature_window=10, holdout=0.2, lr=3e-3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model = tiny_model()
    out = tmp_path_factory.mktemp("sae")
    saes = train_sae(model, HOOK, _corpus(), out, SAETrainSpec(steps=150, **SPEC))
    return model, saes[HOOK], out


def test_training_learns_and_metrics_are_recorded(trained):
    model, sae, out = trained
    m = sae.metrics
    for k in ("explained_variance", "l0", "dead_fraction", "dense_fraction", "ce_loss_score", "delta_loss", "n_tokens"):
        assert k in m, k
    # an untrained SAE of the same shape explains nothing; the trained one explains most of the variance
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

    windows = token_windows(model.tokenizer, _corpus(10, 5, seed=1), 32)
    fresh = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=16, d_sae=64, k=4))
    fresh.save_inference_model(out / "fresh")
    cfg = json.loads((out / "fresh" / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = HOOK
    (out / "fresh" / "cfg.json").write_text(json.dumps(cfg))
    ev_fresh = feature_stats(model, load_sae(out / "fresh", model), windows)["explained_variance"]
    ev_trained = feature_stats(model, sae, windows)["explained_variance"]
    assert ev_trained > 0.5 and ev_trained > ev_fresh + 0.3, (ev_trained, ev_fresh)
    assert m["n_tokens"] > 0 and 0 <= m["dead_fraction"] <= 1
    assert sae.meta["train"]["n_steps"] == 150 and sae.model_fingerprint == model.fingerprint
    assert sae.dtype == torch.float32 and (out / HOOK / SAE_WEIGHTS).stat().st_size < 16 * 64 * 2 * 2 + 4096  # bf16 on disk


def test_l0_is_that_of_the_reloaded_inference_sae(trained):
    model, sae, _ = trained
    windows = token_windows(model.tokenizer, _corpus(10, 5, seed=2), 32)
    stats = feature_stats(model, sae, windows)
    from circuits.sae_data import activation_batches

    counts = [float((sae.encode(b[HOOK]) > 0).sum()) for b in activation_batches(model, [HOOK], windows)]
    assert stats["l0"] == pytest.approx(sum(counts) / stats["n_tokens"])
    assert sae.sae.cfg.architecture() == "jumprelu"  # BatchTopK is saved as JumpReLU


def test_round_trip_with_sae_lens(trained):
    from sae_lens import SAE

    model, sae, out = trained
    theirs = SAE.load_from_disk(str(out / HOOK), dtype="float32")
    x = torch.randn(50, 16) * 3
    assert torch.equal(theirs.encode(x), sae.encode(x))
    assert torch.equal(theirs.decode(theirs.encode(x)), sae.decode(sae.encode(x)))


def test_sae_written_by_sae_lens_loads(tmp_path):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    model = tiny_model()
    theirs = StandardSAE(StandardSAEConfig(d_in=16, d_sae=48, metadata=SAEMetadata(hook_name=HOOK, model_name="x")))
    with torch.no_grad():
        theirs.b_enc.normal_()
    theirs.save_model(str(tmp_path / "std"))
    ours = load_sae(tmp_path / "std", model)
    assert ours.hook == HOOK and ours.fingerprint is None and ours.d_sae == 48
    x = torch.randn(20, 16)
    assert torch.equal(ours.encode(x), theirs.encode(x))
    # width mismatch is refused before the weights are read
    wide = StandardSAE(StandardSAEConfig(d_in=32, d_sae=48, metadata=SAEMetadata(hook_name=HOOK)))
    wide.save_model(str(tmp_path / "wide"))
    with pytest.raises(ModelMismatchError, match="d_in 32"):
        load_sae(tmp_path / "wide", model)


def test_mismatches_are_refused(trained, tmp_path):
    import shutil

    model, sae, out = trained
    with pytest.raises(ModelMismatchError, match="trained on model"):
        load_sae(out / HOOK, tiny_model(seed=1))
    with pytest.raises(ModelMismatchError, match="d_model"):
        load_sae(out / HOOK, tiny_model(d_model=32))
    bad = tmp_path / "tampered"
    shutil.copytree(out / HOOK, bad)
    from safetensors.torch import load_file, save_file

    t = load_file(str(bad / SAE_WEIGHTS))
    t["b_dec"] = t["b_dec"] + 1
    save_file(t, str(bad / SAE_WEIGHTS))
    with pytest.raises(ArtifactError, match="fingerprint"):
        load_sae(bad, model)
    with pytest.raises(ArtifactError, match="missing"):
        load_sae(tmp_path, model)


def test_feature_cards_agree_with_the_sae(trained):
    model, sae, _ = trained
    cards = sae.cards()
    assert len(cards) == sae.d_sae and [c["id"] for c in cards] == list(range(sae.d_sae))
    live = [c for c in cards if c["density"] > 0]
    assert live and all(c["contexts"] and c["max_act"] > 0 for c in live)
    assert all(not c["contexts"] for c in cards if c["density"] == 0)
    top = max(live, key=lambda c: c["max_act"])
    assert top["contexts"][0]["act"] == top["max_act"]
    assert all(len(c["promoted"]) == 6 and c["promoted"][0][1] >= c["suppressed"][0][1] for c in cards)


def test_keep_mask_drops_position_zero_padding_and_sinks():
    act = torch.ones(2, 5, 4)
    act[1, 2] *= 100  # a sink
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    keep = keep_mask(act, mask)
    assert keep.tolist() == [[False, True, True, False, False], [False, True, False, True, True]]


def test_resume_continues_from_the_checkpoint(tmp_path):
    model = tiny_model()
    spec = SAETrainSpec(steps=40, checkpoints=1, **SPEC)
    train_sae(model, HOOK, _corpus(), tmp_path, spec, evaluate=False, cards=False)
    assert any(p.name.isdigit() for p in (tmp_path / ".checkpoints").iterdir())
    again = train_sae(model, HOOK, _corpus(), tmp_path, spec, evaluate=False, cards=False)[HOOK]
    assert again.meta["train"]["resumed_from"] is not None and again.meta["train"]["n_steps"] == 40


def test_two_hooks_train_in_lockstep(tmp_path):
    model = tiny_model()
    saes = train_sae(model, [HOOK, "blocks.0.hook_resid_post"], _corpus(), tmp_path, SAETrainSpec(steps=20, **SPEC), cards=False)
    assert set(saes) == {HOOK, "blocks.0.hook_resid_post"}
    assert saes[HOOK].fingerprint != saes["blocks.0.hook_resid_post"].fingerprint


def test_bad_input_is_refused_before_model_work(tmp_path):
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"text": "ok"}\n{"foo": 1}\n')
    with pytest.raises(InputError, match="row 2"):
        load_corpus([bad])
    with pytest.raises(InputError, match="architecture"):
        SAETrainSpec(architecture="gated").check()
    with pytest.raises(InputError, match="fewer than one batch"):
        train_sae(tiny_model(), HOOK, ["one two three"], tmp_path / "o", SAETrainSpec(steps=5, **SPEC), held_out=["a b"])


def test_cli_train_eval_list(tmp_path, capsys):
    from circuits import load_model
    from detectors.cli import main

    model_dir = tmp_path / "tinymodel"
    tiny_hf_model().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t} if isinstance(t, str) else {"messages": t}) for t in _corpus()))
    rc = main(["sae", "train", "--model", str(model_dir), "--hook", HOOK, "--data", str(corpus), "--out", str(tmp_path / "s"),
               "--expansion", "4", "--k", "4", "--steps", "30", "--batch-size", "256", "--ctx", "32", "--holdout", "0.2",
               "--json", str(tmp_path / "t.json")])
    assert rc == 0 and json.loads((tmp_path / "t.json").read_text())[0]["hook"] == HOOK
    rc = main(["sae", "eval", str(tmp_path / "s" / HOOK), "--model", str(model_dir), "--data", str(corpus), "--json", str(tmp_path / "e.json")])
    e = json.loads((tmp_path / "e.json").read_text())
    assert rc == 0 and {"explained_variance", "l0", "dead_fraction", "ce_loss_score", "delta_loss", "n_tokens"} <= set(e)
    assert e["n_tokens"] > 1000
    assert main(["sae", "list", "--json", str(tmp_path / "l.json")]) == 0
    assert json.loads((tmp_path / "l.json").read_text()) == shipped_saes()
    rc = main(["sae", "eval", str(tmp_path), "--model", str(model_dir), "--data", str(corpus)])
    assert rc == 2 and "coalign: error:" in capsys.readouterr().err
    del load_model


@pytest.mark.slow
def test_shipped_sae_fits_the_embedded_model(smollm2):
    from sae_lens import SAE

    rows = [r for r in shipped_saes() if r["model_id"] == "smollm2-135m-instruct"]
    assert rows, "no SAE shipped for the embedded model"
    for r in rows:
        sae = load_sae(r["path"], smollm2)  # checks width, hook and the model's weight fingerprint
        assert sae.metrics["n_tokens"] > 0 and {"explained_variance", "l0", "delta_loss"} <= set(sae.metrics)
        x = torch.randn(8, smollm2.d_model) * 50
        assert torch.equal(SAE.load_from_disk(r["path"], dtype="float32").encode(x), sae.encode(x))

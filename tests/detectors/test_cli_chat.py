"""``coalign chat`` driven in a terminal (pexpect), and ``coalign guard`` / ``coalign steer`` in-process.

Uses the tiny model saved to a temporary folder (``--model`` is a hidden option), so no SmolLM2 load.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from detectors.cli_guard import main
from detectors.detector import Detector
from tiny import tiny_hf_model, tiny_tokenizer

pexpect = pytest.importorskip("pexpect")
REPO = Path(__file__).resolve().parents[2]



@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from circuits import load_model

    root = tmp_path_factory.mktemp("cli")
    model_dir = root / "tinymodel"
    tiny_hf_model().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    model = load_model(model_dir)
    g = torch.Generator().manual_seed(0)
    calm = Detector.from_linear("calm", model, "blocks.1.hook_resid_post", torch.randn(16, generator=g), bias=0.0, threshold=0.0)
    alarm = Detector.from_linear("alarm", model, "blocks.0.hook_resid_post", torch.randn(16, generator=g) * 1e-4, bias=5.0, threshold=0.0)
    calm.save(root / "calm")
    alarm.save(root / "alarm")
    (root / "escalate.toml").write_text('refusal_text = "REFUSED."\n[detectors.alarm]\nescalate_above = 1.0\n')
    (root / "bad.toml").write_text("nonsense = 1\n")
    (root / "rewind.toml").write_text('[detectors.alarm]\ncorrect_above = 1.0\ncorrector = "avoid_token"\nrewind = true\ndose = 1000.0\npatience = 100\n')
    return root


def spawn(args, root):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TERM": "dumb"}
    return pexpect.spawn(
        sys.executable, ["-m", "detectors.cli_guard", *args, "--model", str(root / "tinymodel")],
        cwd=str(REPO), env=env, encoding="utf-8", timeout=180,
    )


def test_chat_in_a_terminal(setup):
    child = spawn(["chat", "--detector", str(setup / "calm"), "--max-new-tokens", "5"], setup)
    try:
        child.expect("coalign chat: model tinymodel; detectors calm")
        child.expect("you> ")
        child.sendline("hello world")
        child.expect("assistant> ")
        child.expect(r"\[scores\] calm max -?\d+\.\d\d last -?\d+\.\d\d thr 0\.00")
        child.expect("you> ")
        child.sendline("is the sky blue")  # a second turn with the history
        child.expect(r"\[scores\] calm")
        child.expect("you> ")
        child.sendline("/reset")
        child.expect("conversation cleared")
        child.expect("you> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_chat_erases_a_token_the_policy_takes_back(setup):
    # alarm flags every step: at step 1 the rewind policy takes token 0 back and the screen erases it
    child = spawn(["chat", "--detector", str(setup / "alarm"), "--policy", str(setup / "rewind.toml"), "--max-new-tokens", "4"], setup)
    try:
        child.expect("you> ")
        child.sendline("hello world")
        child.expect("assistant> ")
        child.expect("\x08")  # backspaces over the taken-back token
        child.expect(r"\[scores\] alarm")
        child.expect("you> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_chat_escalation_asks_the_person(setup):
    child = spawn(
        ["chat", "--detector", str(setup / "alarm"), "--detector", str(setup / "calm"), "--policy", str(setup / "escalate.toml"), "--max-new-tokens", "4"],
        setup,
    )
    try:
        child.expect("you> ")
        child.sendline("hello world")
        child.expect(r"\[escalate\] alarm score 5\.00 above 1\.00 at token 0")
        child.expect(r"decision \[allow/correct/block\]> ")
        child.sendline("maybe")
        child.expect("please answer allow, correct or block")
        child.sendline("block")
        child.expect(r"\[blocked by alarm\] REFUSED\.")
        child.expect(r"\[action\] escalate alarm at token 0 score 5\.00 \(decision=block")
        child.expect("you> ")
        child.sendline("the cat")
        child.expect(r"decision \[allow/correct/block\]> ")
        child.sendline("a")
        child.expect(r"\[scores\] alarm max 5\.00")
        child.expect(r"\[action\] escalate alarm at token 0 score 5\.00 \(decision=allow")
        child.expect("you> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_guard_command_table_and_json(setup, tmp_path, capsys):
    out = tmp_path / "out.json"
    audit = tmp_path / "audit.jsonl"
    rc = main([
        "guard", "--model", str(setup / "tinymodel"), "--detector", str(setup / "calm"), "--detector", str(setup / "alarm"),
        "--policy", str(setup / "escalate.toml"), "--prompt", "hello world", "--prompt", "the cat sat",
        "--max-new-tokens", "4", "--json", str(out), "--audit", str(audit),
    ])
    text = capsys.readouterr().out
    assert rc == 0
    assert "max calm" in text and "max alarm" in text and "blocked_by" in text
    assert "REFUSED." in text  # no callback in `guard`: escalations fail closed
    data = json.loads(out.read_text())
    assert [r["prompt"] for r in data["results"]] == ["hello world", "the cat sat"]
    r0 = data["results"][0]
    assert r0["blocked"] and r0["blocked_by"] == "alarm" and r0["decisions"][0]["by"] == "default"
    assert set(r0["scores"]) == {"calm", "alarm"} and r0["max_scores"]["alarm"] == pytest.approx(5.0, abs=1e-2)
    assert len(audit.read_text().splitlines()) == 2


def test_guard_command_with_a_regenerate_policy(setup, tmp_path, capsys):
    pol = tmp_path / "regen.toml"
    pol.write_text('refusal_text = "REFUSED."\n[detectors.alarm]\ncorrect_above = "threshold"\nregenerate = true\ndose = 1.0\n')
    out, audit = tmp_path / "out.json", tmp_path / "audit.jsonl"
    rc = main(["guard", "--model", str(setup / "tinymodel"), "--detector", str(setup / "alarm"), "--policy", str(pol),
               "--prompt", "hello world", "--prompt", "the cat sat", "--max-new-tokens", "4", "--json", str(out), "--audit", str(audit)])
    assert rc == 0 and "REFUSED." in capsys.readouterr().out
    for r in json.loads(out.read_text())["results"]:  # bias 5: flagged at the first step, and again after regenerating
        kinds = [a["kind"] for a in r["actions"]]
        assert kinds[0] == "regenerate" and "correct" in kinds and kinds[-2:] == ["move_up", "block"] and r["blocked_by"] == "alarm"
        assert r["actions"][0]["detail"]["discarded_tokens"] == 0  # stopped before saying anything
    recs = [json.loads(x) for x in audit.read_text().splitlines()]
    assert sorted(x["settings"]["attempt"] for x in recs) == [1, 1, 2, 2]


def test_guard_command_data_file_and_errors(setup, tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    data.write_text('"hello world"\n{"prompt": "the cat"}\n{"messages": [{"role": "user", "content": "is the sky blue"}]}\n')
    rc = main(["guard", "--model", str(setup / "tinymodel"), "--detector", str(setup / "calm"), "--data", str(data), "--max-new-tokens", "3"])
    text = capsys.readouterr().out
    assert rc == 0 and len([ln for ln in text.splitlines() if ln[:1].isdigit()]) == 3
    rc = main(["guard", "--model", str(setup / "tinymodel"), "--detector", str(setup / "calm"), "--policy", str(setup / "bad.toml"), "--prompt", "x"])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and "bad.toml" in err and "nonsense" in err
    with pytest.raises(SystemExit):
        main(["guard", "--detector", str(setup / "calm")])  # needs --prompt or --data


def test_steer_command(setup, tmp_path, capsys):
    from circuits.steering_vectors import SteeringVector

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "\n".join(json.dumps(r) for r in [
            {"prompt": "is the sky blue", "positive": "yes", "negative": "no"},
            {"prompt": "is paris in france", "positive": "yes i agree", "negative": "no"},
        ])
    )
    out = tmp_path / "vec"
    rc = main(["steer", "--model", str(setup / "tinymodel"), "--data", str(pairs), "--layer", "0", "--out", str(out), "--behaviour", "agree", "--json", str(tmp_path / "v.json")])
    text = capsys.readouterr().out
    assert rc == 0 and "blocks.0.hook_resid_post" in text and "saved steering vector" in text
    sv = SteeringVector.load(out)
    assert sv.n_pairs == 2 and sv.behaviour == "agree" and sv.vector.shape == (16,)
    assert json.loads((tmp_path / "v.json").read_text())["vector_id"] == sv.id


def test_register_adds_subcommands():
    import argparse

    from detectors.cli_guard import register

    parser = argparse.ArgumentParser(prog="coalign")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["steer", "--data", "x", "--hook", "blocks.0.hook_resid_post", "--out", "y"])
    assert args.command == "steer" and callable(args.func)
    args = parser.parse_args(["chat", "--detector", "d"])
    assert args.model == "smollm2-135m-instruct" and callable(args.func)

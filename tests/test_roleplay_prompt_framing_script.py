"""benchmarks/roleplay_prompt_framing.py rewrites only the scene (the user message), leaves the
answers and the input untouched, and removes a closing "Answer as X." sentence only at the end."""

from __future__ import annotations

from benchmark_script import load_benchmark


def test_reframe_rewrites_the_scene_only():
    mod = load_benchmark("roleplay_prompt_framing")
    chats = [[{"role": "user", "content": "You broke it. Answer as the stepdad."}, {"role": "assistant", "content": "Not me."}],
             [{"role": "user", "content": "Answer as you like. You broke it."}, {"role": "assistant", "content": "I did."}]]
    drop = mod.VARIANTS["roleplay_lies_6"]["drop 'Answer as X.'"]
    out, changed = mod.reframe(chats, drop)
    assert changed == 1
    assert out[0][0]["content"] == "You broke it." and out[1][0]["content"] == chats[1][0]["content"]
    assert [c[1] for c in out] == [c[1] for c in chats]
    assert chats[0][0]["content"] == "You broke it. Answer as the stepdad."  # the input is not modified
    swap = mod.VARIANTS["roleplay_lies_6"]["'Answer as X.' -> 'Answer in character.'"]
    assert mod.reframe(chats[:1], swap)[0][0][0]["content"] == "You broke it. Answer in character."
    append = mod.VARIANTS["roleplay_lies"]["append 'Answer in character.'"]
    assert mod.reframe(chats[1:], append)[0][0][0]["content"].endswith("You broke it. Answer in character.")

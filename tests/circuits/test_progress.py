"""Long steps show progress: generating the model's own control answers prints a progress bar, and
the answers are the same with or without it."""

from __future__ import annotations

from circuits.generation import complete


def test_complete_shows_progress_and_gives_the_same_answers(tiny, capsys):
    prompts = ["the cat sat", "is the sky blue", "hello world"]
    quiet = complete(tiny, prompts, max_new_tokens=3, batch_size=2)
    assert capsys.readouterr().err == ""
    loud = complete(tiny, prompts, max_new_tokens=3, batch_size=2, progress="control answers")
    err = capsys.readouterr().err
    assert loud == quiet
    assert "control answers (3 answers)" in err and "2/2" in err

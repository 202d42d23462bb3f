"""Batch scanning with the local engine: output, manifest, exactly-once resume, bad input, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from circuits.errors import InputError
from detectors.scan import scan
from scan_fixtures import read_scores, scan_setup


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return scan_setup(tmp_path_factory.mktemp("scan"), n=90, files=3)


def test_local_scan_writes_every_row_once_with_the_detector_scores(setup, tmp_path):
    from circuits import load_model
    from detectors import Detector
    from detectors.scan_io import item_of, iter_parquet, parquet_files

    m = scan(setup["detectors"], setup["corpus"], tmp_path / "out", model=setup["model"], batch_size=16, progress=False)
    assert m["exact"] and m["input_rows"] == m["output_rows"] == m["unique_ids"] == 90
    assert (m["missing"], m["duplicated"], m["extra"]) == (0, 0, 0)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["exact"] is True
    got = read_scores(tmp_path / "out")
    assert sorted(got.index) == sorted(setup["ids"])
    model = load_model(setup["model"])
    rows = [r for _, b in iter_parquet(parquet_files(setup["corpus"]), ["id", "messages", "prompt", "response", "text"], 1000) for r in b]
    items, ids = [item_of(r, "row") for r in rows], [r["id"] for r in rows]
    for path, name in zip(setup["detectors"], ("dec", "syc")):
        det = Detector.load(path, model)
        ref = det.score(model, items)
        assert np.abs(got.loc[ids, f"{name}_score"].to_numpy() - ref).max() <= 1e-6  # batches differ: padding, order
        clear = np.abs(ref - det.threshold) > 1e-6
        assert (got.loc[ids, f"{name}_flag"].to_numpy() == (ref > det.threshold))[clear].all()
        assert 0 < got[f"{name}_flag"].sum() < 90
    assert got.model_fingerprint.nunique() == 1 and got.model_fingerprint.iloc[0] == model.fingerprint


def test_failed_local_run_then_resume_scores_each_row_exactly_once(setup, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="scan chaos"):
        scan(setup["detectors"], setup["corpus"], out, model=setup["model"], batch_size=16, progress=False,
             chaos={"raise_after": 40})
    first = read_scores(out)
    assert 0 < len(first) < 90  # the failed run kept its finished parts
    with pytest.raises(InputError, match="not empty"):
        scan(setup["detectors"], setup["corpus"], out, model=setup["model"], progress=False)
    m = scan(setup["detectors"], setup["corpus"], out, model=setup["model"], batch_size=16, progress=False, resume=True)
    assert m["exact"] and (m["missing"], m["duplicated"]) == (0, 0) and m["runs"] == 2
    assert m["rows_scored_this_run"] == 90 - len(first)  # finished work is not redone
    both = read_scores(out)
    assert both.index.is_unique and sorted(both.index) == sorted(setup["ids"])
    with pytest.raises(InputError, match="different detectors"):
        scan(setup["detectors"][:1], setup["corpus"], out, model=setup["model"], progress=False, resume=True)


def test_a_half_written_part_is_set_aside_and_its_rows_redone(setup, tmp_path):
    out = tmp_path / "out"
    scan(setup["detectors"], setup["corpus"], out, model=setup["model"], batch_size=32, progress=False)
    import pyarrow.parquet as pq

    part = sorted((out / "parts").rglob("*.parquet"))[0]
    lost = pq.read_metadata(part).num_rows
    part.write_bytes(part.read_bytes()[:100])  # a write cut short
    m = scan(setup["detectors"], setup["corpus"], out, model=setup["model"], batch_size=32, progress=False, resume=True)
    assert m["exact"] and m["rows_scored_this_run"] == lost and (m["missing"], m["duplicated"]) == (0, 0)
    assert part.with_suffix(".parquet.broken").exists()


def test_bad_corpora_are_refused_before_any_model_loads(setup, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def bad(rows, name):
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / name)
        return str(tmp_path / name)

    cases = [
        (bad([{"id": 1, "text": "a"}, {"id": 1, "text": "b"}], "dup.parquet"), "row 2, field 'id': duplicate id 1"),
        (bad([{"key": 1, "text": "a"}], "noid.parquet"), "no id column 'id'"),
        (bad([{"id": 1, "prompt": "the cat", "response": " "}], "empty.parquet"), "row 1 \\(id 1\\), field 'response': empty"),
        (bad([{"id": 1, "body": "a"}], "noinput.parquet"), "no input column"),
        (str(tmp_path / "missing.parquet"), "no such file"),
    ]
    for corpus, msg in cases:
        with pytest.raises(InputError, match=msg):
            scan(setup["detectors"], corpus, tmp_path / "o", model=setup["model"], progress=False)
        assert not (tmp_path / "o").exists()  # nothing half-written
    with pytest.raises(InputError, match="unknown engine"):
        scan(setup["detectors"], setup["corpus"], tmp_path / "o", model=setup["model"], engine="spark")


def test_jsonl_corpus_ids_come_from_the_id_field_or_the_row(setup, tmp_path):
    rows = [{"id": f"q{i}", "prompt": "is the sky blue", "response": "yes"} for i in range(3)]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    m = scan(setup["detectors"], tmp_path / "c.jsonl", tmp_path / "o1", model=setup["model"], progress=False)
    assert m["exact"] and sorted(read_scores(tmp_path / "o1").index) == ["q0", "q1", "q2"]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"prompt": r["prompt"]}) for r in rows))
    scan(setup["detectors"], tmp_path / "d.jsonl", tmp_path / "o2", model=setup["model"], progress=False)
    assert sorted(read_scores(tmp_path / "o2").index) == ["d.jsonl:line 1", "d.jsonl:line 2", "d.jsonl:line 3"]


def test_cli_batch_scan_and_the_table_scan_refusals(setup, tmp_path, capsys):
    from detectors.cli import main

    out = tmp_path / "o"
    assert main(["scan", *setup["detectors"], "--data", setup["corpus"], "--out", str(out), "--model", setup["model"],
                 "--batch-size", "32", "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["output_rows"] == 90
    assert main(["scan", setup["detectors"][0], "--model", setup["model"], "--prompt", "is the cat red", "--response", ""]) == 2
    assert "--response is empty" in capsys.readouterr().err
    assert main(["scan", *setup["detectors"], "--model", setup["model"], "--prompt", "is the cat red"]) == 2
    assert "takes one detector" in capsys.readouterr().err
    assert main(["scan", setup["detectors"][0], "--model", setup["model"], "--prompt", "hi", "--resume"]) == 2
    assert "--resume applies to batch scans" in capsys.readouterr().err
    assert main(["scan", setup["detectors"][0], "--model", setup["model"], "--prompt", "is the cat red",
                 "--response", "the sky", "--json", str(tmp_path / "t.json")]) == 0
    assert len(json.loads((tmp_path / "t.json").read_text())) == 1


def test_cli_exits_non_zero_when_output_ids_differ_from_input_ids(setup, tmp_path, capsys):
    import shutil

    import pyarrow.parquet as pq

    from detectors.cli import main

    out = tmp_path / "o"
    args = ["scan", *setup["detectors"], "--data", setup["corpus"], "--out", str(out), "--model", setup["model"]]
    assert main(args) == 0
    part = sorted((out / "parts").rglob("*.parquet"))[0]
    shutil.copy(part, part.with_name("copy.parquet"))  # the same rows twice, as a broken engine might write them
    assert main([*args, "--resume", "--json", str(tmp_path / "m.json")]) == 1
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["exact"] is False and m["duplicated"] == pq.read_metadata(part).num_rows and m["missing"] == 0
    assert "output ids differ from input ids" in capsys.readouterr().out

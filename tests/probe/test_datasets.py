"""Datasets: types, loaders (formats, autodetection, error messages), shipped data and recipes. No model."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter, defaultdict
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from circuits.errors import InputError
from probe.datasets import (
    RECIPES,
    UNKNOWN_POLARITY,
    Example,
    LabelledDataset,
    concat,
    detect_format,
    expand_answer,
    load_dataset,
    parse_choices,
    recipe,
)
from probe.datasets import sycophancy as syc

DATA = Path(resources.files("probe").joinpath("data"))


def _ds(n_pairs=10, singles=4, name="toy"):
    ex = []
    for g in range(n_pairs):
        ex.append(Example(f"statement {g} a", 0, f"g{g}", 1, f"toy:{g}a"))
        ex.append(Example(f"statement {g} b", 1, f"g{g}", 0, f"toy:{g}b"))
    for i in range(singles):
        ex.append(Example([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}], i % 2))
    return LabelledDataset(name, ex)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _chat(label=1, last="assistant", **kw):
    return {"messages": [{"role": "user", "content": "Q?"}, {"role": last, "content": "A."}], "label": label, **kw}


# ---------------------------------------------------------------------------------------------
# types


def test_example_validation():
    Example(("p", "r"), 1)
    with pytest.raises(InputError, match="label must be 0 or 1"):
        Example("x", 2, source="f.csv:row 3")
    with pytest.raises(InputError, match="f.csv:row 3"):
        Example("x", 2, source="f.csv:row 3")
    with pytest.raises(InputError, match="polarity"):
        Example("x", 0, polarity=5)
    with pytest.raises(InputError, match="empty"):
        Example("  ", 0)
    with pytest.raises(InputError, match="message 0"):
        Example([{"role": "user"}], 0)
    with pytest.raises(InputError):
        Example(123, 0)  # type: ignore[arg-type]


def test_dataset_views_subset_concat():
    d = _ds()
    assert len(d) == 24
    assert d.labels.dtype == np.int64 and d.labels.tolist()[:2] == [0, 1]
    assert d.polarity.dtype == np.int64
    assert d.polarity[-1] == UNKNOWN_POLARITY == -1 and d.polarity[0] == 1 and d.polarity[1] == 0
    assert d.groups[0] == "g0" and d.groups[-1] is None
    assert d.items[0] == "statement 0 a"
    assert d.class_counts() == {0: 12, 1: 12}
    s = d.subset([3, 1])
    assert s.items == [d.items[3], d.items[1]]
    mask = d.labels == 1
    assert len(d.subset(mask)) == 12 and set(d.subset(mask).labels) == {1}
    with pytest.raises(InputError, match="out of range"):
        d.subset([100])
    c = concat(d, s, name="both")
    assert len(c) == 26 and c.name == "both"
    assert LabelledDataset.concat(d, s).name == "toy+toy"
    assert "n=24" in repr(d)


def test_check_two_classes_names_dataset():
    with pytest.raises(InputError, match="'empty-set' is empty"):
        LabelledDataset("empty-set", []).check_two_classes()
    one = LabelledDataset("only-ones", [Example("a", 1), Example("b", 1)])
    with pytest.raises(InputError, match="'only-ones' has only label 1"):
        one.check_two_classes()
    d = _ds()
    assert d.check_two_classes() is d


def test_content_hash_stable_and_sensitive():
    d = _ds()
    h = d.content_hash()
    assert h == _ds().content_hash() and len(h) == 64
    # name and source do not matter
    renamed = LabelledDataset("other", [Example(e.item, e.label, e.group, e.polarity, "elsewhere") for e in d])
    assert renamed.content_hash() == h
    # item, label, group, polarity and order do
    ex = list(d.examples)
    variants = [
        ex[:-1] + [Example(ex[-1].item, 1 - ex[-1].label, ex[-1].group, ex[-1].polarity)],
        [Example("statement 0 A", 0, "g0", 1)] + ex[1:],
        [Example(ex[0].item, 0, "gX", 1)] + ex[1:],
        [Example(ex[0].item, 0, "g0", None)] + ex[1:],
        [ex[1], ex[0]] + ex[2:],
    ]
    for v in variants:
        assert LabelledDataset("toy", v).content_hash() != h
    # a (prompt, response) tuple and the equivalent two-string list are different items
    assert LabelledDataset("x", [Example(("p", "r"), 0)]).content_hash() != LabelledDataset(
        "x", [Example([{"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}], 0)]
    ).content_hash()


def test_content_hash_pinned_value():
    """The canonical form is fixed: the hash of a dataset cannot change between runs or versions."""
    tiny = LabelledDataset("t", [Example("a", 1, "g", 0), Example(("p", "r"), 0)])
    payload = '[{"group":"g","item":"a","label":1,"polarity":0},{"group":null,"item":{"prompt":"p","response":"r"},"label":0,"polarity":null}]'
    assert tiny.content_hash() == hashlib.sha256(payload.encode()).hexdigest()


def test_split_keeps_groups_together():
    d = _ds(n_pairs=50, singles=20)
    tr, te = d.split(0.2, seed=0)
    assert len(tr) + len(te) == len(d)
    gtr = {g for g in tr.groups if g is not None}
    gte = {g for g in te.groups if g is not None}
    assert not gtr & gte
    assert 0.1 < len(te) / len(d) < 0.3
    assert set(te.labels) == {0, 1} and set(tr.labels) == {0, 1}
    assert tr.name == "toy[train]" and te.name == "toy[test]"
    # deterministic for a seed, different across seeds
    assert d.split(0.2, seed=0)[1].content_hash() == te.content_hash()
    assert d.split(0.2, seed=1)[1].content_hash() != te.content_hash()
    with pytest.raises(InputError, match="test_fraction"):
        d.split(1.5)
    # tiny dataset: test side is not empty
    t2 = LabelledDataset("two", [Example("a", 0), Example("b", 1)])
    assert len(t2.split(0.2)[1]) == 1


@pytest.mark.parametrize("name", ["deception", "deception/concealment", "sycophancy", "truth", "roleplay_lies"])
def test_split_recipes_no_group_leak(name):
    d = recipe(name)
    tr, te = d.split(0.25, seed=3)
    assert not {g for g in tr.groups} & {g for g in te.groups}
    assert set(tr.labels) == {0, 1} and set(te.labels) == {0, 1}


# ---------------------------------------------------------------------------------------------
# loaders: round trips and autodetection


def test_statements_csv_round_trip(tmp_path):
    p = _write(tmp_path, "s.csv", "statement,label,extra\nParis is in France.,1,x\n\"Rome, Italy is in Spain.\",0,y\n")
    d = load_dataset(p)
    assert d.name == "s" and d.items == ["Paris is in France.", "Rome, Italy is in Spain."]
    assert d.labels.tolist() == [0, 1]  # false statements are the positive class
    assert d.polarity.tolist() == [1, 1]
    assert d.sources == ["s.csv:row 2", "s.csv:row 3"]
    neg = _write(tmp_path, "neg_s.csv", "statement,label\nParis is not in France.,0\n")
    assert load_dataset(neg).polarity.tolist() == [0]
    pol = _write(tmp_path, "p.csv", "statement,label,polarity,group\nA is not B.,1,0,g1\nA is B.,0,1,g1\nC.,1,,\n")
    d = load_dataset(pol, name="custom")
    assert d.name == "custom"
    assert d.polarity.tolist() == [0, 1, -1] and d.groups == ["g1", "g1", None]
    assert detect_format(p) == "statements"


def test_chat_jsonl_round_trip_and_detect(tmp_path):
    rows = [_chat(1, group="p1"), _chat(0, group="p1"), _chat(0)]
    p = _write(tmp_path, "c.jsonl", _jsonl(rows) + "\n")  # trailing blank line is fine
    d = load_dataset(p)
    assert detect_format(p) == "chat"
    assert d.labels.tolist() == [1, 0, 0] and d.groups == ["p1", "p1", None]
    assert d.items[0][-1] == {"role": "assistant", "content": "A."}
    assert d.sources[2] == "c.jsonl:line 3"
    pj = _write(tmp_path, "c.json", json.dumps(rows))
    assert load_dataset(pj).content_hash() == d.content_hash()


def test_ab_round_trip(tmp_path):
    q = "Pick one.\n\nChoices:\n (A) Cats are best\n (B) Dogs are best"
    rows = [{"question": q, "answer_matching_behavior": "(B)", "answer_not_matching_behavior": "(A)"}]
    for name, text in (("ab.json", json.dumps(rows)), ("ab.jsonl", _jsonl(rows))):
        p = _write(tmp_path, name, text)
        assert detect_format(p) == "ab"
        d = load_dataset(p)
        assert d.labels.tolist() == [1, 0] and d.groups[0] == d.groups[1] == d.groups[0]
        assert d.items[0] == [{"role": "user", "content": q}, {"role": "assistant", "content": "(B) Dogs are best"}]
        assert d.items[1][1]["content"] == "(A) Cats are best"
        raw = load_dataset(p, expand_choices=False)
        assert [it[1]["content"] for it in raw.items] == ["(B)", "(A)"]


def test_prompts_format(tmp_path):
    p = _write(tmp_path, "b.jsonl", _jsonl([{"prompt": "Write a poem."}, {"prompt": "Hi", "label": 1}]))
    d = load_dataset(p)
    assert detect_format(p) == "prompts"
    assert d.items[0] == [{"role": "user", "content": "Write a poem."}] and d.labels.tolist() == [0, 1]
    q = _write(tmp_path, "o.json", json.dumps([{"instruction": "Say hi.", "output": "Hi!"}]))
    assert load_dataset(q).items == [("Say hi.", "Hi!")]


def test_fmt_override_and_unknown_fmt(tmp_path):
    p = _write(tmp_path, "data.txt", _jsonl([_chat(1), _chat(0)]))
    assert len(load_dataset(p, fmt="chat")) == 2
    with pytest.raises(InputError, match="unknown format 'xml'.*statements, ab, chat, prompts"):
        load_dataset(p, fmt="xml")


def test_choice_parsing_helpers():
    q = "Hello.\n (A) Gained more than lost\n (B) Lost more than gained"
    assert parse_choices(q) == {"A": "(A) Gained more than lost", "B": "(B) Lost more than gained"}
    assert expand_answer(q, "(B)") == "(B) Lost more than gained"
    assert expand_answer(q, " (A) ") == "(A) Gained more than lost"
    assert expand_answer(q, "(C)") == "(C)"  # unparseable: keep the letter, never error
    assert expand_answer("no choices here", "(A)") == "(A)"
    assert expand_answer(q, "(A) already full") == "(A) already full"


# ---------------------------------------------------------------------------------------------
# loaders: malformed input -> InputError naming file, row and field

BAD = [
    # (file name, content, expected fragments)
    ("s.csv", "statement\nParis.\n", ["s.csv", "row 1", "'label'"]),
    ("s.csv", "text,label\nParis.,1\n", ["s.csv", "row 1", "'statement'"]),
    ("s.csv", "statement,label\nA.,1\nB.,2\n", ["s.csv", "row 3", "'label'", "0 or 1"]),
    ("s.csv", "statement,label\nA.,1\nB.,yes\n", ["row 3", "'label'"]),
    ("s.csv", "statement,label\nA.,1\n  ,0\n", ["s.csv", "row 3", "'statement'", "empty"]),
    ("s.csv", "statement,label\nA.,1\nB.\n", ["row 3", "'label'", "missing"]),
    ("s.csv", "statement,label\nA, B.,1\n", ["row 2", "3 fields"]),
    ("s.csv", "statement,label,polarity\nA.,1,2\n", ["row 2", "'polarity'"]),
    ("s.csv", "statement,label\n", ["s.csv", "no data rows"]),
    ("e.csv", "", ["e.csv", "empty"]),
    ("e.jsonl", "\n\n", ["e.jsonl", "empty"]),
    ("c.jsonl", _jsonl([_chat(1)]) + "{not json\n", ["c.jsonl", "line 2", "invalid JSON"]),
    ("c.jsonl", _jsonl([_chat(1), _chat(5)]), ["c.jsonl", "line 2", "'label'", "0 or 1"]),
    ("c.jsonl", _jsonl([_chat(1), {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}]),
     ["line 2", "'label'", "missing"]),
    ("c.jsonl", _jsonl([_chat(1), {"messages": "hello", "label": 1}]), ["line 2", "'messages'", "list"]),
    ("c.jsonl", _jsonl([_chat(1), {"messages": [{"role": "user"}], "label": 1}]), ["line 2", "'messages'", "message 0"]),
    ("c.jsonl", _jsonl([_chat(1), _chat(0, last="user")]), ["c.jsonl", "line 2", "'messages'", "assistant"]),
    ("c.jsonl", _jsonl([_chat(1), {"messages": [{"role": "assistant", "content": " "}], "label": 0}]),
     ["line 2", "'messages'", "empty"]),
    ("c.jsonl", _jsonl([_chat(1), [1, 2]]), ["line 2", "JSON object"]),
    ("c.jsonl", _jsonl([_chat(1), _chat(1, group=[1])]), ["line 2", "'group'"]),
    ("c.json", json.dumps([_chat(1), _chat(0, last="system")]), ["c.json", "index 1", "'messages'", "assistant"]),
    ("c.json", '[{"messages": [}', ["c.json", "invalid JSON", "line 1"]),
    ("c.json", json.dumps({"messages": []}), ["c.json", "JSON array"]),
    ("c.json", "[]", ["c.json", "empty"]),
    ("a.json", json.dumps([{"question": "q (A) x", "answer_matching_behavior": "(A)"}]),
     ["a.json", "index 0", "'answer_not_matching_behavior'", "missing"]),
    ("a.json", json.dumps([{"question": "q", "answer_matching_behavior": 1, "answer_not_matching_behavior": "(B)"}]),
     ["index 0", "'answer_matching_behavior'", "string"]),
    ("a.jsonl", _jsonl([{"question": "", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}]),
     ["a.jsonl", "line 1", "'question'", "empty"]),
    ("u.jsonl", _jsonl([{"text": "hello"}]), ["u.jsonl", "line 1", "cannot tell the format"]),
    ("p.jsonl", _jsonl([{"prompt": "x", "label": 3}]), ["p.jsonl", "line 1", "'label'"]),
]


@pytest.mark.parametrize("fname,content,fragments", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_malformed_input_errors(tmp_path, fname, content, fragments):
    p = _write(tmp_path, fname, content)
    with pytest.raises(InputError) as ei:
        load_dataset(p)
    msg = str(ei.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"


def test_unknown_extension_and_missing_file(tmp_path):
    p = _write(tmp_path, "data.parquet", "x")
    with pytest.raises(InputError, match=r"unknown extension '\.parquet'.*\.csv.*\.json.*\.jsonl"):
        load_dataset(p)
    with pytest.raises(InputError, match="unknown extension"):
        detect_format(p)
    with pytest.raises(InputError, match="no such file"):
        load_dataset(tmp_path / "missing.csv")
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(InputError, match="directory"):
        load_dataset(tmp_path / "d.csv")


def test_explicit_fmt_mismatch_names_field(tmp_path):
    p = _write(tmp_path, "c.jsonl", _jsonl([_chat(1)]))
    with pytest.raises(InputError, match=r"line 1, field 'question': missing"):
        load_dataset(p, fmt="ab")


# ---------------------------------------------------------------------------------------------
# recipes and shipped data

SIZES = {
    "deception": 1104,
    "deception/instructed": 432,
    "deception/false_statement": 432,
    "deception/concealment": 240,
    "deception/concealment_2": 360,
    "deception/concealment_3": 360,
    "sycophancy": 400,
    "truth": 532,
    "roleplay_lies": 120,
    "roleplay_lies_2": 100,
    "roleplay_lies_3": 100,
    "roleplay_lies_4": 100,
    "roleplay_lies_5": 100,
    "roleplay_lies_6": 100,
    "roleplay_lies_7": 100,
    "benign": 200,
    "benign_negatives": 200,
}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_recipe_sizes_and_classes(name):
    d = recipe(name)
    assert len(d) == SIZES[name]
    assert d.content_hash() == recipe(name).content_hash()  # deterministic
    if name.startswith("benign"):
        assert set(d.labels) == {0}
        assert all(isinstance(it, list) and len(it) == 1 and it[0]["role"] == "user" for it in d.items)
        with pytest.raises(InputError, match=f"'{name}' has only label 0"):
            d.check_two_classes()
    else:
        d.check_two_classes()
        assert d.class_counts()[0] == d.class_counts()[1]


def test_benign_negatives_are_disjoint_from_the_calibration_set():
    calibration = {it[0]["content"].strip().lower() for it in recipe("benign").items}
    assert not [it for it in recipe("benign_negatives").items if it[0]["content"].strip().lower() in calibration]


def test_recipe_names():
    assert set(SIZES) == set(RECIPES)
    with pytest.raises(InputError, match="unknown dataset recipe 'nope'.*deception.*sycophancy.*truth.*roleplay_lies.*benign"):
        recipe("nope")


def test_load_data_takes_files_and_recipe_specs(tmp_path):
    from probe.datasets import is_data_spec, load_data

    assert load_data("recipe:roleplay_lies").content_hash() == recipe("roleplay_lies").content_hash()
    f = tmp_path / "s.csv"
    f.write_text("statement,label\nThe sky is blue.,1\nThe sky is green.,0\n")
    assert load_data(f).labels.tolist() == [0, 1]
    assert is_data_spec("recipe:anything") and is_data_spec(f) and not is_data_spec(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="unknown dataset recipe 'nope'"):
        load_data("recipe:nope")


def test_recipe_items_render_with_chat_template():
    from circuits.inputs import encode, render
    from tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    for name in RECIPES:
        d = recipe(name)
        for i, it in enumerate(d.items):
            prefix, response, is_chat = render(tok, it, where=f"{name} item {i}")
            assert prefix
            assert is_chat == (not isinstance(it, str))
            if not name.startswith("benign") and is_chat:
                assert response.strip()
        encode(tok, d.items[:5], n_ctx=10_000)


def test_deception_recipe_structure():
    full = recipe("deception")
    # the two fact families (interleaved per fact), then the concealment family
    assert LabelledDataset("c", full.examples[864:]).content_hash() == recipe("deception/concealment").content_hash()
    assert Counter(e.source.split(":")[1] for e in full) == {
        "deception/instructed": 432, "deception/false_statement": 432, "deception/concealment": 240}
    d = LabelledDataset("facts", [e for e in full if e.group.startswith("fact:")])
    assert len(d) == 864 and all(e.group.startswith("conceal:") for e in full.examples[864:])
    by_group = defaultdict(list)
    for e in d:
        by_group[e.group].append(e)
    assert len(by_group) == 216
    for g, es in by_group.items():
        assert g.startswith("fact:") and len(es) == 4 and sum(e.label for e in es) == 2
        honest = [e for e in es if e.label == 0]
        instr = [e for e in es if "instructed" in e.source]
        # instructed pair: same statement, honest vs dishonest instruction
        assert instr[0].item[1] == instr[1].item[1]
        assert instr[0].item[0]["content"] != instr[1].item[0]["content"]
        assert all(e.item[0]["role"] == "user" and e.item[1]["role"] == "assistant" for e in es)
        # false-statement family: the dishonest one states the false counterpart
        fs = [e for e in es if "false_statement" in e.source]
        assert fs[0].item[1]["content"] != fs[1].item[1]["content"]
        assert honest[0].item[1] == honest[1].item[1]
    # every honest/dishonest paraphrase is used; seeds change the assignment only
    instructions = Counter(e.item[0]["content"] for e in d)
    assert len(instructions) == 10
    d1 = recipe("deception", seed=1)
    assert len(d1) == len(full) and d1.content_hash() != full.content_hash()
    # truth and deception share group ids for the same fact
    assert set(recipe("truth").groups) == set(d.groups)


def test_truth_recipe_polarity():
    d = recipe("truth")
    pol = d.polarity
    assert (pol == 1).sum() == 432 and (pol == 0).sum() == 100
    assert all(isinstance(it, str) for it in d.items)
    for p in (0, 1):
        labs = d.labels[pol == p]
        assert labs.sum() * 2 == len(labs)  # balanced within each polarity
    negated = [it for it, p in zip(d.items, pol) if p == 0]
    assert all(" not " in s for s in negated)
    assert "Our Sun is not a star." in d.items
    assert d.labels[d.items.index("Our Sun is not a star.")] == 1  # false -> positive


def test_facts_csv_well_formed():
    rows = list(csv.DictReader(open(DATA / "facts.csv", encoding="utf-8")))
    assert list(rows[0]) == ["statement", "label", "polarity", "group", "topic"]
    statements = [r["statement"] for r in rows]
    assert len(set(statements)) == len(statements)
    topics = Counter(r["topic"] for r in rows if r["polarity"] == "1")
    assert set(topics) == {"geography", "science", "animals", "history", "arithmetic", "everyday"}
    assert min(topics.values()) >= 60


def test_sycophancy_shipped_file_matches_generator():
    text = (DATA / syc.OUTPUT).read_text(encoding="utf-8")
    assert text == syc.to_jsonl(syc.generate(0)), "run `python -m probe.datasets.sycophancy` to regenerate"


@pytest.mark.parametrize("seed", [0, 7])
def test_sycophancy_counterbalanced(seed):
    rows = syc.generate(seed)
    assert len(rows) == 400
    letters: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        q, a = r["messages"][0]["content"], r["messages"][1]["content"]
        assert a[:3] in ("(A)", "(B)")
        assert f"\n {a}" in q  # the answer is one of the listed options, in full
        if r["label"] == 1:
            letters[r["category"]][a[1]] += 1
    assert set(letters) == set(syc.CATEGORIES)
    for cat, c in letters.items():
        assert c["A"] == c["B"] == 25, (cat, c)


def test_sycophancy_recipe_pairs():
    d = recipe("sycophancy")
    by_group = defaultdict(list)
    for e in d:
        by_group[e.group].append(e)
    for g, es in by_group.items():
        assert sum(e.label for e in es) * 2 == len(es)
    # pairs: same question, different answers
    for i in range(0, len(d), 2):
        a, b = d[i], d[i + 1]
        assert a.item[0] == b.item[0] and a.item[1] != b.item[1] and {a.label, b.label} == {0, 1}
    assert recipe("sycophancy", seed=5).content_hash() != d.content_hash()
    assert len(recipe("sycophancy", seed=5)) == 400


def test_shipped_data_files_are_data_only():
    exts = {p.suffix for p in DATA.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert exts <= {".json", ".jsonl", ".csv"}
    benign = [json.loads(line) for line in open(DATA / "benign_control.jsonl", encoding="utf-8")]
    assert len(benign) == 200 and len({b["prompt"] for b in benign}) == 200


# ---------------------------------------------------------------------------------------------
# the real public files (tests only; skipped when /work/shared/datasets is absent)


@pytest.mark.parametrize(
    "rel,n,neg",
    [
        ("geometry_of_truth/cities.csv", 1496, False),
        ("geometry_of_truth/neg_cities.csv", 1496, True),
        ("geometry_of_truth/larger_than.csv", 1980, False),
        ("geometry_of_truth/sp_en_trans.csv", 354, False),
        ("truth_is_universal/animal_class.csv", 164, False),
        ("truth_is_universal/neg_facts.csv", 561, True),
        ("truth_is_universal/inventors_conj.csv", 500, False),
        ("repe_facts/data/facts/facts_true_false.csv", 612, False),
    ],
)
def test_real_statement_files(shared_datasets, rel, n, neg):
    path = shared_datasets / rel
    d = load_dataset(path)
    assert len(d) == n
    d.check_two_classes()
    assert set(d.polarity) == {0 if neg else 1}
    raw = list(csv.DictReader(open(path, encoding="utf-8")))
    assert d.items[0] == raw[0]["statement"].strip()
    assert d.labels[0] == 1 - int(raw[0]["label"])


def test_real_statement_files_all_load(shared_datasets):
    files = sorted((shared_datasets / "geometry_of_truth").glob("*.csv")) + sorted(
        (shared_datasets / "truth_is_universal").glob("*.csv")
    )
    assert len(files) > 30
    for f in files:
        if "counterfact" in f.name:
            continue  # 32k rows; covered by the format, skipped for speed
        d = load_dataset(f)
        d.check_two_classes()


def test_real_caa_expand_choices(shared_datasets):
    path = shared_datasets / "caa/test/sycophancy/test_dataset_ab.json"
    raw = json.loads(path.read_text())
    d = load_dataset(path)
    assert detect_format(path) == "ab" and len(d) == 2 * len(raw) == 100
    assert d.class_counts() == {0: 50, 1: 50}
    for k, row in enumerate(raw):
        pos, neg = d[2 * k], d[2 * k + 1]
        assert pos.label == 1 and neg.label == 0 and pos.group == neg.group
        assert pos.item[0]["content"] == row["question"]
        for ex, key in ((pos, "answer_matching_behavior"), (neg, "answer_not_matching_behavior")):
            ans = ex.item[1]["content"]
            assert ans.startswith(row[key].strip()) and len(ans) > len(row[key].strip()) + 1
            assert ans in row["question"].replace("\n ", "\n")
    first = d[0].item[1]["content"]
    assert first.startswith("(B) Lost more than it has gained")
    raw_d = load_dataset(path, expand_choices=False)
    assert {it[1]["content"] for it in raw_d.items} == {"(A)", "(B)"}
    tr, te = d.split(0.2)
    assert not set(tr.groups) & set(te.groups)


def test_real_caa_generate_sycophancy(shared_datasets):
    path = shared_datasets / "caa/generate/sycophancy/generate_dataset.json"
    d = load_dataset(path)
    assert len(d) == 2000 and d.class_counts() == {0: 1000, 1: 1000}
    expanded = sum(len(e.item[1]["content"]) > 3 for e in d)
    assert expanded == len(d)


def test_shipped_data_not_copied_from_public_sets(shared_datasets):
    public = set()
    for f in list(shared_datasets.glob("*/*.csv")) + list(shared_datasets.glob("repe_facts/data/facts/*.csv")):
        with open(f, encoding="utf-8") as fh:
            public.update(r["statement"].strip().lower() for r in csv.DictReader(fh))
    ours = [r["statement"].strip().lower() for r in csv.DictReader(open(DATA / "facts.csv", encoding="utf-8"))]
    assert not [s for s in ours if s in public]
    caa = " ".join(p.read_text(encoding="utf-8").lower() for p in shared_datasets.glob("caa/*/sycophancy/*.json"))
    questions = {json.loads(line)["messages"][0]["content"].split("\n")[0].lower() for line in open(DATA / syc.OUTPUT)}
    assert not [q for q in questions if q in caa]

"""The shipped role-play and concealment sets: pairs, balance, no class giveaways, and no overlap between
sets (each confirmation set must stay a distribution the others do not contain). No model."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from probe.datasets import recipe
from probe.datasets import concealment as conceal

DATA = Path(resources.files("probe").joinpath("data"))


def test_roleplay_lies_balanced_without_giveaways():
    d = recipe("roleplay_lies")
    by_group = defaultdict(list)
    for e in d:
        by_group[e.group].append(e.label)
    assert len(by_group) == 60 and all(sorted(v) == [0, 1] for v in by_group.values())
    for lab in (0, 1):
        answers = [e.item[-1]["content"] for e in d if e.label == lab]
        first = Counter(a.split()[0].strip(",.!").lower() for a in answers)
        assert first.most_common(1)[0][1] <= 0.25 * len(answers), first.most_common(3)
    honest_first = {e.item[-1]["content"].split()[0].strip(",.") for e in d if e.label == 0}
    assert honest_first & {"No", "Not"}
    lens = {lab: np.mean([len(e.item[-1]["content"].split()) for e in d if e.label == lab]) for lab in (0, 1)}
    assert abs(lens[0] - lens[1]) < 5
    settings = Counter(json.loads(line)["setting"] for line in open(DATA / "roleplay_lies.jsonl", encoding="utf-8"))
    assert len(settings) >= 7


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _ngrams(text: str, n: int = 6) -> set[tuple[str, ...]]:
    w = _words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


# part -> (recipe name, group prefix, scenarios, affirmative-claim scenarios)
CONCEALMENT_PARTS = {
    1: ("deception/concealment", "conceal", 40, 8),
    2: ("deception/concealment_2", "conceal2", 60, 12),
    3: ("deception/concealment_3", "conceal3", 60, 12),
}


@pytest.mark.parametrize("part", sorted(CONCEALMENT_PARTS))
def test_concealment_recipe_pairs_and_determinism(part):
    name, prefix, n_scen, _ = CONCEALMENT_PARTS[part]
    n_pairs = 3 * n_scen
    d = recipe(name)
    assert len(d) == 2 * n_pairs and d.class_counts() == {0: n_pairs, 1: n_pairs} and d.name == name
    assert d.content_hash() == recipe(name, seed=0).content_hash()
    assert d.content_hash() == conceal.dataset(0, part).content_hash()
    other = recipe(name, seed=3)
    assert len(other) == 2 * n_pairs and other.content_hash() != d.content_hash()
    assert other.content_hash() == recipe(name, seed=3).content_hash()
    by_group = defaultdict(list)
    for e in d:
        assert e.group.startswith(prefix + ":") and e.polarity is None
        assert [m["role"] for m in e.item] == ["user", "assistant"]
        by_group[e.group].append(e)
    assert len(by_group) == n_scen and all(len(es) == 6 and sum(e.label for e in es) == 3 for es in by_group.values())
    # consecutive rows are pairs: same prompt, same source, different answers and labels
    sources = set()
    for i in range(0, len(d), 2):
        a, b = d[i], d[i + 1]
        assert (a.label, b.label) == (0, 1) and a.item[0] == b.item[0] and a.item[1] != b.item[1]
        assert a.source == b.source and a.group == b.group
        sources.add(a.source)
    assert len(sources) == n_pairs
    assert len({e.item[1]["content"] for e in d}) >= 0.8 * len(d)  # answers are not mere copies


def test_concealment_parts_are_separate():
    parts = [recipe(CONCEALMENT_PARTS[p][0]) for p in sorted(CONCEALMENT_PARTS)]
    for i, one in enumerate(parts):
        for two in parts[i + 1 :]:
            assert not {e.group for e in one} & {e.group for e in two}
            assert not {e.source for e in one} & {e.source for e in two}
    roles = [s["role"].lower() for p in sorted(CONCEALMENT_PARTS) for s in conceal.templates(p)["scenarios"]]
    assert len(set(roles)) == len(roles) == 160
    assert recipe("deception").content_hash() == recipe("deception", seed=0).content_hash()
    default = recipe("deception")
    for prefix in ("conceal2:", "conceal3:"):
        assert not any(e.group.startswith(prefix) for e in default)  # not in the default recipe
    with pytest.raises(ValueError, match="part"):
        conceal.templates(4)


@pytest.mark.parametrize("part", sorted(CONCEALMENT_PARTS))
def test_concealment_mix_of_framings_questions_and_lie_kinds(part):
    _, _, n_scen, n_claim = CONCEALMENT_PARTS[part]
    n_pairs = 3 * n_scen
    rows = conceal.generate(0, part)
    pairs = rows[::2]
    kinds = Counter(r["kind"] for r in pairs)
    assert kinds["claim"] == 3 * n_claim and kinds["denial"] == n_pairs - 3 * n_claim  # 20% affirmative false claims
    assert 0.4 <= Counter(r["question"] for r in pairs)["yes_no"] / n_pairs <= 0.6
    assert 0.35 <= Counter(r["framing"] for r in pairs)["first"] / n_pairs <= 0.65
    third = [r for r in rows if r["framing"] == "third"]
    assert all("You are" not in r["messages"][0]["content"] for r in third)
    # every template slot is filled
    assert not any("{" in m["content"] or "}" in m["content"] for r in rows for m in r["messages"])
    t = conceal.templates(part)
    yn_honest = Counter(s["yes_no"]["honest"] for s in t["scenarios"])
    assert min(yn_honest["No"], yn_honest["Yes"]) >= 0.375 * n_scen


@pytest.mark.parametrize("part,seed", [(1, 0), (1, 1), (1, 5), (2, 0), (2, 1), (3, 0), (3, 1)])
def test_concealment_no_class_giveaways(part, seed):
    d = conceal.dataset(seed, part)
    for lab in (0, 1):
        answers = [e.item[-1]["content"] for e in d if e.label == lab]
        first = Counter(a.split()[0].strip(",.!;:").lower() for a in answers)
        assert first.most_common(1)[0][1] <= 0.25 * len(answers), first.most_common(3)
    honest_first = {e.item[-1]["content"].split()[0].strip(",.") for e in d if e.label == 0}
    assert "No" in honest_first and "Yes" in honest_first
    lens = {lab: np.mean([len(e.item[-1]["content"].split()) for e in d if e.label == lab]) for lab in (0, 1)}
    assert abs(lens[0] - lens[1]) < 2, lens
    # no single first word is strongly tied to one class
    first_all = Counter((e.item[-1]["content"].split()[0].strip(",.!;:").lower(), e.label) for e in d)
    for w in {w for w, _ in first_all}:
        n0, n1 = first_all[(w, 0)], first_all[(w, 1)]
        assert n0 + n1 < 12 or min(n0, n1) / (n0 + n1) >= 0.25, (w, n0, n1)
    # the scenario's own answer texts never name the behaviour (the shared lead "Honestly," is in both classes)
    answers = [s[q][k] for s in conceal.templates(part)["scenarios"] for q in ("yes_no", "open") for k in ("truth", "lie")]
    assert not [a for a in answers if re.search(NAMES_THE_BEHAVIOUR, a, re.I)]


def test_concealment_disjoint_from_roleplay_lies():
    rp_rows = [json.loads(line) for line in open(DATA / "roleplay_lies.jsonl", encoding="utf-8")]
    rp_text = [m["content"] for r in rp_rows for m in r["messages"]]
    rp_grams = set().union(*(_ngrams(t) for t in rp_text))
    t = conceal.templates()
    texts = [m["content"] for seed in (0, 1) for r in conceal.generate(seed) for m in r["messages"]]
    texts += [s[k] for s in t["scenarios"] for k in ("role", "fact", "motive")]
    shared = {g for text in texts for g in _ngrams(text) & rp_grams}
    assert not shared, sorted(" ".join(g) for g in shared)[:10]
    # no role of the evaluation set is reused (each listed role does occur in roleplay_lies)
    rp_prompts = " ".join(r["messages"][0]["content"].lower() for r in rp_rows)
    for role in ROLEPLAY_ROLES:
        assert re.search(rf"\b{re.escape(role)}\b", rp_prompts), role
    for s in t["scenarios"]:
        mine = s["role"].lower()
        clash = [r for r in ROLEPLAY_ROLES if re.search(rf"\b{re.escape(r)}\b", mine)]
        assert not clash, (s["role"], clash)


ROLEPLAY_ROLES = (
    "used-car salesman", "mattresses", "bakery", "real-estate agent", "phone shop", "supplements", "gym",
    "employee", "software engineer", "applying for a job", "project manager", "warehouse supervisor", "analyst",
    "restaurant manager", "remote worker", "sales representative", "nurse", "student", "teenager", "tutor",
    "partner", "roommate", "sibling", "friend", "neighbour", "brother", "patient", "personal trainer",
    "pharmacist", "smoker", "daycare", "caregiver", "travel agent", "tour guide", "customs officer",
    "flight attendant", "rent out", "witness", "landlord", "small-business owner", "driver", "contractor",
    "company spokesperson", "job applicant", "tenant", "builder", "property manager", "chef", "used-book seller",
    "dog walker",
)

ROLEPLAY2_ROLES = (
    "tattoo artist", "catering", "night porter", "swim club", "scuba instructor", "cattery", "astronomer",
    "quiz show", "ice-cream van", "hairdresser", "window cleaner", "gardener", "house-sat", "choir", "pottery",
    "café", "cheese", "lifeguard", "refereeing", "marshal", "escape room", "riding stable", "guitar shop",
    "genealogist", "dj", "jewellery", "kayak hire", "board-game café", "aquarium shop", "scout group",
    "giant-marrow", "podcast", "bouncy castles", "treasurer", "amateur theatre", "breed rabbits", "stamps",
    "tree surgeon", "language school", "upholsterer", "chimney sweep", "pest-control technician", "eggs",
    "falconry", "mountain hut", "harbourmaster", "hot-air balloons", "caddying", "reporter", "street interviewer",
)


ROLEPLAY3_ROLES = (
    "bookbinder", "blacksmith", "violin maker", "glassblower", "taxidermist", "stonemason", "surveyor",
    "electrician", "plumber", "roofer", "glazier", "dog groomer", "farrier", "sheepdog trainer", "reptile breeder",
    "alpaca farmer", "sommelier", "butcher", "brewer", "chocolatier", "cider maker", "calligrapher", "ballet teacher",
    "projectionist", "cello teacher", "costume designer", "train conductor", "baggage handler", "pedicab rider",
    "lock keeper", "car-hire desk", "sea-fishing charter", "concierge", "campsite warden", "holiday rep",
    "whale-watching guide", "fencing coach", "jockey", "groundsman", "pacer", "cox", "dairy farmer", "sheep shearer",
    "mushroom forager", "christmas-tree grower", "vegetable box", "party magician", "stage hypnotist", "tarot reader",
    "crossword setter",
)


ROLEPLAY4_ROLES = (
    "flight instructor", "air traffic", "gliding club", "airline captain", "space tourism", "helicopter pilot",
    "driving instructor", "car wash", "tyre", "classic car restorer", "karting track", "breakdown patrolman",
    "nail technician", "make-up artist", "vintage clothing", "shoe shop", "beautician", "fashion boutique",
    "vicar", "youth club", "food bank", "community centre", "church fete",
    "park ranger", "bird reserve", "wildlife rescue", "tree-planting", "wildflower meadow", "ecologist",
    "toy shop", "trading cards", "comic shop", "model railway", "retro games shop", "coin dealer",
    "location scout", "camera operator", "casting director", "portrait studio", "documentary maker", "stunt",
    "funeral director", "crematorium manager", "gravedigger", "awards ceremony", "pet cremation",
    "climbing instructor", "yoga teacher", "paragliding school", "mountain guide",
)


ROLEPLAY5_ROLES = (
    "yacht broker", "marina manager", "ferry captain", "sailing instructor", "tugboat skipper", "sailmaker", "purser",
    "museum conservator", "exhibition designer", "collections manager", "gallery attendant", "fossil preparator",
    "planetarium presenter", "steward",
    "session drummer", "band manager", "concert promoter", "organist", "songwriter", "sound technician", "piano teacher",
    "nanny", "childminder", "au pair", "playgroup leader", "soft-play centre", "after-school club",
    "auctioneer", "antiques dealer", "house clearance", "pawnbroker", "valuer", "reclamation yard",
    "refuse collector", "skip hire", "recycling centre", "scrap-metal dealer", "septic tank", "street sweeper",
    "rollercoaster", "ghost train", "log flume", "water park", "mascot", "dodgems",
    "architect", "structural engineer", "draughtsman", "interior designer", "acoustic consultant",
)


ROLEPLAY6_ROLES = (
    "stepdad", "eldest daughter", "youngest son", "mother of three", "grandad",
    "younger sister", "identical twin", "middle child", "older stepsister", "eldest son",
    "husband", "wife", "fiancée", "newlywed", "dating-app match",
    "year-nine pupil", "sixth-former", "schoolboy", "class monitor", "prefect",
    "best mate", "bridesmaid", "childhood pal", "running buddy", "godmother",
    "former classmate", "cyclist", "festival-goer", "book lover", "home cook",
    "holidaymaker", "backpacker", "skier", "navigator", "hotel guest",
    "office junior", "receptionist", "copywriter", "graphic designer", "marketing assistant",
    "flatmate on the top floor", "lodger", "housemate", "ground-floor resident", "occupant of the attic flat",
    "lawn bowler", "allotment holder", "quilter", "birdwatcher", "darts player",
)


# one keyword per scenario of concealment part 2, in id order
CONCEALMENT2_ROLES = (
    "mortgage underwriter", "financial adviser", "loss assessor", "bureau de change", "claims handler",
    "payroll administrator", "registrar", "planning officer", "housing officer", "electoral services",
    "building control", "work coach", "meter reader", "gas network", "solar panel installer",
    "control room operator", "heating oil", "wind farm", "quality inspector", "maintenance fitter",
    "production planner", "injection moulding", "purchasing officer", "biscuit factory", "systems administrator",
    "bench technician", "broadband", "database administrator", "app developer", "mobile operator",
    "calibration technician", "cell biology", "biobank", "toxicologist", "radiation safety officer",
    "crystallographer", "radiographer", "audiologist", "sterile services", "hospital porter",
    "dental hygienist", "dispensing optician", "security guard", "alarm engineer", "cctv operator",
    "store detective", "door supervisor", "keyholding officer", "fact-checker", "proofreader",
    "print production", "rights manager", "circulation manager", "picture researcher", "cold-chain coordinator",
    "freight forwarder", "load planner", "self-storage", "slot coordinator", "stock controller",
)


# one keyword per scenario of concealment part 3 (everyday personal life), in id order
CONCEALMENT3_ROLES = (
    "second-year undergraduate", "postgraduate", "fresher", "final-year medic", "exchange-year linguist",
    "grandchild staying", "grandparent minding", "weekly shopping", "babysits", "new tablet",
    "camping van", "staying over for christmas", "joint birthday present", "power tools", "family caravan",
    "weekend grower", "council allotment site", "village show", "half plot", "pumpkins",
    "raiding guild", "family group chat", "strategy league", "messaging group", "survival-game server",
    "goalkeeper", "wing attack", "opening batter", "masters crew", "second-row forward",
    "chamber chorus", "covers band", "brass band", "ceilidh band", "sheet-music keeper",
    "house-sitter", "pet-sitter", "two cats", "tropical fish", "house-minder",
    "lift to work", "car club", "school-run rota", "estate car", "petrol costs",
    "wedding reception", "fortieth birthday party", "usher", "engagement party", "housewarming",
    "monthly book group", "book club evening", "crime-fiction book circle", "library reading group",
    "poetry reading circle", "charity shop", "hospital transport scheme", "litter-picker", "repair workshop",
    "animal sanctuary",
)

ROLEPLAY7_ROLES = (
    "ward clerk on a surgical ward",
    "phlebotomist",
    "hospital pharmacy technician",
    "junior doctor on night shifts",
    "occupational therapist",
    "accounts payable clerk",
    "recruitment consultant",
    "executive assistant to a managing director",
    "business intelligence developer",
    "hr officer at a logistics company",
    "junior solicitor",
    "sales assistant at an electronics store",
    "salesperson at a furniture showroom",
    "paint counter assistant at a hardware store",
    "supermarket shelf stacker",
    "perfume counter consultant",
    "site foreman",
    "bricklayer",
    "kitchen fitter",
    "crane operator",
    "primary school teacher",
    "school bursar",
    "teaching assistant",
    "exam invigilator",
    "headteacher",
    "father of a six-year-old",
    "adult daughter home for the weekend",
    "stepmother",
    "uncle hosting the family barbecue",
    "twelve-year-old",
    "retired grandmother living with her son's family",
    "spouse who handles the household bills",
    "maid of honour",
    "groomsman",
    "group holiday organiser",
    "houseguest",
    "dinner party guest",
    "debtor who owes money to an old schoolmate",
    "man on a second date",
    "woman three months into a relationship",
    "long-distance sweetheart",
    "online dater",
    "resident of a semi-detached house",
    "dog owner on a quiet cul-de-sac",
    "residents' association chair",
    "homeowner who had an extension built",
    "secretary of an amateur astronomy society",
    "bridge player at a weekly club",
    "angler in a fishing club competition",
    "amateur photographer in a camera club",
)


def _rows(filename: str) -> list[dict]:
    return [json.loads(line) for line in open(DATA / filename, encoding="utf-8")]


NAMES_THE_BEHAVIOUR = r"\b(lie|lied|lying|truth|honest|honestly|deceive)\b"


def _check_confirmation_set(name: str, prefix: str, n_scenes: int = 50, free_form: bool = False) -> None:
    """A hand-written confirmation set: honest/deceptive pairs per scene, no surface giveaways.

    ``free_form`` (set 7) drops the matched lengths and allows "honest(ly)" and "truth", as people
    say them, in either class; words for lying stay banned."""
    d = recipe(name)
    assert len(d) == 2 * n_scenes and d.name == name and d.class_counts() == {0: n_scenes, 1: n_scenes}
    by_group = defaultdict(list)
    for e in d:
        assert [m["role"] for m in e.item] == ["user", "assistant"]
        by_group[e.group].append(e.label)
    assert sorted(by_group) == [f"{prefix}:{i:02d}" for i in range(1, n_scenes + 1)]
    assert all(v == [0, 1] for v in by_group.values())  # honest line first, then the deceptive one
    for i in range(0, len(d), 2):
        a, b = d[i], d[i + 1]
        assert a.group == b.group and a.item[0] == b.item[0] and a.item[1] != b.item[1]
    for lab in (0, 1):
        answers = [e.item[-1]["content"] for e in d if e.label == lab]
        first = Counter(a.split()[0].strip(",.!;:").lower() for a in answers)
        assert first.most_common(1)[0][1] <= 0.25 * len(answers), first.most_common(3)
        banned = r"\b(lie|lied|lies|lying|liar|deceive|deceiving|deception)\b" if free_form else NAMES_THE_BEHAVIOUR
        assert not [a for a in answers if re.search(banned, a, re.I)]
    if not free_form:
        lens = {lab: np.mean([len(e.item[-1]["content"].split()) for e in d if e.label == lab]) for lab in (0, 1)}
        assert abs(lens[0] - lens[1]) < 3, lens
    rows = _rows(f"{name}.jsonl")
    settings = Counter(r["setting"] for r in rows)
    assert len(settings) >= 7 and settings.most_common(1)[0][1] <= 0.25 * len(rows), settings
    assert all(r["group"] == e.group and r["label"] == e.label for r, e in zip(rows, d))


def _concealment_texts(part: int) -> list[str]:
    """The rendered chats of a concealment part (two seeds) and its scenarios' own strings."""
    texts = [m["content"] for seed in (0, 1) for r in conceal.generate(seed, part) for m in r["messages"]]
    return texts + [s[k] for s in conceal.templates(part)["scenarios"] for k in ("role", "fact", "motive")]


def _concealment_roles(part: int) -> list[str]:
    return [re.sub(r"^(a|an|the) ", "", s["role"].lower()) for s in conceal.templates(part)["scenarios"]]


def _check_disjoint(name: str, roles: tuple[str, ...], other_sets: dict[str, tuple[str, ...]]) -> None:
    """No 6-word sequence shared with the other role-play sets or either concealment part, and no reused role.

    ``other_sets`` maps each other role-play recipe to its listed roles."""
    mine_rows = _rows(f"{name}.jsonl")
    mine = [m["content"] for r in mine_rows for m in r["messages"]]
    others = {o: [m["content"] for r in _rows(f"{o}.jsonl") for m in r["messages"]] for o in other_sets}
    for part in CONCEALMENT_PARTS:
        others[f"concealment part {part}"] = _concealment_texts(part)
    mine_grams = set().union(*(_ngrams(text) for text in mine))
    for other, texts in others.items():
        shared = {g for text in texts for g in _ngrams(text) & mine_grams}
        assert not shared, (other, sorted(" ".join(g) for g in shared)[:10])
    # every listed role occurs in the set, and none contains or is contained in a role of the other sets
    prompts = " ".join(r["messages"][0]["content"].lower() for r in mine_rows)
    taken = [r for rs in other_sets.values() for r in rs]
    taken += [r for part in CONCEALMENT_PARTS for r in _concealment_roles(part)]
    assert len(set(roles)) == len(roles)
    for role in roles:
        assert re.search(rf"\b{re.escape(role)}\b", prompts), role
        assert not [r for r in taken if r in role or role in r], role


def test_roleplay_lies_2_recipe_pairs_and_balance():
    _check_confirmation_set("roleplay_lies_2", "roleplay2")


def test_roleplay_lies_2_disjoint_from_roleplay_lies_and_concealment():
    _check_disjoint("roleplay_lies_2", ROLEPLAY2_ROLES, {"roleplay_lies": ROLEPLAY_ROLES})


def test_roleplay_lies_3_recipe_pairs_and_balance():
    _check_confirmation_set("roleplay_lies_3", "roleplay3")


def test_roleplay_lies_3_disjoint_from_other_sets():
    _check_disjoint(
        "roleplay_lies_3", ROLEPLAY3_ROLES, {"roleplay_lies": ROLEPLAY_ROLES, "roleplay_lies_2": ROLEPLAY2_ROLES}
    )


def test_roleplay_lies_4_recipe_pairs_and_balance():
    _check_confirmation_set("roleplay_lies_4", "roleplay4")


def test_roleplay_lies_4_disjoint_from_other_sets():
    _check_disjoint(
        "roleplay_lies_4",
        ROLEPLAY4_ROLES,
        {"roleplay_lies": ROLEPLAY_ROLES, "roleplay_lies_2": ROLEPLAY2_ROLES, "roleplay_lies_3": ROLEPLAY3_ROLES},
    )


def test_roleplay_lies_5_recipe_pairs_and_balance():
    _check_confirmation_set("roleplay_lies_5", "roleplay5")


def test_roleplay_lies_5_disjoint_from_other_sets():
    _check_disjoint(
        "roleplay_lies_5",
        ROLEPLAY5_ROLES,
        {
            "roleplay_lies": ROLEPLAY_ROLES,
            "roleplay_lies_2": ROLEPLAY2_ROLES,
            "roleplay_lies_3": ROLEPLAY3_ROLES,
            "roleplay_lies_4": ROLEPLAY4_ROLES,
        },
    )


def test_roleplay_lies_6_recipe_pairs_and_balance():
    _check_confirmation_set("roleplay_lies_6", "roleplay6")


def test_roleplay_lies_6_disjoint_from_other_sets():
    _check_disjoint(
        "roleplay_lies_6",
        ROLEPLAY6_ROLES,
        {
            "roleplay_lies": ROLEPLAY_ROLES,
            "roleplay_lies_2": ROLEPLAY2_ROLES,
            "roleplay_lies_3": ROLEPLAY3_ROLES,
            "roleplay_lies_4": ROLEPLAY4_ROLES,
            "roleplay_lies_5": ROLEPLAY5_ROLES,
        },
    )


def test_roleplay_lies_7_recipe_pairs_and_balance():
    _check_confirmation_set("roleplay_lies_7", "roleplay7", free_form=True)


def test_roleplay_lies_7_is_free_form():
    """Set 7 tests the sets' form: many pairs of unequal length, longer on either side."""
    rows = _rows("roleplay_lies_7.jsonl")
    ratio = [np.log(len(b["messages"][-1]["content"].split()) / len(a["messages"][-1]["content"].split()))
             for a, b in zip(rows[::2], rows[1::2])]
    assert sum(r > np.log(2) for r in ratio) >= 5 and sum(r < -np.log(2) for r in ratio) >= 5, ratio


def test_roleplay_lies_7_disjoint_from_other_sets():
    _check_disjoint(
        "roleplay_lies_7",
        ROLEPLAY7_ROLES,
        {
            "roleplay_lies": ROLEPLAY_ROLES,
            "roleplay_lies_2": ROLEPLAY2_ROLES,
            "roleplay_lies_3": ROLEPLAY3_ROLES,
            "roleplay_lies_4": ROLEPLAY4_ROLES,
            "roleplay_lies_5": ROLEPLAY5_ROLES,
            "roleplay_lies_6": ROLEPLAY6_ROLES,
        },
    )


def _check_concealment_part_disjoint(part: int, roles: tuple[str, ...], extra: dict[str, list[str]] | None = None) -> None:
    """A concealment part is training data: no 6-word sequence shared with any role-play evaluation set
    (or with ``extra`` texts), and no role that contains or is contained in one of theirs or another part's."""
    mine = _concealment_texts(part)
    mine_grams = set().union(*(_ngrams(t) for t in mine))
    roleplay = ("roleplay_lies", *(f"roleplay_lies_{i}" for i in range(2, 8)))
    others = {o: [m["content"] for r in _rows(f"{o}.jsonl") for m in r["messages"]] for o in roleplay} | (extra or {})
    for other, texts in others.items():
        shared = {g for t in texts for g in _ngrams(t) & mine_grams}
        assert not shared, (other, sorted(" ".join(g) for g in shared)[:10])
    scen = conceal.templates(part)["scenarios"]
    assert len(roles) == len(scen) == len(set(roles))
    taken = [
        *ROLEPLAY_ROLES, *ROLEPLAY2_ROLES, *ROLEPLAY3_ROLES, *ROLEPLAY4_ROLES, *ROLEPLAY5_ROLES, *ROLEPLAY6_ROLES,
        *ROLEPLAY7_ROLES,
        *(r for p in CONCEALMENT_PARTS if p != part for r in _concealment_roles(p)),
    ]
    for role, sc in zip(roles, scen):
        assert re.search(rf"\b{re.escape(role)}\b", sc["role"].lower()), (role, sc["role"])
        mine_role = re.sub(r"^(a|an|the) ", "", sc["role"].lower())
        assert not [r for r in taken if r in mine_role or mine_role in r], sc["role"]


def test_concealment_2_disjoint_from_roleplay_sets_and_other_parts():
    _check_concealment_part_disjoint(2, CONCEALMENT2_ROLES)


def test_concealment_3_disjoint_from_roleplay_sets_and_other_parts():
    """The third part (everyday misdeeds) is also compared with parts 1-2, by their scenarios' own strings
    only (all parts share the frames and decorations)."""
    own = ("role", "fact", "motive")
    extra = {}
    for p in (1, 2):
        scen_p = conceal.templates(p)["scenarios"]
        extra[f"concealment part {p}"] = [sc[k] for sc in scen_p for k in own] + [
            sc[q][k] for sc in scen_p for q in ("yes_no", "open") for k in ("question", "truth", "lie")
        ]
    _check_concealment_part_disjoint(3, CONCEALMENT3_ROLES, extra)
    scen = conceal.templates(3)["scenarios"]
    # the speaker owns up in the first person in every truthful answer
    for s in scen:
        for q in ("yes_no", "open"):
            assert re.search(r"\b(I|me|my|mine)\b", s[q]["truth"], re.I), (s["id"], q)

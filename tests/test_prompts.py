"""Prompt builders: quantized (BrainEditor), numeric, template; their inverses; rule checks."""

from __future__ import annotations

import math

import pytest

from brainsynth_cli.errors import InputError, UserError
from brainsynth_cli.interfaces import Change, PromptBuilder
from brainsynth_cli.plugin_manager import get_manager
from brainsynth_cli.structures import default_rules, load_rules


def builder(name, rules=None, **kw):
    return get_manager().registry("prompt-builder").create(name, rules=rules or default_rules(), **kw)


# rate (percent) -> phrase, at and around every interval edge of the default rules
VENTRICLE_TABLE = [
    (-50.0, None), (-1e-6, None), (0.0, None),
    (1e-6, "mild ventricle enlargement"), (5.0, "mild ventricle enlargement"),
    (9.999999, "mild ventricle enlargement"), (10.0, "mild ventricle enlargement"),
    (10.000001, "moderate ventricle enlargement"), (15.0, "moderate ventricle enlargement"),
    (19.999999, "moderate ventricle enlargement"), (20.0, "moderate ventricle enlargement"),
    (20.000001, "severe ventricle enlargement"), (75.0, "severe ventricle enlargement"),
    (math.nan, None),
]
CORTEX_TABLE = [
    (-30.0, "cortex atrophy"), (-1e-6, "cortex atrophy"), (0.0, None), (1e-6, None), (12.0, None), (math.nan, None),
]


@pytest.mark.parametrize("rate,phrase", VENTRICLE_TABLE)
def test_quantized_ventricle_edges(rate, phrase):
    q = builder("quantized")
    assert q.build(Change(rates={"ventricle": rate})) == phrase
    if phrase is not None:
        assert q.parse(phrase)["ventricle"].contains(rate)
        assert q.parse(phrase)["ventricle"].name == phrase.split()[0]


@pytest.mark.parametrize("rate,phrase", CORTEX_TABLE)
def test_quantized_cortex_edges(rate, phrase):
    q = builder("quantized")
    assert q.build(Change(rates={"cortex": rate})) == phrase
    if phrase is not None:
        assert q.parse(phrase) == {"cortex": default_rules()["cortex"].intervals[0]}


@pytest.mark.parametrize("vent,cortex,expected", [
    (25.0, -2.0, "cortex atrophy and severe ventricle enlargement"),
    (10.0, -0.1, "cortex atrophy and mild ventricle enlargement"),
    (10.5, 0.0, "moderate ventricle enlargement"),
    (0.0, -0.5, "cortex atrophy"),
    (-3.0, 4.0, None),
])
def test_quantized_combined_in_rules_order(vent, cortex, expected):
    q = builder("quantized")
    change = Change(rates={"ventricle": vent, "cortex": cortex, "white-matter": -5.0})
    assert q.build(change) == expected
    if expected:
        got = q.parse(expected)
        assert list(got) == [n for n in ("cortex", "ventricle") if n in got]
        for name, iv in got.items():
            assert iv.contains({"ventricle": vent, "cortex": cortex}[name])


def test_quantized_only_describes_one_structure():
    q = builder("quantized")
    change = Change(rates={"ventricle": 25.0, "cortex": -2.0}, only="ventricle")
    assert q.build(change) == "severe ventricle enlargement"
    assert q.build(Change(rates={"ventricle": -1.0, "cortex": -2.0}, only="ventricle")) is None


def test_quantized_parse_is_lenient_about_case_punctuation_and_synonyms():
    q = builder("quantized")
    got = q.parse("Cortex atrophy and severe ventricular enlargement.")
    assert {k: v.name for k, v in got.items()} == {"cortex": "atrophy", "ventricle": "severe"}
    assert {k: v.name for k, v in q.parse("mild ventricle enlargement, cortex atrophy").items()} == {"cortex": "atrophy", "ventricle": "mild"}


@pytest.mark.parametrize("prompt,needle", [
    ("make it bigger", "unrecognised words 'make it bigger'"),
    ("mild ventricle enlargement and hippocampus growth", "unrecognised words 'hippocampus growth'"),
    ("mild ventricle enlargement and severe ventricle enlargement", "both 'severe' and 'mild'"),
    ("", "names no change"),
])
def test_quantized_parse_refuses_what_it_cannot_read(prompt, needle):
    with pytest.raises(UserError) as exc:
        builder("quantized").parse(prompt)
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("rates,expected", [
    ({"ventricle": 5.48}, "ventricle enlarges by 5.5%"),
    ({"cortex": -2.31}, "cortex shrinks by 2.3%"),
    ({"cortex": -2.31, "ventricle": 5.48}, "cortex shrinks by 2.3% and ventricle enlarges by 5.5%"),
    ({"ventricle": 10.04}, "ventricle enlarges by 10.04%"),  # "10.0" would read as mild
    ({"ventricle": 20.02}, "ventricle enlarges by 20.02%"),  # "20.0" would read as moderate
    ({"ventricle": 9.96}, "ventricle enlarges by 10.0%"),  # 10.0 is still mild
    ({"ventricle": 0.004}, "ventricle enlarges by 0.004%"),  # "0.0" is in no interval
    ({"ventricle": -4.0, "cortex": 3.0}, None),
])
def test_numeric_statements_and_inverse(rates, expected):
    n = builder("numeric")
    assert n.build(Change(rates=rates)) == expected
    if expected:
        got = n.parse(expected)
        for name, rate in rates.items():
            assert got[name] == default_rules()[name].interval_for(rate)
        for name, value in n.rates(expected).items():
            assert value == pytest.approx(rates[name], abs=0.051)


def test_numeric_parse_errors():
    n = builder("numeric")
    with pytest.raises(UserError, match="lies in no interval"):
        n.parse("ventricle shrinks by 3%")
    with pytest.raises(UserError, match="unrecognised words"):
        n.parse("ventricle enlarges by 3% quickly")
    assert n.rates("The ventricles grew by 12.5% and cortical shrank by 1%.") == {"cortex": -1.0, "ventricle": 12.5}


def test_every_builder_follows_the_protocol():
    for name in ("quantized", "numeric", "template"):
        assert isinstance(builder(name), PromptBuilder)


def test_template_captions_are_seeded_and_parse_back():
    volumes = {"ventricle": 25312.4, "cortex": 451234.2, "white-matter": 400321.0, "hippocampus": 0.0}
    t = builder("template", seed=7)
    change = Change(rates={}, volumes=volumes, age=72.4, sex="F", modality="T1w")
    text = t.build(change)
    assert text == builder("template", seed=7).build(change)
    assert "72-year-old female" in text and "T1-weighted" in text
    assert t.volumes(text) == {"cortex": 451234.0, "ventricle": 25312.0, "white-matter": 400321.0}
    assert t.parse(text)["ventricle"].contains(25312.4)
    assert t.context(text) == {"age": 72.0, "sex": "F", "modality": "T1w"}
    # many contents and seeds use many of the 20 templates, and every one parses back
    seen = set()
    for seed in range(4):
        tb = builder("template", seed=seed)
        for i in range(40):
            c = Change(rates={}, volumes={"ventricle": 1000.0 + 37 * i, "brain": 1.1e6 + i}, age=None if i % 3 else 60 + i, sex=("M", "F", None)[i % 3])
            s = tb.build(c)
            seen.add(s.split(" ")[0] + s[-12:])
            assert tb.volumes(s) == {"ventricle": round(1000.0 + 37 * i), "brain": round(1.1e6 + i)}
    assert len(seen) >= 15
    with pytest.raises(UserError, match="states no structure volume"):
        t.parse("a brain")


def test_rules_order_and_custom_phrases(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text(
        'replace = true\n[structures.ventricle]\nlabels = [4, 43]\n'
        '[[structures.ventricle.intervals]]\nname = "grows"\nmin = 0\nphrase = "larger ventricles"\n'
        '[structures.hippocampus]\nlabels = [17, 53]\n'
        '[[structures.hippocampus.intervals]]\nname = "loss"\nmax = -2\nmax_closed = true\nphrase = "hippocampal loss"\n'
    )
    rules = load_rules(path)
    q = builder("quantized", rules)
    assert q.build(Change(rates={"ventricle": 3.0, "hippocampus": -2.0})) == "larger ventricles and hippocampal loss"
    assert q.build(Change(rates={"ventricle": 3.0, "hippocampus": -1.99})) == "larger ventricles"
    assert {k: v.name for k, v in q.parse("hippocampal loss and larger ventricles").items()} == {"ventricle": "grows", "hippocampus": "loss"}


@pytest.mark.parametrize("intervals,needle", [
    ('[[structures.ventricle.intervals]]\nname="a"\nmin=0\nmax=10\nphrase="a"\n'
     '[[structures.ventricle.intervals]]\nname="b"\nmin=5\nphrase="b"\n', "overlap"),
    ('[[structures.ventricle.intervals]]\nname="a"\nmin=0\nmax=10\nphrase="a"\n'
     '[[structures.ventricle.intervals]]\nname="b"\nmin=12\nphrase="b"\n', "leave a gap"),
    ('[[structures.ventricle.intervals]]\nname="a"\nmin=0\nmax=10\nmax_closed=false\nphrase="a"\n'
     '[[structures.ventricle.intervals]]\nname="b"\nmin=10\nphrase="b"\n', "leave a gap"),
])
def test_overlapping_or_gapped_rules_are_refused(tmp_path, intervals, needle):
    path = tmp_path / "rules.toml"
    path.write_text("[structures.ventricle]\nlabels = [4, 43]\n" + intervals)
    with pytest.raises(InputError) as exc:
        load_rules(path)
    assert needle in str(exc.value) and str(path) in str(exc.value)


def test_duplicate_phrases_are_refused(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text('[structures.hippocampus]\nlabels = [17, 53]\n'
                    '[[structures.hippocampus.intervals]]\nname = "loss"\nmax = 0\nmax_closed = false\nphrase = "Cortex atrophy"\n')
    with pytest.raises(UserError, match="also used by cortex atrophy"):
        builder("quantized", load_rules(path))

import math

import pytest

from brainsynth_cli.errors import InputError
from brainsynth_cli.structures import (
    change_rate, default_rules, group_volumes, label_volumes, load_rules, rules_from_text,
)


def test_default_rules_are_braineditors():
    rules = default_rules()
    vent = rules["ventricle"]
    assert set(vent.labels) == {4, 5, 43, 44}
    assert [iv.notation() for iv in vent.intervals] == ["(0, 10]", "(10, 20]", "(20, inf)"]
    assert rules["cortex"].labels == (3, 42)
    assert rules["cortex"].intervals[0].notation() == "(-inf, 0)"
    assert [s.name for s in rules.described()] == ["cortex", "ventricle"]


@pytest.mark.parametrize(
    "rate, name",
    [(0.0, None), (1e-9, "mild"), (10.0, "mild"), (10.0001, "moderate"), (20.0, "moderate"), (20.5, "severe"), (-3, None), (math.nan, None)],
)
def test_ventricle_interval_edges(rate, name):
    iv = default_rules()["ventricle"].interval_for(rate)
    assert (iv.name if iv else None) == name


def test_cortex_atrophy_is_strictly_negative():
    cortex = default_rules()["cortex"]
    assert cortex.interval_for(-0.01).name == "atrophy"
    assert cortex.interval_for(0.0) is None


def write(tmp_path, text):
    p = tmp_path / "rules.toml"
    p.write_text(text)
    return p


def test_user_rules_override_one_group_and_keep_the_rest(tmp_path):
    p = write(tmp_path, """
[structures.hippocampus]
labels = [17, 53]
[[structures.hippocampus.intervals]]
name = "atrophy"
max = 0
max_closed = false
phrase = "hippocampal atrophy"
""")
    rules = load_rules(p)
    assert rules["hippocampus"].interval_for(-2).phrase == "hippocampal atrophy"
    assert rules["ventricle"] == default_rules()["ventricle"]


def test_replace_drops_the_defaults(tmp_path):
    p = write(tmp_path, "replace = true\n[structures.ventricle]\nlabels = [4, 43]\n")
    assert load_rules(p).names() == ["ventricle"]


@pytest.mark.parametrize(
    "body, needle",
    [
        ("[[structures.ventricle.intervals]]\nname='a'\nmin=0\nmax=10\nphrase='a'\n[[structures.ventricle.intervals]]\nname='b'\nmin=5\nmax=20\nphrase='b'\n", "overlap"),
        ("[[structures.ventricle.intervals]]\nname='a'\nmin=0\nmax=10\nphrase='a'\n[[structures.ventricle.intervals]]\nname='b'\nmin=12\nmax=20\nphrase='b'\n", "gap"),
        ("[[structures.ventricle.intervals]]\nname='a'\nmin=0\nmax=10\nmax_closed=false\nphrase='a'\n[[structures.ventricle.intervals]]\nname='b'\nmin=10\nphrase='b'\n", "gap"),
        ("[[structures.ventricle.intervals]]\nname='a'\nmin=0\nmax=10\nphrase='a'\n[[structures.ventricle.intervals]]\nname='b'\nmin=10\nmin_closed=true\nphrase='b'\n", "overlap"),
        ("[[structures.ventricle.intervals]]\nname='a'\nmin=5\nmax=5\nphrase='a'\n", "empty"),
    ],
)
def test_overlapping_or_gapped_intervals_are_rejected(tmp_path, body, needle):
    p = write(tmp_path, "[structures.ventricle]\nlabels = [4, 43]\n" + body)
    with pytest.raises(InputError) as exc:
        load_rules(p)
    assert needle in str(exc.value) and str(p) in str(exc.value)


def test_unreadable_rules_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_rules(tmp_path / "missing.toml")
    with pytest.raises(InputError, match="not valid TOML"):
        load_rules(write(tmp_path, "this is = = not toml"))
    with pytest.raises(InputError, match="labels must be"):
        load_rules(write(tmp_path, "[structures.x]\nlabels = 'four'\n"))


def test_rules_round_trip_through_toml_text():
    rules = default_rules()
    again = rules_from_text(rules.to_toml())
    assert again.structures == rules.structures and dict(again.labels) == dict(rules.labels)


def test_interval_targets_default_round_trip_and_refuse_outside(tmp_path):
    rules = default_rules()
    assert [iv.target for iv in rules["ventricle"].intervals] == [5.0, 15.0, 25.0]
    assert rules["cortex"].intervals[0].target == -2.0
    assert rules["ventricle"].intervals[1].as_dict()["target"] == 15.0
    # defaults when the key is absent: midpoint, low + 5, high - 3
    p = write(tmp_path, """
[structures.hippocampus]
labels = [17, 53]
[[structures.hippocampus.intervals]]
name = "loss"
max = -2
phrase = "hippocampal atrophy"
[[structures.hippocampus.intervals]]
name = "stable"
min = -2
max = 4
phrase = "stable hippocampus"
[[structures.hippocampus.intervals]]
name = "growth"
min = 4
phrase = "hippocampal growth"
target = 7.5
""")
    hip = load_rules(p)["hippocampus"]
    assert [iv.target for iv in hip.intervals] == [-5.0, 1.0, 7.5]
    again = rules_from_text(load_rules(p).to_toml())
    assert [iv.target for iv in again["hippocampus"].intervals] == [-5.0, 1.0, 7.5]
    assert "target = 7.5" in load_rules(p).to_toml()
    # a target outside its interval is refused with one line naming the file
    bad = write(tmp_path, "[structures.ventricle]\nlabels = [4, 43]\n[[structures.ventricle.intervals]]\n"
                          "name = 'mild'\nmin = 0\nmax = 10\nphrase = 'mild'\ntarget = 12\n")
    with pytest.raises(InputError) as exc:
        load_rules(bad)
    msg = str(exc.value)
    assert str(bad) in msg and "target 12 lies outside the interval (0, 10]" in msg and "\n" not in msg
    edge = write(tmp_path, "[structures.cortex]\nlabels = [3, 42]\n[[structures.cortex.intervals]]\n"
                           "name = 'atrophy'\nmax = 0\nmax_closed = false\nphrase = 'cortex atrophy'\ntarget = 0\n")
    with pytest.raises(InputError, match="outside the interval"):
        load_rules(edge)


def test_volumes_and_change_rate():
    import numpy as np

    lab = np.zeros((10, 10, 10), np.int32)
    lab[:2] = 4
    lab[2:3] = 43
    lab[5:] = 3
    vols = label_volumes(lab, voxel_volume=8.0)
    assert vols == {4: 1600.0, 43: 800.0, 3: 4000.0}
    groups = group_volumes(vols)
    assert groups["ventricle"] == 2400.0 and groups["cortex"] == 4000.0 and groups["hippocampus"] == 0.0
    assert change_rate(2400, 2640) == pytest.approx(10.0)
    assert math.isnan(change_rate(0, 5))

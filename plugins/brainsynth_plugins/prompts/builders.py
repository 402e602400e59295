"""The built-in prompt builders.

- :class:`QuantizedPromptBuilder` (``quantized``): BrainEditor's quantized change rates. Each
  described structure group (a group with intervals in the rules) whose change rate falls in
  one of its intervals contributes that interval's phrase; phrases are joined in the rules'
  order ("cortex atrophy and severe ventricle enlargement"). ``parse`` inverts it.
- :class:`NumericPromptBuilder` (``numeric``): the exact rates ("ventricle enlarges by 5.5%"),
  for the same groups; ``parse`` maps each stated rate to the rules' interval holding it.
- :class:`TemplatePromptBuilder` (``template``): DALL-E-Brain-style captions of one image from
  20 sentence templates filled with structure-group volumes, age, sex and modality; the
  template is chosen by a seeded hash of the content, so the same seed gives the same text in
  any process order. ``parse`` reads the stated volumes back.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Iterable, Mapping

from brainsynth_cli.errors import UserError
from brainsynth_cli.interfaces import Change
from brainsynth_cli.structures import Interval, Rules, Structure, default_rules

#: Words a prompt may hold between phrases ("A and B", "A, B and C", "A with B").
CONNECTORS = frozenset({"and", "with", "plus", "also", "the", "a", "an", "of", "|"})

#: Spelling variants read by ``parse`` (after lower-casing).
SYNONYMS = (
    (r"\bventricular\b", "ventricle"),
    (r"\bventricles\b", "ventricle"),
    (r"\bcortical\b", "cortex"),
    (r"\benlargements\b", "enlargement"),
)


def display_name(name: str) -> str:
    """How a group name reads in text ("white-matter" -> "white matter")."""
    return name.replace("-", " ").replace("_", " ")


def normalise_text(text: str) -> str:
    """Lower case, synonyms folded, punctuation (except ``% . -`` inside numbers) to spaces."""
    t = text.lower()
    for pattern, repl in SYNONYMS:
        t = re.sub(pattern, repl, t)
    t = re.sub(r"(?<=\d),(?=\d{3})", "", t)  # thousands separators
    t = re.sub(r"(?<![\d])\.|\.(?![\d])", " ", t)  # full stops, not decimal points
    t = re.sub(r"[^a-z0-9%.\-+]+", " ", t)
    t = re.sub(r"(?<![a-z0-9])-|-(?![a-z0-9])", " ", t)
    return re.sub(r"\s+", " ", t).strip()


def join_phrases(parts: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(parts) <= 2:
        return " and ".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def described_changes(rules: Rules, change: Change) -> list[tuple[Structure, Interval, float]]:
    """(group, interval, rate) for each described group whose rate falls in an interval,
    in the rules' order; only ``change.only`` when it is set."""
    out = []
    for s in rules.described():
        if change.only is not None and s.name != change.only:
            continue
        rate = change.rates.get(s.name)
        if rate is None or (isinstance(rate, float) and math.isnan(rate)):
            continue
        iv = s.interval_for(float(rate))
        if iv is not None:
            out.append((s, iv, float(rate)))
    return out


def _check_phrases(rules: Rules) -> None:
    """Refuse rules whose phrases cannot be told apart (parse would be ambiguous)."""
    seen: dict[str, str] = {}
    for s in rules.described():
        names = [iv.name for iv in s.intervals]
        if len(set(names)) != len(names):
            raise UserError(f"{rules.source}: structures.{s.name} has two intervals with the same name; give each interval its own name (see docs/rules.md)")
        for iv in s.intervals:
            key = normalise_text(iv.phrase)
            if key in seen:
                raise UserError(
                    f"{rules.source}: the phrase {iv.phrase!r} ({s.name} {iv.name}) is also used by {seen[key]}; "
                    "give every interval its own phrase so prompts can be read back (see docs/rules.md)")
            seen[key] = f"{s.name} {iv.name}"


def _leftover_error(prompt: str, leftover: Iterable[str], known: str) -> UserError:
    words = " ".join(leftover)
    return UserError(f"cannot read prompt {prompt!r}: unrecognised words {words!r}; known phrases: {known}")


class QuantizedPromptBuilder:
    """Interval phrases from the rules (BrainEditor), and their inverse."""

    name = "quantized"

    def __init__(self, rules: Rules | None = None) -> None:
        self.rules = rules or default_rules()
        _check_phrases(self.rules)
        # longest phrase first, so "severe ventricle enlargement" wins over a shorter phrase inside it
        self._phrases: list[tuple[str, Structure, Interval]] = sorted(
            ((normalise_text(iv.phrase), s, iv) for s in self.rules.described() for iv in s.intervals),
            key=lambda t: -len(t[0]),
        )

    def build(self, change: Change) -> str | None:
        parts = [iv.phrase for _, iv, _ in described_changes(self.rules, change)]
        return join_phrases(parts) if parts else None

    def parse(self, prompt: str) -> dict[str, Interval]:
        text = f" {normalise_text(prompt)} "
        out: dict[str, Interval] = {}
        for phrase, s, iv in self._phrases:
            pattern = re.compile(rf"(?<=\s){re.escape(phrase)}(?=\s)")
            while True:
                m = pattern.search(text)
                if m is None:
                    break
                if s.name in out and out[s.name] != iv:
                    raise UserError(f"cannot read prompt {prompt!r}: it asks for both {out[s.name].name!r} and {iv.name!r} {s.name}; give one interval per structure")
                out[s.name] = iv
                text = text[: m.start()] + " | " + text[m.end():]
        leftover = [w for w in text.split() if w not in CONNECTORS]
        if leftover:
            raise _leftover_error(prompt, leftover, self.known())
        if not out:
            raise UserError(f"cannot read prompt {prompt!r}: it names no change; known phrases: {self.known()}")
        return {s.name: out[s.name] for s in self.rules.described() if s.name in out}

    def known(self) -> str:
        return ", ".join(repr(iv.phrase) for s in self.rules.described() for iv in s.intervals)


VERB_UP = "enlarges"
VERB_DOWN = "shrinks"
VERB_ZERO = "is unchanged"
_UP = {"enlarges", "grows", "increases", "expands", "enlarged", "grew", "increased", "expanded"}
_DOWN = {"shrinks", "decreases", "contracts", "atrophies", "shrank", "decreased", "contracted", "atrophied"}


class NumericPromptBuilder:
    """Exact change rates ("ventricle enlarges by 5.5%") for the groups the rules describe.

    A rate is written with ``decimals`` decimals, or more when rounding would move it into
    another interval (10.04 is written "10.04", not "10.0", when 10 closes an interval), so
    ``parse`` always returns the interval the true rate lies in.
    """

    name = "numeric"

    def __init__(self, rules: Rules | None = None, decimals: int = 1) -> None:
        self.rules = rules or default_rules()
        self.decimals = int(decimals)
        self._names = {normalise_text(display_name(s.name)): s for s in self.rules.described()}

    def number(self, structure: Structure, rate: float) -> str:
        iv = structure.interval_for(rate)
        for d in range(self.decimals, 8):
            text = f"{abs(rate):.{d}f}"
            shown = math.copysign(float(text), rate)
            if float(text) == 0.0 and rate != 0.0:
                continue
            if structure.interval_for(shown) == iv:
                return text
        return repr(abs(rate))

    def statement(self, structure: Structure, rate: float) -> str:
        if rate == 0:
            return f"{display_name(structure.name)} {VERB_ZERO}"
        verb = VERB_UP if rate > 0 else VERB_DOWN
        return f"{display_name(structure.name)} {verb} by {self.number(structure, rate)}%"

    def build(self, change: Change) -> str | None:
        parts = [self.statement(s, rate) for s, _, rate in described_changes(self.rules, change)]
        return join_phrases(parts) if parts else None

    def rates(self, prompt: str) -> dict[str, float]:
        """The rate (percent) stated for each group, in the rules' order."""
        text = normalise_text(prompt)
        names = "|".join(re.escape(n) for n in sorted(self._names, key=len, reverse=True))
        verbs = "|".join(sorted(_UP | _DOWN, key=len, reverse=True))
        pat = re.compile(rf"(?<![a-z])({names}) (?:(?:{verbs}) by ([0-9]+(?:\.[0-9]+)?) ?%|is unchanged|(?:{verbs}) by 0 ?%)")
        found: dict[str, float] = {}
        rest = []
        pos = 0
        for m in pat.finditer(text):
            rest.append(text[pos: m.start()])
            pos = m.end()
            s = self._names[m.group(1)]
            verb = m.group(0)[len(m.group(1)) + 1:].split(" ")[0]
            value = float(m.group(2)) if m.group(2) is not None else 0.0
            rate = -value if verb in _DOWN else value
            if s.name in found and found[s.name] != rate:
                raise UserError(f"cannot read prompt {prompt!r}: it states two rates for {s.name}")
            found[s.name] = rate
        rest.append(text[pos:])
        leftover = [w for w in " ".join(rest).split() if w not in CONNECTORS]
        if leftover:
            raise _leftover_error(prompt, leftover, self.known())
        if not found:
            raise UserError(f"cannot read prompt {prompt!r}: it states no change; write e.g. {self.known()}")
        return {s.name: found[s.name] for s in self.rules.described() if s.name in found}

    def parse(self, prompt: str) -> dict[str, Interval]:
        out = {}
        for name, rate in self.rates(prompt).items():
            iv = self.rules[name].interval_for(rate)
            if iv is None:
                raise UserError(f"cannot read prompt {prompt!r}: {name} rate {rate:g}% lies in no interval of the rules ({self.rules.source})")
            out[name] = iv
        return out

    def known(self) -> str:
        return ", ".join(f"'{display_name(s.name)} enlarges|shrinks by X%'" for s in self.rules.described())


MODALITIES = {
    "t1w": "T1-weighted", "t1": "T1-weighted", "t2w": "T2-weighted", "t2": "T2-weighted",
    "flair": "FLAIR", "pd": "proton-density-weighted", "pdw": "proton-density-weighted",
}

#: DALL-E Brain's 20 sentence templates. Placeholders: {modality} ("T1-weighted"), {who}
#: ("a 72-year-old female subject", "a female subject", "a 72-year-old subject", "a subject"),
#: {volumes} (the group volumes, in one of three styles chosen with the template).
TEMPLATES: tuple[str, ...] = (
    "{Modality} axial brain MRI of {who}, with {volumes}.",
    "An axial {modality} MRI slice of the brain of {who}; {volumes}.",
    "Brain MRI ({modality}, axial plane) of {who}. Structure volumes: {volumes}.",
    "{Who_cap}: {modality} axial MRI of the brain showing {volumes}.",
    "A {modality} scan of the brain of {who} in the axial plane, where {volumes}.",
    "Axial {modality} brain image of {who}. Measured volumes: {volumes}.",
    "This {modality} axial MRI shows the brain of {who} with {volumes}.",
    "MRI of the brain, {modality} sequence, axial view, {who}; {volumes}.",
    "{Who_cap} underwent a {modality} brain MRI; axial slice with {volumes}.",
    "Axial slice of a {modality} brain MRI from {who}: {volumes}.",
    "A brain MRI in the axial plane ({modality}) of {who}, {volumes}.",
    "{Modality} MRI, axial, brain of {who}. Volumes: {volumes}.",
    "An axial {modality} image of a brain; {who}; {volumes}.",
    "Brain of {who} imaged with a {modality} MRI sequence (axial), with {volumes}.",
    "Axial brain MRI ({modality}). Subject: {who}. Anatomy: {volumes}.",
    "{Who_cap}, axial {modality} brain MRI, {volumes}.",
    "A {modality} axial section through the brain of {who}, with {volumes}.",
    "Axial {modality} MR image of the brain of {who}; the scan has {volumes}.",
    "Head MRI, {modality}, axial plane, of {who}, showing {volumes}.",
    "A {modality} brain MRI slice (axial) from {who} with {volumes}.",
)

VOLUME_STYLES: tuple[str, ...] = ("{name} volume {value} mm3", "{name}: {value} mm3", "{name} of {value} mm3")


def _sex_word(sex: str | None) -> str | None:
    if not sex:
        return None
    s = sex.strip().lower()
    if s in ("f", "female", "woman", "w"):
        return "female"
    if s in ("m", "male", "man"):
        return "male"
    return None


def _who(age: float | None, sex: str | None) -> str:
    parts = []
    if age is not None and not math.isnan(age):
        parts.append(f"{age:.0f}-year-old")
    word = _sex_word(sex)
    if word:
        parts.append(word)
    parts.append("subject")
    return "a " + " ".join(parts)


class TemplatePromptBuilder:
    """Captions of one image (the edited image of a pair) from 20 sentence templates.

    The volumes of every rules group given in ``change.volumes`` (mm^3, rounded to whole mm^3;
    groups with no volume, absent from the label map, are left out) are listed in the rules' order, with age, sex and modality when known. ``change.rates``
    and ``change.only`` are not used: a caption describes an image, not a change. The template
    and volume style are picked by a hash of ``seed`` and the content, so a caption depends on
    nothing else (not on process order).
    """

    name = "template"

    def __init__(self, rules: Rules | None = None, seed: int = 0) -> None:
        self.rules = rules or default_rules()
        self.seed = int(seed)
        self._names = {normalise_text(display_name(s.name)): s for s in self.rules.structures}

    def _choice(self, change: Change) -> tuple[int, int]:
        key = json.dumps({
            "seed": self.seed,
            "volumes": {k: round(float(v), 3) for k, v in sorted(change.volumes.items())},
            "age": change.age, "sex": change.sex, "modality": change.modality,
        }, sort_keys=True)
        h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
        return h % len(TEMPLATES), (h // len(TEMPLATES)) % len(VOLUME_STYLES)

    def build(self, change: Change) -> str | None:
        vols = [(s, float(change.volumes[s.name])) for s in self.rules.structures
                if change.volumes.get(s.name) is not None and math.isfinite(change.volumes[s.name]) and change.volumes[s.name] > 0]
        if not vols:
            return None
        t, style = self._choice(change)
        volumes = join_phrases([VOLUME_STYLES[style].format(name=display_name(s.name), value=f"{v:,.0f}") for s, v in vols])
        modality = MODALITIES.get((change.modality or "").lower(), change.modality or "MRI")
        who = _who(change.age, change.sex)
        return TEMPLATES[t].format(modality=modality, Modality=modality[0].upper() + modality[1:],
                                   who=who, Who_cap=who[0].upper() + who[1:], volumes=volumes)

    def volumes(self, prompt: str) -> dict[str, float]:
        """The volume (mm^3) the caption states for each group."""
        text = normalise_text(prompt)
        names = "|".join(re.escape(n) for n in sorted(self._names, key=len, reverse=True))
        pat = re.compile(rf"(?<![a-z])({names})(?: volume)?(?: of| is| measures)? ([0-9]+(?:\.[0-9]+)?) ?(?:mm3|mm\^3|mm³|cubic millimet(?:re|er)s)")
        out: dict[str, float] = {}
        for m in pat.finditer(text):
            out[self._names[m.group(1)].name] = float(m.group(2))
        if not out:
            raise UserError(f"cannot read prompt {prompt!r}: it states no structure volume (e.g. 'ventricle volume 25,000 mm3')")
        return {s.name: out[s.name] for s in self.rules.structures if s.name in out}

    def parse(self, prompt: str) -> dict[str, Interval]:
        """For each group whose volume the caption states, the interval of volumes (mm^3, not
        a change rate) that round to the stated value: name ``"volume"``, ``[v-0.5, v+0.5)``."""
        return {name: Interval(name="volume", phrase=f"{display_name(name)} volume {v:,.0f} mm3",
                               low=v - 0.5, high=v + 0.5, low_closed=True, high_closed=False)
                for name, v in self.volumes(prompt).items()}

    def context(self, prompt: str) -> Mapping[str, object]:
        """Age, sex and modality stated in a caption (``None`` where absent)."""
        text = normalise_text(prompt)
        age = re.search(r"([0-9]+)-year-old", text)
        sex = re.search(r"\b(female|male)\b", text)
        mod = None
        for key, long in MODALITIES.items():
            if normalise_text(long) in text:
                mod = {"T1-weighted": "T1w", "T2-weighted": "T2w", "FLAIR": "FLAIR"}.get(long, key)
                break
        return {"age": float(age.group(1)) if age else None,
                "sex": {"female": "F", "male": "M"}[sex.group(1)] if sex else None, "modality": mod}

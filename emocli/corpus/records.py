"""The record every reader produces, the label sets, and the report of what was read and skipped."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from emocli.errors import ConfigError


@dataclass(frozen=True)
class Utterance:
    """One labelled utterance. `utt_id` is stable and unique within a corpus (IEMOCAP: `Ses01F_impro01_F000`)."""

    utt_id: str
    audio_path: Path
    text: str
    label: str  # a class of the label set, e.g. "hap" (after merging exc -> hap)
    raw_label: str  # the corpus's own code, e.g. "exc"
    speaker: str  # IEMOCAP: session + the turn's speaker letter, e.g. "Ses01M"
    session: str  # IEMOCAP: "Ses01"
    # Valence, arousal (IEMOCAP: activation), dominance as the corpus gives them (IEMOCAP: 1..5, the raters'
    # mean); None where the corpus has none.
    dimensions: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class LabelSet:
    """Which corpus codes become which class; codes not in `mapping` are dropped and counted."""

    name: str
    classes: tuple[str, ...]  # order = model output order = confusion-matrix order
    mapping: dict[str, str]  # corpus code -> class
    display: dict[str, str]  # class -> human name

    def class_index(self, label: str) -> int:
        return self.classes.index(label)

    def to_json(self) -> dict:
        return {"name": self.name, "classes": list(self.classes), "mapping": self.mapping, "display": self.display}

    @classmethod
    def from_json(cls, data: dict) -> "LabelSet":
        return cls(name=data["name"], classes=tuple(data["classes"]), mapping=dict(data["mapping"]),
                   display=dict(data["display"]))


DIMENSIONS = ("valence", "arousal", "dominance")  # IEMOCAP's [V, A, D]; A is "activation" in its files

_DISPLAY = {"ang": "angry", "hap": "happy", "sad": "sad", "neu": "neutral", "exc": "excited", "fru": "frustrated",
            "sur": "surprised", "fea": "fearful", "dis": "disgusted", "oth": "other"}
# The paper's table order: angry, happy, sad, neutral.
_FOUR = ("ang", "hap", "sad", "neu")
_SIX = ("ang", "hap", "sad", "neu", "exc", "fru")
# Every IEMOCAP code with a consensus; xxx (the raters did not agree) has no class and is dropped.
_ALL = ("ang", "hap", "sad", "neu", "exc", "fru", "sur", "fea", "dis", "oth")


def _iemocap_set(name: str, classes: tuple[str, ...], merged: dict[str, str] | None = None) -> LabelSet:
    return LabelSet(name, classes, {**{c: c for c in classes}, **(merged or {})}, {c: _DISPLAY[c] for c in classes})


LABEL_SETS: dict[str, LabelSet] = {
    # The field's standard 4-class set: excited merged into happy (5,531 utterances on the real corpus).
    "4class": _iemocap_set("4class", _FOUR, {"exc": "hap"}),
    # The older variant without excited (4,490 utterances on the real corpus).
    "4class-noexc": _iemocap_set("4class-noexc", _FOUR),
    # The six most frequent categories, excited and frustrated as classes of their own (7,380 on the real corpus).
    "6class": _iemocap_set("6class", _SIX),
    "all": _iemocap_set("all", _ALL),
}
# A manifest's own labels: the classes are whatever names its label column holds (`manifest_label_set`).
MANIFEST_LABELS = "manifest"
# IEMOCAP's reader uses 4class; a manifest its own labels, or 4class when they are IEMOCAP's four (and exc).
AUTO_LABELS = "auto"
LABEL_SET_CHOICES = (AUTO_LABELS, *LABEL_SETS, MANIFEST_LABELS)


def manifest_label_set(names: list[str]) -> LabelSet:
    """The label set of a manifest that brings its own classes: one class per distinct name, sorted, so the
    order (model output, confusion matrix) does not depend on the manifest's row order."""
    classes = tuple(sorted({n.strip().lower() for n in names if n.strip()}))
    if len(classes) < 2:
        raise ConfigError(f"a label set needs at least 2 classes; the manifest's labels are {list(classes)}")
    display = {c: _DISPLAY.get(c, c) for c in classes}
    if len(set(display.values())) < len(classes):  # `hap` beside `happy`: names must stay one per class
        display = {c: c for c in classes}
    return LabelSet(MANIFEST_LABELS, classes, {c: c for c in classes}, display)


def get_label_set(name: str) -> LabelSet:
    """A named IEMOCAP label set; `auto` is IEMOCAP's 4class (a manifest reader resolves it from its rows)."""
    try:
        return LABEL_SETS["4class" if name == AUTO_LABELS else name]
    except KeyError:
        raise ConfigError(f"unknown label set {name!r}; choose one of: {', '.join(LABEL_SET_CHOICES)}") from None


@dataclass
class ReadReport:
    """What a reader kept and what it skipped, by reason; `problems` holds one line per bad file or id."""

    source: str
    label_set: str
    utterances: list[Utterance] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    problems: list[str] = field(default_factory=list)

    def skip(self, reason: str, problem: str | None = None) -> None:
        self.skipped[reason] += 1
        if problem is not None:
            self.problems.append(problem)

    def per_class(self) -> dict[str, int]:
        return dict(sorted(Counter(u.label for u in self.utterances).items()))

    def per_session(self) -> dict[str, dict[str, int]]:
        table: dict[str, Counter] = {}
        for u in self.utterances:
            table.setdefault(u.session, Counter())[u.label] += 1
        return {s: dict(sorted(c.items())) for s, c in sorted(table.items())}

    def summary(self) -> dict:
        return {
            "source": self.source,
            "label_set": self.label_set,
            "utterances": len(self.utterances),
            "per_class": self.per_class(),
            "per_session": self.per_session(),
            "skipped": dict(sorted(self.skipped.items())),
        }

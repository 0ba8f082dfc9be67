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


_DISPLAY = {"ang": "angry", "hap": "happy", "sad": "sad", "neu": "neutral"}
# The paper's table order: angry, happy, sad, neutral.
_FOUR = ("ang", "hap", "sad", "neu")

LABEL_SETS: dict[str, LabelSet] = {
    # The field's standard 4-class set: excited merged into happy (5,531 utterances on the real corpus).
    "4class": LabelSet("4class", _FOUR, {"ang": "ang", "hap": "hap", "exc": "hap", "sad": "sad", "neu": "neu"},
                       _DISPLAY),
    # The older variant without excited (4,490 utterances on the real corpus).
    "4class-noexc": LabelSet("4class-noexc", _FOUR, {"ang": "ang", "hap": "hap", "sad": "sad", "neu": "neu"},
                             _DISPLAY),
}


def get_label_set(name: str) -> LabelSet:
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise ConfigError(f"unknown label set {name!r}; choose one of: {', '.join(LABEL_SETS)}") from None


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

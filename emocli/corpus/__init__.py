"""Corpus readers: each turns a source on disk into `Utterance` records and a `ReadReport`."""

from emocli.corpus.records import LABEL_SETS, LabelSet, ReadReport, Utterance, get_label_set

__all__ = ["LABEL_SETS", "LabelSet", "ReadReport", "Utterance", "get_label_set"]

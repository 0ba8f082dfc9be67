"""Your own corpus as a CSV or TSV manifest -> `Utterance` records.

Header `path,label` plus optional `text` (none: recordings without transcripts), `speaker`, `session`, `id` and
`valence,arousal,dominance` (numbers on any scale; empty = unknown). Paths are relative to the manifest's folder.
With an IEMOCAP label set a label may be a corpus code (`exc`, mapped by the label set), a class (`hap`) or its
display name (`happy`); with the manifest's own label set (`manifest_label_set`) the classes are its labels. Bad rows are skipped with one line naming the row's line number; a file that cannot be a
manifest at all is an error.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path

from emocli.corpus.iemocap import IEMOCAP_CODES, decode_text, label_dropped
from emocli.corpus.records import (AUTO_LABELS, DIMENSIONS, LABEL_SETS, MANIFEST_LABELS, LabelSet, ReadReport,
                                   Utterance, get_label_set, manifest_label_set)
from emocli.errors import CorpusError

REQUIRED_COLUMNS = ("path", "label")  # no text column: recordings without transcripts (prepare --transcripts asr)
OPTIONAL_COLUMNS = ("speaker", "session", "id", *DIMENSIONS)
UNKNOWN = "unknown"
BAD_ROW = "bad manifest row"
_HEADER_HINT = ("its first line must name the columns path,label (optional: text,speaker,session,id,"
                "valence,arousal,dominance)")


def manifest_labels(path: Path) -> list[str]:
    """The label column's values, as written (rows of any quality): what a manifest's own label set is made of."""
    path = Path(path)
    text = _read(path)
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(path, text))
    columns, width = _header(path, rows)
    try:  # rows `read_manifest` would skip (a field count that is not the header's) bring no class
        return [row[columns["label"]].strip().lower() for row in rows if len(row) == width]
    except csv.Error as e:
        raise CorpusError(f"{path} line {rows.line_num} cannot be parsed as CSV ({e}); check its quoting") from None


def has_dimension_columns(path: Path) -> bool:
    """True when the manifest's header names any of valence, arousal, dominance."""
    path = Path(path)
    text = _read(path)
    columns, _ = _header(path, csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(path, text)))
    return any(name in columns for name in DIMENSIONS)


def resolve_label_set(path: Path, name: str) -> LabelSet:
    """The label set a manifest is read with: a named IEMOCAP set; `manifest`: its own labels as classes; `auto`:
    IEMOCAP's 4class when all four of its classes occur (as codes or names: ang/angry, hap/happy/exc, sad,
    neu/neutral) — other IEMOCAP codes are then dropped and counted as from IEMOCAP itself, and any other label is a
    bad row (a typo must not become a class) — else the manifest's own labels."""
    if name not in (AUTO_LABELS, MANIFEST_LABELS):
        return get_label_set(name)
    labels = [label for label in manifest_labels(path) if label]
    four = _label_lookup(LABEL_SETS["4class"])
    if name == AUTO_LABELS and {four[label] for label in labels if label in four} == set(LABEL_SETS["4class"].classes):
        return LABEL_SETS["4class"]
    try:
        return manifest_label_set(labels)
    except Exception as exc:
        raise CorpusError(f"manifest {path}: {exc}") from None


def read_manifest(path: Path, label_set: LabelSet) -> ReadReport:
    """Read a manifest; rows that cannot be used are skipped and listed in the report's problems."""
    path = Path(path)
    text = _read(path)
    delimiter = _delimiter(path, text)
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    columns, width = _header(path, rows)
    report = ReadReport(source=str(path), label_set=label_set.name)
    folder = Path(os.path.abspath(path.parent))
    labels = _label_lookup(label_set)
    first_line: dict[str, int] = {}  # utt_id -> line that gave it first
    first_bad = ""  # the first bad row's reason, for the error when no row is usable
    try:
        for row in rows:
            line = rows.line_num
            if not any(field.strip() for field in row):
                continue
            try:
                utterance = _row(row, columns, width, folder, labels, label_set)
            except _BadRow as bad:
                report.skip(BAD_ROW, f"{path} line {line}: {bad}; row skipped")
                first_bad = first_bad or f"line {line}: {bad}"
                continue
            except _Dropped as dropped:
                report.skip(label_dropped(str(dropped)))
                continue
            if utterance.utt_id in first_line:
                report.skip(BAD_ROW, f"{path} line {line}: duplicate id {utterance.utt_id!r} "
                                     f"(first on line {first_line[utterance.utt_id]}); row skipped")
                continue
            first_line[utterance.utt_id] = line
            report.utterances.append(utterance)
    except csv.Error as e:
        raise CorpusError(f"{path} line {rows.line_num} cannot be parsed as CSV ({e}); "
                          "check its quoting") from None
    if not report.utterances:
        why = f"the first bad row is {first_bad}" if first_bad else _nothing_kept(report)
        raise CorpusError(f"no usable rows in manifest {path}: {why}; fix the rows or the label set")
    return report


def _nothing_kept(report: ReadReport) -> str:
    if report.skipped:
        return "every label was dropped (" + ", ".join(f"{r}: {n}" for r, n in sorted(report.skipped.items())) + ")"
    return "it has no data rows"


class _BadRow(ValueError):
    """A row that cannot become an utterance; the message says why."""


class _Dropped(ValueError):
    """A row whose label is a known corpus code outside the label set (fru, xxx, ...): dropped, not bad."""


def _read(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"cannot read manifest {path} ({e.strerror or e}); check the path") from None
    text = decode_text(data)
    if not text.strip():
        raise CorpusError(f"manifest {path} is empty; {_HEADER_HINT}")
    return text


def _delimiter(path: Path, text: str) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    header = text.lstrip().splitlines()[0]
    # A .csv saved by a spreadsheet as tab-separated still reads: whichever delimiter yields the columns wins.
    for delimiter in (",", "\t", ";"):
        names = {name.strip().lower() for name in header.split(delimiter)}
        if set(REQUIRED_COLUMNS) <= names:
            return delimiter
    return ","


def _header(path: Path, rows: Iterator[list[str]]) -> tuple[dict[str, int], int]:
    """Column name -> index (the first of a repeated name wins), and the header's field count."""
    for row in rows:
        if any(field.strip() for field in row):
            columns = {name.strip().lower(): i for i, name in reversed(list(enumerate(row)))}
            missing = [name for name in REQUIRED_COLUMNS if name not in columns]
            if missing:
                raise CorpusError(f"manifest {path} lacks column(s) {', '.join(missing)}; {_HEADER_HINT}")
            return columns, len(row)
    raise CorpusError(f"manifest {path} is empty; {_HEADER_HINT}")


def _label_lookup(label_set: LabelSet) -> dict[str, str]:
    lookup = {name.lower(): cls for cls, name in label_set.display.items() if cls in label_set.classes}
    lookup.update({cls: cls for cls in label_set.classes})
    lookup.update(label_set.mapping)  # corpus codes last: `exc` follows the set, whatever else it matched
    return lookup


def _field(row: list[str], columns: dict[str, int], name: str) -> str:
    index = columns.get(name)
    return row[index].strip() if index is not None and index < len(row) else ""


def _row(row: list[str], columns: dict[str, int], width: int, folder: Path, labels: dict[str, str],
         label_set: LabelSet) -> Utterance:
    if len(row) != width:
        # Usually a comma inside unquoted text, which shifts every later field.
        raise _BadRow(f"has {len(row)} fields, the header has {width} (quote text that holds the delimiter)")
    raw_label = _field(row, columns, "label").lower()
    label = labels.get(raw_label)
    if label is None:
        if raw_label in IEMOCAP_CODES:
            raise _Dropped(raw_label)
        choices = ", ".join(f"{c} ({label_set.display.get(c, c)})" for c in label_set.classes)
        raise _BadRow(f"unknown label {raw_label!r}; use one of {choices} (or prepare with --labels manifest to take "
                      f"the manifest's own labels as the classes)")
    written = _field(row, columns, "path")
    if not written:
        raise _BadRow("empty path")
    audio = Path(written)
    audio = Path(os.path.abspath(audio if audio.is_absolute() else folder / audio))
    try:
        size = audio.stat().st_size if audio.is_file() else None
    except OSError as e:  # a name too long for the filesystem, a folder that may not be searched
        raise _BadRow(f"audio file {written[:80]!r} cannot be read ({e.strerror or e})") from None
    if size is None:
        raise _BadRow(f"audio file {written!r} not found")
    if size == 0:
        raise _BadRow(f"audio file {written!r} is empty (0 bytes)")
    return Utterance(utt_id=_field(row, columns, "id") or _default_id(audio, folder), audio_path=audio,
                     text=" ".join(_field(row, columns, "text").split()), label=label, raw_label=raw_label,
                     speaker=_field(row, columns, "speaker") or UNKNOWN,
                     session=_field(row, columns, "session") or UNKNOWN,
                     dimensions=_dimensions(row, columns))


def _dimensions(row: list[str], columns: dict[str, int]) -> tuple[float, float, float] | None:
    """Valence, arousal, dominance of a row (NaN where empty); None when the manifest has none of the columns."""
    if not any(name in columns for name in DIMENSIONS):
        return None
    values = []
    for name in DIMENSIONS:
        written = _field(row, columns, name)
        try:
            value = float(written) if written else float("nan")
        except ValueError:
            raise _BadRow(f"{name} {written[:40]!r} is not a number") from None
        if value in (float("inf"), float("-inf")):
            raise _BadRow(f"{name} {written[:40]!r} is not a finite number")
        values.append(value)
    return values[0], values[1], values[2]


def _default_id(audio: Path, folder: Path) -> str:
    # The path relative to the manifest, without suffix, is stable across machines; an absolute one is not.
    try:
        return audio.relative_to(folder).with_suffix("").as_posix()
    except ValueError:
        return audio.with_suffix("").as_posix()

"""IEMOCAP_full_release -> `Utterance` records, per /work/shared/iemocap-format.md.

Labels come only from the summary lines of the top-level `SessionN/dialog/EmoEvaluation/*.txt` (the
Categorical/Attribute/Self-evaluation subfolders hold per-rater files, not the consensus), text from
`transcriptions/<dialog>.txt`, audio from `sentences/wav/<dialog>/<utt>.wav`. The two text files are joined
by utterance id, never by time or line order: their timestamps differ in style and, six times, by 0.1 ms,
and the label file lists all F turns before all M turns. Bad items are skipped and reported; only a source
with nothing usable is an error.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from emocli.corpus.archive import SESSION_NAMES, locate_root, open_source
from emocli.corpus.records import LabelSet, ReadReport, Utterance, get_label_set
from emocli.errors import ConfigError, CorpusError

# Every emotion code of the release; codes outside a label set's mapping are dropped and counted.
IEMOCAP_CODES = ("neu", "hap", "exc", "ang", "sad", "fru", "sur", "fea", "dis", "oth", "xxx")
TAG_MODES = ("keep", "strip")

SUMMARY_RE = re.compile(
    r"^\[(?P<start>\d+\.\d+)\s*-\s*(?P<end>\d+\.\d+)\]\t(?P<utt>Ses0[1-5][FM]_\S+_[FM]\d{3})\t(?P<code>[a-z]{3})"
    r"\t\[(?P<v>\d+\.\d+),\s*(?P<a>\d+\.\d+),\s*(?P<d>\d+\.\d+)\]\s*$")
# Spaces around the dash are tolerated although the release never has them: it costs nothing.
TRANS_RE = re.compile(
    r"^(?P<utt>Ses0[1-5][FM]_\S+_[FM](?:\d{3}|XX\d))\s+\[(?P<start>\d+\.\d+)\s*-\s*(?P<end>\d+\.\d+)\]:\s?"
    r"(?P<text>.*?)\s*$")
UTT_ID_RE = re.compile(
    r"^Ses0(?P<sess>[1-5])(?P<mocap>[FM])_(?P<type>impro|script)(?P<num>0[1-9])(?P<sub>[ab]?)"
    r"(?:_(?P<part>[1-3])(?P<partsub>b?))?_(?P<spk>[FM])(?P<idx>\d{3})$")
_ID_LIKE_RE = re.compile(r"Ses0\d[FM]_\S+")  # a line carrying an id is worth a problem line when it fails
_TAG_RE = re.compile(r"\[\w+\]")  # [LAUGHTER], [garbage], [BREATHING], ...
_LINE_BREAK_RE = re.compile(r"\r\n|\r|\n")  # line endings vary between copies (dos2unix in ESPnet)

# Skip reasons: keys of ReadReport.skipped.
EMPTY_LABEL_FILE = "label file without labels"
MALFORMED_LABEL = "malformed label line"
MALFORMED_ID = "malformed utterance id"
DUPLICATE_ID = "duplicate id"
MISSING_WAV = "missing wav"
EMPTY_WAV = "empty wav"
MISSING_TRANSCRIPT = "missing transcript"
MALFORMED_TRANSCRIPT = "malformed transcript line"
DUPLICATE_TRANSCRIPT = "duplicate transcript line"
TRANSCRIPT_XX = "transcript XX turn (no label)"
TRANSCRIPT_NO_ID = "transcript line without id"
UNREADABLE = "unreadable file"


def label_dropped(code: str) -> str:
    return f"label {code} dropped"


@dataclass(frozen=True)
class ReaderConfig:
    label_set: str = "4class"  # key of LABEL_SETS: 4class (exc merged into hap), 4class-noexc, 6class, all
    tags: str = "keep"  # "keep": non-speech tags kept, upper-cased; "strip": removed

    def __post_init__(self) -> None:
        get_label_set(self.label_set)  # ConfigError naming the choices
        if self.tags not in TAG_MODES:
            raise ConfigError(f"unknown tags mode {self.tags!r}; choose one of: {', '.join(TAG_MODES)}")


@dataclass(frozen=True)
class EmoEntry:
    """One summary line of an EmoEvaluation file."""

    utt_id: str
    code: str
    start: float
    end: float
    v: float
    a: float
    d: float


@dataclass
class _Transcript:
    texts: dict[str, str]  # utt_id -> raw text
    problems: list[str]
    xx_turns: int = 0
    lines_without_id: int = 0
    malformed: int = 0
    duplicates: int = 0


def decode_text(data: bytes) -> str:
    """UTF-16 or UTF-32 when a BOM says so (an editor's "Unicode" save), UTF-8 (a BOM tolerated), else latin-1:
    junk lines of unknown encoding must not sink a whole file."""
    for bom, codec in ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"), (b"\xff\xfe", "utf-16"),
                       (b"\xfe\xff", "utf-16")):
        if data.startswith(bom):
            try:
                return data.decode(codec)
            except UnicodeDecodeError:
                break
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _lines(text: str) -> list[str]:
    return _LINE_BREAK_RE.split(text.removeprefix("\ufeff"))  # a BOM would hide the first line's id


def parse_emo_evaluation(text: str, file: str) -> tuple[list[EmoEntry], list[str]]:
    """The summary lines of one EmoEvaluation file, and one problem line per malformed summary line."""
    entries: list[EmoEntry] = []
    problems: list[str] = []
    for number, line in enumerate(_lines(text), 1):
        line = line.strip()
        # `%` header (it contains [..] too), C-/A- rater lines, blanks: not labels.
        if not line or line.startswith(("%", "C-", "A-")):
            continue
        m = SUMMARY_RE.match(line)
        if m:
            entries.append(EmoEntry(m["utt"], m["code"], float(m["start"]), float(m["end"]),
                                    float(m["v"]), float(m["a"]), float(m["d"])))
        elif line.startswith("[") or _ID_LIKE_RE.search(line):
            id_like = _ID_LIKE_RE.search(line)
            about = f" for {id_like.group(0)}" if id_like else ""
            problems.append(f"{file} line {number}: malformed label line{about}: {_clip(line)}; skipped")
    return entries, problems


def parse_transcription(text: str, file: str) -> tuple[dict[str, str], list[str]]:
    """utt_id -> raw text for one transcription file; XX turns and id-less lines (`M: sorry`) are left out."""
    parsed = _parse_transcription(text, file)
    return parsed.texts, parsed.problems


def _parse_transcription(text: str, file: str) -> _Transcript:
    out = _Transcript({}, [])
    for number, line in enumerate(_lines(text), 1):
        line = line.strip()
        if not line:
            continue
        m = TRANS_RE.match(line)
        if m is None:
            if _ID_LIKE_RE.match(line):
                out.malformed += 1
                out.problems.append(f"{file} line {number}: malformed transcript line: {_clip(line)}; skipped")
            else:
                out.lines_without_id += 1
            continue
        utt = m["utt"]
        if utt[-3:-1] == "XX":  # non-utterance turns: no label and no wav exist for them
            out.xx_turns += 1
        elif utt in out.texts:
            out.duplicates += 1
            out.problems.append(f"{file} line {number}: second transcript line for {utt}; the first is kept")
        else:
            out.texts[utt] = m["text"]
    return out


def normalise_text(raw: str, tags: str) -> str:
    """Tags upper-cased ("keep") or removed ("strip"); any run of whitespace, TABs included, becomes one space."""
    if tags == "strip":
        raw = _TAG_RE.sub(" ", raw)
    else:
        raw = _TAG_RE.sub(lambda m: m.group(0).upper(), raw)
    return " ".join(raw.split())


def _clip(line: str, width: int = 80) -> str:
    return repr(line if len(line) <= width else line[:width] + "...")


def session_files(root: Path) -> list[tuple[Path, list[Path], list[Path]]]:
    """(session folder, label files, transcription files) for each session present, dot-files left out."""
    out = []
    for name in SESSION_NAMES:
        dialog = root / name / "dialog"
        if (dialog / "EmoEvaluation").is_dir():
            out.append((root / name, _txt_files(dialog / "EmoEvaluation"), _txt_files(dialog / "transcriptions")))
    return out


def _txt_files(folder: Path) -> list[Path]:
    # Non-recursive on purpose: EmoEvaluation's subfolders hold per-rater files in a similar format.
    try:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries
                           if not e.name.startswith(".") and e.name.lower().endswith(".txt") and e.is_file())
    except OSError:
        return []
    return [folder / name for name in names]


def source_files(folder: Path) -> list[Path]:
    """Every file the reader may read under an extracted corpus folder: what a fingerprint of it must cover."""
    root = locate_root(Path(folder))
    files: list[Path] = []
    for session, labels, transcripts in session_files(root):
        files += labels + transcripts
        wav_root = session / "sentences" / "wav"
        for dialog in _dot_free_dirs(wav_root):
            files += _dot_free_files(dialog, ".wav")
    return sorted(files)


# Names are sorted as strings before they become Paths: the same order for one folder, and sorting Path objects
# was most of fingerprinting a 10k-wav folder (0.24 s).
def _dot_free_dirs(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if not e.name.startswith(".") and e.is_dir()]
    except OSError:
        return []
    return [folder / name for name in sorted(names)]


def _dot_free_files(folder: Path, suffix: str) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if not e.name.startswith(".") and e.name.endswith(suffix) and e.is_file()]
    except OSError:
        return []
    return [folder / name for name in sorted(names)]


def read_iemocap(source: Path, config: ReaderConfig, workdir: Path,
                 progress: Callable[[int, int], None] | None = None) -> ReadReport:
    """Read an IEMOCAP folder or archive; items that cannot be used are skipped and counted in the report."""
    label_set = get_label_set(config.label_set)
    root = Path(os.path.abspath(open_source(Path(source), Path(workdir), progress)))
    report = ReadReport(source=str(source), label_set=label_set.name)
    reader = _Reader(root, label_set, config, report)
    for session, labels, transcripts in session_files(root):
        reader.load_transcripts(transcripts)
        for label_file in labels:
            reader.read_label_file(session, label_file)
    report.utterances.sort(key=lambda u: u.utt_id)
    if not report.utterances:
        skipped = ", ".join(f"{reason}: {n}" for reason, n in sorted(report.skipped.items())) or "nothing"
        raise CorpusError(f"no usable utterances in {source} (skipped: {skipped}); "
                          "check that it is the IEMOCAP_full_release corpus and the label set")
    return report


class _Reader:
    """The per-corpus state of one read: transcripts by file, ids already seen, the report being filled."""

    def __init__(self, root: Path, label_set: LabelSet, config: ReaderConfig, report: ReadReport) -> None:
        self.root = root
        self.label_set = label_set
        self.tags = config.tags
        self.report = report
        self.transcripts: dict[Path, dict[str, str]] = {}
        self.first_seen: dict[str, str] = {}  # utt_id -> label file that gave it first

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def read_text(self, path: Path) -> str | None:
        try:
            return decode_text(path.read_bytes())
        except OSError as e:
            self.report.skip(UNREADABLE, f"{self.rel(path)}: cannot be read ({e.strerror or e}); skipped")
            return None

    def load_transcripts(self, files: list[Path]) -> None:
        for path in files:
            text = self.read_text(path)
            if text is None:
                continue
            parsed = _parse_transcription(text, self.rel(path))
            self.transcripts[path] = parsed.texts
            for reason, n in ((TRANSCRIPT_XX, parsed.xx_turns), (TRANSCRIPT_NO_ID, parsed.lines_without_id),
                              (MALFORMED_TRANSCRIPT, parsed.malformed), (DUPLICATE_TRANSCRIPT, parsed.duplicates)):
                if n:
                    self.report.skipped[reason] += n
            self.report.problems.extend(parsed.problems)

    def read_label_file(self, session: Path, path: Path) -> None:
        text = self.read_text(path)
        if text is None:
            return
        rel = self.rel(path)
        entries, problems = parse_emo_evaluation(text, rel)
        for problem in problems:
            self.report.skip(MALFORMED_LABEL, problem)
        if not entries and not problems:  # every file that yields nothing is said and counted
            self.report.skip(EMPTY_LABEL_FILE, f"{rel}: no label line found (is it an EmoEvaluation file?); skipped")
        for entry in entries:
            utterance = self.accept(session, rel, entry)
            if utterance is not None:
                self.report.utterances.append(utterance)

    def accept(self, session: Path, rel: str, entry: EmoEntry) -> Utterance | None:
        utt = entry.utt_id
        match = UTT_ID_RE.match(utt)
        if match is None:
            self.report.skip(MALFORMED_ID, f"{rel}: {utt} is not a valid IEMOCAP utterance id; skipped")
            return None
        if utt in self.first_seen:
            self.report.skip(DUPLICATE_ID, f"{rel}: {utt} is a duplicate id (first in {self.first_seen[utt]}); "
                                           "the first is kept")
            return None
        self.first_seen[utt] = rel
        label = self.label_set.mapping.get(entry.code)
        if label is None:
            self.report.skip(label_dropped(entry.code))
            return None
        dialog = utt.rsplit("_", 1)[0]
        # One Path from one string: chained `/` built four Paths per utterance, a tenth of prepare's start-up.
        wav = Path(f"{session}/sentences/wav/{dialog}/{utt}.wav")
        if not self.usable_wav(wav, utt):
            return None
        transcript_file = Path(f"{session}/dialog/transcriptions/{dialog}.txt")
        raw_text = self.transcripts.get(transcript_file, {}).get(utt)
        if raw_text is None:
            self.report.skip(MISSING_TRANSCRIPT,
                             f"{self.rel(transcript_file)}: no transcript line for {utt}; skipped")
            return None
        sess = f"Ses0{match['sess']}"
        # The speaker is the turn's letter after the last underscore, not the mocap wearer after "Ses0N".
        return Utterance(utt_id=utt, audio_path=wav, text=normalise_text(raw_text, self.tags), label=label,
                         raw_label=entry.code, speaker=sess + match["spk"], session=sess,
                         dimensions=(entry.v, entry.a, entry.d))

    def usable_wav(self, wav: Path, utt: str) -> bool:
        try:
            found = os.stat(wav)
            size = found.st_size if stat.S_ISREG(found.st_mode) else None
        except OSError:
            size = None
        if size is None:
            self.report.skip(MISSING_WAV, f"{self.rel(wav)}: no wav for labelled {utt}; skipped")
            return False
        if size == 0:
            self.report.skip(EMPTY_WAV, f"{self.rel(wav)}: empty (0-byte) wav for {utt}; skipped")
            return False
        return True

"""A generated corpus in IEMOCAP_full_release's exact on-disk layout, quirks included.

IEMOCAP is licence-gated, so the demo and the tests run on this stand-in. It follows
/work/shared/iemocap-format.md (section 10 is the checklist, section 8 the quirks) and never invents a layout
the spec does not describe: a reader written from the spec alone must read it, and every quirk a real copy has
is here so that such a reader meets it in the tests first.

Emotion is learnable from both views, each for only part of the utterances: an utterance's wording carries its
emotion with probability `text_informative`, its prosody with probability `audio_informative`, drawn
independently. Fusing the two views therefore beats either alone, which is the product's central claim.

Times are planned in integer ticks of 0.1 ms (the files write 4 decimals), so the two timestamp styles, the
wav length `floor(duration * 16000)` and the truth's durations can never disagree through float rounding.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import shutil
import struct
import tarfile
import zipfile
import zlib
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
from scipy.signal import lfilter

from emocli.errors import ConfigError

# --- Layout -----------------------------------------------------------------------------------------------
RELEASE_NAME = "IEMOCAP_full_release"  # the archive's file name and the inner folder of a nested copy
TRUTH_FILE = "synth-truth.json"
FORMAT_SUFFIX = {"tar.gz": ".tar.gz", "tgz": ".tgz", "tar": ".tar", "zip": ".zip", "dir": ""}
SESSIONS = (1, 2, 3, 4, 5)
SPECIAL_DIALOGS = ("Ses03M_impro05a", "Ses03M_impro05b", "Ses03M_impro08a", "Ses03M_impro08b",
                   "Ses05M_script01_1b")
NO_MOCAP_DIALOGS = frozenset({"Ses05M_script01_1b"})  # its MOCAP is mapped to script01_1 by users (spec 3.1)
MOCAP_KINDS = ("MOCAP_hand", "MOCAP_head", "MOCAP_rotated")
SENTENCE_MOCAP_PER_DIALOG = 2  # placeholders only: one per utterance would triple the member count for nothing
FIXED_MTIME_S = 1_262_304_000  # 2010-01-01 UTC: one member date for all, so archives are byte-identical
ZIP_DATE = (2010, 1, 1, 0, 0, 0)
COMPRESS_LEVEL = 1  # wavs of noisy speech barely compress; level 1 is several times faster than 9 at ~1 % size
APPLE_DOUBLE_BYTES = 4096  # the size macOS gives these files
RENDER_THREADS = 2  # audio is rendered beside the compressor: the brief's target machine has 2 cores
RENDER_AHEAD = 16  # wavs in flight: bounds memory to a few MB while keeping the threads busy

# --- Time and audio ---------------------------------------------------------------------------------------
SAMPLE_RATE_HZ = 16_000
TICKS_PER_S = 10_000  # 0.1 ms: the resolution of every timestamp in the release
SAMPLE_BYTES = 2  # 16-bit PCM
WAV_HEADER_BYTES = 44
DURATION_SIGMA = 0.69  # log-normal spread: IEMOCAP's mean/median ratio 4.46/3.52 = exp(sigma^2 / 2)
MIN_UTT_S = 0.25  # keeps every utterance above features' 0.1 s refusal floor at any mean_seconds
MIN_UTT_RATIO = 0.13  # IEMOCAP min/mean = 0.585/4.46
MAX_UTT_RATIO = 7.6  # IEMOCAP max/mean = 34.1/4.46
DIALOG_START_S = (1.5, 8.0)  # first turn starts after a short silence
TURN_ADVANCE = (0.55, 1.15)  # next speaker starts at this fraction of the current turn: ~75 % overlap
SAME_SPEAKER_GAP_S = (0.15, 0.8)  # a speaker never overlaps themself
DIALOG_WAV_S = 0.5  # the whole-dialog stereo wav is only a placeholder (spec 10 allows it shortened)

# --- Sizes and rates of the quirks -------------------------------------------------------------------------
UTTS_PER_DIALOG = 40  # corpus size -> dialog count; at 10k utterances all 151 dialogs are used
MIN_DIALOGS = 9  # the 5 special dialogs plus one ordinary dialog each for sessions 1, 2, 4 and 5
HAP_SHARE = 595 / 1636  # hap vs exc inside the merged happy class (spec 7.1)
DROPPED_SHARE = {"xxx": 2507, "fru": 1849, "sur": 107, "fea": 40, "oth": 3, "dis": 2}  # spec 7.1 counts
SPEAKER_SWITCH_P = 0.8
XX_RATE = 0.004  # XX turns per utterance; the real count is unknown (spec 11)
IDLESS_RATE = 0.003
TIME_MISMATCHES = 6  # spec 5.1: six utterances whose two files disagree by 0.1 ms
INVERSION_P = 0.02  # adjacent transcript lines out of start order (149 in 10k)
SELF_RATED_P = 0.7  # dialogs with C-F<n>/A-F<n> self-evaluation lines
SELF_LINE_P = 0.85
SELF_RATED_SESSIONS = (1, 2, 3, 5)  # spec 4.1: no self-evaluations seen in session 4
MULTI_LABEL_P = 0.2
COMMENT_P = 0.15
ODD_DOM_RATE = 0.0015  # per A-line, once each for "dom 3;" and a missing dom: ~36 of ~20k real lines
VAD_OUTLIER_RATE = 0.0004  # summaries with 0.5 or 5.5 (3 + 4 of 10k)
TAG_ONLY_RATE = 0.0055  # 55 of 10k
ONE_WORD_RATE = 0.03
INLINE_TAG_RATE = {"[LAUGHTER]": 0.016, "[BREATHING]": 0.006, "[GARBAGE]": 0.003, "[garbage]": 0.0015,
                   "[laughter]": 0.0001}
DOUBLE_SPACE_P = 0.5  # between two sentences

EMO_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"
CODE_NAME = {"neu": "Neutral", "hap": "Happiness", "exc": "Excited", "ang": "Anger", "sad": "Sadness",
             "fru": "Frustration", "sur": "Surprise", "fea": "Fear", "dis": "Disgust", "oth": "Other"}
NAME_CODE = {name: code for code, name in CODE_NAME.items()}
KEPT_CODES = ("ang", "hap", "exc", "sad", "neu")
ALL_CODES = ("neu", "hap", "exc", "ang", "sad", "fru", "sur", "fea", "dis", "oth", "xxx")
# Labels a rater plausibly gives instead: these make disagreements, multi-labels and xxx look real.
CONFUSABLE = {"ang": ("fru", "dis", "neu"), "hap": ("exc", "sur", "neu"), "exc": ("hap", "sur"),
              "sad": ("neu", "fru", "fea"), "neu": ("fru", "sad", "hap"), "fru": ("ang", "neu", "sad"),
              "sur": ("hap", "exc", "fea"), "fea": ("sur", "sad"), "dis": ("ang", "fru"), "oth": ("neu", "fru")}
# Typical (valence, activation, dominance) on IEMOCAP's 1..5 scale.
VAD_MEAN = {"neu": (3, 2.5, 2.8), "hap": (4.2, 3.2, 3.2), "exc": (4.2, 3.8, 3.4), "ang": (1.6, 4, 4),
            "sad": (1.8, 2, 2.2), "fru": (2, 3.3, 3.3), "sur": (3.3, 3.8, 2.8), "fea": (1.8, 3.6, 2),
            "dis": (1.7, 3.2, 3.5), "oth": (2.8, 3, 3)}
C_COMMENTS = ("curious", "a bit tense", "mostly calm", "sarcastic", "hard to tell", "rising tension")
A_COMMENTS = ("mildly aggravated but staying polite, attitude", "threatening, belligerent", "subdued",
              "animated", "flat delivery")

# --- Text ------------------------------------------------------------------------------------------------
# Emotion-bearing wording per code; exc shares hap's bank because the 4-class set merges them. Cores are
# combined with prefixes and a second sentence, so there are thousands of distinct sentences per class.
BANKS: dict[str, tuple[str, ...]] = {
    "ang": ("this is ridiculous!", "I can't believe you!", "I can't believe you did that to me.",
            "you never listen to me!", "get out of my face!", "I am sick and tired of this!",
            "don't you dare talk to me like that.", "how dare you!", "you lied to me again!",
            "this is completely unacceptable!", "I want my money back right now!", "stop making excuses!",
            "shut up and listen to me!", "you ruined everything!", "I have had it with you!",
            "that is the stupidest thing I have ever heard.", "who do you think you are?",
            "give me that right now!", "you are such a liar!", "I'm not going to put up with this!",
            "get your hands off me!", "I swear I'll walk out that door!", "don't you ever touch my stuff again!"),
    "hap": ("that's wonderful!", "I got the job!", "I'm so happy for you!", "we're getting married!",
            "this is the best day ever!", "I love it!", "that's amazing news!", "we won!",
            "I can't wait to see you!", "you made my day!", "oh, I'm so excited!", "we're going to Hawaii!",
            "congratulations!", "it's beautiful, thank you so much!", "I passed the exam!",
            "let's celebrate tonight!", "you're the best!", "this is so much fun!", "I'm thrilled!",
            "that sounds fantastic!", "I'm so proud of you!", "we did it!"),
    "sad": ("I miss her so much.", "he's gone and he's not coming back.", "I don't know what to do anymore.",
            "nobody cares about me.", "I'm so tired of being alone.", "it's all my fault.",
            "I wish things were different.", "I lost everything.", "I can't stop thinking about him.",
            "it hurts so much.", "I just want to go home.", "she never called back.",
            "we had to put the dog down.", "I feel so empty.", "it's never going to be the same.",
            "I didn't get to say goodbye.", "I'm sorry, I just can't.", "everything is falling apart.",
            "I cried all night."),
    "neu": ("the form is on the desk.", "you need to fill out this section.", "the office opens at nine.",
            "please take a number and wait.", "your appointment is on Thursday.",
            "the train leaves at four thirty.", "I'll send you the report tomorrow.",
            "the keys are in the drawer.", "we need two copies of your license.",
            "the meeting is in room twelve.", "turn left at the second light.", "it costs twenty dollars.",
            "the documents are in the blue folder.", "sign here and here.", "I parked the car outside.",
            "the package arrived this morning.", "the printer is on the second floor.",
            "your number will be called."),
    "fru": ("why does this always happen to me?", "I've been waiting here for three hours.",
            "nobody here ever helps.", "this line isn't moving at all.", "I already filled that out twice.",
            "it just doesn't work.", "what am I supposed to do now?", "this makes no sense."),
    "sur": ("oh my god, really?", "no way, are you serious?", "wait, what?", "you did what?", "I had no idea!",
            "that's so unexpected!"),
    "fea": ("I'm scared.", "what was that noise?", "please don't hurt me.", "I think someone is following us.",
            "I don't want to die."),
    "dis": ("that's disgusting.", "ugh, get it away from me.", "that smells awful.",
            "how could anyone eat that?"),
}
BANKS["exc"] = BANKS["hap"]
PREFIXES: dict[str, tuple[str, ...]] = {
    "ang": ("look, ", "oh come on, ", "seriously, ", "no, ", "damn it, ", "listen, "),
    "hap": ("oh wow, ", "oh my gosh, ", "yes, ", "honey, ", "guess what, "),
    "sad": ("I'm sorry, ", "I just, ", "honestly, ", "I guess "),
    "neu": ("okay, ", "alright, ", "so, ", "just so you know, "),
}
FILLER = ("well, I don't know.", "what do you mean?", "okay, so.", "we talked about it yesterday.",
          "you know what I mean?", "and then he said something.", "I guess so.", "where is it?",
          "let me think about it.", "it was on Tuesday.", "so what now?", "I'm not sure.", "maybe.",
          "that's what I said.", "it depends.", "I was just thinking.", "what did she say?", "we'll see.",
          "is that right?", "hold on a second.", "I told you before.", "yes, I know.", "come here.",
          "it's just that.", "and you?", "the other one.", "so anyway.", "I mean, it's not like that.")
ONE_WORD = ("Yeah.", "No.", "Okay.", "Right.", "What?", "Hmm.", "Sure.", "I", "um.", "oh-", "Yes.", "Mm-hmm.")
IDLESS_TEXTS = (("M", "sorry"), ("F", "yeah"), ("M", "okay"), ("F", "mm-hmm"))
TAG_ONLY = ("[LAUGHTER]", "[GARBAGE]", "[BREATHING]")


@dataclass(frozen=True)
class SynthConfig:
    per_class: int = 100  # utterances per 4-class label (ang, hap incl. exc, sad, neu) -> 4*per_class kept
    seed: int = 0
    fmt: str = "tar.gz"  # "tar.gz" | "tgz" | "tar" | "zip" | "dir"
    mean_seconds: float = 2.5  # mean utterance duration; IEMOCAP's own is 4.46 s
    dropped_fraction: float = 0.25  # extra fru/xxx/sur/fea/dis/oth utterances, relative to the kept count
    apple_double: bool = True  # ._* junk files
    crlf_transcripts: bool = False
    nested_root: bool = False  # <root_name>/IEMOCAP_full_release/Session1/...
    root_name: str = RELEASE_NAME  # a renamed top folder
    text_informative: float = 0.6  # fraction of utterances whose wording carries the emotion
    audio_informative: float = 0.6  # fraction whose prosody carries the emotion (independent draw)
    transcript_final_newline: bool = True  # False drops the last line's newline (a robustness fixture)
    # "espeak": each transcript spoken by eSpeak NG, ten voices as the speakers; "tones": the fast babble
    # synthesiser (no words), for tests that need audio but not speech.
    speech: str = "tones"


@dataclass(frozen=True)
class SynthTruth:
    """What the generator wrote, for tests and the demo; also saved as `synth-truth.json`."""

    archive: Path  # the archive file, or the root folder for fmt="dir"
    codes: dict[str, str]  # utt_id -> raw code, for every labelled utterance (= every sentence wav)
    texts: dict[str, str]  # utt_id -> transcript text exactly as written (tags included)
    sessions: dict[str, str]  # utt_id -> "Ses01".."Ses05"
    speakers: dict[str, str]  # utt_id -> session + the letter after the last underscore, e.g. "Ses01M"
    durations: dict[str, float]  # utt_id -> seconds; the wav has floor(duration * 16000) samples
    text_cue: dict[str, bool]  # whether the wording carries the emotion
    audio_cue: dict[str, bool]  # whether the prosody carries the emotion
    xx_turns: int
    idless_lines: int
    dialogs: list[str]

    def to_json(self) -> dict:
        data = asdict(self)
        data["archive"] = str(self.archive)
        return data

    @classmethod
    def from_json(cls, d: dict) -> "SynthTruth":
        names = cls.__dataclass_fields__
        fields = {k: v for k, v in d.items() if k in names}  # a saved file also holds the config
        fields["archive"] = Path(fields["archive"])
        return cls(**fields)

    def four_class_counts(self, merge_exc: bool = True) -> dict[str, int]:
        counts = Counter(self.codes.values())
        return {"ang": counts["ang"], "hap": counts["hap"] + (counts["exc"] if merge_exc else 0),
                "sad": counts["sad"], "neu": counts["neu"]}


# =========================================================================================================
# Planning: every id, time, label, rating and text, decided before any audio exists
# =========================================================================================================

@dataclass
class _Turn:
    dialog: str
    session: int
    letter: str  # the speaker of this turn, F or M (not the dialog's mocap letter)
    code: str | None  # None: an XX turn (transcribed, never labelled, no wav)
    serial: int = 0  # corpus-wide turn number: seeds this turn's audio independently of write order
    start: int = 0  # ticks
    end: int = 0
    trans_start: int = 0  # the transcript's copy of the times (differs by 1 tick for TIME_MISMATCHES turns)
    trans_end: int = 0
    utt_id: str = ""
    text: str = ""
    text_cue: bool = False
    audio_cue: bool = False
    votes: dict[str, list[str]] = field(default_factory=dict)  # rater -> label names (C- lines)
    attrs: dict[str, list[int]] = field(default_factory=dict)  # rater -> [val, act, dom] (A- lines)
    dom_style: dict[str, str] = field(default_factory=dict)  # rater -> "one" | "none" when not two spaces
    c_comments: dict[str, str] = field(default_factory=dict)
    a_comments: dict[str, str] = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        return self.code is not None

    @property
    def speaker(self) -> str:
        return f"Ses0{self.session}{self.letter}"


@dataclass
class _Dialog:
    name: str
    session: int
    turns: list[_Turn] = field(default_factory=list)  # chronological, XX turns included
    c_raters: tuple[str, ...] = ()
    a_raters: tuple[str, ...] = ()
    self_rated: bool = False
    transcript: list[str] = field(default_factory=list)  # final line order, id-less lines included

    @property
    def labelled(self) -> list[_Turn]:
        return [t for t in self.turns if t.labelled]


@dataclass
class CorpusPlan:
    """The whole corpus except its audio samples; `synthesize` streams the audio from it."""

    config: SynthConfig
    dialogs: list[_Dialog]
    xx_turns: int
    idless_lines: int
    speech: "SpeechTable | None" = None  # the spoken words of every labelled turn (speech="espeak")

    def turns(self) -> Iterator[_Turn]:
        for d in self.dialogs:
            yield from d.turns

    def truth(self, archive: Path) -> SynthTruth:
        lab = sorted((t for t in self.turns() if t.labelled), key=lambda t: t.utt_id)
        return SynthTruth(
            archive=archive,
            codes={t.utt_id: t.code for t in lab},
            texts={t.utt_id: t.text for t in lab},
            sessions={t.utt_id: f"Ses0{t.session}" for t in lab},
            speakers={t.utt_id: t.speaker for t in lab},
            durations={t.utt_id: (t.end - t.start) / TICKS_PER_S for t in lab},
            text_cue={t.utt_id: t.text_cue for t in lab},
            audio_cue={t.utt_id: t.audio_cue for t in lab},
            xx_turns=self.xx_turns, idless_lines=self.idless_lines,
            dialogs=[d.name for d in self.dialogs])


def dialog_inventory() -> list[str]:
    """The 151 dialog names of the release (spec 3.1 and Appendix A)."""
    names = []
    for s in SESSIONS:
        for mocap in "FM":
            impros = [f"{i:02d}" for i in range(1, 8 if s == 1 else 9)]
            if (s, mocap) == (3, "M"):
                impros = [x for x in impros if x not in ("05", "08")] + ["05a", "05b", "08a", "08b"]
            names += [f"Ses0{s}{mocap}_impro{x}" for x in impros]
            names += [f"Ses0{s}{mocap}_script{x}" for x in ("01_1", "01_2", "01_3", "02_1", "02_2", "03_1", "03_2")]
            if (s, mocap) == (5, "M"):
                names.append("Ses05M_script01_1b")
    return sorted(names)


def _session_of(dialog: str) -> int:
    return int(dialog[4])


def _code_counts(config: SynthConfig) -> dict[str, int]:
    n = config.per_class
    hap = max(1, round(n * HAP_SHARE)) if n >= 2 else n
    counts = {"ang": n, "hap": hap, "exc": n - hap, "sad": n, "neu": n}
    dropped = round(config.dropped_fraction * 4 * n)
    if config.dropped_fraction > 0:
        dropped = max(dropped, len(DROPPED_SHARE))  # every code must appear once, the rare ones included
    counts.update(_largest_remainder(dropped, DROPPED_SHARE) if dropped else {c: 0 for c in DROPPED_SHARE})
    return counts


def _largest_remainder(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split `total` by `weights` with at least one each (total >= len(weights))."""
    rest = total - len(weights)
    norm = sum(weights.values())
    exact = {k: rest * w / norm for k, w in weights.items()}
    out = {k: 1 + int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (int(exact[k]) - exact[k], k))[: total - sum(out.values())]:
        out[k] += 1
    return out


def _choose_dialogs(n: int, rng: np.random.Generator) -> list[str]:
    """The special dialogs always, then the session with the fewest so far, so all five stay balanced."""
    chosen = list(SPECIAL_DIALOGS)
    pools = {s: [d for d in dialog_inventory() if _session_of(d) == s and d not in SPECIAL_DIALOGS]
             for s in SESSIONS}
    for s in SESSIONS:
        rng.shuffle(pools[s])
    while len(chosen) < n:
        # Ses05M_script01_1b does not count: without MOCAP it cannot fill Session5's MOCAP folders alone.
        have = Counter(_session_of(d) for d in chosen if d not in NO_MOCAP_DIALOGS)
        s = min((s for s in SESSIONS if pools[s]), key=lambda s: (have[s], s))
        # Alternate the mocap letter within a session, so F-set and M-set dialogs both occur.
        letters = Counter(d[5] for d in chosen if _session_of(d) == s)
        want = "F" if letters["F"] <= letters["M"] else "M"
        pick = next((d for d in pools[s] if d[5] == want), pools[s][0])
        pools[s].remove(pick)
        chosen.append(pick)
    return sorted(chosen)


def _turns_per_dialog(dialogs: list[str], total: int) -> list[int]:
    """An equal share per session, split evenly over its dialogs; then at least 2 per dialog (both speakers)."""
    per_session = {s: total // len(SESSIONS) + (1 if i < total % len(SESSIONS) else 0) for i, s in enumerate(SESSIONS)}
    counts = []
    for d in dialogs:
        mine = [x for x in dialogs if _session_of(x) == _session_of(d)]
        q, r = divmod(per_session[_session_of(d)], len(mine))
        counts.append(q + (1 if mine.index(d) < r else 0))
    floor = 2 if total >= 2 * len(dialogs) else 1
    while min(counts) < floor:
        counts[counts.index(max(counts))] -= 1
        counts[counts.index(min(counts))] += 1
    return counts


def _speaker_sequence(n: int, rng: np.random.Generator) -> list[str]:
    letters = ["F" if rng.random() < 0.5 else "M"]
    for _ in range(n - 1):
        prev = letters[-1]
        letters.append(("M" if prev == "F" else "F") if rng.random() < SPEAKER_SWITCH_P else prev)
    if n >= 2 and len(set(letters)) == 1:
        letters[-1] = "M" if letters[0] == "F" else "F"
    return letters


def _cover_speakers(turns: list[_Turn]) -> None:
    """Give every speaker at least one kept-class utterance, so per-speaker splits never lose a person."""
    by_speaker: dict[str, list[_Turn]] = {}
    for t in turns:
        by_speaker.setdefault(t.speaker, []).append(t)
    for spk in sorted(by_speaker):
        mine = by_speaker[spk]
        if any(t.code in KEPT_CODES for t in mine):
            continue
        donors = [t for t in turns if t.code in KEPT_CODES
                  and sum(u.code in KEPT_CODES for u in by_speaker[t.speaker]) > 1]
        if donors:
            donors[0].code, mine[0].code = mine[0].code, donors[0].code


def _duration_ticks(mean_s: float, rng: np.random.Generator) -> int:
    median = mean_s / math.exp(DURATION_SIGMA ** 2 / 2)
    seconds = float(np.clip(rng.lognormal(math.log(median), DURATION_SIGMA),
                            max(MIN_UTT_S, MIN_UTT_RATIO * mean_s), MAX_UTT_RATIO * mean_s))
    ticks = round(seconds * TICKS_PER_S)
    # A multiple of 5 ticks is a whole number of samples; anything else keeps duration*16000 at least 0.2
    # samples away from an integer, so every reader's float floor() agrees with the wav length.
    return ticks + 1 if ticks % 5 == 0 else ticks


def _lay_out_times(turns: list[_Turn], mean_s: float, rng: np.random.Generator,
                   durations: dict[int, int] | None = None) -> None:
    """Starts strictly increase; the other speaker overlaps often, the same speaker never. `durations` (serial ->
    ticks) fixes some turns' lengths, as spoken text does."""
    start = round(rng.uniform(*DIALOG_START_S) * TICKS_PER_S)
    last_end = {"F": 0, "M": 0}
    prev: _Turn | None = None
    for t in turns:
        dur = _duration_ticks(mean_s if t.labelled else 0.4 * mean_s, rng)
        if durations is not None and t.serial in durations:
            dur = durations[t.serial]
        if prev is not None:
            if prev.letter != t.letter:
                start = prev.start + max(1, round((prev.end - prev.start) * rng.uniform(*TURN_ADVANCE)))
            else:
                start = prev.end + round(rng.uniform(*SAME_SPEAKER_GAP_S) * TICKS_PER_S)
            start = max(start, last_end[t.letter] + round(SAME_SPEAKER_GAP_S[0] * TICKS_PER_S), prev.start + 1)
        t.start, t.end = start, start + dur
        t.trans_start, t.trans_end = t.start, t.end
        last_end[t.letter] = t.end
        prev = t


def _number_turns(dialog: _Dialog) -> None:
    """Contiguous F000.., M000.. per dialog in start order; XX turns count FXX0.. separately."""
    counters: Counter = Counter()
    for t in dialog.turns:
        key = (t.letter, t.labelled)
        n = counters[key]
        counters[key] += 1
        t.utt_id = f"{dialog.name}_{t.letter}{n:03d}" if t.labelled else f"{dialog.name}_{t.letter}XX{n}"


def _sentence(core: str, prefix: str = "") -> str:
    s = prefix + core
    return s[0].upper() + s[1:]


def _compose(code: str | None, informative: bool, rng: np.random.Generator) -> str:
    def pick(seq: tuple[str, ...]) -> str:
        return seq[int(rng.integers(len(seq)))]

    if informative and code in BANKS:
        prefixes = PREFIXES.get(code, ())
        parts = [_sentence(pick(BANKS[code]), pick(prefixes) if prefixes and rng.random() < 0.35 else "")]
        roll = rng.random()
        if roll < 0.35:
            parts.append(_sentence(pick(BANKS[code])))
        elif roll < 0.5:
            parts.append(_sentence(pick(FILLER)))
    else:
        parts = [_sentence(pick(FILLER)) for _ in range(1 + int(rng.integers(3)))]
    joined = parts[0]
    for p in parts[1:]:
        joined += ("  " if rng.random() < DOUBLE_SPACE_P else " ") + p
    return joined


def _pick(pool: list[_Turn], k: int, rng: np.random.Generator) -> list[_Turn]:
    if k <= 0 or not pool:
        return []
    idx = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
    return [pool[i] for i in sorted(idx)]


def _apply_text_quirks(turns: list[_Turn], rng: np.random.Generator) -> None:
    """Tags, tag-only and one-word utterances, one literal TAB, and at least one double space (spec 5.3).

    Tag-only and one-word texts carry no wording, so they are taken from text-uninformative utterances, and
    one is made uninformative when there are none (text_informative=1.0)."""
    n = len(turns)

    def uninformative(k: int, taken: set[int]) -> list[_Turn]:
        chosen = _pick([t for t in turns if not t.text_cue and t.serial not in taken], k, rng)
        if len(chosen) < k:
            also = {t.serial for t in chosen} | taken
            chosen += _pick([t for t in turns if t.serial not in also], k - len(chosen), rng)
        return chosen

    taken: set[int] = set()
    tag_only = uninformative(max(len(TAG_ONLY) - 1, round(TAG_ONLY_RATE * n)), taken)
    for i, t in enumerate(tag_only):
        t.text, t.text_cue = TAG_ONLY[i % len(TAG_ONLY)], False
        taken.add(t.serial)
    for i, t in enumerate(uninformative(max(1, round(ONE_WORD_RATE * n)), taken)):
        t.text, t.text_cue = ONE_WORD[i % len(ONE_WORD)], False
        taken.add(t.serial)
    worded = [t for t in turns if t.serial not in taken]
    for tag, rate in INLINE_TAG_RATE.items():
        for t in _pick(worded, max(1, round(rate * n)), rng):
            t.text = f"{tag} {t.text}" if rng.random() < 0.5 else f"{t.text} {tag}"
    spaced = [t for t in worded if " " in t.text]
    if not spaced:
        return
    # Exactly one literal TAB in the whole corpus, as in Ses05F_impro04_M018.
    tabbed = spaced[int(rng.integers(len(spaced)))]
    i = tabbed.text.index(" ")
    tabbed.text = tabbed.text[:i] + "\t" + tabbed.text[i + 1:].lstrip(" ")
    others = [t for t in spaced if t is not tabbed]
    if others and not any("  " in t.text for t in turns):
        victim = others[int(rng.integers(len(others)))]
        victim.text = victim.text.replace(" ", "  ", 1)


def consensus(votes: list[list[str]]) -> str:
    """The code from the evaluators' C- lines: a unique label with at least 2 votes, else xxx (spec 4.1)."""
    tally = Counter(label for labels in votes for label in labels)
    ranked = tally.most_common()
    if not ranked or ranked[0][1] < 2 or (len(ranked) > 1 and ranked[1][1] == ranked[0][1]):
        return "xxx"
    return NAME_CODE[ranked[0][0]]


def _rater_labels(code: str, rng: np.random.Generator) -> list[list[str]]:
    """Three evaluators' label lists whose consensus is `code` (rejection sampling, a few tries at most)."""
    base = code if code != "xxx" else ("neu", "fru", "ang", "sad", "hap", "exc")[int(rng.integers(6))]
    loyal = 0.85 if code != "xxx" else 0.4
    while True:
        votes = []
        for _ in range(3):
            alt = CONFUSABLE[base][int(rng.integers(len(CONFUSABLE[base])))]
            labels = [CODE_NAME[base if rng.random() < loyal else alt]]
            if rng.random() < MULTI_LABEL_P:
                extra = CODE_NAME[alt] if CODE_NAME[alt] not in labels else CODE_NAME[base]
                if extra not in labels:
                    labels.insert(int(rng.integers(2)), extra)
            votes.append(labels)
        if consensus(votes) == code:
            return votes


def _rate(t: _Turn, d: _Dialog, rng: np.random.Generator) -> None:
    for rater, labels in zip(d.c_raters, _rater_labels(t.code, rng)):
        t.votes[rater] = labels
    emotive = t.code if t.code != "xxx" else NAME_CODE[t.votes[d.c_raters[0]][0]]
    raters = list(d.a_raters)
    if d.self_rated and rng.random() < SELF_LINE_P:
        own = f"{t.letter}{d.session}"
        alt = CONFUSABLE[emotive][int(rng.integers(len(CONFUSABLE[emotive])))]
        t.votes[own] = [CODE_NAME[emotive if rng.random() < 0.7 else alt]]
        raters.append(own)
    for rater in raters:
        t.attrs[rater] = [int(np.clip(round(m + rng.normal(0, 0.7)), 1, 5)) for m in VAD_MEAN[emotive]]
    for rater in t.votes:
        if rng.random() < COMMENT_P:
            t.c_comments[rater] = C_COMMENTS[int(rng.integers(len(C_COMMENTS)))]
    for rater in raters:
        if rng.random() < COMMENT_P:
            t.a_comments[rater] = A_COMMENTS[int(rng.integers(len(A_COMMENTS)))]


def _apply_rating_quirks(turns: list[_Turn], dialogs: dict[str, _Dialog], rng: np.random.Generator) -> None:
    """A few 0.5/5.5 means and A-lines with "dom 3;" or no dom at all (spec 4.1, checklist)."""
    n = len(turns)
    k = max(1, round(VAD_OUTLIER_RATE * n))
    chosen = _pick(turns, 2 * k, rng)
    for i, t in enumerate(chosen):
        a, b = dialogs[t.dialog].a_raters
        dim = int(rng.integers(3))
        t.attrs[a][dim], t.attrs[b][dim] = (1, 0) if i % 2 == 0 else (5, 6)
    k = max(1, round(ODD_DOM_RATE * 2 * n))
    outliers = {t.serial for t in chosen}
    rest = [t for t in turns if t.serial not in outliers]
    for i, t in enumerate(_pick(rest, 2 * k, rng)):
        rater = dialogs[t.dialog].a_raters[int(rng.integers(2))]
        t.dom_style[rater] = "one" if i % 2 == 0 else "none"


def _plan_transcript(d: _Dialog, rng: np.random.Generator) -> tuple[list[tuple[int, _Turn]], int]:
    """Start order with a few swapped neighbours (different speakers); returns the swaps made."""
    order = list(enumerate(d.turns))
    swaps = 0
    i = 0
    while i < len(order) - 1:
        if order[i][1].letter != order[i + 1][1].letter and rng.random() < INVERSION_P:
            order[i], order[i + 1] = order[i + 1], order[i]
            swaps += 1
            i += 2
        else:
            i += 1
    return order, swaps


def _force_inversion(dialogs: list[_Dialog], orders: dict[str, list[tuple[int, _Turn]]]) -> None:
    for d in dialogs:
        order = orders[d.name]
        for i in range(len(order) - 1):
            if order[i][1].letter != order[i + 1][1].letter and order[i][0] < order[i + 1][0]:
                order[i], order[i + 1] = order[i + 1], order[i]
                return


def _ticks(t: int, width: int = 0) -> str:
    """Exact 4-decimal seconds from ticks; width 3 pads the integer part like the transcripts' %08.4f."""
    return f"{t // TICKS_PER_S:0{width}d}.{t % TICKS_PER_S:04d}"


def _transcript_line(t: _Turn) -> str:
    return f"{t.utt_id} [{_ticks(t.trans_start, 3)}-{_ticks(t.trans_end, 3)}]: {t.text}"


def plan_corpus(config: SynthConfig) -> CorpusPlan:
    """Decide everything but the audio samples. Deterministic in `config`; the format plays no part."""
    _validate(config)
    rng = np.random.default_rng([config.seed, 0])
    counts = _code_counts(config)
    total = sum(counts.values())
    n_dialogs = min(len(dialog_inventory()), max(MIN_DIALOGS, math.ceil(total / UTTS_PER_DIALOG)))
    dialogs = _seat_turns(_choose_dialogs(n_dialogs, rng), counts, rng)
    n_xx = _insert_xx_turns(dialogs, max(2, round(XX_RATE * total)), rng)
    _time_and_name(dialogs, config.mean_seconds, rng)
    turns = [t for d in dialogs for t in d.turns if t.labelled]
    _word_and_rate(dialogs, turns, config, rng)
    speech = _speak_and_time(dialogs, config) if config.speech == "espeak" else None
    for t in _pick(turns, TIME_MISMATCHES, rng):
        if rng.random() < 0.5:
            t.trans_start += 1 if rng.random() < 0.5 or t.start == 0 else -1
        else:
            t.trans_end += 1 if rng.random() < 0.5 else -1
    n_idless = _write_transcripts(dialogs, max(2, round(IDLESS_RATE * total)), rng)
    return CorpusPlan(config=config, dialogs=dialogs, xx_turns=n_xx, idless_lines=n_idless, speech=speech)


def _seat_turns(names: list[str], counts: dict[str, int], rng: np.random.Generator) -> list[_Dialog]:
    """Dialogs with their labelled turns: speaker sequence and code, shuffled over the whole corpus."""
    dialogs = [_Dialog(name=n, session=_session_of(n)) for n in names]
    codes = [c for c in ALL_CODES for _ in range(counts.get(c, 0))]
    rng.shuffle(codes)
    it = iter(codes)
    for d, size in zip(dialogs, _turns_per_dialog(names, len(codes))):
        d.turns = [_Turn(d.name, d.session, letter, next(it)) for letter in _speaker_sequence(size, rng)]
    _cover_speakers([t for d in dialogs for t in d.turns])
    return dialogs


def _insert_xx_turns(dialogs: list[_Dialog], n: int, rng: np.random.Generator) -> int:
    for i in range(n):
        letter = "FM"[i] if i < 2 else "FM"[int(rng.integers(2))]
        # The id grammar gives XX turns one digit (FXX0..FXX9), so a speaker gets at most ten per dialog.
        room = [d for d in dialogs if sum(1 for t in d.turns if not t.labelled and t.letter == letter) < 10]
        d = room[int(rng.integers(len(room)))]
        d.turns.insert(int(rng.integers(len(d.turns) + 1)), _Turn(d.name, d.session, letter, None))
    return n


def _time_and_name(dialogs: list[_Dialog], mean_s: float, rng: np.random.Generator) -> None:
    serial = 0
    for d in dialogs:
        _lay_out_times(d.turns, mean_s, rng)
        _number_turns(d)
        d.c_raters = tuple(f"E{x}" for x in sorted(rng.choice(6, size=3, replace=False) + 1))
        d.a_raters = tuple(sorted(str(r) for r in rng.choice(d.c_raters, size=2, replace=False)))
        d.self_rated = d.session in SELF_RATED_SESSIONS and rng.random() < SELF_RATED_P
        for t in d.turns:
            t.serial = serial
            serial += 1


def _word_and_rate(dialogs: list[_Dialog], turns: list[_Turn], config: SynthConfig,
                   rng: np.random.Generator) -> None:
    by_name = {d.name: d for d in dialogs}
    for t in turns:
        # oth and xxx have no emotion to carry, so neither view can be informative for them.
        carries = t.code in BANKS
        t.text_cue = bool(rng.random() < config.text_informative) and carries
        t.audio_cue = bool(rng.random() < config.audio_informative) and carries
        t.text = _compose(t.code, t.text_cue, rng)
        _rate(t, by_name[t.dialog], rng)
    for d in dialogs:
        for t in d.turns:
            if not t.labelled:
                t.text = _compose(None, False, rng) if rng.random() < 0.7 else "[GARBAGE]"
    _apply_text_quirks(turns, rng)
    _apply_rating_quirks(turns, by_name, rng)


def _write_transcripts(dialogs: list[_Dialog], n_idless: int, rng: np.random.Generator) -> int:
    """Lines in start order with a few inversions (at least one), then id-less lines like `M: sorry`."""
    orders = {}
    swaps = 0
    for d in dialogs:
        orders[d.name], n = _plan_transcript(d, rng)
        swaps += n
    if swaps == 0:
        _force_inversion(dialogs, orders)
    for d in dialogs:
        d.transcript = [_transcript_line(t) for _, t in orders[d.name]]
    for i in range(n_idless):
        d = dialogs[int(rng.integers(len(dialogs)))]
        letter, words = IDLESS_TEXTS[i % len(IDLESS_TEXTS)]
        d.transcript.insert(1 + int(rng.integers(len(d.transcript))), f"{letter}: {words}")
    return n_idless


def _validate(config: SynthConfig) -> None:
    if config.fmt not in FORMAT_SUFFIX:
        raise ConfigError(f"format {config.fmt!r} is not one of {', '.join(FORMAT_SUFFIX)}")
    if config.per_class < 1:
        raise ConfigError(f"per_class must be at least 1, got {config.per_class}")
    if not config.mean_seconds > 0:
        raise ConfigError(f"mean_seconds must be positive, got {config.mean_seconds}")
    if config.dropped_fraction < 0:
        raise ConfigError(f"dropped_fraction must be >= 0, got {config.dropped_fraction}")
    for name in ("text_informative", "audio_informative"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise ConfigError(f"{name} must lie in [0, 1], got {getattr(config, name)}")
    if config.speech not in SPEECH_MODES:
        raise ConfigError(f"speech {config.speech!r} is not one of {', '.join(SPEECH_MODES)}")
    if not config.root_name or "/" in config.root_name or "\\" in config.root_name \
            or config.root_name.startswith("."):
        raise ConfigError(f"root_name {config.root_name!r} must be a plain folder name")


# =========================================================================================================
# Text files
# =========================================================================================================

def _summary_vad(t: _Turn, a_raters: tuple[str, ...]) -> list[float]:
    """Mean of the evaluators' A- values (self ratings excluded); a missing dom leaves it out of the mean."""
    out = []
    for dim in range(3):
        vals = [t.attrs[r][dim] for r in a_raters if not (dim == 2 and t.dom_style.get(r) == "none")]
        out.append(sum(vals) / len(vals))
    return out


def _a_line(rater: str, vad: list[int], style: str | None, comment: str) -> str:
    v, a, d = vad
    dom = {None: f" dom  {d};", "one": f" dom {d};", "none": ""}[style]
    return f"A-{rater}:\tval {v}; act {a};{dom}\t({comment})"


def _emo_evaluation_text(d: _Dialog) -> str:
    """Header, blank line, then F blocks ascending and M blocks ascending, each followed by a blank line."""
    lines = [EMO_HEADER, ""]
    for t in sorted(d.labelled, key=lambda t: (t.letter, t.utt_id)):
        v, a, dm = _summary_vad(t, d.a_raters)
        lines.append(f"[{_ticks(t.start)} - {_ticks(t.end)}]\t{t.utt_id}\t{t.code}\t[{v:.4f}, {a:.4f}, {dm:.4f}]")
        for rater, labels in t.votes.items():
            lines.append(f"C-{rater}:\t{'; '.join(labels)};\t({t.c_comments.get(rater, '')})")
        for rater, vad in t.attrs.items():
            lines.append(_a_line(rater, vad, t.dom_style.get(rater), t.a_comments.get(rater, "")))
        lines.append("")
    return "\n".join(lines) + "\n"


def _transcript_text(d: _Dialog, crlf: bool, final_newline: bool) -> str:
    eol = "\r\n" if crlf else "\n"
    return eol.join(d.transcript) + (eol if final_newline else "")


def _categorical_files(d: _Dialog) -> dict[str, str]:
    """Per-rater files in the subfolder a recursive glob wrongly picks up; a rater's own first label only."""
    out = {}
    for rater in d.c_raters:
        rows = []
        for t in sorted(d.labelled, key=lambda t: t.utt_id):
            label = t.votes[rater][0]
            rows.append(f"{t.utt_id} :{'Neutral state' if label == 'Neutral' else label};"
                        + (" ()" if t.serial % 2 else ""))
        out[f"{d.name}_{rater.lower()}_cat.txt"] = "\n".join(rows) + "\n"
    return out


def _attribute_files(d: _Dialog) -> dict[str, str]:
    out = {}
    for rater in d.a_raters:
        rows = [f"{t.utt_id} :act {t.attrs[rater][1]}; :val {t.attrs[rater][0]}; :dom {t.attrs[rater][2]};"
                for t in sorted(d.labelled, key=lambda t: t.utt_id) if rater in t.attrs]
        out[f"{d.name}_{rater.lower()}_atr.txt"] = "\n".join(rows) + "\n"
    return out


def _self_evaluation_files(d: _Dialog) -> dict[str, str]:
    """Written for every dialog, so every session's Self-evaluation/ holds .txt files (checklist)."""
    out = {}
    for letter in "FM":
        rater = f"{letter}{d.session}"
        rows = []
        for t in sorted(d.labelled, key=lambda t: t.utt_id):
            if t.letter == letter:
                v, a, dm = t.attrs.get(rater, t.attrs[d.a_raters[0]])
                rows.append(f"{t.utt_id} :act {a}; :val {v}; :dom {dm};")
        out[f"{d.name}_{rater.lower()}_self.txt"] = "\n".join(rows) + "\n"
    return out


def _phseg(t: _Turn) -> str:
    frames = max(2, (t.end - t.start) // 100)  # 10 ms frames
    mid = frames // 2
    return ("\t SFrm\t EFrm\tSegAScr\tPhone\n"
            f"\t    0\t {mid - 1:4d}\t-{1000 + t.serial % 997}\tSIL\n"
            f"\t {mid:4d}\t {frames - 1:4d}\t-{2000 + t.serial % 991}\tAH\n"
            f" Total score:\t-{3000 + t.serial % 983}\n")


def _mocap_text(n_rows: int) -> str:
    rows = ["Frame# Time CH1 CH2 CH3", "-- placeholder motion capture, not real data --"]
    rows += [f"{i + 1} {i / 120:.4f} 0.0 0.0 0.0" for i in range(n_rows)]
    return "\n".join(rows) + "\n"


def _lab_text(d: _Dialog) -> str:
    return "".join(f"{_ticks(t.start)} {_ticks(t.end)} {t.utt_id}\n" for t in d.labelled)


README_TEXT = """IEMOCAP_full_release (synthetic stand-in)

This folder was generated by emocli.synth. It reproduces the on-disk layout of the IEMOCAP release
(sessions, dialogs, EmoEvaluation and transcription formats, sentence wavs) with invented speech-like
audio and invented transcripts. It is NOT the IEMOCAP corpus and contains none of its recordings.

Session1 ... Session5: dialog/ holds the per-dialog files (EmoEvaluation, transcriptions, wav, avi, lab,
MOCAP_*), sentences/ holds one wav per labelled turn and placeholder alignment and motion files.
"""
PHONEMES = ("AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH",
            "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "SIL", "T", "TH", "UH", "UW",
            "V", "W", "Y", "Z", "ZH")


def _documentation_files() -> dict[str, bytes]:
    words = sorted({w.strip(".,!?-").upper() for bank in (*BANKS.values(), FILLER) for s in bank for w in s.split()
                    if w.strip(".,!?-").isalpha()})
    dic = "".join(f"{w} {' '.join(PHONEMES[(ord(c) - 65) % len(PHONEMES)] for c in w[:4])}\n" for w in words)
    return {
        "corpus.dic": dic.encode(),
        "FIVE_face_markers2.png": _tiny_png(),
        "HumaineInfo.txt": b"Placeholder. The synthetic corpus has no Humaine annotation.\n",
        "phonemes.txt": ("\n".join(PHONEMES) + "\n").encode(),
        "timeinfo.txt": b"Times are in seconds from the start of each dialog wav, 4 decimals.\n",
    }


# =========================================================================================================
# Binary files
# =========================================================================================================

def apple_double() -> bytes:
    """An AppleDouble v2 file as macOS's tar leaves them: magic, "Mac OS X" filler, Finder info, empty fork."""
    finder_off, fork_off = 50, 3810
    head = struct.pack(">II", 0x00051607, 0x00020000) + b"Mac OS X        " + struct.pack(">H", 2)
    entries = struct.pack(">III", 9, finder_off, fork_off - finder_off) + \
        struct.pack(">III", 2, fork_off, APPLE_DOUBLE_BYTES - fork_off)
    finder = b"\x00" * 32 + b"ATTR" + b"\x00" * (fork_off - finder_off - 36)
    fork = struct.pack(">IIII", 0x100, 0x100, 0, 0x1E) + b"This resource fork intentionally left blank   "
    fork += b"\x00" * (APPLE_DOUBLE_BYTES - fork_off - len(fork))
    data = head + entries + finder + fork
    assert len(data) == APPLE_DOUBLE_BYTES
    return data


def _tiny_png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)  # 1x1, 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + \
        chunk(b"IEND", b"")


AVI_PLACEHOLDER = b"RIFF" + struct.pack("<I", 4) + b"AVI "


def wav_header(n_frames: int, channels: int = 1) -> bytes:
    """The canonical 44-byte RIFF/WAVE PCM header, 16 kHz 16-bit."""
    data_bytes = n_frames * channels * SAMPLE_BYTES
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, channels,
                       SAMPLE_RATE_HZ, SAMPLE_RATE_HZ * channels * SAMPLE_BYTES, channels * SAMPLE_BYTES,
                       8 * SAMPLE_BYTES, b"data", data_bytes)


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


# =========================================================================================================
# Audio: a cheap voiced-speech-like synthesiser whose prosody carries the emotion (when audio_cue)
# =========================================================================================================

@dataclass(frozen=True)
class Voice:
    f0_hz: float
    formant_scale: float  # vocal-tract length: F voices resonate higher
    tilt: float  # one-pole low-pass coefficient on the source: higher is duller
    breath: float  # aspiration noise, relative to the voiced part
    gain: float


@dataclass(frozen=True)
class Prosody:
    pitch: float  # x the voice's F0
    pitch_range: float  # relative F0 excursion
    rate_sps: float  # syllables per second
    loudness: float  # x the voice's gain
    harsh: float  # period-doubling roughness and noise, flatter spectrum
    breathy: float  # extra aspiration, weaker voicing
    lively_hz: float  # how fast the F0 contour moves
    pause_p: float  # share of silent syllables


# Moderately strong cues: neighbouring styles (ang/hap/exc, sad/neu) overlap once speaker and jitter are added.
STYLES: dict[str, Prosody] = {
    "neu": Prosody(1.00, 0.12, 4.2, 1.00, 0.00, 0.05, 1.5, 0.10),
    "ang": Prosody(1.22, 0.28, 5.4, 1.90, 0.35, 0.00, 2.5, 0.05),
    "hap": Prosody(1.28, 0.40, 4.9, 1.40, 0.04, 0.04, 3.5, 0.08),
    "exc": Prosody(1.32, 0.42, 5.2, 1.55, 0.08, 0.04, 3.8, 0.06),
    "sad": Prosody(0.86, 0.05, 3.0, 0.55, 0.00, 0.35, 0.8, 0.25),
    "fru": Prosody(1.08, 0.20, 4.6, 1.35, 0.20, 0.05, 1.8, 0.10),
    "sur": Prosody(1.35, 0.45, 4.4, 1.30, 0.00, 0.10, 3.0, 0.10),
    "fea": Prosody(1.30, 0.15, 5.6, 0.80, 0.05, 0.30, 5.0, 0.15),
    "dis": Prosody(0.95, 0.20, 3.6, 1.10, 0.15, 0.10, 1.5, 0.15),
}
# Without an audio cue the prosody is neutral-ish, drawn with a wider spread and independent of the label.
UNINFORMED = STYLES["neu"]
STYLE_JITTER = 0.12  # log-normal spread of each multiplicative parameter
UNINFORMED_JITTER = 0.2
ADDITIVE_JITTER = 0.04  # for harsh and breathy, whose neutral value is 0
VOWELS_HZ = ((730, 1090), (270, 2290), (300, 870), (530, 1840), (570, 840), (660, 1720))  # (F1, F2)
F3_HZ = 2500.0
BANDWIDTHS_HZ = (80.0, 100.0, 150.0)
DECLINATION = 0.12  # F0 falls by this share over an utterance
FADE_S = 0.03
LEVEL = 0.09  # RMS of a neutral utterance's voiced part before the syllable envelope
NOISE_FLOOR = 0.002  # room noise, so no file is digitally silent
MIN_F0_HZ = 50.0
NOISE_TABLE_LEN = 1 << 20  # 65 s of noise at 16 kHz
NOISE_TABLE_SEED = 20_080_101


def speaker_voices(seed: int) -> dict[str, Voice]:
    """Ten voices, F higher than M, each with its own pitch and timbre; fixed by the seed alone."""
    rng = np.random.default_rng([seed, 2])
    voices = {}
    for s in SESSIONS:
        for letter in "FM":
            female = letter == "F"
            voices[f"Ses0{s}{letter}"] = Voice(
                f0_hz=rng.uniform(180, 235) if female else rng.uniform(95, 135),
                formant_scale=rng.uniform(1.10, 1.22) if female else rng.uniform(0.92, 1.04),
                tilt=rng.uniform(0.6, 0.8), breath=rng.uniform(0.03, 0.10), gain=rng.uniform(0.8, 1.2))
    return voices


def _jittered(style: Prosody, spread: float, rng: np.random.Generator) -> Prosody:
    m = np.exp(rng.normal(0.0, spread, 6))
    add = rng.normal(0.0, ADDITIVE_JITTER, 2)
    return Prosody(style.pitch * m[0], style.pitch_range * m[1], style.rate_sps * m[2], style.loudness * m[3],
                   max(0.0, style.harsh + add[0]), max(0.0, style.breathy + add[1]), style.lively_hz * m[4],
                   float(np.clip(style.pause_p * m[5], 0.0, 0.5)))


def _resonator(freq_hz: float, bw_hz: float) -> tuple[float, np.ndarray]:
    """A two-pole resonance: (gain, denominator)."""
    r = math.exp(-math.pi * bw_hz / SAMPLE_RATE_HZ)
    theta = 2 * math.pi * min(freq_hz, 0.45 * SAMPLE_RATE_HZ) / SAMPLE_RATE_HZ
    return 1.0 - r, np.array([1.0, -2.0 * r * math.cos(theta), r * r])


def _vocal_tract(tilt: float, formants_hz: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Source tilt and the formant resonances as one filter: one lfilter pass costs what a two-pole one does."""
    gain, den = 1.0 - tilt, np.array([1.0, -tilt])
    for f, bw in zip(formants_hz, BANDWIDTHS_HZ):
        g, a = _resonator(f, bw)
        gain, den = gain * g, np.convolve(den, a)
    return np.array([gain], dtype=np.float32), den.astype(np.float32)


@lru_cache(maxsize=1)
def _noise_table() -> np.ndarray:
    # Slices of one fixed table at random offsets: drawing fresh Gaussian noise per sample costs more than
    # all the filtering, and the noise only has to sound like noise.
    return np.random.default_rng(NOISE_TABLE_SEED).standard_normal(NOISE_TABLE_LEN, dtype=np.float32)


def _noise(n: int, rng: np.random.Generator) -> np.ndarray:
    table = _noise_table()
    if n >= len(table):
        return np.resize(np.roll(table, -int(rng.integers(len(table)))), n)
    start = int(rng.integers(len(table) - n))
    return table[start:start + n]


def _unit_rms(x: np.ndarray) -> np.ndarray:
    return x / (float(np.sqrt(np.mean(x * x))) + 1e-9)


def render_speech(n: int, voice: Voice, code: str | None, rng: np.random.Generator) -> np.ndarray:
    """`n` float32 samples of babble with the voice's timbre and `code`'s prosody (None: uninformative)."""
    p = _jittered(STYLES[code], STYLE_JITTER, rng) if code else _jittered(UNINFORMED, UNINFORMED_JITTER, rng)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    two_pi = np.float32(2 * math.pi)
    t = np.arange(n, dtype=np.float32) / np.float32(SAMPLE_RATE_HZ)
    rates = (p.lively_hz * rng.uniform(0.6, 1.4, 2)).astype(np.float32)
    phases = rng.uniform(0, 2 * math.pi, 2).astype(np.float32)
    contour = (np.float32(0.65) * np.sin(two_pi * rates[0] * t + phases[0])
               + np.float32(0.35) * np.sin(two_pi * rates[1] * t + phases[1]))
    declination = np.float32(DECLINATION * SAMPLE_RATE_HZ / n)
    f0 = np.float32(voice.f0_hz * p.pitch) * (1 + np.float32(p.pitch_range) * contour - declination * t)
    np.maximum(f0, np.float32(MIN_F0_HZ), out=f0)
    cycles = np.cumsum(f0, dtype=np.float64) / SAMPLE_RATE_HZ  # float64: phase must not drift over 30 s
    whole = np.floor(cycles)
    source = (2.0 * (cycles - whole) - 1.0).astype(np.float32)  # a sawtooth: every harmonic, at 1/k
    if p.harsh > 0:  # alternate periods louder and softer: period doubling, the ear's "rough" voice
        odd = (whole.astype(np.int64) & 1).astype(np.float32)
        source *= 1.0 + np.float32(0.8 * p.harsh) * (2 * odd - 1)

    # Syllables: a smooth bump each, random strength, some silent; the vowel changes at the (silent) boundary.
    syl = t * np.float32(p.rate_sps) + np.float32(rng.uniform(0, 1))
    syl_start = np.floor(syl)
    idx = syl_start.astype(np.int32)
    n_syl = int(idx[-1]) + 1
    strength = rng.uniform(0.55, 1.0, n_syl).astype(np.float32)
    strength[rng.random(n_syl) < p.pause_p] = 0.03
    strength[idx[n // 2]] = 1.0  # never a silent middle: a short utterance could otherwise be all pause
    bump = np.sin(np.float32(math.pi) * (syl - syl_start))  # stays float32: float64 sin is 8x slower
    env = strength[idx] * bump * np.sqrt(bump)
    tilt = float(np.clip(voice.tilt - 0.5 * p.harsh, 0.2, 0.95))
    vowels = []
    for v in rng.choice(len(VOWELS_HZ), size=2, replace=False):
        f1, f2 = VOWELS_HZ[v]
        b, a = _vocal_tract(tilt, (f1 * voice.formant_scale, f2 * voice.formant_scale, F3_HZ * voice.formant_scale))
        vowels.append(_unit_rms(lfilter(b, a, source)))
    voiced = np.where((rng.random(n_syl) < 0.5)[idx], vowels[1], vowels[0])

    noise = _noise(n + 1, rng)
    aspiration = np.diff(noise)  # differenced white noise: energy rises with frequency, like breath
    hiss = np.float32(voice.breath + p.breathy + 0.6 * p.harsh)
    x = env * (np.float32(1.0 - 0.5 * min(p.breathy, 0.8)) * voiced + hiss * aspiration)
    fade = min(int(FADE_S * SAMPLE_RATE_HZ), n // 2)
    if fade:
        ramp = np.sin(np.linspace(0, np.pi / 2, fade, dtype=np.float32)) ** 2
        x[:fade] *= ramp
        x[n - fade:] *= ramp[::-1]
    x *= np.float32(LEVEL * voice.gain * p.loudness)
    x += np.float32(NOISE_FLOOR) * _noise(n, rng)
    return x.astype(np.float32, copy=False)


# ---- spoken: eSpeak NG reads the transcript, the emotion in its prosody ----------------------------------------

SPEECH_MODES = ("tones", "espeak")
# Ten English voices (eSpeak variants), five per gender: the corpus's ten speakers, assigned by the seed.
SPOKEN_VOICES = {"F": ("en-us+f1", "en-us+f2", "en+f3", "en-us+f4", "en+f5"),
                 "M": ("en-us+m1", "en+m2", "en-us+m3", "en+m4", "en-us+m7")}
NEUTRAL_WPM = 165.0
SPEECH_LEAD_S = (0.05, 0.25)  # silence before the words, when the turn is longer than its speech


@dataclass(frozen=True)
class SpokenVoice:
    name: str  # the eSpeak voice
    pitch: float  # the speaker's own eSpeak pitch (0-99) at neutral
    volume: float  # and loudness (eSpeak 0-200)


def spoken_voices(seed: int) -> dict[str, SpokenVoice]:
    rng = np.random.default_rng([seed, 4])
    voices = {}
    for letter in "FM":
        names = list(rng.permutation(SPOKEN_VOICES[letter]))
        for s, name in zip(SESSIONS, names):
            voices[f"Ses0{s}{letter}"] = SpokenVoice(str(name), rng.uniform(40, 60), rng.uniform(80, 110))
    return voices


def spoken_settings(voice: SpokenVoice, p: Prosody):
    """eSpeak's pitch, range, rate and volume from a prosody: log pitch ratios in eSpeak's 0-99 steps (about a
    semitone per 3), range linear in the F0 excursion, rate and loudness proportional."""
    from emocli.tts import SpeechSettings

    return SpeechSettings(voice=voice.name, rate_wpm=NEUTRAL_WPM * p.rate_sps / STYLES["neu"].rate_sps,
                          pitch=voice.pitch + 75.0 * math.log2(p.pitch), pitch_range=15.0 + 280.0 * p.pitch_range,
                          volume=voice.volume * p.loudness)


SPEECH_TAIL_S = 0.15  # silence after the words


class SpeechTable:
    """Every labelled turn's spoken words (int16, 16 kHz), by turn serial, in an unnamed temporary file: a corpus of
    hours is never held in memory."""

    def __init__(self) -> None:
        import tempfile

        self._file = tempfile.TemporaryFile()
        self._spans: dict[int, tuple[int, int]] = {}  # serial -> (sample offset, samples)
        self._end = 0
        self._view: np.ndarray | None = None

    def add(self, serial: int, pcm: np.ndarray) -> None:
        self._file.write(pcm.astype("<i2").tobytes())
        self._spans[serial] = (self._end, pcm.size)
        self._end += pcm.size

    def samples(self, serial: int) -> int:
        return self._spans[serial][1]

    def get(self, serial: int) -> np.ndarray:
        if self._view is None:
            self._file.flush()
            self._view = np.memmap(self._file, dtype="<i2", mode="r", shape=(max(self._end, 1),))
        start, n = self._spans[serial]
        return self._view[start:start + n].astype(np.float32) / np.float32(32768.0)


def _prosody_of(t: _Turn, seed: int) -> Prosody:
    rng = np.random.default_rng([seed, 1, t.serial])  # per turn: identical whatever the order
    code = t.code if t.audio_cue else None
    return _jittered(STYLES[code], STYLE_JITTER, rng) if code else _jittered(UNINFORMED, UNINFORMED_JITTER, rng)


def _speak_and_time(dialogs: list[_Dialog], config: SynthConfig) -> SpeechTable:
    """Speak every labelled turn (one fresh eSpeak process, plan order: deterministic), then lay the turns out again
    so each lasts as long as its words plus the longest lead and a tail, from a generator of their own (the rest of
    the plan is untouched; unlabelled turns keep drawn durations)."""
    from emocli.tts import speak_in_order

    voices = spoken_voices(config.seed)
    turns = [t for d in dialogs for t in d.turns if t.labelled]
    table = SpeechTable()
    jobs = ((t.text, spoken_settings(voices[t.speaker], _prosody_of(t, config.seed))) for t in turns)
    for t, pcm in zip(turns, speak_in_order(jobs)):
        table.add(t.serial, pcm)
    rng = np.random.default_rng([config.seed, 5])
    for d in dialogs:
        durations = {}
        for t in d.turns:
            if t.labelled:
                seconds = table.samples(t.serial) / SAMPLE_RATE_HZ + SPEECH_LEAD_S[1] + SPEECH_TAIL_S
                ticks = math.ceil(max(seconds, MIN_UTT_S) * TICKS_PER_S)
                durations[t.serial] = ticks + 1 if ticks % 5 == 0 else ticks
        _lay_out_times(d.turns, config.mean_seconds, rng, durations)
    return table


def render_spoken(n: int, t: _Turn, table: SpeechTable, seed: int) -> np.ndarray:
    """`n` samples: the turn's spoken words after a short lead, padded with room noise (the plan made `n` long
    enough for the words)."""
    rng = np.random.default_rng([seed, 6, t.serial])
    speech = table.get(t.serial)[:n]
    lead = min(int(rng.uniform(*SPEECH_LEAD_S) * SAMPLE_RATE_HZ), n - speech.size)
    x = np.float32(NOISE_FLOOR) * _noise(n, rng)
    x[lead:lead + speech.size] += speech
    return x


def _utterance_wav(t: _Turn, voice: Voice | SpeechTable, seed: int) -> bytes:
    n = (t.end - t.start) * SAMPLE_RATE_HZ // TICKS_PER_S
    if isinstance(voice, SpeechTable):
        return wav_header(n) + _pcm16(render_spoken(n, t, voice, seed))
    rng = np.random.default_rng([seed, 1, t.serial])  # per turn: identical whatever the write order
    return wav_header(n) + _pcm16(render_speech(n, voice, t.code if t.audio_cue else None, rng))


def _dialog_wav(seed: int, serial: int) -> bytes:
    n = int(DIALOG_WAV_S * SAMPLE_RATE_HZ)
    rng = np.random.default_rng([seed, 3, serial])
    stereo = (NOISE_FLOOR * 4 * rng.standard_normal((n, 2))).astype(np.float32)
    return wav_header(n, channels=2) + _pcm16(stereo)


# =========================================================================================================
# Writing: one streaming sink per format; members are added in one fixed order with fixed metadata
# =========================================================================================================

class _Sink(Protocol):
    def add_file(self, name: str, data: bytes) -> None: ...


class _MemberSink:
    """Adds each parent folder once, before its first member, so every format lists the same folders."""

    def __init__(self) -> None:
        self._dirs: set[str] = set()

    def add_file(self, name: str, data: bytes) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            folder = "/".join(parts[:i])
            if folder not in self._dirs:
                self._dirs.add(folder)
                self._dir(folder)
        self._file(name, data)

    def _dir(self, name: str) -> None:
        raise NotImplementedError

    def _file(self, name: str, data: bytes) -> None:
        raise NotImplementedError


class _TarSink(_MemberSink):
    def __init__(self, path: Path, gz: bool) -> None:
        super().__init__()
        self._raw = open(path, "wb")
        # filename="" and mtime=0 keep the temporary name and the clock out of the gzip header.
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, compresslevel=COMPRESS_LEVEL,
                                 mtime=0) if gz else None
        self._tar = tarfile.open(fileobj=self._gz or self._raw, mode="w", format=tarfile.PAX_FORMAT)

    def _info(self, name: str, kind: bytes, mode: int, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.size, info.mtime = kind, mode, size, FIXED_MTIME_S
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def _dir(self, name: str) -> None:
        self._tar.addfile(self._info(name, tarfile.DIRTYPE, 0o755, 0))

    def _file(self, name: str, data: bytes) -> None:
        self._tar.addfile(self._info(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()
        if self._gz is not None:
            self._gz.close()
        self._raw.close()


class _ZipSink(_MemberSink):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self._zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=COMPRESS_LEVEL)

    def _info(self, name: str, mode: int) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
        info.create_system = 3  # unix, whatever machine writes it
        info.external_attr = mode << 16
        return info

    def _dir(self, name: str) -> None:
        info = self._info(name + "/", 0o40755)
        info.external_attr |= 0x10  # MS-DOS directory flag
        self._zip.writestr(info, b"", compress_type=zipfile.ZIP_STORED)

    def _file(self, name: str, data: bytes) -> None:
        self._zip.writestr(self._info(name, 0o100644), data, compress_type=zipfile.ZIP_DEFLATED,
                           compresslevel=COMPRESS_LEVEL)

    def close(self) -> None:
        self._zip.close()


class _DirSink(_MemberSink):
    def __init__(self, root: Path) -> None:
        super().__init__()
        self._root = root

    def _dir(self, name: str) -> None:
        (self._root / name).mkdir()

    def _file(self, name: str, data: bytes) -> None:
        (self._root / name).write_bytes(data)

    def close(self) -> None:
        pass


@contextmanager
def _open_sink(out_dir: Path, fmt: str) -> Iterator[_MemberSink]:
    """Write under a temporary name and rename on success, so an interruption leaves no half corpus."""
    tmp = out_dir / f".synth-tmp-{os.getpid()}{FORMAT_SUFFIX[fmt]}"
    _remove(tmp)
    if fmt == "dir":
        tmp.mkdir()
        sink: _MemberSink = _DirSink(tmp)
    elif fmt == "zip":
        sink = _ZipSink(tmp)
    else:
        sink = _TarSink(tmp, gz=fmt in ("tar.gz", "tgz"))
    try:
        yield sink
        sink.close()
    except BaseException:
        try:
            sink.close()
        finally:
            _remove(tmp)
        raise
    if fmt == "dir":
        for entry in sorted(tmp.iterdir()):
            _remove(out_dir / entry.name)
            os.replace(entry, out_dir / entry.name)
        tmp.rmdir()
    else:
        target = out_dir / f"{RELEASE_NAME}{FORMAT_SUFFIX[fmt]}"
        if _same_bytes(tmp, target):
            tmp.unlink()  # keep the old file and its mtime: a cache fingerprinted on it stays valid
        else:
            os.replace(tmp, target)


def _same_bytes(a: Path, b: Path) -> bool:
    if not b.is_file() or a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            block_a, block_b = fa.read(1 << 20), fb.read(1 << 20)
            if block_a != block_b:
                return False
            if not block_a:
                return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _emit(sink: _Sink, plan: CorpusPlan) -> None:
    cfg = plan.config
    junk = apple_double() if cfg.apple_double else None
    top = cfg.root_name
    root = f"{top}/{RELEASE_NAME}" if cfg.nested_root else top
    if junk:
        # Next to the top folder, as in the release; a nested copy carries it inside its outer folder.
        sink.add_file(f"{top}/._{RELEASE_NAME}" if cfg.nested_root else f"._{top}", junk)
    sink.add_file(f"{root}/README.txt", README_TEXT.encode())
    for name, data in _documentation_files().items():
        sink.add_file(f"{root}/Documentation/{name}", data)
    voices = plan.speech if plan.speech is not None else speaker_voices(cfg.seed)
    for s in SESSIONS:
        dialogs = [d for d in plan.dialogs if d.session == s]
        base = f"{root}/Session{s}"
        _emit_dialog_folder(sink, base, dialogs, cfg, junk)
        for name, data in _rendered_ahead(_sentence_wavs(base, dialogs, junk, voices, cfg.seed)):
            sink.add_file(name, data)
        for d in dialogs:
            for t in sorted(d.labelled, key=lambda t: t.utt_id):
                sink.add_file(f"{base}/sentences/ForcedAlignment/{d.name}/{t.utt_id}.phseg", _phseg(t).encode())
        for kind in MOCAP_KINDS:
            for d in dialogs:
                if d.name in NO_MOCAP_DIALOGS:
                    continue
                for t in sorted(d.labelled, key=lambda t: t.utt_id)[:SENTENCE_MOCAP_PER_DIALOG]:
                    sink.add_file(f"{base}/sentences/{kind}/{d.name}/{t.utt_id}.txt", _mocap_text(3).encode())


def _sentence_wavs(base: str, dialogs: list[_Dialog], junk: bytes | None, voices: "dict[str, Voice] | SpeechTable",
                   seed: int) -> Iterator[tuple[str, Callable[[], bytes]]]:
    for d in dialogs:
        folder = f"{base}/sentences/wav/{d.name}"
        labelled = sorted(d.labelled, key=lambda t: t.utt_id)
        if junk and labelled:
            yield f"{folder}/._{labelled[0].utt_id}.wav", partial(bytes, junk)
        for t in labelled:
            voice = voices if isinstance(voices, SpeechTable) else voices[t.speaker]
            yield f"{folder}/{t.utt_id}.wav", partial(_utterance_wav, t, voice, seed)


def _rendered_ahead(members: Iterator[tuple[str, Callable[[], bytes]]]) -> Iterator[tuple[str, bytes]]:
    """Render the next wavs in threads while the current one is compressed and written, in the same order.

    numpy, scipy's lfilter and zlib release the GIL, so threads overlap the two halves of the work."""
    workers = max(1, min(RENDER_THREADS, os.cpu_count() or 1))
    _noise_table()  # built once here rather than twice by racing threads
    with ThreadPoolExecutor(max_workers=workers) as pool:
        window: deque[tuple[str, Future]] = deque()
        for name, make in members:
            window.append((name, pool.submit(make)))
            if len(window) > RENDER_AHEAD:
                first, job = window.popleft()
                yield first, job.result()
        while window:
            first, job = window.popleft()
            yield first, job.result()


def _emit_dialog_folder(sink: _Sink, base: str, dialogs: list[_Dialog], cfg: SynthConfig,
                        junk: bytes | None) -> None:
    emo = f"{base}/dialog/EmoEvaluation"
    for d in dialogs:
        if junk:
            sink.add_file(f"{emo}/._{d.name}.txt", junk)
        sink.add_file(f"{emo}/{d.name}.txt", _emo_evaluation_text(d).encode("ascii"))
    for sub, files in (("Categorical", _categorical_files), ("Attribute", _attribute_files),
                       ("Self-evaluation", _self_evaluation_files)):
        for d in dialogs:
            for name, text in files(d).items():
                sink.add_file(f"{emo}/{sub}/{name}", text.encode("ascii"))
    for d in dialogs:
        if junk:
            sink.add_file(f"{base}/dialog/transcriptions/._{d.name}.txt", junk)
        text = _transcript_text(d, cfg.crlf_transcripts, cfg.transcript_final_newline)
        sink.add_file(f"{base}/dialog/transcriptions/{d.name}.txt", text.encode("ascii"))
    for d in dialogs:
        if junk:
            sink.add_file(f"{base}/dialog/wav/._{d.name}.wav", junk)
        sink.add_file(f"{base}/dialog/wav/{d.name}.wav", _dialog_wav(cfg.seed, d.turns[0].serial))
    for d in dialogs:
        if junk:
            sink.add_file(f"{base}/dialog/avi/DivX/._{d.name}.avi", junk)
        sink.add_file(f"{base}/dialog/avi/DivX/{d.name}.avi", AVI_PLACEHOLDER)
    for d in dialogs:
        sink.add_file(f"{base}/dialog/lab/{d.name}.lab", _lab_text(d).encode())
    for kind in MOCAP_KINDS:
        for d in dialogs:
            if d.name not in NO_MOCAP_DIALOGS:
                sink.add_file(f"{base}/dialog/{kind}/{d.name}.txt", _mocap_text(5).encode())


def synthesize(out_dir: Path, config: SynthConfig) -> SynthTruth:
    """Write `out_dir/IEMOCAP_full_release.<fmt>` (or the folder `out_dir/<root_name>` for "dir") and
    `out_dir/synth-truth.json`. The same config gives a byte-identical archive."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # before the plan: a folder that cannot be made fails at once
    plan = plan_corpus(config)
    with _open_sink(out_dir, config.fmt) as sink:
        _emit(sink, plan)
    archive = out_dir / (config.root_name if config.fmt == "dir" else f"{RELEASE_NAME}{FORMAT_SUFFIX[config.fmt]}")
    truth = plan.truth(archive)
    tmp = out_dir / f".{TRUTH_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"config": asdict(config), **truth.to_json()}, indent=1) + "\n")
    os.replace(tmp, out_dir / TRUTH_FILE)
    return truth

"""A hand-written miniature of IEMOCAP_full_release, built from the format spec's verbatim examples.

Every quirk of spec §8 that the reader must survive is planted somewhere in it; EXPECTED says what a
correct reader returns. Independent of emocli's own synthetic generator on purpose: the reader is tested
against the spec, not against another piece of our code.
"""

from __future__ import annotations

import io
import os
import tarfile
import wave
import zipfile
from pathlib import Path

ROOT_NAME = "IEMOCAP_full_release"
HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
# AppleDouble magic and filler: not text, not a wav.
APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02" + b"\x00" * 40


def block(start: str, end: str, utt: str, code: str, vad: str = "2.5000, 2.5000, 2.5000",
          raters: str = "C-E2:\tNeutral;\t()\nC-E3:\tNeutral;\t()\nC-E4:\tNeutral;\t()\n"
                        "A-E3:\tval 3; act 2; dom  2;\t()\nA-E4:\tval 2; act 3; dom  3;\t()\n") -> str:
    """One EmoEvaluation block: summary line, rater lines, then the one blank line that ends a block."""
    return f"[{start} - {end}]\t{utt}\t{code}\t[{vad}]\n{raters}\n"


# Verbatim spec §4.2 blocks (neu F000 with self-evaluation, ang F019, xxx F003).
F000_BLOCK = ("[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n"
              "C-E2:\tNeutral;\t()\nC-E3:\tNeutral;\t()\nC-E4:\tNeutral;\t()\nC-F1:\tNeutral;\t(curious)\n"
              "A-E3:\tval 3; act 2; dom  2;\t()\n"
              "A-E4:\tval 2; act 3; dom  3;\t(mildly aggravated but staying polite, attitude)\n"
              "A-F1:\tval 3; act 2; dom  1;\t()\n\n")
F019_BLOCK = ("[140.2250 - 145.6000]\tSes01F_impro05_F019\tang\t[1.5000, 4.0000, 4.5000]\n"
              "C-E1:\tAnger;\t()\nC-E3:\tAnger;\t()\nC-E4:\tAnger;\t()\nC-F1:\tAnger;\t()\n"
              "A-E3:\tval 2; act 4; dom  4;\t()\nA-E4:\tval 1; act 4; dom  5;\t(threatening, belligerent)\n"
              "A-F1:\tval 1; act 5; dom  5;\t()\n\n")
F003_BLOCK = ("[19.2900 - 20.7875]\tSes01F_impro01_F003\txxx\t[2.5000, 3.0000, 3.0000]\n"
              "C-E2:\tNeutral;\t()\nC-E3:\tFrustration;\t()\nC-E4:\tAnger;\t()\nC-F1:\tFrustration; Anger;\t()\n"
              "A-E3:\tval 2; act 3; dom  3;\t()\nA-E4:\tval 3; act 3; dom  3;\t()\n\n")

# File contents by path under the root. Block order is F then M (spec §4.1), transcripts chronological.
TEXT_FILES: dict[str, str | bytes] = {
    "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt": (
        HEADER + F000_BLOCK
        + block("10.0100", "11.3925", "Ses01F_impro01_F001", "exc", "3.5000, 3.0000, 3.0000")
        + F003_BLOCK
        + block("7.5712", "10.4750", "Ses01F_impro01_M000", "sad", "0.5000, 5.5000, 3.0000")  # VAD outliers
        + block("10.9266", "14.6649", "Ses01F_impro01_M001", "fru")
        + block("20.0000", "22.5000", "Ses01F_impro01_M002", "hap")),
    "Session1/dialog/EmoEvaluation/Ses01F_impro05.txt": (
        HEADER + F019_BLOCK
        + block("150.0000", "151.5000", "Ses01F_impro05_M000", "oth")
        + block("152.0000", "153.5000", "Ses01F_impro05_M001", "dis")),
    # Per-rater subfolders: a recursive glob would find a "label" for F002 here.
    "Session1/dialog/EmoEvaluation/Categorical/Ses01F_impro01_e2_cat.txt": (
        "Ses01F_impro01_F002 :Neutral state; ()\n"
        "[14.8872 - 18.0175]\tSes01F_impro01_F002\tneu\t[2.5000, 2.5000, 2.5000]\n"),
    "Session1/dialog/EmoEvaluation/Attribute/Ses01F_impro01_e2_atr.txt":
        "Ses01F_impro01_F002 :act 4; :val 3; :dom 2;\n",
    "Session1/dialog/EmoEvaluation/Self-evaluation/Ses01F_impro01_f1_1.txt":
        "Ses01F_impro01_F002 :act 4; :val 3; :dom 1;\n",
    # AppleDouble twins: if read, they would duplicate F000 with another label and text.
    "Session1/dialog/EmoEvaluation/._Ses01F_impro01.txt":
        APPLE_DOUBLE + b"\n[6.2901 - 8.2357]\tSes01F_impro01_F000\tang\t[2.5000, 2.5000, 2.5000]\n",
    "Session1/dialog/transcriptions/._Ses01F_impro01.txt":
        APPLE_DOUBLE + b"\nSes01F_impro01_F000 [006.2901-008.2357]: Not this.\n",
    "Session1/dialog/transcriptions/Ses01F_impro01.txt": (
        "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.\n"
        "Ses01F_impro01_M000 [007.5712-010.4751]: Do you have your forms?\n"  # 0.1 ms off the label file
        "Ses01F_impro01_F001 [010.0100-011.3925]: Yeah.  [laughter] Sure.\n"
        "Ses01F_impro01_M001 [010.9266-014.6649]: Let me see them.\n"
        "Ses01F_impro01_F002 [014.8872-018.0175]: Is there a problem?\n"
        "M: sorry\n"
        "Ses01F_impro01_FXX0 [018.1000-018.9000]: Hmm.\n"
        "\n"
        "Ses01F_impro01_F003 [019.2900-020.7875]: Who told you to get in this line?\n"
        "Ses01F_impro01_M002 [020.0000-022.5000]: [GARBAGE]\n"),
    "Session1/dialog/transcriptions/Ses01F_impro05.txt": (
        "Ses01F_impro05_F019 [140.2250-145.6000]: You're not listening to me.\n"
        "Ses01F_impro05_M000 [150.0000-151.5000]: What?\n"
        "Ses01F_impro05_M001 [152.0000-153.5000]: Ugh.\n"),
    # Dialog suffix a/b, CRLF everywhere, no final newline in a transcript.
    "Session3/dialog/EmoEvaluation/Ses03M_impro05a.txt": (
        HEADER + block("1.0000", "2.5000", "Ses03M_impro05a_F000", "ang", "1.5000, 4.0000, 4.0000")
        + block("2.0000", "4.0000", "Ses03M_impro05a_M000", "neu")).replace("\n", "\r\n"),
    "Session3/dialog/transcriptions/Ses03M_impro05a.txt": (
        "Ses03M_impro05a_F000 [001.0000-002.5000]: I said [garbage] no.\r\n"
        "Ses03M_impro05a_M000 [002.0000-004.0000]: Okay."),
    "Session3/dialog/EmoEvaluation/Ses03M_impro05b.txt": (
        HEADER + block("3.0000", "4.0000", "Ses03M_impro05b_F000", "sur")
        + block("5.0000", "6.0000", "Ses03M_impro05b_M000", "hap")),
    "Session3/dialog/transcriptions/Ses03M_impro05b.txt": (
        "Ses03M_impro05b_F000 [003.0000-004.0000]: Oh!\n"
        "Ses03M_impro05b_M000 [005.0000-006.0000]: Right.\n"),
    # Literal TAB in the text (Ses05F_impro04_M018 in the real corpus); a latin-1 junk line.
    "Session5/dialog/EmoEvaluation/Ses05F_impro04.txt": (
        HEADER + block("80.0000", "83.0000", "Ses05F_impro04_M018", "sad")),
    "Session5/dialog/transcriptions/Ses05F_impro04.txt": (
        b"Ses05F_impro04_M018 [080.0000-083.0000]: Well\tI don't know.\n"
        b"F: caf\xe9\n"),
    "Session5/dialog/EmoEvaluation/Ses05M_script01_1b.txt": (
        HEADER + block("1.5000", "2.5000", "Ses05M_script01_1b_F000", "neu")
        + block("2.0000", "3.0000", "Ses05M_script01_1b_M000", "exc")),
    "Session5/dialog/transcriptions/Ses05M_script01_1b.txt": (
        "Ses05M_script01_1b_F000 [001.5000-002.5000]: Hello.\n"
        "Ses05M_script01_1b_M000 [002.0000-003.0000]: Hi  there.\n"),
}

# Every labelled id has a wav; F002 too (bait for the Categorical file); the XX turn has none.
WAV_IDS = (
    "Ses01F_impro01_F000", "Ses01F_impro01_F001", "Ses01F_impro01_F002", "Ses01F_impro01_F003",
    "Ses01F_impro01_M000", "Ses01F_impro01_M001", "Ses01F_impro01_M002",
    "Ses01F_impro05_F019", "Ses01F_impro05_M000", "Ses01F_impro05_M001",
    "Ses03M_impro05a_F000", "Ses03M_impro05a_M000", "Ses03M_impro05b_F000", "Ses03M_impro05b_M000",
    "Ses05F_impro04_M018", "Ses05M_script01_1b_F000", "Ses05M_script01_1b_M000",
)

# Files the reader must never need: video, mocap, dialog audio, AppleDouble junk.
OTHER_FILES: dict[str, bytes] = {
    "README.txt": b"IEMOCAP release\n",
    "Documentation/timeinfo.txt": b"time\n",
    "Session1/dialog/avi/DivX/Ses01F_impro01.avi": b"RIFF....AVI " + b"\x00" * 64,
    "Session1/dialog/avi/DivX/._Ses01F_impro01.avi": APPLE_DOUBLE,
    "Session1/dialog/wav/Ses01F_impro01.wav": b"RIFF" + b"\x00" * 60,
    "Session1/dialog/wav/._Ses01F_impro01.wav": APPLE_DOUBLE,
    "Session1/dialog/MOCAP_head/Ses01F_impro01.txt": b"Frame# Time\n",
    "Session1/sentences/MOCAP_head/Ses01F_impro01/Ses01F_impro01_F000.txt": b"Frame# Time\n",
    "Session1/sentences/ForcedAlignment/Ses01F_impro01/Ses01F_impro01_F000.phseg": b"SFrm EFrm\n",
    "Session1/sentences/wav/Ses01F_impro01/._Ses01F_impro01_F000.wav": APPLE_DOUBLE,
}

# (utt_id, label, raw_label, speaker, session, text with tags kept, text with tags stripped)
EXPECTED = (
    ("Ses01F_impro01_F000", "neu", "neu", "Ses01F", "Ses01", "Excuse me.", "Excuse me."),
    ("Ses01F_impro01_F001", "hap", "exc", "Ses01F", "Ses01", "Yeah. [LAUGHTER] Sure.", "Yeah. Sure."),
    ("Ses01F_impro01_M000", "sad", "sad", "Ses01M", "Ses01", "Do you have your forms?", "Do you have your forms?"),
    ("Ses01F_impro01_M002", "hap", "hap", "Ses01M", "Ses01", "[GARBAGE]", ""),
    ("Ses01F_impro05_F019", "ang", "ang", "Ses01F", "Ses01", "You're not listening to me.",
     "You're not listening to me."),
    ("Ses03M_impro05a_F000", "ang", "ang", "Ses03F", "Ses03", "I said [GARBAGE] no.", "I said no."),
    ("Ses03M_impro05a_M000", "neu", "neu", "Ses03M", "Ses03", "Okay.", "Okay."),
    ("Ses03M_impro05b_M000", "hap", "hap", "Ses03M", "Ses03", "Right.", "Right."),
    ("Ses05F_impro04_M018", "sad", "sad", "Ses05M", "Ses05", "Well I don't know.", "Well I don't know."),
    ("Ses05M_script01_1b_F000", "neu", "neu", "Ses05F", "Ses05", "Hello.", "Hello."),
    ("Ses05M_script01_1b_M000", "hap", "exc", "Ses05M", "Ses05", "Hi there.", "Hi there."),
)
EXPECTED_DROPPED = {"label xxx dropped": 1, "label fru dropped": 1, "label oth dropped": 1,
                    "label dis dropped": 1, "label sur dropped": 1}
EXPECTED_LINE_COUNTS = {"transcript XX turn (no label)": 1, "transcript line without id": 2}


def write_wav(path: Path, seconds: float = 0.05, rate: int = 16000) -> None:
    """A real 16 kHz 16-bit mono PCM wav with a canonical 44-byte header, as in the release."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x01\x00" * int(seconds * rate))


def wav_rel(utt: str) -> str:
    dialog = utt.rsplit("_", 1)[0]
    return f"Session{utt[4]}/sentences/wav/{dialog}/{utt}.wav"


def write_file(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))


def build_corpus(dest: Path, top: str = ROOT_NAME) -> Path:
    """Write the miniature corpus as `dest/top` (top may be nested, e.g. 'A/A'); return that root."""
    root = dest / top
    for rel, content in {**TEXT_FILES, **OTHER_FILES}.items():
        write_file(root / rel, content)
    for utt in WAV_IDS:
        write_wav(root / wav_rel(utt))
    write_file(dest / f"._{top.split('/')[0]}", APPLE_DOUBLE)  # the release's top-level AppleDouble file
    return root


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def make_tar(folder: Path, out: Path, compression: str = "gz") -> Path:
    """Archive everything under `folder` with member names relative to it, directories included."""
    with tarfile.open(out, f"w:{compression}") as tar:
        for name in sorted(os.listdir(folder)):
            tar.add(folder / name, arcname=name)
    return out


def make_zip(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in _files(folder):
            zf.write(path, path.relative_to(folder).as_posix())
    return out


def zip_with_member_data_zeroed(folder: Path, out: Path) -> bytes:
    """A zip of `folder` whose directory is intact but one member's compressed data starts with 8 zero bytes."""
    source = make_zip(folder, out)
    with zipfile.ZipFile(source) as zf:
        info = zf.getinfo(f"{ROOT_NAME}/Session1/dialog/transcriptions/Ses01F_impro01.txt")
    data = bytearray(source.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)  # past the local header
    data[start + 2:start + 10] = bytes(8)
    return bytes(data)


def tar_with_extra(folder: Path, out: Path, extra: tarfile.TarInfo, data: bytes | None = None,
                   compression: str = "gz") -> Path:
    """A good archive of `folder` with one more member appended after all the good ones."""
    with tarfile.open(out, f"w:{compression}") as tar:
        for name in sorted(os.listdir(folder)):
            tar.add(folder / name, arcname=name)
        tar.addfile(extra, io.BytesIO(data) if data is not None else None)
    return out


def zip_with_extra(folder: Path, out: Path, extra: zipfile.ZipInfo, data: bytes = b"x") -> Path:
    make_zip(folder, out)
    with zipfile.ZipFile(out, "a") as zf:
        zf.writestr(extra, data)
    return out

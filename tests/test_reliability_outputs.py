"""Outputs never replace what emocli did not write (issue 13, items 1, 4 and 10): the source archive or a manifest
given as --cache, a transcripts table given as --output, a symlink planted under a temporary's name; a rewritten
file keeps its permissions."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest

from emocli import atomic, cache
from emocli.synth import SynthConfig, synthesize
from test_reliability_common import assert_refused, cli


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    truth = synthesize(tmp_path_factory.mktemp("synth"), SynthConfig(per_class=3, seed=5, mean_seconds=0.6))
    return Path(truth.archive)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prepare_never_replaces_its_own_source_or_a_foreign_file(archive, tiny_bert_dir, tmp_path):
    before = digest(archive)
    assert_refused(cli("prepare", archive, "--cache", archive, "--text-model", tiny_bert_dir), "corpus source itself")
    assert digest(archive) == before
    for name, content in (("notes.h5", b"my own notes"), ("manifest.csv", b"id,path,label\n")):
        foreign = tmp_path / name
        foreign.write_bytes(content)
        assert_refused(cli("prepare", archive, "--cache", foreign, "--text-model", tiny_bert_dir),
                       "not an emocli cache")
        assert foreign.read_bytes() == content
    # An emocli cache is replaced as before (here by the same content: a hit; another setting rebuilds it).
    ours = tmp_path / "cache.h5"
    assert cli("prepare", archive, "--cache", ours, "--text-model", tiny_bert_dir, "--json").exit_code == 0
    assert cache.is_emocli_cache(ours)
    assert cli("prepare", archive, "--cache", ours, "--text-model", tiny_bert_dir, "--n-mels", "64",
               "--json").exit_code == 0


def test_a_planted_symlink_under_the_temporary_name_is_not_written_through(tmp_path):
    target, victim = tmp_path / "out.json", tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, atomic.temporary_name(target))
    atomic.write_bytes_atomic(target, b"{}")
    assert victim.read_text() == "precious" and target.read_bytes() == b"{}" and not target.is_symlink()


def test_a_rewritten_file_keeps_its_mode(tmp_path):
    target = tmp_path / "private.json"
    atomic.write_bytes_atomic(target, b"1")
    target.chmod(0o600)
    atomic.write_bytes_atomic(target, b"2")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and target.read_bytes() == b"2"


def test_predict_output_never_replaces_its_transcripts_or_a_foreign_file(tmp_path):
    from emocli.errors import ConfigError
    from emocli.predict import check_output_path

    table = tmp_path / "t.csv"
    table.write_text("id,text\na,hello\n")
    with pytest.raises(ConfigError, match="one of the command's inputs"):
        check_output_path(table, [table])
    other = tmp_path / "mine.csv"
    other.write_text("name,score\nx,1\n")
    with pytest.raises(ConfigError, match="not a predictions file emocli wrote"):
        check_output_path(other)
    ours = tmp_path / "p.jsonl"
    ours.write_text('{"id": "a", "file": "a.wav", "text": null, "label": "ang", "audio_only": true}\n')
    check_output_path(ours)  # an earlier emocli output may be replaced
    assert table.read_text() == "id,text\na,hello\n" and other.read_text() == "name,score\nx,1\n"


# --------------------------------------------------------------------------------------------- items 7, 8, 9


def test_training_stops_on_a_non_finite_loss_and_keeps_the_last_good_checkpoint(tiny_bert_dir, tmp_path):
    import h5py
    import numpy as np

    from test_train import make_cache

    path = make_cache(tmp_path / "cache.h5", tiny_bert_dir)
    with h5py.File(path, "a") as h5:  # a hand-damaged cache: NaN features
        h5["spec"][:100] = np.nan
    result = cli("train", path, "--run", tmp_path / "run", "--modality", "audio", "--audio-width", "0.0625",
                 "--epochs", "2", "--protocol", "loso", "--batch-size", "8", "--json")
    assert_refused(result, "training diverged", "epoch 1 of fold loso-Ses02")
    assert not list((tmp_path / "run").rglob("checkpoint.safetensors"))  # nothing from the diverged epoch
    assert_refused(cli("train", path, "--run", tmp_path / "run2", "--lr", "inf"), "lr must be a positive finite")
    assert_refused(cli("train", path, "--run", tmp_path / "run3", "--gamma", "inf"), "gamma must be a positive finite")


def test_csv_cells_that_a_spreadsheet_would_run_are_made_inert(tmp_path):
    import csv

    from emocli.predict import Prediction, write_predictions

    out = tmp_path / "p.csv"
    rows = [Prediction("=HYPERLINK(\"x\")", Path("+a.wav"), "-1 said @me", "ang", {"ang": 0.9, "hap": 0.1}, False)]
    write_predictions(rows, ("ang", "hap"), out)
    (row,) = csv.DictReader(out.open(newline=""))
    assert row["id"] == "'=HYPERLINK(\"x\")" and row["file"] == "'+a.wav" and row["text"] == "'-1 said @me"
    assert row["p_ang"] == "0.9" and row["label"] == "ang"


def test_terminal_escapes_in_names_and_texts_are_shown_escaped():
    from emocli.cli import one_line

    shown = one_line("clear\x1b[2J and clipboard\x1b]52;c;ZXZpbA==\x07 C1\x9b31m tab\tkept")
    assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown and "\\x1b[2J" in shown
    assert "\t" in shown


# --------------------------------------------------------------------------------------------- items 5, 15


def test_a_first_train_interrupted_before_config_json_can_be_rerun(tiny_bert_dir, tmp_path):
    """kill -9 between copying text_model/ and writing config.json left a folder the same command refused forever."""
    from test_train import make_cache

    path = make_cache(tmp_path / "cache.h5", tiny_bert_dir)
    run = tmp_path / "run"
    (run / "text_model").mkdir(parents=True)
    for name in ("vocab.txt", "config.json"):
        (run / "text_model" / name).write_bytes((tiny_bert_dir / name).read_bytes())
    args = ("train", path, "--run", run, "--protocol", "loso", "--epochs", "1", "--audio-width", "0.0625",
            "--freeze-text", "--json")
    assert cli(*args).exit_code == 0
    assert (run / "config.json").is_file()
    # A folder holding anything else is still not taken over.
    other = tmp_path / "other"
    (other / "text_model").mkdir(parents=True)
    (other / "text_model" / "my-thesis.tex").write_text("mine")
    assert_refused(cli(*args[:3], other, *args[4:]), "is not an emocli run")


def test_fold_names_in_a_run_config_never_become_paths_outside_the_run(tiny_bert_dir, tmp_path):
    import json

    from test_train import make_cache

    path = make_cache(tmp_path / "cache.h5", tiny_bert_dir)
    run = tmp_path / "run"
    assert cli("train", path, "--run", run, "--protocol", "loso", "--epochs", "1", "--audio-width", "0.0625",
               "--freeze-text", "--json").exit_code == 0
    config = json.loads((run / "config.json").read_text())
    for bad in ("../../outside", "/etc", ".."):
        (run / "config.json").write_text(json.dumps({**config, "folds": [bad]}))
        assert_refused(cli("eval", run), "is not one emocli makes")


def test_impossible_paths_and_infinite_seconds_are_one_line_before_any_work(archive, tiny_bert_dir, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    common = ("--text-model", tiny_bert_dir)
    assert_refused(cli("prepare", archive, "--cache", a_file / "c.h5", *common), "is a file, not a folder")
    assert_refused(cli("prepare", archive, "--cache", tmp_path / "c.h5", "--workdir", a_file, *common),
                   "is a file, not a folder")
    assert_refused(cli("prepare", archive, "--cache", tmp_path / "c.h5", "--max-seconds", "inf", *common),
                   "finite")
    assert a_file.read_text() == "x" and not (tmp_path / "c.h5").exists()


# --------------------------------------------------------------------------------------------- item 6


def test_a_utf16_emoevaluation_file_is_read_and_a_file_without_labels_is_counted(tmp_path):
    from emocli.corpus.iemocap import decode_text, parse_emo_evaluation

    text = ("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
            "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n")
    for codec in ("utf-16", "utf-16-be", "utf-32"):
        data = text.encode(codec) if codec != "utf-16-be" else b"\xfe\xff" + text.encode(codec)
        entries, problems = parse_emo_evaluation(decode_text(data), "x.txt")
        assert [e.utt_id for e in entries] == ["Ses01F_impro01_F000"] and not problems, codec
    assert decode_text("café".encode("utf-8")) == "café" and decode_text("café".encode("latin-1")) == "café"


def test_every_label_file_that_yields_nothing_is_reported(tmp_path):
    from emocli.corpus.iemocap import ReaderConfig, read_iemocap
    from emocli.synth import SynthConfig, synthesize

    truth = synthesize(tmp_path / "s", SynthConfig(per_class=2, seed=7, fmt="dir", mean_seconds=0.5))
    root = Path(truth.archive)
    label_files = sorted(p for p in root.glob("Session1/dialog/EmoEvaluation/*.txt") if not p.name.startswith("._"))
    label_files[0].write_text("just some notes\n")
    report = read_iemocap(root, ReaderConfig(), tmp_path / "work")
    assert report.skipped["label file without labels"] == 1
    assert any(label_files[0].name in p and "no label line" in p for p in report.problems)


# --------------------------------------------------------------------------------------------- item 14


@pytest.fixture
def small_run(tiny_bert_dir, tmp_path) -> Path:
    from test_train import make_cache

    path = make_cache(tmp_path / "cache.h5", tiny_bert_dir)
    assert cli("train", path, "--run", tmp_path / "run", "--protocol", "loso", "--epochs", "1", "--audio-width",
               "0.0625", "--freeze-text", "--json").exit_code == 0
    return tmp_path / "run"


def test_eval_shows_its_report_even_when_the_run_folder_cannot_be_written(small_run, monkeypatch):
    from emocli import evaluate
    from emocli.errors import EmocliError

    def read_only(path, data):
        raise EmocliError(f"cannot write {path}: Read-only file system; the previous version, if any, is intact")

    monkeypatch.setattr(evaluate, "write_bytes_atomic", read_only)
    result = cli("eval", small_run)
    assert result.exit_code == 1 and "mean ± std" in result.stdout  # the scores were shown
    assert_refused(result, "Read-only file system")


def test_eval_interrupted_while_plotting_leaves_the_previous_report_whole(small_run, monkeypatch):
    from emocli import evaluate

    assert cli("eval", small_run).exit_code == 0
    before = {p.name: p.read_bytes() for p in small_run.glob("*.*") if p.suffix in (".json", ".png")}

    def interrupted(figure):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "_png", interrupted)
    result = cli("eval", small_run)
    assert result.exit_code == 130
    assert {p.name: p.read_bytes() for p in small_run.glob("*.*") if p.suffix in (".json", ".png")} == before


# --------------------------------------------------------------------------------------------- item 13: hand-edited caches


@pytest.mark.parametrize("edit, words", [
    (lambda h5: h5["labels"].__setitem__(0, 7), "labels outside the 4 classes"),
    (lambda h5: h5["labels"].__setitem__(0, -1), "labels outside the 4 classes"),
    (lambda h5: h5["spec_offsets"].__setitem__(3, 10**9), "offsets"),
    (lambda h5: h5["input_ids"].__setitem__((0, 0), -5), "negative token ids"),
    (lambda h5: h5["attention_mask"].__setitem__((0, 0), 3), "mask other than 0/1"),
    (lambda h5: h5["input_ids"].__setitem__((0, 0), 10**6), "beyond the text model's vocabulary"),
    (lambda h5: h5.attrs.__delitem__("inputs"), "not a readable emocli cache"),
    (lambda h5: h5.attrs.__delitem__("emocli_cache"), "not an emocli cache"),
    (lambda h5: h5.__delitem__("durations"), "is damaged"),
], ids=["label-too-big", "label-negative", "offsets", "token-id", "mask", "token-id-past-vocab", "no-inputs",
        "no-marker", "no-durations"])
def test_a_hand_edited_cache_is_one_line_for_train_and_eval(small_run, tmp_path, edit, words):
    import shutil

    import h5py

    path = tmp_path / "edited.h5"
    shutil.copy(tmp_path / "cache.h5", path)  # the cache small_run was trained on
    with h5py.File(path, "a") as h5:
        edit(h5)
    assert_refused(cli("train", path, "--run", tmp_path / "run2", "--protocol", "loso", "--json"), words)
    assert not (tmp_path / "run2").exists()
    assert_refused(cli("eval", small_run, "--cache", path), words)


# --------------------------------------------------------------------------------------------- item 13: the filesystem says no


def test_a_cache_or_work_folder_that_cannot_be_written_is_one_line_before_any_work(archive, tiny_bert_dir, tmp_path,
                                                                                   monkeypatch):
    common = ("--text-model", tiny_bert_dir, "--n-mels", 64, "--workers", 1)
    assert cli("prepare", archive, "--cache", tmp_path / "ok" / "c.h5", *common).exit_code == 0
    locked = {tmp_path / "ro"}
    (tmp_path / "ro").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) not in locked and real_access(path, mode))
    assert_refused(cli("prepare", archive, "--cache", tmp_path / "ro" / "c.h5", *common), "folder", "not writable")
    assert_refused(cli("prepare", archive, "--cache", tmp_path / "c.h5", "--workdir", tmp_path / "ro" / "w", *common),
                   "--workdir", "not writable")
    locked.add(tmp_path / "ok")  # an up-to-date cache in a read-only folder is still served
    assert cli("prepare", archive, "--cache", tmp_path / "ok" / "c.h5", *common).exit_code == 0
    assert_refused(cli("prepare", archive, "--cache", tmp_path / "ok" / "c.h5", *common, "--labels", "4class-noexc"),
                   "not writable")
    assert list((tmp_path / "ro").iterdir()) == [] and not (tmp_path / "c.h5").exists()


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied", "/data/x"),
                                   OSError(28, "No space left on device", "/data/x"),
                                   OSError(30, "Read-only file system", "/data/x")])
def test_what_the_filesystem_refuses_anywhere_is_one_line_and_exit_1(tmp_path, monkeypatch, error):
    from emocli import synth

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(synth, "synthesize", refuse)
    assert_refused(cli("synth", tmp_path / "s", "--per-class", 1), "cannot use /data/x", error.strerror)


def test_a_bug_is_still_an_internal_error(tmp_path, monkeypatch):
    from emocli import synth

    def bug(*args, **kwargs):
        raise OSError(5, "Input/output error")  # not something the user's paths explain

    monkeypatch.setattr(synth, "synthesize", bug)
    result = cli("synth", tmp_path / "s", "--per-class", 1)
    assert result.exit_code == 2 and "internal error" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to act as another user")
def test_read_only_folders_as_an_unprivileged_user_are_one_line(archive, tiny_bert_dir, tmp_path):
    """The real thing, not a patched os.access: run the CLI as `nobody` against folders it cannot write."""
    import subprocess
    import sys

    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                            "import emocli"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("nobody cannot run this interpreter (its folder is private)")
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="emocli-nobody-"))  # pytest's own tmp folders are private to root
    try:
        _as_nobody_in(base, archive, tiny_bert_dir)
    finally:
        shutil.rmtree(base)


def _as_nobody_in(base: Path, archive: Path, tiny_bert_dir: Path) -> None:
    import subprocess
    import sys

    base.chmod(0o755)
    shutil.copy(archive, base / archive.name)
    shutil.copytree(tiny_bert_dir, base / "bert")
    for path in (base / archive.name, *(base / "bert").rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    (base / "bert").chmod(0o755)
    archive, tiny_bert_dir = base / archive.name, base / "bert"
    ro = base / "ro"
    ro.mkdir(mode=0o555)

    def as_nobody(*args) -> subprocess.CompletedProcess:
        return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                               "emocli", *map(str, args)], capture_output=True, text=True,
                              env={**os.environ, "HOME": str(ro), "OMP_NUM_THREADS": "1"})

    for args, words in [(("prepare", archive, "--cache", ro / "c.h5", "--text-model", tiny_bert_dir), "not writable"),
                        (("synth", ro / "s", "--per-class", 1), "Permission denied")]:
        result = as_nobody(*args)
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1 and len(errors) == 1 and words in errors[0], (result.returncode, errors)
    assert list(ro.iterdir()) == []


def test_version_and_usage_errors_through_the_real_entry_point():
    """`python -m emocli` as a user runs it: --version, and click's usage errors as one line with exit 1."""
    import subprocess
    import sys

    from emocli import __version__

    def run(*args):
        return subprocess.run([sys.executable, "-m", "emocli", *args], capture_output=True, text=True)

    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"emocli {__version__}"
    for args, words in [(("train", "x.h5", "--epochs", "0"), "--epochs"), (("nosuch",), "No such command"),
                        (("prepare", "x.csv", "--max-seconds", "nan"), "--max-seconds"), (("predict",), "Missing")]:
        result = run(*args)
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1 and len(errors) == 1 and errors[0].startswith("error:"), (args, result.stderr)
        assert words in errors[0] and "--help" in errors[0]

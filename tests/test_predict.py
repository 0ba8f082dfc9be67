"""`emocli predict` through the real CLI on tiny runs trained once for this module from a generated corpus:
inputs and transcripts, the output files, audio-only prediction, batch invariance, the shared feature path,
bad files and bad input."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from emocli import bundle
from emocli.cli import app
from emocli.errors import EmocliError
from emocli.features import FeatureConfig, audio_features, to_float16
from emocli.model import ModelConfig, ModifiedAlexNet
from emocli.predict import Predictor, collect_inputs, write_predictions
from emocli.prepare import PrepareConfig, prepare
from emocli.synth import SynthConfig, synthesize
from emocli.train import TrainConfig, train

runner = CliRunner()
FEATURES = FeatureConfig(n_mels=64, max_tokens=16)  # not the defaults (128 mel bins): predict must read the run's
TINY_TRAIN = TrainConfig(repeats=1, epochs=2, batch_size=8, lr=3e-3, device="cpu")
CLASSES = ("angry", "happy", "sad", "neutral")  # predictions name classes as eval does
N_WITH_TEXT = 6  # of the input folder's files, these have a <name>.txt beside them


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth"), SynthConfig(per_class=10, seed=1, fmt="dir", mean_seconds=0.8))


@pytest.fixture(scope="module")
def cache_file(corpus, tiny_bert_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache") / "cache.h5"
    prepare(corpus.archive, path, PrepareConfig(text_model=str(tiny_bert_dir), features=FEATURES, workers=1))
    return path


def _train(cache_file: Path, bert_dir: Path, folder: Path, modality: str) -> Path:
    config = ModelConfig(n_mels=FEATURES.n_mels, modality=modality, audio_width=0.0625, text_model=str(bert_dir),
                         text_hidden=32, fusion_hidden=16, freeze_text=True,
                         modality_dropout=0.5 if modality == "both" else 0.0)
    train(cache_file, folder / "run", config, TINY_TRAIN)
    return folder / "run"


@pytest.fixture(scope="module")
def run(cache_file, tiny_bert_dir, tmp_path_factory) -> Path:
    return _train(cache_file, tiny_bert_dir, tmp_path_factory.mktemp("both"), "both")


@pytest.fixture(scope="module")
def text_run(cache_file, tiny_bert_dir, tmp_path_factory) -> Path:
    return _train(cache_file, tiny_bert_dir, tmp_path_factory.mktemp("text"), "text")


@pytest.fixture(scope="module")
def audio_run(cache_file, tiny_bert_dir, tmp_path_factory) -> Path:
    return _train(cache_file, tiny_bert_dir, tmp_path_factory.mktemp("audio"), "audio")


def _sentence_wavs(corpus) -> list[Path]:
    root = Path(corpus.archive)
    return sorted(p for p in root.glob("Session*/sentences/wav/*/*.wav") if not p.name.startswith("._"))


@pytest.fixture(scope="module")
def inputs(corpus, tmp_path_factory) -> Path:
    """12 recordings of various lengths in nested folders, plus one shorter than AlexNet's 63 frames; the first
    N_WITH_TEXT have a transcript beside them."""
    folder = tmp_path_factory.mktemp("inputs")
    for k, wav in enumerate(_sentence_wavs(corpus)[:12]):
        target = folder / ("top" if k < 4 else f"deep/er{k % 2}") / wav.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(wav, target)
        if k < N_WITH_TEXT:
            target.with_suffix(".txt").write_text(corpus.texts[wav.stem] + "\n", encoding="utf-8")
    audio, rate = sf.read(_sentence_wavs(corpus)[12], dtype="float32")
    sf.write(folder / "short.wav", audio[: int(0.3 * rate)], rate, subtype="PCM_16")  # 30 frames < 63
    return folder


def _wav_ids(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*.wav")}


# --------------------------------------------------------------------------------------------- helpers


def invoke(*args):
    """`emocli predict ARGS`, without speech recognition unless a test asks for it (tests/test_asr.py does): these
    tests pin what the model does with and without a transcript."""
    args = [str(a) for a in args]
    return runner.invoke(app, ["predict", *args, *([] if "--asr" in args else ["--asr", "off"])])


def read_rows(path: Path) -> dict[str, dict]:
    """id -> row of a .jsonl or .csv output, probabilities as floats."""
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    for row in rows:
        for c in CLASSES:
            row[f"p_{c}"] = float(row[f"p_{c}"])
    return {row["id"]: row for row in rows}


def probs(row: dict) -> np.ndarray:
    return np.array([row[f"p_{c}"] for c in CLASSES])


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_refused(result, *words: str) -> None:
    """Bad input: exit 1, one line on stderr naming the problem, no traceback."""
    lines = stderr_lines(result)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert all(w in lines[0] for w in words), lines
    assert "Traceback" not in result.stdout + result.stderr
    assert isinstance(result.exception, SystemExit)


def write_wav(path: Path, audio: np.ndarray, rate: int = 16_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, rate, subtype="PCM_16")
    return path


# --------------------------------------------------------------------------------------------- inputs and outputs


def test_folder_with_sidecar_transcripts_writes_csv_with_every_class(run, inputs, tmp_path):
    out = tmp_path / "preds.csv"
    result = invoke(run, inputs, "--output", out)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stderr == ""
    rows = read_rows(out)
    assert set(rows) == _wav_ids(inputs)  # recursive, ids are paths relative to the folder
    header = ["id", "file", "start", "end", "text", "text_source", "asr_confidence", "label", "audio_only",
              *[f"p_{c}" for c in CLASSES]]
    assert list(next(iter(rows.values()))) == header
    with_text = {p.relative_to(inputs).with_suffix(".wav").as_posix(): p for p in inputs.rglob("*.txt")}
    assert len(with_text) == N_WITH_TEXT
    for item_id, row in rows.items():
        assert Path(row["file"]) == inputs / item_id
        p = probs(row)
        assert p.sum() == pytest.approx(1.0, abs=1e-5) and row["label"] == CLASSES[int(p.argmax())]
        if item_id in with_text:
            assert row["text"] == " ".join(with_text[item_id].read_text(encoding="utf-8").split())
            assert row["audio_only"] == "False" and row["text_source"] == "given"
        else:
            assert row["text"] == "" and row["audio_only"] == "True" and row["text_source"] == "none"
        assert row["start"] == row["end"] == ""  # short files are whole utterances
    assert f"{len(rows)} prediction(s)" in result.stdout and "p(angry)" in result.stdout  # the table
    assert "(audio only)" in result.stdout


def test_one_file_with_text_writes_jsonl(run, inputs, tmp_path):
    wav = sorted(inputs.rglob("*.wav"))[-1]
    result = invoke(run, wav, "--text", "  I am   so angry  ", "--output", tmp_path / "one.jsonl")
    assert result.exit_code == 0, result.stderr
    (row,) = read_rows(tmp_path / "one.jsonl").values()
    assert row["id"] == wav.name and row["text"] == "I am so angry" and row["audio_only"] is False
    assert row["file"] == str(wav) and set(row) >= {f"p_{c}" for c in CLASSES}


def test_transcripts_file_by_stem_or_relative_path(run, inputs, tmp_path):
    wavs = sorted(inputs.rglob("*.wav"))
    ids = [wavs[0].stem, wavs[1].relative_to(inputs).as_posix(), wavs[2].relative_to(inputs).with_suffix("").as_posix()]
    texts = ["so happy, really", "I hate this", "whatever"]  # the comma is quoted by the csv writer
    table = tmp_path / "t.csv"
    with open(table, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([("id", "text"), *zip(ids, texts)])
    tsv = tmp_path / "t.tsv"
    tsv.write_text("id\ttext\n" + "".join(f"{i}\t{t}\n" for i, t in zip(ids, texts)), encoding="utf-8")
    for transcripts in (table, tsv):
        out = tmp_path / f"{transcripts.suffix[1:]}.jsonl"
        result = invoke(run, inputs, "--transcripts", transcripts, "--output", out)
        assert result.exit_code == 0, result.stderr
        rows = read_rows(out)
        got = {item_id: row["text"] for item_id, row in rows.items() if row["text"] is not None}
        # The table replaces the sidecars: only its three files have a transcript.
        assert got == {w.relative_to(inputs).as_posix(): t for w, t in zip(wavs, texts)}


def test_missing_transcript_is_predicted_from_audio_with_the_learned_embedding(run, inputs, tmp_path):
    import torch

    wav = next(w for w in sorted(inputs.rglob("*.wav")) if not w.with_suffix(".txt").exists())
    without, with_text = tmp_path / "without.jsonl", tmp_path / "with.jsonl"
    assert invoke(run, wav, "--output", without).exit_code == 0
    assert invoke(run, wav, "--text", "I am furious", "--output", with_text).exit_code == 0
    (row,) = read_rows(without).values()
    assert row["audio_only"] is True and row["text"] is None
    # Reference: the model fed audio alone, which substitutes its learned missing-text embedding.
    model, config, _ = bundle.load_model(run)
    spec, _ = audio_features(wav, config.features)
    feats = to_float16(spec.T).astype(np.float32)  # (T, F), rounded as the cache stores training data
    with torch.inference_mode():
        logits = model(audio=torch.from_numpy(feats)[None], audio_lengths=torch.tensor([len(feats)])).logits
    np.testing.assert_allclose(probs(row), torch.softmax(logits, -1)[0].numpy(), atol=2e-6)
    (texted,) = read_rows(with_text).values()
    assert texted["audio_only"] is False
    assert np.abs(probs(texted) - probs(row)).max() > 1e-4  # the transcript, when there, is used


# --------------------------------------------------------------------------------------------- batching


def test_batch_size_does_not_change_results_through_the_cli(run, inputs, tmp_path):
    results = {}
    for batch_size in (1, 3, 32):
        out = tmp_path / f"b{batch_size}.jsonl"
        assert invoke(run, inputs, "--batch-size", batch_size, "--output", out).exit_code == 0
        results[batch_size] = read_rows(out)
    for batch_size in (3, 32):
        assert list(results[batch_size]) == list(results[1])  # same order too
        for item_id, row in results[1].items():
            # 2e-6: the file rounds to 6 decimals
            np.testing.assert_allclose(probs(results[batch_size][item_id]), probs(row), rtol=0, atol=2e-6)
            assert results[batch_size][item_id]["label"] == row["label"]


def test_batches_equal_one_at_a_time_whatever_the_order_and_padding(run, inputs):
    import torch

    predictor = Predictor.from_run(run, device="cpu")
    items = collect_inputs(inputs)
    lengths = {len(predictor.features(i)) for i in items}
    assert len(lengths) > 5 and min(lengths) < 63  # real padding, and AlexNet's minimum, are exercised
    alone = {i.id: np.array(list(r.probs.values())) for i in items for r in predictor.predict([i], batch_size=1)}
    rng = np.random.default_rng(0)
    for order in (items[::-1], [items[k] for k in rng.permutation(len(items))]):
        for batch_size in (3, 32):
            results = list(predictor.predict(order, batch_size=batch_size))
            assert [r.id for r in results] == [i.id for i in order]
            for r in results:
                np.testing.assert_allclose(np.array(list(r.probs.values())), alone[r.id], rtol=0, atol=1e-6)
    # The tolerance has teeth: the same batch with its padding left unmasked gives other numbers.
    specs = [predictor.features(i) for i in items[:3]]  # (T, F) each
    padded = torch.zeros(3, max(len(s) for s in specs), FEATURES.n_mels)
    for k, s in enumerate(specs):
        padded[k, : len(s)] = torch.from_numpy(s.astype(np.float32))
    with torch.inference_mode():
        unmasked = torch.softmax(predictor.model(audio=padded).logits, -1).numpy()
    assert max(np.abs(unmasked[k] - alone[items[k].id]).max() for k in range(3)) > 1e-5


def test_predictor_runs_the_cnn_channels_last_with_the_saved_models_results(run, inputs):
    """NHWC convolutions (25 % faster on CPU) are a layout, not another model: same probabilities as the
    weights loaded as saved."""
    import torch

    from emocli.bundle import load_model

    predictor = Predictor.from_run(run, device="cpu")
    convs = [m.weight for m in predictor.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    as_saved = load_model(run, None, "cpu")[0]
    assert all(m.weight.is_contiguous() for m in as_saved.modules() if isinstance(m, torch.nn.Conv2d))
    items = collect_inputs(inputs)[:6]
    specs = [predictor.features(i) for i in items]
    padded = torch.zeros(len(specs), max(len(s) for s in specs), FEATURES.n_mels)
    for k, s in enumerate(specs):
        padded[k, : len(s)] = torch.from_numpy(s.astype(np.float32))
    lengths = torch.tensor([len(s) for s in specs])
    with torch.inference_mode():
        fast, plain = (torch.softmax(m(audio=padded, audio_lengths=lengths).logits, -1) for m in (predictor.model,
                                                                                                   as_saved))
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------- the feature path


@contextlib.contextmanager
def audio_inputs():
    """Every (spec, lengths) ModifiedAlexNet receives, whoever built the model."""
    import torch

    seen = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: seen.append((args[0].clone(), args[1].clone())) if isinstance(module, ModifiedAlexNet)
        else None)
    try:
        yield seen
    finally:
        hook.remove()


def test_stereo_44k_copy_goes_through_the_prepare_feature_path(run, corpus, tmp_path):
    import librosa

    wavs = _sentence_wavs(corpus)
    original, other = wavs[0], wavs[1]
    x, rate = sf.read(original, dtype="float32")
    o, _ = sf.read(other, dtype="float32")
    o = np.resize(o, x.shape)
    up = lambda a: librosa.resample(a, orig_sr=rate, target_sr=44_100, res_type="soxr_hq")  # noqa: E731
    # Left and right differ, but their mean is the original: taking one channel would not pass.
    copy = write_wav(tmp_path / "stereo44k.wav", np.stack([up(x + 0.25 * o), up(x - 0.25 * o)], axis=1), 44_100)
    assert sf.info(copy).channels == 2
    run_features = bundle.open_run(run).config.features
    assert run_features == FEATURES
    rows, specs = {}, {}
    for wav in (original, copy, other):
        with audio_inputs() as seen:
            assert invoke(run, wav, "--output", tmp_path / f"{wav.stem}.jsonl").exit_code == 0
        ((spec, lengths),) = seen
        specs[wav.stem] = spec[0, :, : int(lengths[0])].numpy()
        (rows[wav.stem],) = read_rows(tmp_path / f"{wav.stem}.jsonl").values()
        # Exactly prepare's features, with the run's settings, rounded to float16 as the cache stores them.
        np.testing.assert_array_equal(specs[wav.stem], to_float16(audio_features(wav, run_features)[0]))
    a, b, c = specs[original.stem], specs[copy.stem], specs[other.stem]
    assert a.shape == b.shape and a.shape[0] == FEATURES.n_mels
    assert np.abs(a - b).mean() < 0.5  # dB: resampling there and back costs a little
    assert np.abs(a[:, : c.shape[1]] - c[:, : a.shape[1]]).mean() > 5.0  # another recording is far away
    np.testing.assert_allclose(probs(rows[copy.stem]), probs(rows[original.stem]), atol=1e-3)


# --------------------------------------------------------------------------------------------- bad files


def test_bad_files_get_one_line_each_and_the_rest_is_predicted(run, corpus, tmp_path):
    folder = tmp_path / "mixed"
    (folder / "ok").mkdir(parents=True)
    good = [Path(shutil.copy(w, folder / "ok" / w.name)) for w in _sentence_wavs(corpus)[:3]]
    write_wav(folder / "bad" / "too_short.wav", np.full(800, 0.1, dtype=np.float32))  # 0.05 s < 0.1 s
    write_wav(folder / "bad" / "silent.wav", np.zeros(16_000, dtype=np.float32))
    (folder / "bad" / "notes.wav").write_text("this is not audio\n")
    (folder / "bad" / "empty.wav").write_bytes(b"")
    (folder / "bad" / "gone.wav").symlink_to(folder / "nowhere.wav")  # unreadable: a dangling link
    (folder / "readme.md").write_text("not an audio suffix: ignored, not reported\n")
    out = tmp_path / "out.csv"
    result = invoke(run, folder, "--output", out)
    assert result.exit_code == 1
    lines = stderr_lines(result)
    bad = {"too_short": "too short", "silent": "silent", "notes": "not a readable audio file",
           "empty": "empty file", "gone": "cannot read"}
    for name, reason in bad.items():
        (line,) = [line for line in lines if f"bad/{name}.wav" in line]
        assert line.startswith(f"skipped bad/{name}.wav: ") and reason in line, line
    assert len(lines) == len(bad) + 1 and "5 of 8 file(s) could not be predicted" in lines[-1]
    assert "Traceback" not in result.stderr
    assert set(read_rows(out)) == {f"ok/{g.name}" for g in good}


# --------------------------------------------------------------------------------------------- single-view runs


def test_text_only_run_refuses_files_without_transcript_one_by_one(text_run, inputs, tmp_path):
    silent_with_text = write_wav(tmp_path / "in" / "silent.wav", np.zeros(16_000, dtype=np.float32))
    silent_with_text.with_suffix(".txt").write_text("a transcript is all a text model reads", encoding="utf-8")
    shutil.copytree(inputs, tmp_path / "in", dirs_exist_ok=True)
    out = tmp_path / "out.jsonl"
    result = invoke(text_run, tmp_path / "in", "--output", out)
    assert result.exit_code == 1
    without = _wav_ids(inputs) - {p.relative_to(inputs).with_suffix(".wav").as_posix() for p in inputs.rglob("*.txt")}
    lines = stderr_lines(result)
    for item_id in without:
        (line,) = [line for line in lines if f"skipped {item_id}:" in line]
        assert "text-only" in line
    rows = read_rows(out)
    assert set(rows) == _wav_ids(tmp_path / "in") - without  # the silent file too: its audio is never read
    assert all(row["audio_only"] is False and row["text"] for row in rows.values())


def test_audio_only_run_ignores_transcripts(audio_run, inputs, tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("id,text\n" + "".join(f"{p.stem},I am furious\n" for p in inputs.rglob("*.wav")), encoding="utf-8")
    plain, texted = tmp_path / "plain.csv", tmp_path / "texted.csv"
    assert invoke(audio_run, inputs, "--output", plain).exit_code == 0
    assert invoke(audio_run, inputs, "--transcripts", table, "--output", texted).exit_code == 0
    a, b = read_rows(plain), read_rows(texted)
    assert list(a) == list(b) == sorted(_wav_ids(inputs))
    for item_id in a:
        np.testing.assert_array_equal(probs(a[item_id]), probs(b[item_id]))
        assert b[item_id]["text"] == "" and b[item_id]["audio_only"] == "True"


# --------------------------------------------------------------------------------------------- bad input


def _copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run_copy"))


def _drop_weights(run: Path) -> None:
    for weights in (run / "folds").glob("*/model.safetensors"):
        weights.unlink()


def _drop_result(run: Path) -> None:
    for result in (run / "folds").glob("*/result.json"):
        result.unlink()


def _future_format(run: Path) -> None:
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "format_version": 99}))


def _no_config(run: Path) -> None:
    (run / "config.json").unlink()


@pytest.mark.parametrize("damage, words", [
    (_drop_weights, ("model.safetensors", "incomplete")),
    (_drop_result, ("not finished",)),
    (_future_format, ("run format 99",)),
    (_no_config, ("config.json",)),
])
def test_incomplete_or_incompatible_run_is_refused(run, inputs, tmp_path, damage, words):
    broken = _copy_run(run, tmp_path)
    damage(broken)
    out = tmp_path / "out" / "preds.csv"
    out.parent.mkdir()
    assert_refused(invoke(broken, inputs, "--output", out), *words)
    assert list(out.parent.iterdir()) == []  # no output, no leftover temporary


def test_run_that_does_not_exist_is_refused(inputs, tmp_path):
    assert_refused(invoke(tmp_path / "nothing", inputs), "no run at")


def test_empty_folder_is_refused(run, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("no audio here")
    assert_refused(invoke(run, tmp_path / "empty"), "no audio files")


@pytest.mark.parametrize("content, words", [
    ("id,text\nno_such_file,hello\n".encode(), ("no_such_file", "matches no audio file")),
    ("id,text\nshort,caf\u00e9 cr\u00e8me\n".encode("latin-1"), ("not UTF-8",)),
    (b"name,words\nshort,hello\n", ("id and text",)),
    (b"id,text\nshort,hello, there\n", ("line 2", "quote")),
])
def test_bad_transcripts_file_is_refused(run, inputs, tmp_path, content, words):
    table = tmp_path / "t.csv"
    table.write_bytes(content)
    previous = tmp_path / "preds.csv"
    earlier = "id,file,text,label,audio_only,p_ang\nx,x.wav,,ang,True,1.0\n"  # an earlier emocli output
    previous.write_text(earlier)
    assert_refused(invoke(run, inputs, "--transcripts", table, "--output", previous), str(table), *words)
    assert previous.read_text() == earlier  # untouched, not half-replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.csv", "t.csv"]


def test_transcript_id_naming_two_files_is_refused(run, inputs, tmp_path):
    folder = Path(shutil.copytree(inputs, tmp_path / "in"))
    shutil.copy(folder / "short.wav", folder / "top" / "short.wav")
    table = tmp_path / "t.csv"
    table.write_text("id,text\nshort,hello\n", encoding="utf-8")
    assert_refused(invoke(run, folder, "--transcripts", table), "'short' matches 2 files")


@contextlib.contextmanager
def read_only(folder: Path):
    """A folder nobody can write to: permission bits, and for root (whom they do not bind) the immutable flag."""
    folder.chmod(0o555)
    immutable = os.geteuid() == 0 and shutil.which("chattr") is not None and \
        subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    try:
        try:
            (folder / "probe").touch()
        except OSError:
            yield folder
        else:
            (folder / "probe").unlink()
            pytest.skip("cannot make a folder read-only here (root without chattr)")
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_unwritable_output_is_refused_before_any_work(run, inputs, tmp_path):
    assert_refused(invoke(run, inputs, "--output", tmp_path / "missing" / "p.csv"), "does not exist")
    assert_refused(invoke(run, inputs, "--output", tmp_path / "p.txt"), ".csv or .jsonl")
    (tmp_path / "dir.csv").mkdir()
    assert_refused(invoke(run, inputs, "--output", tmp_path / "dir.csv"), "is a folder")
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        assert_refused(invoke(run, inputs, "--output", locked / "p.csv"), "not writable")
        assert list(locked.iterdir()) == []


@pytest.mark.parametrize("args, words", [
    (["--text", "hello"], ("--text goes with a single file",)),
    (["--device", "tpu"], ("'tpu' is not one of", "'cuda'")),
])
def test_contradictory_options_are_refused(run, inputs, args, words):
    assert_refused(invoke(run, inputs, *args), *words)


def test_a_failed_write_leaves_no_file(run, inputs, tmp_path):
    predictor = Predictor.from_run(run, device="cpu")
    predictions = list(predictor.predict(collect_inputs(sorted(inputs.rglob("*.wav"))[0])))
    target = tmp_path / "taken.csv"
    target.mkdir()  # rename onto a folder fails after the rows were written
    with pytest.raises(EmocliError, match="cannot write"):
        write_predictions(predictions, predictor.classes, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.csv"] and not any(target.iterdir())


def test_predict_loads_neither_transformers_nor_dynamo(run, inputs):
    """The cold-start budget (bench/RESULTS.md): transformers' import is ~4 s, torch._dynamo's ~1.5 s; predicting
    with a plain-BERT run needs neither, in a fresh process as the CLI runs it."""
    import sys

    code = ("import sys; from pathlib import Path; from emocli.predict import Predictor, collect_inputs; "
            f"p = Predictor.from_run(Path({str(run)!r}), device='cpu'); "
            f"items = collect_inputs(Path({str(inputs)!r})); "
            "out = list(p.predict(items, batch_size=4)); assert len(out) == len(items); "
            "print(sorted(m for m in ('transformers', 'torch._dynamo') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


# --------------------------------------------------------------------------------------------- issue 13, item 11


def test_a_broken_transcript_fails_its_file_alone_and_an_unreadable_folder_is_reported(run, inputs, tmp_path,
                                                                                     monkeypatch):
    import os as os_module

    folder = Path(shutil.copytree(inputs, tmp_path / "in"))
    wav = sorted((folder / "top").glob("*.wav"))[0]
    wav.with_suffix(".txt").write_bytes(b"caf\xe9 latin-1")  # not UTF-8
    real_walk = os_module.walk

    def walk(top, onerror=None, **kwargs):  # as root, chmod cannot make a folder unreadable: the walk is told so
        for entry in real_walk(top, onerror=onerror, **kwargs):
            if Path(entry[0]).name == "er1":
                onerror(PermissionError(13, "Permission denied", entry[0]))
                entry[1][:] = []
                continue
            yield entry

    monkeypatch.setattr("emocli.predict.os.walk", walk)
    out = tmp_path / "p.jsonl"
    result = invoke(run, folder, "--output", out)
    assert result.exit_code == 1
    rows = read_rows(out)
    expected = {p.relative_to(folder).as_posix() for p in folder.rglob("*.wav") if "er1" not in p.parts} - {
        wav.relative_to(folder).as_posix()}
    assert set(rows) == expected  # every other file predicted
    err = result.stderr
    assert f"skipped top/{wav.name}" in err and "not UTF-8" in err
    assert "skipped deep/er1/" in err and "Permission denied" in err


def test_transcript_ids_match_file_names_in_either_unicode_form(run, tmp_path, inputs):
    import unicodedata

    folder = tmp_path / "in"
    folder.mkdir()
    source = sorted(inputs.rglob("*.wav"))[0]
    nfd = unicodedata.normalize("NFD", "café")  # as macOS writes file names
    shutil.copy(source, folder / f"{nfd}.wav")
    table = tmp_path / "t.csv"
    table.write_text(f"id,text\n{unicodedata.normalize('NFC', 'café')},I am so angry\n", encoding="utf-8")
    out = tmp_path / "p.jsonl"
    assert invoke(run, folder, "--transcripts", table, "--output", out).exit_code == 0
    (row,) = read_rows(out).values()
    assert row["text"] == "I am so angry" and row["audio_only"] is False


def test_json_lines_on_stdout_equal_the_jsonl_output(run, inputs, tmp_path):
    """`predict --json`: one JSON object per file on stdout and nothing else there; the same records as --output."""
    out = tmp_path / "p.jsonl"
    result = invoke(run, inputs, "--json", "--output", out)
    assert result.exit_code == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert printed == [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(printed) == len(_wav_ids(inputs)) and "wrote" in result.stderr

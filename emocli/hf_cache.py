"""A Hugging Face model id (`bert-base-uncased`, `facebook/wav2vec2-base`) found in the local hub cache, offline.

huggingface_hub's cache layout (https://huggingface.co/docs/huggingface_hub/guides/manage-cache):
    {root}/models--{org}--{name}/refs/main          the commit `main` pointed to at the last download
    {root}/models--{org}--{name}/snapshots/{commit}/ that commit's files, symlinks into ../../blobs/
Only this layout is read: nothing is downloaded and huggingface_hub is not imported (it reads the environment once, at
its import; this module reads it on every call, so a changed HF_HUB_CACHE is seen).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# huggingface_hub's validate_repo_id: an optional "org/" then a name, of word characters, "-" and "."; a path such as
# "./x", "/x" or "a/b/c" is never an id.
_REPO_ID = re.compile(r"^(?:\b[\w.-]+\b/)?\b[\w.-]+\b$")
_MAX_ID_LENGTH = 96  # characters, as huggingface_hub allows


def cache_root() -> Path:
    """The hub cache, in huggingface_hub's precedence: HF_HUB_CACHE, the legacy HUGGINGFACE_HUB_CACHE, HF_HOME/hub,
    XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub."""
    root = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if not root:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
        root = os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(root)))


def is_model_id(name: str) -> bool:
    return (len(name) <= _MAX_ID_LENGTH and bool(_REPO_ID.match(name)) and "--" not in name and ".." not in name)


def repo_folder(model_id: str) -> Path:
    """Where the cache keeps `model_id`: `bert-base-uncased` and `google-bert/bert-base-uncased` are two folders."""
    return cache_root() / f"models--{model_id.replace('/', '--')}"


def cached_snapshot(model_id: str) -> Path | None:
    """The folder of `model_id`'s files in the local cache (the commit refs/main names, else the newest snapshot),
    or None where the id is not cached (or is not an id at all)."""
    if not is_model_id(model_id):
        return None
    repo = repo_folder(model_id)
    try:
        commit = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        commit = ""  # fetched by revision only, or refs/ not copied along with the cache
    if commit and "/" not in commit and (repo / "snapshots" / commit).is_dir():
        return repo / "snapshots" / commit
    try:
        snapshots = [p for p in (repo / "snapshots").iterdir() if p.is_dir()]
    except OSError:
        return None
    if not snapshots:
        return None
    return max(snapshots, key=lambda p: (p.stat().st_mtime_ns, p.name))


def how_to_cache(model_id: str) -> str:
    """The part of a not-found message that says where we looked and how to get the id there."""
    return (f"nor in the local Hugging Face cache (no snapshot under {repo_folder(model_id)}); download it where there "
            f"is network with `hf download {model_id}` (`huggingface-cli download` in older huggingface_hub) and copy "
            f"the cache here or point HF_HUB_CACHE at it, or pass a local folder. Nothing is downloaded.")

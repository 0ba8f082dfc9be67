"""A linear probe on the same frozen speech-encoder states and the same folds as a trained run: the baseline a
pretrained-encoder head must beat (SUPERB's and EmoBox's reference point).

Each utterance becomes the mean and the standard deviation over time of every layer's states (the run's embedding
stage, read back, not recomputed), standardised on the fold's training part; a logistic regression with balanced
class weights is fitted on the training and validation parts of each of the run's folds and scored on its test
part. Usage:

    .venv/bin/python bench/linear_probe.py RUN CACHE      (RUN trained with --audio-encoder whisper|... on CACHE)
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from emocli import bundle, cache, metrics  # noqa: E402


def pooled(stage: cache.StageData) -> np.ndarray:
    """(N, 2 * L * D): per layer, the mean and std over each utterance's frames."""
    rows = []
    for start, end in zip(stage.offsets[:-1], stage.offsets[1:]):
        frames = stage.values[start:end].astype(np.float32)  # (T, L, D)
        rows.append(np.concatenate([frames.mean(axis=0).ravel(), frames.std(axis=0).ravel()]))
    return np.stack(rows)


def main(run_dir: str, cache_path: str) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from emocli.embed import ensure_stage
    from emocli.encoders import feature_source

    run, data = bundle.open_run(Path(run_dir)), cache.read_cache(Path(cache_path))
    source = feature_source(run.config.model)
    if source is None:
        raise SystemExit(f"{run_dir} reads no frozen encoder's states; give a run trained with --audio-encoder")
    features = pooled(ensure_stage(Path(cache_path), source, data))
    index = {u: i for i, u in enumerate(data.utt_ids)}
    scores = []
    for name in run.config.folds:
        split = run.fold(name).read_split()
        train = [index[u] for u in split["train"] + split["val"]]
        test = [index[u] for u in split["test"]]
        scaler = StandardScaler().fit(features[train])
        probe = LogisticRegression(max_iter=2000, class_weight="balanced", C=0.1)
        probe.fit(scaler.transform(features[train]), data.labels[train])
        predicted = probe.predict(scaler.transform(features[test]))
        scores.append(metrics.scores(data.labels[test], predicted, run.config.classes))
        print(f"{name}: UA {100 * scores[-1]['ua']:.1f}  WA {100 * scores[-1]['wa']:.1f}")
    for key in ("ua", "wa", "macro_f1"):
        mean, std = metrics.mean_std([s[key] for s in scores])
        print(f"linear probe {key}: {100 * mean:.1f} ± {100 * std:.1f} % (population std over {len(scores)} folds)")


if __name__ == "__main__":
    main(*sys.argv[1:3])

"""Dimensional scores beside two baselines from the same run and folds: the regression head of a `--task both` run
against "classify, then take the predicted class's mean [V, A, D] on the fold's training part", and the same lookup
with the true class (what knowing the category alone gives: the ceiling of a lookup, not of the head).

Usage: .venv/bin/python bench/dimension_baselines.py RUN CACHE   (RUN trained with --task both on CACHE)
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from emocli import bundle, cache, metrics  # noqa: E402


def main(run_dir: str, cache_path: str) -> None:
    run, data = bundle.open_run(Path(run_dir)), cache.read_cache(Path(cache_path))
    index = {u: i for i, u in enumerate(data.utt_ids)}
    classes = run.config.classes
    rows: dict[str, list[dict]] = {"lookup (predicted class)": [], "lookup (true class)": [], "regression head": []}
    for name in run.config.folds:
        fold = run.fold(name)
        train = [index[u] for u in fold.read_split()["train"]]
        predictions = fold.read_predictions()
        means = {c: np.nanmean(data.dimensions[[i for i in train if data.labels[i] == k]], axis=0)
                 for k, c in enumerate(classes)}
        truth = np.array([[np.nan if v is None else v for v in r["true_dimensions"]] for r in predictions])
        for what, guess in (("lookup (predicted class)", [means[r["pred"]] for r in predictions]),
                            ("lookup (true class)", [means[r["true"]] for r in predictions]),
                            ("regression head", [r["dimensions"] for r in predictions])):
            rows[what].append(metrics.ccc_per_dimension(truth, np.array(guess)))
    print("CCC, mean ± population std over folds")
    for what, folds in rows.items():
        print(f"{what:26s}", "  ".join(f"{d} {np.mean([f[d] for f in folds]):.3f} ± {np.std([f[d] for f in folds]):.3f}"
                                       for d in folds[0]))


if __name__ == "__main__":
    main(*sys.argv[1:3])

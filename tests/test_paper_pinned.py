"""The paper's model gives the same numbers for the same seed on CPU, before and after any reshaping of the code.

The expected values were recorded on the code before the encoders/fusions were made pluggable (commit f72648d)
and are compared rounded (losses to 5 decimals, probabilities to 4), so a change of summation order in a library
does not fail the test while any change of initialisation, batching, masking or arithmetic does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emocli.train import TrainConfig, train
from test_train import make_cache, model_config

PINNED_TRAIN = TrainConfig(repeats=1, epochs=3, batch_size=8, lr=3e-3, step_size=2, gamma=0.5)
CONFIGS = {
    "concat-frozen": dict(),
    "concat-trained-text": dict(freeze_text=False, modality_dropout=0.2),
    "audio": dict(modality="audio"),
    "text": dict(modality="text"),
    "gated": dict(fusion="gated", modality_dropout=0.2),
}


def rounded_numbers(run_dir: Path) -> dict:
    fold = run_dir / "folds" / "random-0"
    log = [json.loads(line) for line in (fold / "metrics.jsonl").read_text().splitlines()]
    preds = [json.loads(line) for line in (fold / "predictions.jsonl").read_text().splitlines()]
    return {"loss": [round(r["train_loss"], 5) for r in log], "val_loss": [round(r["val_loss"], 5) for r in log],
            "val_ua": [round(r["val_ua"], 5) for r in log],
            "probs": [[round(p, 4) for p in r["probs"]] for r in preds]}


EXPECTED: dict = json.loads(
    '{"audio":{"loss":[1.41372,1.40217,1.39599],"val_loss":[1.35679,1.35951,1.3595],"val_ua":[0.25,0.25,0'
    '.25],"probs":[[0.2552,0.181,0.2719,0.292],[0.2551,0.1811,0.2722,0.2916],[0.2551,0.1809,0.2718,0.2921'
    '],[0.2552,0.1815,0.2726,0.2907],[0.2552,0.1815,0.2726,0.2907],[0.2551,0.181,0.2721,0.2918]]},"concat'
    '-frozen":{"loss":[1.39186,1.38165,1.35524],"val_loss":[1.36591,1.35845,1.35399],"val_ua":[0.25,0.25,'
    '0.25],"probs":[[0.2849,0.2116,0.2352,0.2682],[0.2773,0.2202,0.2476,0.2549],[0.2749,0.2128,0.2402,0.2'
    '721],[0.2799,0.2147,0.2381,0.2673],[0.282,0.2138,0.2366,0.2675],[0.2817,0.2134,0.2369,0.2681]]},"con'
    'cat-trained-text":{"loss":[1.39413,1.35963,1.30188],"val_loss":[1.32631,1.31745,1.22062],"val_ua":[0'
    '.5,0.25,1.0],"probs":[[0.2892,0.2714,0.2285,0.2109],[0.2578,0.2404,0.2678,0.234],[0.2346,0.2183,0.22'
    '33,0.3238],[0.274,0.305,0.22,0.201],[0.2735,0.2951,0.2233,0.208],[0.2891,0.2718,0.2275,0.2117]]},"ga'
    'ted":{"loss":[1.38726,1.38496,1.32821],"val_loss":[1.35958,1.32711,1.26132],"val_ua":[0.25,0.25,0.25'
    '],"probs":[[0.2676,0.2118,0.2827,0.2379],[0.2618,0.2124,0.2915,0.2343],[0.2654,0.2113,0.2833,0.24],['
    '0.2634,0.2141,0.2846,0.2379],[0.2638,0.2142,0.2854,0.2366],[0.2686,0.2118,0.28,0.2396]]},"text":{"lo'
    'ss":[1.40158,1.3815,1.36247],"val_loss":[1.4018,1.38643,1.37322],"val_ua":[0.25,0.25,0.375],"probs":'
    '[[0.2839,0.2636,0.246,0.2065],[0.2539,0.2547,0.2602,0.2312],[0.2651,0.254,0.2375,0.2434],[0.2666,0.2'
    '667,0.2419,0.2248],[0.2674,0.263,0.2391,0.2305],[0.2755,0.2609,0.2492,0.2144]]}}')


@pytest.fixture(scope="module")
def pinned_cache(tiny_bert_dir, tmp_path_factory) -> Path:
    return make_cache(tmp_path_factory.mktemp("pinned") / "cache.h5", tiny_bert_dir)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_paper_configuration_gives_the_pinned_numbers(name, pinned_cache, tiny_bert_dir, tmp_path):
    train(pinned_cache, tmp_path / "run", model_config(tiny_bert_dir, **CONFIGS[name]), PINNED_TRAIN)
    assert rounded_numbers(tmp_path / "run") == EXPECTED[name]

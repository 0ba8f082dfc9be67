#!/usr/bin/env bash
# EmoDB's seven classes (the manifest's own labels), leave-one-session-out (5 folds, 2 speakers each), the
# pretrained-encoder recipe of the README (frozen Whisper tiny.en head + frozen MiniLM, cross-attention) and its
# audio-only head. Usage: bench/emodb_7class.sh WORKDIR   (about an hour on 2 cores)
set -euo pipefail
W=${1:?workdir}
E="${EMOCLI:-.venv/bin/emocli}"
EMODB=${EMODB:-../shared/data/emodb}
R="--protocol loso --audio-encoder whisper --freeze-text --epochs 30 --lr 1e-3 --step-size 22 --class-weighted --weight-decay 1e-4"
mkdir -p "$W"
$E prepare "$EMODB/manifest-all.csv" --cache "$W/emodb7.h5" --audio-encoder whisper   # --labels auto: 7 classes
$E train "$W/emodb7.h5" --run "$W/runs/fused" $R --fusion xattn
$E train "$W/emodb7.h5" --run "$W/runs/audio" $R --modality audio
$E compare "$W/runs/fused" "$W/runs/audio"
$E eval "$W/runs/fused"
.venv/bin/python bench/linear_probe.py "$W/runs/fused" "$W/emodb7.h5"      # the baseline on the same folds
# The paper's model (ModifiedAlexNet 1/8 width + frozen MiniLM, concat), for comparison
$E train "$W/emodb7.h5" --run "$W/runs/paper" --protocol loso --audio-width 0.125 --epochs 60 --lr 1e-3 --freeze-text
$E compare "$W/runs/fused" "$W/runs/audio" "$W/runs/paper"

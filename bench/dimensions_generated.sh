#!/usr/bin/env bash
# Valence/arousal/dominance on a generated IEMOCAP-format corpus (spoken by eSpeak NG; its EmoEvaluation [V, A, D]
# values follow each utterance's emotion), leave-one-session-out, the Whisper-head recipe: classes and dimensions
# learnt at once (--task both), and dimensions alone from audio. Usage: bench/dimensions_generated.sh WORKDIR [PER_CLASS]
set -euo pipefail
W=${1:?workdir}; N=${2:-50}
E="${EMOCLI:-.venv/bin/emocli}"
R="--protocol loso --audio-encoder whisper --freeze-text --epochs 30 --lr 1e-3 --step-size 22 --class-weighted --weight-decay 1e-4"
mkdir -p "$W"
$E synth "$W/corpus" --per-class "$N" --seed 3 --format tar.gz
$E prepare "$W/corpus/IEMOCAP_full_release.tar.gz" --cache "$W/c.h5" --audio-encoder whisper
$E train "$W/c.h5" --run "$W/runs/both" $R --task both
$E train "$W/c.h5" --run "$W/runs/dims-audio" $R --task dimensions --modality audio
$E train "$W/c.h5" --run "$W/runs/dims-fused" $R --task dimensions
$E eval "$W/runs/dims-fused"
$E eval "$W/runs/both"
$E eval "$W/runs/dims-audio"
$E compare "$W/runs/both" "$W/runs/dims-audio"
.venv/bin/python bench/dimension_baselines.py "$W/runs/both" "$W/c.h5"

#!/usr/bin/env bash
# Fused model with gold against recognised transcripts, leave-one-session-out, on a spoken generated corpus:
# the same corpus prepared twice (corpus transcripts; Whisper tiny.en's), the same recipe trained on each.
# Usage: bench/gold_vs_asr.sh WORKDIR [PER_CLASS]   (about 15 minutes on 2 cores at PER_CLASS 100)
set -euo pipefail
W=${1:?workdir}; N=${2:-100}
E="${EMOCLI:-.venv/bin/emocli}"
RECIPE="--protocol loso --freeze-text --class-weighted --audio-encoder whisper --epochs 30 --lr 1e-3 --step-size 22 --weight-decay 1e-4"
mkdir -p "$W"
$E synth "$W/corpus" --per-class "$N" --seed 7 --format tar.gz
$E prepare "$W/corpus/IEMOCAP_full_release.tar.gz" --cache "$W/gold.h5" --audio-encoder whisper
$E prepare "$W/corpus/IEMOCAP_full_release.tar.gz" --cache "$W/asr.h5" --audio-encoder whisper --transcripts asr
$E train "$W/gold.h5" --run "$W/runs/gold" $RECIPE
$E train "$W/asr.h5" --run "$W/runs/asr" $RECIPE
$E train "$W/gold.h5" --run "$W/runs/text-gold" --modality text --protocol loso --freeze-text --class-weighted --epochs 30 --lr 1e-3 --step-size 22
$E train "$W/asr.h5" --run "$W/runs/text-asr" --modality text --protocol loso --freeze-text --class-weighted --epochs 30 --lr 1e-3 --step-size 22
$E compare "$W/runs/gold" "$W/runs/asr" "$W/runs/text-gold" "$W/runs/text-asr"
# the gold-trained models reading recognised text (and their WER), whole corpus: optimistic, shown for the WER
$E eval "$W/runs/gold" --cache "$W/asr.h5" | tail -2

#!/usr/bin/env bash
# Fusion vs single views on a generated corpus, under both protocols: the paper's central claim, reproducible.
# Usage: bench/compare_modalities.sh [WORK_DIR]   (about 30 minutes on 2 CPU cores)
# The small CPU configuration (frozen MiniLM, ModifiedAlexNet at 1/8 width, lr 1e-3, 20 epochs) is the demo's.
set -euo pipefail
work=${1:-data/compare}
emocli=${EMOCLI:-.venv/bin/emocli}
train_args=(--epochs 20 --repeats 3 --freeze-text --audio-width 0.125 --lr 1e-3 --step-size 15 --json)
"$emocli" synth "$work/corpus" --per-class 300 --seed 7 --mean-seconds 2.5
"$emocli" prepare "$work/corpus/IEMOCAP_full_release.tar.gz" --cache "$work/cache.h5" --json > /dev/null
runs=()
for protocol in random loso; do
  for modality in both text audio; do
    OMP_NUM_THREADS=2 "$emocli" train "$work/cache.h5" --run "$work/$modality-$protocol" --modality "$modality" \
      --protocol "$protocol" "${train_args[@]}" > /dev/null
    runs+=("$work/$modality-$protocol")
  done
done
"$emocli" compare "${runs[@]}"

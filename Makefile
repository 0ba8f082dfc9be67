# The two commands of the README: `make demo` and `make test`. Everything else is a convenience.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.emocli-installed
EMOCLI := OMP_NUM_THREADS=2 $(VENV)/bin/emocli
DEMO   ?= data/demo

.PHONY: install test test-all demo bench clean

install: $(STAMP)

# torch first, pinned: this machine's pip finds the local CPU build of 2.13.0, while an unpinned torch
# would pull gigabytes of CUDA wheels. The package's own range is then already satisfied.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# One torch thread per test worker: two workers with two threads each on two cores run 5-10x slower.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 -q

test-all: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 -q -m ''

# The main job end to end on a generated IEMOCAP-format corpus, sized for 2 CPU cores (a few minutes):
# the paper's fused model and both single-view baselines, then the pretrained-encoder model (fused and audio
# alone) on the same splits, side by side, then predictions on new files.
# The small configuration departs from the paper, to converge in minutes on a CPU:
# a frozen text encoder and lr 1e-3 (StepLR every 15 epochs, 20 epochs). `emocli train` without options is the paper's.
DEMO_TRAIN = --protocol random --repeats 3 --epochs 20 --freeze-text --audio-width 0.125 --lr 1e-3 --step-size 15
# The pretrained-encoder recipe on the same splits: frozen Whisper tiny.en states (computed once into a stage beside
# the cache), a small attentive-pooling head over them.
DEMO_HEAD = --protocol random --repeats 3 --epochs 20 --freeze-text --audio-hidden 64 --lr 1e-3 --step-size 15

demo: $(STAMP)
	$(EMOCLI) synth $(DEMO)/corpus --per-class 150 --seed 0 --format tar.gz
	$(EMOCLI) prepare $(DEMO)/corpus/IEMOCAP_full_release.tar.gz --cache $(DEMO)/cache.h5
	$(EMOCLI) train $(DEMO)/cache.h5 --run $(DEMO)/runs/fused --modality both $(DEMO_TRAIN)
	$(EMOCLI) train $(DEMO)/cache.h5 --run $(DEMO)/runs/audio --modality audio $(DEMO_TRAIN)
	$(EMOCLI) train $(DEMO)/cache.h5 --run $(DEMO)/runs/text --modality text $(DEMO_TRAIN)
	$(EMOCLI) prepare $(DEMO)/corpus/IEMOCAP_full_release.tar.gz --cache $(DEMO)/cache.h5 --audio-encoder whisper
	$(EMOCLI) train $(DEMO)/cache.h5 --run $(DEMO)/runs/whisper-fused --audio-encoder whisper $(DEMO_HEAD)
	$(EMOCLI) train $(DEMO)/cache.h5 --run $(DEMO)/runs/whisper-audio --modality audio --audio-encoder whisper \
	  $(DEMO_HEAD)
	$(EMOCLI) eval $(DEMO)/runs/fused
	$(EMOCLI) compare $(DEMO)/runs/fused $(DEMO)/runs/audio $(DEMO)/runs/text $(DEMO)/runs/whisper-fused \
	  $(DEMO)/runs/whisper-audio
	$(EMOCLI) synth $(DEMO)/new --per-class 12 --seed 99 --format dir
	$(PY) -c "import csv, json, sys; t = json.load(open('$(DEMO)/new/synth-truth.json'))['texts']; \
	  w = csv.writer(open('$(DEMO)/new/transcripts.csv', 'w', newline='')); w.writerow(['id', 'text']); \
	  [w.writerow([u, x]) for u, x in sorted(t.items())[::2] if u.startswith('Ses01')]"
	$(EMOCLI) predict $(DEMO)/runs/fused $(DEMO)/new/IEMOCAP_full_release/Session1/sentences/wav \
	  --transcripts $(DEMO)/new/transcripts.csv --output $(DEMO)/predictions.csv --show 12
	# Deployment: one final model on all the data with the fused run's settings, exported to ONNX and run by the
	# torch-free runner inside the exported folder.
	$(EMOCLI) train $(DEMO)/cache.h5 --run $(DEMO)/runs/final --protocol all --like $(DEMO)/runs/fused
	$(EMOCLI) export $(DEMO)/runs/final --out $(DEMO)/exported
	$(PY) $(DEMO)/exported/onnx_runner.py $(DEMO)/exported \
	  $$(ls $(DEMO)/new/IEMOCAP_full_release/Session1/sentences/wav/*/*.wav | head -1) "I can't believe you did that!"

# The CPU benchmarks (bench/RESULTS.md): prepare at 1k/4k/10k wavs, predict over 500 files, train per epoch.
# Roughly 25 minutes on 2 cores. On a GPU machine: $(PY) bench/bench_train.py --bert-base --modes gpu-fp32
# gpu-bf16 naive-gpu --per-class 1383
bench: $(STAMP)
	$(PY) bench/bench_prepare.py
	$(PY) bench/bench_predict.py
	$(PY) bench/bench_train.py --bert-base --modes cpu-default cpu-frozen naive --per-class 25 --naive-seconds 60

clean:
	rm -rf $(VENV) data/demo

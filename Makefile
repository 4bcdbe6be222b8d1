# Two commands for a newcomer: `make repro` (set up + run the pipeline) and `make test` (set up + run the tests).
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)

# CPU preset: the whole pipeline on a laptop in minutes (the default params.yaml is the GPU experiment).
SOURCE ?= ../shared/data/oxford-pets-mini
# Each model trains for at most 1.5 minutes (train.common.max_minutes), however fast the machine.
CPU_PRESET := -S 'prepare.source=$(SOURCE)' -S prepare.image_size=64 -S train.common.max_minutes=1.5 \
	-S train.common.num_workers=0 -S train.unet.base_channels=16 -S train.unet.batch_size=8 -S train.res34.batch_size=8 \
	-S infer.limit=32

# The reference report's recipe (UNet without batch norm, Adam + weight decay, ReduceLROnPlateau, best epoch by
# validation Dice, no progressive resizing, fp32, no test-time augmentation), one command away so that its published
# figures can be reproduced.
REFERENCE_RECIPE := -S train.common.select_by=dice -S train.common.validate_every=1 -S train.common.amp=false \
	-S train.common.progressive_scale=1.0 -S train.common.progressive_until=0.0 -S train.unet.batch_norm=false \
	-S evaluate.tta=none \
	$(foreach m,unet res34,-S train.$(m).optimizer=adam -S train.$(m).lr=0.0001 -S train.$(m).weight_decay=0.00001 \
	-S train.$(m).schedule=plateau -S train.$(m).warmup_epochs=0)

.PHONY: repro repro-cpu repro-reference test test-fast lint bench venv clean
venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $@

repro: $(STAMP)
	dvc repro

# A named DVC experiment whose params stay in it: `dvc exp run` writes the -S values into params.yaml, so the file is
# put back as it was afterwards (also when the run fails). `dvc exp apply cpu-preset` brings them back on purpose.
PARAMS_BACKUP := .dvc/tmp/params.before-cpu-preset.yaml
repro-cpu: $(STAMP)
	mkdir -p $(dir $(PARAMS_BACKUP)) && cp params.yaml $(PARAMS_BACKUP)
	dvc exp remove cpu-preset >/dev/null 2>&1 || true
	dvc exp run -n cpu-preset $(CPU_PRESET); status=$$?; mv $(PARAMS_BACKUP) params.yaml; exit $$status

repro-reference: $(STAMP)
	dvc exp run -n reference-recipe $(REFERENCE_RECIPE)

test: $(STAMP)
	pytest

# The edit loop: everything but the end-to-end tests marked slow (CI runs them all).
test-fast: $(STAMP)
	pytest -m "not slow"

lint: $(STAMP)
	ruff check .
	ruff format --check .
	lint-imports

bench: $(STAMP)
	petseg bench prepare --source $(SOURCE)
	petseg bench train

clean:
	rm -rf $(VENV) dvc_plots .pytest_cache .ruff_cache

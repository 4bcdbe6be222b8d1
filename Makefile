# Two commands for a newcomer: `make repro` (set up + run the pipeline) and `make test` (set up + run the tests).
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)

# The default params.yaml is the bundled sample (sample/, real photos), sized to run anywhere in minutes. The full
# experiment and the reference report's recipe are named DVC experiments, -S overrides away from it.
OFFICIAL := https://www.robots.ox.ac.uk/~vgg/data/pets/data
FULL := -S prepare.source=$(OFFICIAL) -S prepare.image_size=256 -S resources.num_workers=4 \
	-S train.unet.base_channels=64 -S infer.limit=0 \
	$(foreach m,unet res34,-S train.$(m).epochs=40 -S train.$(m).batch_size=16)

# The reference report's recipe (UNet without batch norm, Adam + weight decay, ReduceLROnPlateau, best epoch by
# validation Dice, no progressive resizing, fp32, no test-time augmentation) on the full data, one command away so
# that its published figures can be reproduced.
REFERENCE_RECIPE := -S train.common.select_by=dice -S train.common.validate_every=1 -S train.common.amp=false \
	-S train.common.progressive_scale=1.0 -S train.common.progressive_until=0.0 -S train.unet.batch_norm=false \
	-S train.common.tta=none \
	$(foreach m,unet res34,-S train.$(m).optimizer=adam -S train.$(m).lr=0.0001 -S train.$(m).weight_decay=0.00001 \
	-S train.$(m).schedule=plateau -S train.$(m).warmup_epochs=0)

.PHONY: repro repro-full repro-reference test test-fast lint lock bench venv clean
venv: $(STAMP)

# Exact versions of everything installed (requirements.lock), then petseg itself without resolving anything again.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -r requirements.lock
	$(VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

# Refresh the lock after changing pyproject.toml's dependencies: resolve them afresh in a scratch venv, freeze it.
# PyPI's torch for Linux x86_64 brings the CUDA libraries (it runs on CPU-only machines too); elsewhere pip skips them.
CUDA_ONLY := ^(nvidia-|cuda-|triton)
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet '.[dev]'
	.lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^petseg' \
		| sed -E "/$(CUDA_ONLY)/s/$$/ ; platform_system == 'Linux' and platform_machine == 'x86_64'/" > requirements.lock
	rm -rf .lock-venv

repro: $(STAMP)
	dvc repro

# A named DVC experiment whose params stay in it: `dvc exp run` writes the -S values into params.yaml, so the file is
# put back as it was afterwards (also when the run fails); `dvc exp apply <name>` brings them back on purpose.
PARAMS_BACKUP := .dvc/tmp/params.before-experiment.yaml
define named_experiment
	mkdir -p $(dir $(PARAMS_BACKUP)) && cp params.yaml $(PARAMS_BACKUP)
	dvc exp remove $(1) >/dev/null 2>&1 || true
	dvc exp run -n $(1) $(2); status=$$?; mv $(PARAMS_BACKUP) params.yaml; exit $$status
endef

repro-full: $(STAMP)
	$(call named_experiment,full,$(FULL))

repro-reference: $(STAMP)
	$(call named_experiment,reference-recipe,$(FULL) $(REFERENCE_RECIPE))

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
	petseg bench prepare --source sample
	petseg bench train

clean:
	rm -rf $(VENV) dvc_plots .pytest_cache .ruff_cache .lock-venv

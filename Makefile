# Two commands for a fresh machine:  make demo  (the main job on demo data)  and  make test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export NO_ALBUMENTATIONS_UPDATE := 1
DEMO_DATA := data/demo-isic2018

.PHONY: demo test lint install app chromium

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The official ISIC scorer needs pandas < 3, so it lives in its own environment (tests compare against it).
.venv-scoring/.installed:
	$(PYTHON) -m venv .venv-scoring
	.venv-scoring/bin/python -m pip install --quiet --upgrade pip
	.venv-scoring/bin/python -m pip install --quiet 'isic-challenge-scoring==5.6.0' 'pandas<3'
	touch $@

# Headless Chromium for the review app's browser test (Debian package; the test drives it with Playwright).
chromium:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

test: $(VENV)/.installed .venv-scoring/.installed chromium
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

demo: $(VENV)/.installed
	@test -d $(DEMO_DATA)/ISIC2018_Task3_Training_Input || $(VENV)/bin/dermlow data demo --out $(DEMO_DATA) --year 2018 --n-images 600
	$(VENV)/bin/dermlow data check --year 2018 --data-dir $(DEMO_DATA)
	rm -rf runs/demo
	$(VENV)/bin/dermlow train --config configs/demo.yaml --name demo
	@echo "Open the review app with:  $(VENV)/bin/dermlow app runs/demo   (or: make app)"

app: $(VENV)/.installed
	$(VENV)/bin/dermlow app runs

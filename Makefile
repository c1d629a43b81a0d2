# The two commands: `make demo` (the main job) and `make test` (the suite).
# Both create .venv at the repository root if it is missing and install what they need:
# the demo only the core and the `demo` extra (no TensorFlow), the tests everything.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test install bench browser

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[demo]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed-test

# The explorer's browser test drives a system Chromium (no browser download): install Debian's
# package when none is found and apt-get is at hand; otherwise that test skips and says why.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  command -v google-chrome >/dev/null || [ -n "$$EGJAX_CHROMIUM" ] || \
	  { command -v apt-get >/dev/null && \
	    { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	      $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; } ; } || \
	  echo "make: no Chromium installed; the explorer's browser test will be skipped"

# The suite runs one pytest worker per CPU (pytest-xdist), each test file on one worker so
# that a file's fixtures and compiled programs are made once: most of its time is XLA
# compiling, which takes one thread. The tests that measure speed (marked `timed`) run
# afterwards, alone: beside another worker on the same cores their rate fell by 40-50% in CI.
test: install browser
	$(PY) -m pytest -q -n auto --dist loadfile -m "not timed"
	$(PY) -m pytest -q -m timed

demo: $(VENV)/.installed-demo
	$(PY) experiments/vgg16_voc.py --overwrite

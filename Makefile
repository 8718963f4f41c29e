# The two commands (see README): `make demo` runs the embedded demo, `make test` runs the tests.
# Both create or reuse .venv; requirements are reinstalled only when requirements.txt changes.
# `make test-fast` (the same venv step): the tests that need no SLURM cluster and no multi-process training,
# under 5 minutes on the 2-core machine (see README).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv demo test test-fast
# markers: pyproject.toml; cluster and harness are set in tests/conftest.py
FAST_TESTS := not cluster and not multiproc and not harness and not slow
venv:
	@bash jobs/venv.sh $(VENV)

demo: venv
	@$(PY) jobs/demo.py $(ARGS)

test: venv
	@$(PY) -m pytest $(ARGS)

test-fast: venv
	@$(PY) -m pytest -m "$(FAST_TESTS)" $(ARGS)

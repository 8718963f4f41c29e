# The two commands (see README): `make demo` runs the embedded demo, `make test` runs the tests.
# Both create or reuse .venv; requirements are reinstalled only when requirements.txt changes.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv demo test
venv:
	@bash jobs/venv.sh $(VENV)

demo: venv
	@$(PY) jobs/demo.py $(ARGS)

test: venv
	@$(PY) -m pytest $(ARGS)

# oarmorph: the two commands of the README are `make demo` and `make test`.
# Both work from a fresh clone: they create .venv and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.oarmorph-installed
EXTRAS ?= service,train,dev

.PHONY: demo test lint format tools openapi bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@

# Independent DICOM tools the tests cross-check our files with (Debian packages dicom3tools, plastimatch).
# Installed when we are root on a Debian-like machine; otherwise their tests skip and say why.
tools:
	@if ! command -v dciodvfy >/dev/null || ! command -v plastimatch >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing dicom3tools and plastimatch (Debian packages) for the DICOM cross-checks"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools plastimatch >/dev/null) \
	      || echo "note: could not install dicom3tools/plastimatch; their tests will be skipped"; \
	  else echo "note: dciodvfy/plastimatch absent (apt-get install dicom3tools plastimatch); their tests will be skipped"; fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile
	$(BIN)/yamllint -s docker-compose.yml .hadolint.yaml

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: $(STAMP) tools lint
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/oarmorph demo --out out/demo

openapi: $(STAMP)
	$(BIN)/oarmorph openapi -o openapi.yaml

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_rtstruct.py
	$(BIN)/python benchmarks/bench_phantom.py

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache

# oarmorph: the two commands of the README are `make demo` and `make test`.
# Both work from a fresh clone: they create .venv and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.oarmorph-installed
BENCH_STAMP := $(VENV)/.oarmorph-bench-installed
EXTRAS ?= service,train,dev
BENCH_MODEL ?= models/openkbp_proposed_cpu
BENCH_ARGS ?=

.PHONY: demo test lint format tools openapi bench bench-registration bench-service clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@

# Independent DICOM tools the tests cross-check our files with (Debian packages dicom3tools, plastimatch).
# Installed when we are root on a Debian-like machine; otherwise their tests skip and say why.
tools:
	@if ! command -v redis-server >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing redis-server (Debian package) for the service tests and make demo"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
	      || echo "note: could not install redis-server; the service tests need a Redis at 127.0.0.1:6379"; \
	  else echo "note: redis-server absent (apt-get install redis-server); the service tests need a Redis"; fi; \
	fi
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

# The service end to end without Docker: Redis (configured, reachable or started), a worker and the API; a
# full-size phantom patient (or CT=path/to/series) posted over HTTP; out/demo/rtstruct.dcm and qa_sheet.png.
demo: $(STAMP) tools
	$(BIN)/oarmorph service-demo --out out/demo $(if $(CT),--ct $(CT))

openapi: $(STAMP)
	$(BIN)/oarmorph openapi -o openapi.yaml

# The registration baselines (antspyx, itk-elastix) come with the bench extra, installed here and not by make test.
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS),bench]"
	@touch $@

bench: $(BENCH_STAMP) bench-registration
	$(BIN)/python benchmarks/bench_rtstruct.py
	$(BIN)/python benchmarks/bench_phantom.py
	$(BIN)/python benchmarks/bench_runtime.py $(BENCH_MODEL) --threads 2 --skip-missing

# oarmorph against ANTs SyN, elastix, SimpleITK, its affine stage and no registration -> docs/benchmarks.md (hours;
# BENCH_ARGS=--quick: 2 OpenKBP + 1 phantom patient, minutes).
bench-registration: $(BENCH_STAMP)
	$(BIN)/oarmorph bench registration --threads 2 $(BENCH_ARGS)

# The service under load (minutes): latency per stage for a 512x512x200 CT, 50 concurrent submissions, polling p99.
bench-service: $(STAMP) tools
	$(BIN)/python benchmarks/bench_service.py

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache

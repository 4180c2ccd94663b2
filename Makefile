# The two commands: `make demo` runs the main job on the built-in sample data, `make test` runs the
# tests. Both build .venv/ first (once; again only when pyproject.toml changes).
export NO_ALBUMENTATIONS_UPDATE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: env demo test test-all bench

env:
	@bash scripts/bootstrap.sh

demo: env
	@bash scripts/demo.sh

test: env
	.venv/bin/python -m pytest -q

test-all: env
	.venv/bin/python -m pytest -q -m ""

bench: env
	.venv/bin/python benchmarks/ingest_throughput.py

PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo lint test test-slow bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m appliance_dev.demo $(DEMO_ARGS)

lint: setup
	.venv/bin/ruff check .

test: setup lint
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: setup
	@bash scripts/setup.sh --image-tools
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: setup
	$(PY) -m benchmarks

clean:
	rm -rf .venv .pytest_cache build *.egg-info

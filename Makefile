# The README's two commands: `make demo` (the main job) and `make test` (the suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install data demo test test-slow lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,bench,onnx,tensorboard]'
	touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST from Debian's package when we can (root + apt-get); otherwise the loader downloads into the cache.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "apt-get failed: the loader will download Fashion-MNIST"; \
	else echo "no Debian package: the loader downloads Fashion-MNIST into ~/.cache/msresnet"; fi

demo: install data
	$(BIN)/msresnet demo

test: install data
	$(BIN)/pytest -x -q

test-slow: install data
	$(BIN)/pytest -x -q -m slow

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: install data
	$(BIN)/python -m benchmarks.speed
	$(BIN)/python -m benchmarks.data_speed

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache

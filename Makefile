# Thin wrappers of the commands in README.md and .ci/run (the tools are configured in pyproject.toml).
# `make check` runs lint, types, the import contract and the migrations check (`make -k check`: all of them,
# whatever fails). The targets other than run/test install the dev lock into .venv first when it changed.
BIN := .venv/bin
MIGRATIONS_ENV := DEBUG=true DATABASE_URL=sqlite://:memory:
LOCK := $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links

.PHONY: run sandbox test-fast test lint format types contract migrations-check lock check

# The README's run command.
run:
	python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt && DEBUG=true .venv/bin/python manage.py migrate && DEBUG=true .venv/bin/python manage.py devserver

# The README's sandbox command (after `make run` has installed the app once).
sandbox:
	DEBUG=true $(BIN)/python manage.py sandbox

# The fast inner loop: no multi-process / real-time tests, no browser.
test-fast: .venv/.dev-lock
	$(BIN)/python -m pytest -m "not slow and not browser"

# The README's test command (the one CI runs): everything.
test:
	(command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)) && python3 -m venv .venv && .venv/bin/pip install -q -r requirements-dev.txt && .venv/bin/python -m pytest

lint: .venv/.dev-lock
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Sorts the imports and formats the code (rewrites files).
format: .venv/.dev-lock
	$(BIN)/ruff check --select I --fix .
	$(BIN)/ruff format .

types: .venv/.dev-lock
	$(BIN)/mypy

contract: .venv/.dev-lock
	$(BIN)/lint-imports

migrations-check: .venv/.dev-lock
	$(MIGRATIONS_ENV) $(BIN)/python manage.py makemigrations --check --dry-run

check: lint types contract migrations-check

# Recompiles the hashed locks from requirements*.in, keeping the current pins where they still fit
# (`make lock LOCK_ARGS=--upgrade` to move everything to the newest, or LOCK_ARGS="--upgrade-package NAME").
lock: .venv/.dev-lock
	$(LOCK) $(LOCK_ARGS) -o requirements.txt requirements.in
	$(LOCK) $(LOCK_ARGS) -o requirements-dev.txt requirements-dev.in
	grep -v '^#' requirements-older-python.txt >> requirements.txt
	grep -v '^#' requirements-older-python.txt >> requirements-dev.txt

# The dev venv, installed again whenever requirements-dev.txt changes.
.venv/.dev-lock: requirements-dev.txt
	python3 -m venv .venv
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

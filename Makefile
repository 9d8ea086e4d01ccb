# The two commands of the README, and a few more. Every target installs what is missing.
PYTHON ?= python3
UV := $(PYTHON) -m uv
BENCH ?=
# rustup's cargo, for uv to rebuild the native fast path (services/engagement/native)
# when its sources change.
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: run test test-future bench lint fmt install kafka-start kafka-stop schemas clean

run: install
	$(UV) run --frozen crm run

test:
	./scripts/test.sh

# only the suite's second run, with the clock a year ahead (libfaketime)
test-future:
	./scripts/test.sh --future

bench: install
	$(UV) run --frozen crm kafka start
	$(UV) run --frozen python bench/run.py $(BENCH)

install:
	./scripts/bootstrap.sh

lint: install
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy
	$(UV) run --frozen lint-imports
	cd services/engagement/native && cargo fmt --check && cargo clippy --release --quiet -- -D warnings

fmt: install
	$(UV) run --frozen ruff format .
	$(UV) run --frozen ruff check --fix .

schemas: install
	$(UV) run --frozen python -m crm_contracts.schemas --write

kafka-start: install
	$(UV) run --frozen crm kafka start

kafka-stop:
	$(UV) run --frozen crm kafka stop

clean:
	rm -rf var/ bench/results/ test-artifacts/

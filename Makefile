# The two commands a new user needs; each sets up what it uses (Debian packages, .venv).
.PHONY: demo test lint bench

demo:
	scripts/setup.sh run
	.venv/bin/petray demo

test:
	scripts/setup.sh test
	scripts/test.sh

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

bench:
	scripts/setup.sh test
	.venv/bin/python -m bench.summary
	.venv/bin/python -m bench.stow
	.venv/bin/python -m bench.start

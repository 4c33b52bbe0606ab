# Chorus: the two set-up commands are `make serve` and `make test`; both install what they need.
PY_BOOT ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
HOST    ?= 127.0.0.1
PORT    ?= 8000
export HOST PORT
# libgomp spin-waits by default; on a shared 2-core box that starves every other process.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: serve test train evaluate bench bench-load lint deps dev-deps dataset chromium postgresql prometheus nginx clean

$(VENV)/.deps: requirements.txt
	test -x $(PY) || $(PY_BOOT) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt
	touch $@

$(VENV)/.dev-deps: $(VENV)/.deps requirements-dev.txt
	$(PIP) install -q -r requirements-dev.txt
	touch $@

deps: $(VENV)/.deps
dev-deps: $(VENV)/.dev-deps

## Fashion-MNIST from Debian when no copy is found (FASHION_MNIST_DIR or the Debian path).
dataset:
	@if [ -n "$$FASHION_MNIST_DIR" ] || [ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then :; \
	else $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; fi

chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

## PostgreSQL's server binaries: the tests start a throwaway cluster of their own (tests/postgres.py).
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq postgresql; }

## Debian's Prometheus: tests/test_prometheus.py starts a throwaway server that scrapes gunicorn.
prometheus:
	@command -v prometheus >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends prometheus; }

## Debian's nginx, the buffering front `make serve` starts (deploy/serve.py) and tests/test_front.py.
nginx:
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends nginx; }

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

## Without SECRET_KEY, a random key is made once in instance/ (gitignored, mode 600) and reused,
## so sessions survive restarts; ADMIN_PASSWORD stays unset unless given (admin answers 403).
SECRET_KEY_FILE := instance/secret_key

## nginx on $(HOST):$(PORT) in front, gunicorn behind it on a unix socket (deploy/serve.py:
## config, pid, sockets and logs in instance/front-$(PORT)); Ctrl-C stops both within seconds.
serve: deps nginx
	mkdir -p instance
	@if [ -z "$$SECRET_KEY" ] && [ ! -s $(SECRET_KEY_FILE) ]; then \
		(umask 077 && $(PY) -c 'import secrets; print(secrets.token_hex(32))' > $(SECRET_KEY_FILE)) \
		&& chmod 600 $(SECRET_KEY_FILE) \
		&& echo "SECRET_KEY not set: created $(SECRET_KEY_FILE), reused on the next start"; fi
	SECRET_KEY="$${SECRET_KEY:-$$(cat $(SECRET_KEY_FILE))}" FLASK_DEBUG=$${FLASK_DEBUG:-0} \
		exec $(PY) -m deploy.serve

test: dev-deps dataset chromium postgresql prometheus nginx
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

train: deps dataset
	$(PY) -m ensembles.train $(TRAIN_ARGS)

evaluate: deps dataset
	$(PY) -m ensembles.evaluate $(EVAL_ARGS)

bench: deps dataset
	$(PY) -m bench.forward
	$(PY) -m bench.load
	$(PY) -m bench.cascade
	$(PY) -m bench.request_path
	$(PY) -m bench.throughput

lint: dev-deps
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

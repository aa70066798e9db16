# Set-up and checks. `make demo` and `make test` are the README's two commands: each creates the
# virtual environment (.venv) and installs the project with its dev tools when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test check proto install clean system-deps

$(VENV)/.installed: pyproject.toml adapters/mapping/_native.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/tongban demo

# Debian packages the tests need: the Prometheus server and promtool (the alert-rule and scrape
# tests), SoftHSM2 (a PKCS#11 token for the audit signing key held in an HSM), the openssl
# command (it checks the SM2 signatures the gateway makes with OpenSSL 3's libcrypto).
system-deps:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null && \
	  command -v softhsm2-util >/dev/null && command -v openssl >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus softhsm2 openssl; }

test: $(VENV)/.installed system-deps
	$(PY) scripts/check.py

proto: $(VENV)/.installed
	$(PY) scripts/genproto.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache data

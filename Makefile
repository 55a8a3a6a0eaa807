# Two commands matter: `make demo` and `make test`. Everything else supports them.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp
PIP     = $(BIN)/pip --quiet --disable-pip-version-check
# pipefail: a failed install fails the build even though its output is filtered.
SHELL       := /bin/bash
.SHELLFLAGS := -o pipefail -c
# The machine's pip config lists local indexes that may be missing; drop pip's notes about them.
QUIET_PIP = { grep -v "is ignored" || true; }

.PHONY: demo test check install litert lint typecheck imports browser netns-deps rtsp-deps clean

# litert-torch (LiteRT .tflite builds) pins its own pydantic and pulls JAX, so it gets an
# environment of its own; the pipeline runs its converter there through EDGEFLEET_LITERT_PYTHON
# (cloud/pipeline/optimize/litert.py).
LITERT_VENV  ?= .venv-litert
# pytest-xdist workers for `make check` and `make test` (see the test target).
TEST_WORKERS ?= 2
LITERT_STAMP  = $(LITERT_VENV)/.installed-stamp
LITERT_PIP    = $(LITERT_VENV)/bin/pip --quiet --disable-pip-version-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel 2>&1 | $(QUIET_PIP)
	# CPU torch first (the pinned local build); the project's torch range admits it,
	# so the next step pulls no CUDA packages.
	$(PIP) install torch==2.13.0 2>&1 | $(QUIET_PIP)
	$(PIP) install -e ".[all]" 2>&1 | $(QUIET_PIP)
	$(BIN)/python -c "import torch, fastapi, onnxruntime, agent, cloud"
	touch $(STAMP)

install: $(STAMP)

$(LITERT_STAMP):
	$(PYTHON) -m venv $(LITERT_VENV)
	$(LITERT_PIP) install torch==2.13.0 2>&1 | $(QUIET_PIP)
	$(LITERT_PIP) install "litert-torch>=0.10,<0.11" 2>&1 | $(QUIET_PIP)
	$(LITERT_VENV)/bin/python -c "import litert_torch, torchao"
	touch $(LITERT_STAMP)

litert: $(LITERT_STAMP)

demo: $(STAMP)
	$(BIN)/edgefleet demo --devices 5

lint: $(STAMP)
	$(BIN)/ruff check agent cloud tests tools

imports: $(STAMP)
	# The agent must never import cloud/, torch, fastapi or sqlmodel.
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# The dashboard's browser tests drive the system Chromium (Debian packages; Playwright never
# downloads one). Installed once when missing; a no-op check when present.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  echo "make: installing chromium and chromium-driver for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver; \
	fi

# The quick loop (under two minutes, no services): lint, import contracts, types and the
# tests that need no broker, database, agent process or trained model.
check: lint imports typecheck
	$(BIN)/pytest -q -m "not integration" -p no:cacheprovider -n $(TEST_WORKERS) $(PYTEST_ARGS)

# The field tests put agents in network namespaces: iproute2 (ip, tc) and nftables.
netns-deps:
	@if ! command -v nft >/dev/null || ! command -v tc >/dev/null; then \
	  echo "make: installing iproute2 and nftables for the network-namespace tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends iproute2 nftables; \
	fi

# The camera tests stream H.264 from a real RTSP server (GStreamer's RTSP server, run with
# Debian's python3 and its GObject bindings) and the agent decodes through an ffmpeg
# subprocess. Debian packages, installed once when missing; a no-op check when present.
RTSP_DEBS = ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-base \
            gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad gstreamer1.0-libav
rtsp-deps:
	@if [ ! -x /usr/bin/ffmpeg ] || ! /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer" 2>/dev/null \
	    || ! /usr/bin/gst-inspect-1.0 x264enc >/dev/null 2>&1; then \
	  echo "make: installing ffmpeg and the GStreamer RTSP server for the camera tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends $(RTSP_DEBS) gstreamer1.0-tools; \
	fi

# Two workers (pytest-xdist), a test file each at a time: most integration tests wait on agents,
# brokers and windows rather than compute. The second worker gets a private Mosquitto
# (tests/support/services.py), since agents use their device ids as MQTT client ids.
test: lint imports typecheck browser rtsp-deps netns-deps litert
	EDGEFLEET_LITERT_PYTHON=$(CURDIR)/$(LITERT_VENV)/bin/python $(BIN)/pytest -q -ra \
	  -n $(TEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)

clean:
	rm -rf .edgefleet .edgefleet-demo .pytest_cache .mypy_cache .ruff_cache test-artifacts

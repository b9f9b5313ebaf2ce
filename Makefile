# Two entry points, both for a fresh Debian/Ubuntu machine (see README "Quick start"):
#   make demo   install, then run the main job: the shipped policy in the 10 Hz closed loop on the simulated cell
#   make test   install with the sim, test, model, vae and lerobot extras, then lint and run the whole
#               test suite
# Both install what they need: Debian packages (via apt-get, with sudo when not
# root) and a virtual environment in $(VENV).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian/Ubuntu packages: venv support; libusb for pyrealsense2; EGL + Mesa for
# MuJoCo's offscreen rendering on the CPU.
APT_PACKAGES ?= python3-venv python3-dev libusb-1.0-0 libegl1 libgl1-mesa-dri
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: demo test lint format system-deps venv clean

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi; \
	  echo "installing Debian packages:" $$missing; \
	  $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

venv: system-deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PIP) --upgrade pip setuptools wheel

demo: venv
	$(PIP) -e '.[sim,model]'
	$(VENV)/bin/demuse run --sim --seconds 60

test: venv
	$(PIP) -e '.[sim,test,model,vae,lerobot]'
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis

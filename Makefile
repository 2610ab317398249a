# vfio-virtio: `make demo` and `make test` set up whatever is missing, then run.
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST := .venv/bin/pytest

.PHONY: setup setup-system setup-libvfio-user setup-venv setup-guest demo test test-fast bench fuzz test-asan clean

setup: setup-system setup-libvfio-user setup-venv setup-guest

setup-system:
	@bash scripts/setup_system.sh

setup-libvfio-user: setup-system
	@bash scripts/setup_libvfio_user.sh

setup-venv: setup-libvfio-user
	@bash scripts/setup_venv.sh

setup-guest: setup-system
	@if [ -f scripts/setup_guest.sh ]; then bash scripts/setup_guest.sh; fi

demo: setup
	@$(PY) -m vfio_virtio.demo

test: setup
	@$(PYTEST) -q

test-fast: setup-venv
	@$(PYTEST) -q -m "not hil"

clean:
	rm -rf .venv build *.egg-info vfio_virtio/*.so

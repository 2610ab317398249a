# vfio-virtio: `make demo` and `make test` set up whatever is missing, then run.
# Every setup step is idempotent and skips in well under a second when done.
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST := .venv/bin/pytest

.PHONY: setup setup-system setup-libvfio-user setup-venv setup-qemu setup-guest \
        demo test test-fast bench bench-quick fuzz test-asan clean

setup: setup-system setup-libvfio-user setup-venv setup-qemu setup-guest

setup-system:
	@bash scripts/setup_system.sh

setup-libvfio-user: setup-system
	@bash scripts/setup_libvfio_user.sh

setup-venv: setup-libvfio-user
	@bash scripts/setup_venv.sh

setup-qemu: setup-system
	@bash scripts/setup_qemu.sh

setup-guest: setup-system
	@bash scripts/setup_guest.sh

demo: setup
	@$(PY) -m vfio_virtio_kit.demo

# The whole suite: unit, client<->server over the socket, hardware-in-loop (QEMU + Linux
# guest), and the benchmark smoke test.
test: setup
	@$(PYTEST) -q

# Everything but the guest tests (no QEMU/guest assets needed).
test-fast: setup-venv
	@$(PYTEST) -q -m "not hil"

bench: setup
	@$(PY) -m benchmarks.run $(BENCH_ARGS)

bench-quick: setup
	@$(PY) -m benchmarks.run --quick

fuzz: setup-venv
	@bash scripts/fuzz.sh

test-asan: setup-venv
	@bash scripts/test_asan.sh

clean:
	rm -rf .venv build *.egg-info vfio_virtio/*.so

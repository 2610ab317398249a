"""Model-based test of issue 12: seeded random sequences of PMCSR writes, VFIO_USER_DEVICE_RESET,
FLR, status writes, SUSPEND/DRIVER_OK, RING_RESET, disconnect/reconnect and snapshot/restore
against a small reference model of the README's survival table.

The real stack runs in process (``vfio_virtio_kit.inproc``: real libvfio-user context, PM
capability, PCI function, transport, core, gpio device, sim backend); an independent driver
(``VirtioPciDriver``) drives it. After every step:

* the observable state matches the model: PMCSR PowerState, device_status, gating (BAR
  decode, running), every line's direction and value, the held event buffer, the eventq
  completions (an edge is delivered exactly when the model says so);
* a full bring-up followed by a request completes. That check would change the state, so it
  runs on a fresh stack that replays the same prefix (the steps are deterministic).

The model is written from the table, independently of ``vfio_virtio.power.decide``.
``VV_MODEL_SEQUENCES`` (default 1000) and ``VV_MODEL_SEED`` (default 12) size and seed the run.
"""
from __future__ import annotations

import logging
import os
import random
import tempfile
import time

from tests.unit.powerkit import D3, STEPS, WEIGHTS, Model, Rig, observe, s_bring_up
from vfio_virtio.gpio import spec as G
from vfio_virtio.pci import spec as P
from vfio_virtio.virtio import spec as V

SEQUENCES = int(os.environ.get("VV_MODEL_SEQUENCES", "1000"))
SEED = int(os.environ.get("VV_MODEL_SEED", "12"))
MAX_STEPS = 7
OK, IN_ = G.VIRTIO_GPIO_STATUS_OK, G.VIRTIO_GPIO_DIRECTION_IN


def do_step(r: Rig, m: Model, name: str, check: bool = True) -> None:
    m.log.append(name)
    STEPS[name](r, m)
    m.settle()
    if check:
        observe(r, m)


def run_steps(m: Model, steps: list[str], tmp: str, check: bool) -> Rig:
    r = Rig(m, tmp)
    s_bring_up(r, m)
    for name in steps:
        do_step(r, m, name, check)
    return r


def bring_up_works(m: Model, steps: list[str], tmp: str) -> None:
    """On a fresh stack that replayed ``steps``: what a new driver does (PMCSR D0, as the PCI
    core sets it at probe; then the whole 3.1.1 sequence) and one request completes."""
    m2 = Model(m.nsr, m.reset_lines, m.suspend, m.mmio)
    r = run_steps(m2, steps, tmp, check=False)
    try:
        r.drv.set_power_state(P.PCI_D0)
        r.bring_up()
        resp = r.request(G.VIRTIO_GPIO_MSG_GET_DIRECTION, 1)
        assert resp == bytes([OK, IN_]), f"{' -> '.join(steps)}: bring-up then request: {resp}"
    finally:
        r.close()


ENABLED = {
    "d3hot": lambda m: m.power != D3, "d0": lambda m: m.power == D3,
    "status0": lambda m: m.d0, "bring_up": lambda m: m.d0,
    "suspend": lambda m: m.suspend and m.running,
    "resume": lambda m: m.d0 and bool(m.status & V.VIRTIO_CONFIG_S_SUSPEND),
    "ring_reset": lambda m: m.running, "set_out": lambda m: m.running,
    "arm_irq": lambda m: m.running and not m.held, "edge": lambda m: m.irq1,
}

# The cases and QEMU's sequences, run before the random ones.
DIRECTED = [
    (True, ["set_out", "arm_irq", "d3hot", "reconnect", "bring_up"]),          # case 1
    (False, ["set_out", "arm_irq", "d3hot", "reconnect", "bring_up"]),
    (False, ["set_out", "d3hot", "device_reset", "bring_up", "set_out"]),      # case 2
    (False, ["set_out", "d3hot", "flr", "bring_up"]),
    (True, ["arm_irq", "d3hot", "edge", "snapshot_restore", "d0"]),            # case 3
    (True, ["arm_irq", "ring_reset", "arm_irq", "edge"]),                      # case 4
    (True, ["set_out", "arm_irq", "d3hot", "edge", "qemu_wake"]),              # S3 wake
    (True, ["set_out", "d3hot", "device_reset", "d0", "arm_irq", "edge"]),
    (True, ["set_out", "reconnect", "device_reset", "bring_up"]),              # host reboot
]


def generate(rng: random.Random, m: Model, tmp: str) -> list[str]:
    """Run a random sequence, checking after every step, and return it. Steps are chosen
    online among those that do something in the model's current state; most sequences
    start the way a driver does (an output, an armed interrupt)."""
    r = Rig(m, tmp)
    try:
        s_bring_up(r, m)
        steps = ["set_out", "arm_irq"] if rng.random() < 0.7 else []
        for name in steps:
            do_step(r, m, name)
        names = list(WEIGHTS)
        for _ in range(rng.randint(1, MAX_STEPS)):
            ok = [n for n in names if ENABLED.get(n, lambda _m: True)(m)]
            name = rng.choices(ok, weights=[WEIGHTS[n] for n in ok])[0]
            steps.append(name)
            do_step(r, m, name)
        return steps
    finally:
        r.close()


def run_sequence(m: Model, steps: list[str], tmp: str, check: bool) -> int:
    """Bring-up check after every step of ``steps`` (a replay of each prefix); with
    ``check``, first run the whole sequence checking the state after every step."""
    if check:
        run_steps(m, steps, tmp, check=True).close()
    for i in range(1, len(steps) + 1):
        bring_up_works(m, steps[:i], tmp)
    return len(steps)




def test_model_based_power_and_reset_sequences(capsys):
    """Thousands of seeded sequences; prints the count and the time it took."""
    logging.disable(logging.CRITICAL)
    try:
        rng = random.Random(SEED)
        start = time.perf_counter()
        n_steps = 0
        with tempfile.TemporaryDirectory(prefix="vv-model-") as tmp:
            for nsr, steps in DIRECTED:
                for mmio in (False, True):
                    n_steps += run_sequence(Model(nsr, False, False, mmio), steps, tmp,
                                            check=True)
            for i in range(SEQUENCES):
                seed = rng.randrange(1 << 30)
                r = random.Random(seed)
                m = Model(nsr=r.random() < 0.6, reset_lines=r.random() < 0.3,
                          suspend=r.random() < 0.5, mmio=r.random() < 0.3)
                try:
                    steps = generate(r, m, tmp)
                    n_steps += run_sequence(m, steps, tmp, check=False)
                except AssertionError as e:
                    raise AssertionError(f"sequence {i} (seed {seed}): {e}") from None
        took = time.perf_counter() - start
    finally:
        logging.disable(logging.NOTSET)
    with capsys.disabled():
        print(f"\nmodel test: {2 * len(DIRECTED)} directed + {SEQUENCES} random sequences, "
              f"{n_steps} steps (each followed by a bring-up check), seed {SEED}, "
              f"{took:.1f} s")

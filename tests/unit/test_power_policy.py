"""Issue 12: the one reset policy (``vfio_virtio.power.decide``) and the README's
"what survives what" table, row by row."""
from __future__ import annotations

import pathlib

import pytest

from vfio_virtio.power import (Buffers, Event, Lines, Outcome, Pm, Power, ROWS, decide,
                               survival_table)

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- survival-table:", "<!-- survival-table end -->"


def readme_table() -> str:
    text = README.read_text()
    start = text.index("\n", text.index(BEGIN)) + 1
    return text[start:text.index(END)].strip()


def test_readme_table_is_the_policy():
    """The README table is generated from decide(); regenerate with
    ``python -m vfio_virtio.power`` when a rule changes."""
    assert readme_table() == survival_table()


def _parse(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


@pytest.mark.parametrize("row", range(len(ROWS)))
def test_each_readme_row_matches_decide(row):
    """Row by row: the README's cells are what decide() returns for that row's event."""
    lines = readme_table().splitlines()[2:]
    event, when, kw = ROWS[row]
    cells = _parse(lines[row])
    o = decide(event, **kw)
    assert cells[0] == event.value and cells[1] == when
    assert cells[2] == ("reset" if o.virtio_reset else "kept")
    assert cells[3] == o.lines.value
    assert cells[4] == ("dropped" if o.event_buffers is Buffers.DROP else "kept")
    assert cells[5] == o.pm.value


def test_every_event_has_a_row():
    assert {e for e, _, _ in ROWS} >= set(Event) - {Event.RESUME}


@pytest.mark.parametrize("event", list(Event))
@pytest.mark.parametrize("power", list(Power))
@pytest.mark.parametrize("nsr", [True, False])
@pytest.mark.parametrize("driven", [True, False])
def test_outcomes_are_consistent(event, power, nsr, driven):
    """A virtio reset always drops event buffers; lines never reset without a virtio reset;
    PM is only reset by a function reset."""
    o = decide(event, power, nsr, driven=driven)
    assert isinstance(o, Outcome)
    assert (o.event_buffers is Buffers.DROP) == o.virtio_reset
    assert o.lines is Lines.KEEP or o.virtio_reset
    if o.pm is Pm.RESET:
        assert event in (Event.DEVICE_RESET, Event.FLR, Event.LOST_CONNECTION)


def test_qemu_rules():
    """docs/FACTS.md, QEMU's own virtio-pci: DEVICE_RESET in D3hot without No_Soft_Reset resets
    the function (D0, status 0); with it nothing is reset."""
    assert decide(Event.DEVICE_RESET, Power.D3HOT, False) == Outcome(
        True, Lines.RESET, Pm.RESET, Buffers.DROP)
    assert decide(Event.DEVICE_RESET, Power.D3HOT, True) == Outcome(
        False, Lines.KEEP, Pm.KEEP, Buffers.KEEP)
    assert decide(Event.DEVICE_RESET, Power.D0_WOKEN, True).virtio_reset is False
    assert decide(Event.DEVICE_RESET, Power.D0, True).virtio_reset is True

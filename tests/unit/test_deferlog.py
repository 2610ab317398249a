"""Logging off the hot path (issue 15): records are written after the work that made them."""
import logging

from vfio_virtio import deferlog


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(self.format(record))


def _handler():
    target = _Collect()
    h = deferlog.DeferredHandler(target)
    log = logging.getLogger("vv.test.deferlog")
    log.handlers[:] = [h]
    log.propagate = False
    log.setLevel(logging.INFO)
    return h, target, log


def test_info_waits_for_the_scheduled_flush_and_keeps_order():
    h, target, log = _handler()
    pending = []
    h.set_scheduler(pending.append)
    log.info("one %d", 1)
    log.info("two %s", "x")
    assert target.lines == []             # nothing written inside the "callback"
    assert len(pending) == 1              # one flush scheduled per batch
    pending.pop()()
    assert target.lines == ["one 1", "two x"]


def test_error_is_written_at_once_after_what_was_queued():
    h, target, log = _handler()
    h.set_scheduler(lambda fn: None)
    log.info("first")
    log.error("bad")
    assert target.lines == ["first", "bad"]


def test_mutable_arguments_are_formatted_when_logged():
    h, target, log = _handler()
    h.set_scheduler(lambda fn: None)
    d = {"a": 1}
    log.info("state %s", d)
    d["a"] = 2
    h.flush()
    assert target.lines == ["state {'a': 1}"]


def test_queue_is_bounded():
    h, target, log = _handler()
    h.limit = 3
    h.set_scheduler(lambda fn: None)
    for i in range(3):
        log.info("r%d", i)
    assert target.lines == ["r0", "r1", "r2"]


def test_install_defers_the_logging_call_itself_with_its_timestamp(capsys):
    import time
    h = deferlog.install("INFO", "%(created).3f %(levelname)s %(name)s: %(message)s")
    try:
        pending = []
        h.set_scheduler(pending.append)
        log = logging.getLogger("vvinstall.pm")
        t = time.time()
        log.info("PM: %s -> %s (%d)", "D3hot", "D0", 1)
        assert h._queue and type(h._queue[0]) is tuple      # no LogRecord built yet
        assert capsys.readouterr().err == ""
        pending.pop()()
        err = capsys.readouterr().err
        assert "INFO vvinstall.pm: PM: D3hot -> D0 (1)" in err
        assert abs(float(err.split()[0]) - t) < 0.5
    finally:
        logging.Logger._log = deferlog._ORIG_LOG
        deferlog._ACTIVE = None
        logging.getLogger().handlers[:] = []

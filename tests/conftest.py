"""Shared fixtures: a real server process and a real vfio-user client."""
from __future__ import annotations

import pytest

from vfio_virtio_kit.server_proc import ServerProcess


@pytest.fixture
def server_factory(tmp_path, request):
    """Start servers with given CLI args; logs are printed on failure, servers stopped."""
    started: list[ServerProcess] = []

    def start(*args: str, **kw) -> ServerProcess:
        d = tmp_path / f"srv{len(started)}"
        d.mkdir(exist_ok=True)
        srv = ServerProcess(*args, workdir=str(d), **kw)
        started.append(srv)
        return srv.start()

    yield start
    failed = getattr(request.node, "rep_call", None)
    for srv in started:
        srv.stop()
        if failed is not None and failed.failed:
            print(f"--- server log {srv.log_path} ---\n{srv.log_tail()}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def server(server_factory):
    return server_factory("--lines", "8", "--names", "l0,l1,l2,l3,l4,l5,l6,l7")


@pytest.fixture
def client(server):
    from vfio_virtio_kit.vfio_user import VfioUserClient
    c = VfioUserClient(server.socket)
    yield c
    c.close()


@pytest.fixture
def gpio(server):
    """(driver, control client) on the 8-line named ``server``."""
    from vfio_virtio.client import ControlClient
    from vfio_virtio_kit.gpio_driver import GpioDriver
    d = GpioDriver.open(server.socket)
    c = ControlClient(server.control)
    yield d, c
    c.close()
    d.close()

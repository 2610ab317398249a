"""The runtime Python client (vfio_virtio.client) is a stable API (issue 16): its names and
signatures are what docs/CONTROL.md promises, and the old import path still gives the same
objects, so code written against either keeps working."""
from __future__ import annotations

import inspect

import vfio_virtio.client as client
from vfio_virtio.backends import control


def test_documented_names_and_signatures():
    assert set(client.__all__) == {"ControlClient", "ControlWatch", "ControlError",
                                   "ControlProtocolError"}
    C = client.ControlClient
    params = inspect.signature(C).parameters
    assert [(n, p.default) for n, p in params.items()] == \
        [("path", inspect.Parameter.empty), ("timeout", 5.0), ("pump", None)]
    for name in ("get", "set", "list", "info", "watch", "request", "read_message"):
        assert callable(getattr(C, name)) and getattr(C, name).__doc__, name
    W = client.ControlWatch
    assert issubclass(W, C)
    for name in ("next_event", "wait_for", "__iter__"):
        assert callable(getattr(W, name)), name
    assert issubclass(client.ControlProtocolError, client.ControlError)
    assert "stable" in client.__doc__ and "runtime" in client.__doc__


def test_old_import_path_gives_the_same_objects():
    from vfio_virtio.backends.control import ControlClient, ControlError, ControlWatch
    assert (ControlClient, ControlWatch, ControlError) == \
        (client.ControlClient, client.ControlWatch, client.ControlError)
    assert control.ControlProtocolError is client.ControlProtocolError


def test_server_module_does_not_load_the_client():
    """The server side stays free of the client: the re-export resolves lazily."""
    assert "ControlClient" not in vars(control)

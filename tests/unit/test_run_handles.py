"""Both executors hand the worker the same kind of handle: every member of ``executors.RunHandle``, with the same
call signatures (the worker's watch loop drives a local child and a Ray job alike)."""

import inspect

import pytest

from slmtune.service.executors import RunHandle
from slmtune.service.ray_executor import RayRun
from slmtune.service.runner import LocalRun

MEMBERS = [n for n in dir(RunHandle) if not n.startswith("_")] + ["error"]


@pytest.mark.parametrize("handle", [LocalRun, RayRun], ids=["local", "ray"])
def test_each_handle_has_every_member_of_the_protocol(handle):
    missing = [n for n in MEMBERS if not hasattr(handle, n) and n not in inspect.signature(handle).parameters
               and f"self.{n}" not in inspect.getsource(handle)]
    assert not missing, f"{handle.__name__} lacks {missing}"
    for name in MEMBERS:
        want = getattr(RunHandle, name, None)
        have = getattr(handle, name, None)
        if inspect.isfunction(want):
            assert inspect.isfunction(have), f"{handle.__name__}.{name} should be a method"
            assert list(inspect.signature(have).parameters) == list(inspect.signature(want).parameters), name
        elif isinstance(want, property):
            assert isinstance(have, property), f"{handle.__name__}.{name} should be a property"

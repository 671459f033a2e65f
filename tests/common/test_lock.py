"""common/lock.py: one holder at a time, and no file left open by a lock that was not taken."""

from __future__ import annotations

import builtins
import fcntl

import pytest

from common import lock
from common.lock import exclusive_lock


def test_a_held_lock_refuses_a_second_holder_until_closed(tmp_path):
    path = tmp_path / ".lock"
    first = exclusive_lock(path)
    assert first is not None and path.exists()
    assert exclusive_lock(path) is None  # flock conflicts between two opens even in one process
    first.close()
    second = exclusive_lock(path)
    assert second is not None
    second.close()


def test_ctrl_c_while_waiting_closes_the_file_and_propagates(tmp_path, monkeypatch):
    opened = []

    def recording_open(*args, **kwargs):
        opened.append(builtins.open(*args, **kwargs))
        return opened[-1]

    def interrupted(f, how):
        raise KeyboardInterrupt

    monkeypatch.setattr(lock, "open", recording_open, raising=False)
    monkeypatch.setattr(fcntl, "flock", interrupted)
    with pytest.raises(KeyboardInterrupt):
        exclusive_lock(tmp_path / ".lock", wait=True)
    assert len(opened) == 1 and opened[0].closed

"""The bench/ scripts as modules, through the suite's one script loader."""

from __future__ import annotations

import pytest
from script_loader import load_script


@pytest.fixture
def bench_script():
    return lambda name: load_script(name, "bench")

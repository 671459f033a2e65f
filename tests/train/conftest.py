"""The one trained run that several test modules read (each module gets its own)."""

import pytest
from trainer_util import make_store, run, tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 30-step run shared by a module's read-only checks: (store, config, run dir, log lines, summary)."""
    root = tmp_path_factory.mktemp("trained")
    store = make_store(root / "store")
    cfg = tiny_config(root / "store", root / "run", max_steps=30)
    lines: list[str] = []
    summary = run(cfg, lines)
    return store, cfg, root / "run", lines, summary

"""common/precision.py: what `auto` means per device (TrainConfig.resolve_auto's table is in
tests/train/test_run.py) and the autocast context the trainer and the inference CLIs share."""

import pytest
import torch

from common import precision


def test_autocast_float32_turns_a_callers_autocast_off_and_auto_must_be_resolved_first():
    x = torch.ones(2, 2)
    with precision.autocast("cpu", "bfloat16"):
        assert (x @ x).dtype == torch.bfloat16
        with precision.autocast("cpu", "float32"):
            assert (x @ x).dtype == torch.float32
    for name in ("auto", "int8"):
        with pytest.raises(ValueError, match=f"dtype must be one of float32, bfloat16, float16; got '{name}'"):
            precision.autocast("cpu", name)

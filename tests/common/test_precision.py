"""common/precision.py: what `auto` means per device (TrainConfig.resolve_auto's table is in
tests/train/test_run.py) and the autocast context the trainer and the inference CLIs share."""

import contextlib

import pytest
import torch

from common import precision


def test_a_card_that_only_emulates_bf16_gets_float16(monkeypatch):
    """torch.cuda.is_bf16_supported() says yes by default on a T4 or V100, which only emulate bf16:
    `auto` then ran them in slow bf16 where float16 is native (and the README promised float16)."""
    asked = []
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: asked.append(including_emulation) or including_emulation)
    assert not precision.bf16_supported("cuda:1")
    assert asked == [False]
    assert precision.resolve_dtype("auto", "cuda", precision.bf16_supported("cuda")) == "float16"
    assert not precision.bf16_supported("cpu") and len(asked) == 2  # a CPU is not asked about


def test_autocast_float32_turns_a_callers_autocast_off_and_auto_must_be_resolved_first():
    x = torch.ones(2, 2)
    with precision.autocast("cpu", "bfloat16"):
        assert (x @ x).dtype == torch.bfloat16
        with precision.autocast("cpu", "float32"):
            assert (x @ x).dtype == torch.float32
    for name in ("auto", "int8"):
        with pytest.raises(ValueError, match=f"dtype must be one of float32, bfloat16, float16; got '{name}'"):
            precision.autocast("cpu", name)

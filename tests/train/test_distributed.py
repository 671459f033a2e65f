"""train/distributed.py outside torchrun: each rank's device and backend, on a machine faked to have
GPUs (the two-process collectives run for real, on CPU, in test_ddp.py)."""

from __future__ import annotations

import pytest
import torch

from common.config import ConfigError
from train import distributed as D


@pytest.fixture
def gpus(monkeypatch):
    """torch sees CUDA; set_device and process-group init are recorded, not done."""
    calls: list[tuple] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(D.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(D.dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    return calls


def test_each_rank_takes_the_gpu_of_its_local_rank(gpus, monkeypatch):
    """Rank 5 of a two-node job of 4 GPUs each is GPU 1 of its node: RANK would name a GPU it lacks."""
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = D.init_distributed("auto")
    assert (info.rank, info.local_rank, info.world_size, info.device) == (5, 1, 8, torch.device("cuda", 1))
    assert gpus == [("set_device", torch.device("cuda", 1)), ("nccl", {"device_id": torch.device("cuda", 1)})]
    assert not info.is_main and info.distributed


def test_cpu_ranks_use_gloo(gpus, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert D.init_distributed("cpu").device == torch.device("cpu")
    assert gpus == [("gloo", {})]


def test_a_single_process_joins_no_group(gpus, monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = D.init_distributed("auto")
    assert info.is_main and not info.distributed and info.device == torch.device("cuda", 0)
    assert gpus == [("set_device", torch.device("cuda", 0))]


def test_device_cuda_without_cuda_is_an_error_not_a_cpu_run(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="^device=cuda: this torch sees no CUDA device; use device=auto or "):
        D.pick_device("cuda")
    assert D.pick_device("auto") == torch.device("cpu")

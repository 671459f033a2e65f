"""On a CUDA device only (skipped elsewhere): compile + bf16 / fp16 end to end, init_batch on a real OOM."""

from __future__ import annotations

import math

import pytest
import torch
from trainer_util import VOCAB, make_store, tiny_config

from common.config import ConfigError
from train import distributed as D
from train.checkpoint import load_checkpoint
from train.metrics import peak_flops
from train.trainer import Trainer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("dtype", ["auto", "float16"])
def test_compiled_mixed_precision_training_and_checkpoint(tmp_path, dtype):
    make_store(tmp_path / "store")
    cfg = tiny_config(tmp_path / "store", tmp_path / "run", device="auto", dtype=dtype, max_steps=30)
    trainer = Trainer(cfg, D.init_distributed(cfg.device), log=print)
    assert torch.get_float32_matmul_precision() == "high"  # TF32 for the run...
    summary = trainer.fit()
    trainer.close()
    assert torch.get_float32_matmul_precision() == "highest"  # ...and the process's own setting after it
    assert (cfg.device, cfg.compile) == ("cuda", True)
    if dtype == "auto":
        # Native bf16 only (Ampere on): an older card, which torch says can emulate it, gets float16.
        assert cfg.dtype == ("bfloat16" if torch.cuda.get_device_capability()[0] >= 8 else "float16")
    assert (trainer.scaler is not None) == (cfg.dtype == "float16")  # fp16 needs loss scaling, bf16 does not
    assert summary["peak_mem_gb"] > 0 and summary["val_loss"] < 3.5
    assert (summary["mfu"] is not None) == (peak_flops(torch.device("cuda")) is not None)
    state = load_checkpoint(tmp_path / "run")
    assert not any(k.startswith("_orig_mod.") for k in state["model"])  # the raw module, not the compiled one
    assert state["rng"][0]["cuda"] is not None
    assert (state["scaler"] is not None) == (cfg.dtype == "float16")


def test_compiled_bf16_training_with_muon_and_wsd(tmp_path):
    """optimizer=muon on CUDA (torch's Muon beside the fused AdamW, its skip flag read on the host) under
    compile and autocast, with lr_schedule=wsd: it learns, and the checkpoint holds both optimizers."""
    make_store(tmp_path / "store")
    cfg = tiny_config(tmp_path / "store", tmp_path / "run", device="auto", dtype="auto", max_steps=30,
                      optimizer="muon", lr_schedule="wsd")
    trainer = Trainer(cfg, D.init_distributed(cfg.device), log=print)
    summary = trainer.fit()
    trainer.close()
    assert (cfg.device, cfg.compile) == ("cuda", True) and summary["step"] == 30
    assert summary["val_loss"] < 0.8 * math.log(VOCAB)  # well below a uniform guess over the vocabulary
    state = load_checkpoint(tmp_path / "run")
    assert set(state["optimizer"]) == {"muon", "adamw"} and state["optimizer"]["muon"]["state"]


def test_a_trainer_that_fails_to_start_puts_the_matmul_precision_back(tmp_path):
    """TF32 is switched on before setup can still fail (here: a store too small for the windows)."""
    make_store(tmp_path / "store", docs=1, doc_len=10)
    cfg = tiny_config(tmp_path / "store", tmp_path / "run", device="cuda", compile=False)
    with pytest.raises(ConfigError, match="too small"):
        Trainer(cfg, D.init_distributed(cfg.device), log=print)
    assert torch.get_float32_matmul_precision() == "highest"


def test_init_batch_survives_a_real_oom(tmp_path):
    make_store(tmp_path / "store")
    # ~70 KB of fp32 activations per token: 4096 x 1024 tokens need ~280 GB, more than any single GPU.
    cfg = tiny_config(tmp_path / "store", tmp_path / "run", device="cuda", compile=False, dtype="float32",
                      model={"block_size": 1024, "d_model": 512, "n_head": 8}, micro_batch=4096,
                      max_steps=1, eval_batches=1)
    lines: list[str] = []
    trainer = Trainer(cfg, D.init_distributed(cfg.device), log=lines.append)
    assert cfg.micro_batch < 4096 and cfg.micro_batch * cfg.grad_accum == 4096
    assert any("does not fit" in line for line in lines)
    assert trainer.fit()["step"] == 1  # and training runs at the fitted size
    trainer.close()

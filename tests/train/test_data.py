"""train/data.py: the trainer's sampler follows the config, and each rank evaluates its share."""

from __future__ import annotations

import torch
from trainer_util import make_store, tiny_config

from train.data import eval_batches, train_sampler

BOS = 5  # write_store's default


def test_train_sampler_takes_every_stream_setting_from_the_config(tmp_path):
    store = make_store(tmp_path / "store")
    cfg = tiny_config(tmp_path / "store", tmp_path / "run", sampler_mode="epoch", align_bos=True, micro_batch=4,
                      seed=11)
    sampler = train_sampler(store, cfg, rank=1, world_size=2)
    got = (sampler.mode, sampler.align_bos, sampler.block_size, sampler.batch_size, sampler.seed, sampler.rank,
           sampler.world_size)
    assert got == ("epoch", True, 32, 4, 11, 1, 2)
    assert (sampler.next_batch()[0][:, 0] == BOS).all()


def test_each_rank_evaluates_its_share_of_the_fixed_set(tmp_path):
    store = make_store(tmp_path / "store")
    cfg = tiny_config(tmp_path / "store", tmp_path / "run", eval_batches=3, micro_batch=4)
    cpu = torch.device("cpu")
    whole = eval_batches(store, cfg, 0, 1, cpu, windows=12)
    shares = [eval_batches(store, cfg, rank, 2, cpu, windows=12) for rank in range(2)]
    assert [len(x) for x, _ in whole] == [4, 4, 4] and [len(s) for s in shares] == [2, 1]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(shares[0] + shares[1], whole[0::2] + whole[1::2], strict=True))
    assert eval_batches(store, tiny_config(tmp_path / "store", tmp_path / "run", eval_batches=0), 0, 1, cpu, 12) == []

"""init_batch: the micro-batch search on its own, and the Trainer's use of it (a CUDA OOM simulated on CPU)."""

from __future__ import annotations

import pytest
import torch
from trainer_util import make_store, make_trainer, tiny_config

import train.data
from train.init_batch import fit_micro_batch
from train.sampler import WindowSampler
from train.trainer import Trainer


def _ooms_above(limit: int, tried: list[int] | None = None):
    """Trainer._probe with a CUDA OOM simulated above `limit`, noting each micro-batch tried in `tried`."""
    real_probe = Trainer._probe

    def probe(self, micro_batch):
        if tried is not None:
            tried.append(micro_batch)
        if micro_batch > limit:
            raise torch.cuda.OutOfMemoryError("simulated CUDA out of memory")
        real_probe(self, micro_batch)

    return probe


def test_fit_micro_batch_keeps_divisors():
    def oom_above(limit):
        def probe(mb):
            if mb > limit:
                raise torch.cuda.OutOfMemoryError(f"simulated OOM at {mb}")
        return probe

    assert fit_micro_batch(64, oom_above(64)) == 64
    assert fit_micro_batch(64, oom_above(20)) == 16
    assert fit_micro_batch(12, oom_above(4)) == 3  # 12 -> 6 -> 3: divisors, so 12/3 = 4 accumulation steps
    # 20 -> 10 -> 5 -> 2: divisors of the candidate, not of the last micro-batch tried (5 has none but 1).
    assert fit_micro_batch(20, oom_above(2)) == 2
    cleanups = []
    assert fit_micro_batch(64, oom_above(20), cleanup=lambda: cleanups.append(1)) == 16
    assert len(cleanups) == 2  # after each OOM, so the next probe has the memory the failed one held
    with pytest.raises(RuntimeError, match="even at micro_batch=1"):
        fit_micro_batch(6, oom_above(0))


def test_init_batch_halves_on_oom_and_keeps_global_batch(tmp_path, monkeypatch):
    make_store(tmp_path / "store")
    tried = []
    monkeypatch.setattr(Trainer, "_probe", _ooms_above(2, tried))
    cfg = tiny_config(tmp_path / "store", tmp_path / "run", micro_batch=8, grad_accum=3, max_steps=2)
    lines: list[str] = []
    trainer = make_trainer(cfg, lines)
    assert tried == [8, 4, 2]
    assert (cfg.micro_batch, cfg.grad_accum) == (2, 12) and trainer.tokens_per_step == 8 * 3 * 32
    assert any("init_batch: micro_batch 8 does not fit" in line for line in lines)
    # The probe's optimizer step was undone: the weights are those of a run without init_batch.
    plain = make_trainer(tiny_config(tmp_path / "store", tmp_path / "plain", init_batch=False))
    for (name, a), b in zip(trainer.raw.state_dict().items(), plain.raw.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not trainer.optimizer.state
    trainer.fit()
    trainer.close()
    plain.close()


def test_eval_set_and_loss_do_not_depend_on_the_micro_batch_init_batch_fits(tmp_path, monkeypatch):
    """The eval windows were drawn in batches of the fitted micro-batch, so a resume that fitted another
    one (another GPU) evaluated on another set."""
    make_store(tmp_path / "store")
    plain = make_trainer(tiny_config(tmp_path / "store", tmp_path / "plain", micro_batch=8, eval_batches=3,
                                     init_batch=False))
    monkeypatch.setattr(Trainer, "_probe", _ooms_above(2))
    fitted = make_trainer(tiny_config(tmp_path / "store", tmp_path / "fitted", micro_batch=8, eval_batches=3))
    assert fitted.cfg.micro_batch == 2 and [len(x) for x, _ in fitted.eval_batches] == [2] * 12
    assert fitted.evaluate() == pytest.approx(plain.evaluate(), rel=1e-5)
    fitted.close()
    plain.close()


@pytest.mark.parametrize("mode", ["random", "epoch"])
def test_the_train_sampler_is_built_once_and_draws_at_the_fitted_micro_batch(tmp_path, monkeypatch, mode):
    """It was built twice: to check the store before init_batch, then again at the fitted size; with
    align_bos each build reads the split's whole document index."""
    store = make_store(tmp_path / "store")
    built = []

    class Counted(WindowSampler):
        def __init__(self, store, split, *args, **kwargs):
            built.append(split)
            super().__init__(store, split, *args, **kwargs)

    monkeypatch.setattr(train.data, "WindowSampler", Counted)
    monkeypatch.setattr(Trainer, "_probe", _ooms_above(2))
    cfg = tiny_config(tmp_path / "store", tmp_path / "run", micro_batch=8, sampler_mode=mode, align_bos=True)
    trainer = make_trainer(cfg)
    assert cfg.micro_batch == 2 and built.count("train") == 1
    # Batch for batch the stream of a sampler built at the fitted micro_batch.
    fresh = WindowSampler(store, "train", 32, 2, cfg.seed, mode=mode, align_bos=True)
    for _ in range(3):
        got, want = trainer.prefetcher.next(), fresh.next_batch()
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    trainer.close()

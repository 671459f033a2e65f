import threading

import numpy as np
import pytest
import torch

from pipeline.store import FORMAT_VERSION, ShardWriter, TokenStore, dtype_for_vocab, write_manifest, write_store
from train.prefetch import Prefetcher
from train.sampler import WindowSampler

BOS = 5


def sharded_store(root, doc_lengths, vocab=5000, shard_tokens=1 << 28, seed=0):
    """A train/val store whose train split rolls over into a new shard every `shard_tokens` tokens."""
    rng = np.random.default_rng(seed)
    dtype = dtype_for_vocab(vocab)
    splits = {}
    for split, lengths in (("train", doc_lengths), ("val", [40, 40])):
        lengths = np.asarray(lengths, np.int64)
        ids = rng.integers(6, vocab, size=int(lengths.sum()))
        ids[np.cumsum(lengths) - lengths] = BOS
        writer = ShardWriter(root, split, dtype, vocab, shard_tokens=shard_tokens)
        writer.add(ids, lengths)
        shards = writer.close()
        splits[split] = {"tokens": int(lengths.sum()), "documents": len(lengths), "shards": shards}
    write_manifest(root, {"format_version": FORMAT_VERSION, "dtype": dtype.name, "vocab_size": vocab,
                          "bos_id": BOS, "tokenizer": {"path": "tokenizer.json", "sha256": ""}, "splits": splits})
    return TokenStore(root)


def locate(store, split, x, y):
    """(shard, offset) of every row's window, found by comparing against the memmaps themselves."""
    out = []
    for xr, yr in zip(x.numpy(), y.numpy(), strict=True):
        w = np.concatenate((xr[:1], yr))
        hits = [(s, int(p)) for s, shard in enumerate(store.shards(split))
                if len(shard) >= len(w)
                for p in np.flatnonzero((np.lib.stride_tricks.sliding_window_view(shard, len(w)) == w).all(1))]
        assert len(hits) == 1, f"window found {len(hits)} times"
        out.append(hits[0])
    return out


@pytest.fixture
def store(tmp_path):
    return sharded_store(tmp_path, [300] * 10, shard_tokens=1000)  # shards of 900, 900, 900, 300


@pytest.mark.parametrize("vocab", [5000, 70000])
def test_shapes_dtypes_shift_and_real_slices(tmp_path, vocab):
    store = sharded_store(tmp_path, [200] * 5, vocab=vocab)
    assert store.dtype == (np.uint16 if vocab < 65536 else np.uint32)
    x, y = WindowSampler(store, "train", block_size=16, batch_size=8, seed=0).next_batch()
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for (s, p), row in zip(locate(store, "train", x, y), x, strict=True):
        assert np.array_equal(store.shards("train")[s][p : p + 16], row.numpy())


def test_multi_shard_windows_never_cross_and_follow_shard_sizes(tmp_path):
    # Shards of 900 and 300 tokens: a window of 65 fits 836 and 236 starts in them.
    store = sharded_store(tmp_path, [300] * 3 + [100] * 3, shard_tokens=900)
    assert [len(s) for s in store.shards("train")] == [900, 300]
    sampler = WindowSampler(store, "train", block_size=64, batch_size=64, seed=1)
    shards = [s for _ in range(10) for s, _ in locate(store, "train", *sampler.next_batch())]
    assert np.bincount(shards)[0] / len(shards) == pytest.approx(836 / 1072, abs=0.06)


def test_random_mode_is_a_function_of_seed_rank_step(store):
    def batches(seed, rank, n=3):
        s = WindowSampler(store, "train", 16, 4, seed=seed, rank=rank, world_size=2)
        return [s.next_batch() for _ in range(n)]

    a, b = batches(0, 0), batches(0, 0)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b, strict=True))
    assert not torch.equal(a[0][0], a[1][0])
    # Every (seed, rank) its own stream: no two of a 3 x 3 grid share a window (rank 1 of seed 0
    # must not be rank 0 of seed 1, as a key of seed + rank would make it).
    streams = {(seed, rank): {tuple(row.tolist()) for x, _ in batches(seed, rank) for row in x}
               for seed in range(3) for rank in range(2)}
    keys = list(streams)
    for i, k in enumerate(keys):
        for j in keys[i + 1 :]:
            assert len(streams[k] & streams[j]) <= 1, (k, j)


@pytest.mark.parametrize("mode", ["random", "epoch"])
def test_resume_continues_identically(store, mode):
    # A grid of ~180 windows of 16: 15 batches of 12 per epoch, so 40 steps cross two epochs.
    ref = WindowSampler(store, "train", 16, 12, seed=3, mode=mode)
    for _ in range(7):
        ref.next_batch()
    state = ref.state_dict()
    assert all(type(v) in (int, bool, str) for v in state.values())
    resumed = WindowSampler(store, "train", 16, 12, seed=3, mode=mode)
    resumed.load_state_dict(state)
    for _ in range(40):
        (x, y), (rx, ry) = ref.next_batch(), resumed.next_batch()
        assert torch.equal(x, rx) and torch.equal(y, ry) and ref.epoch == resumed.epoch
    assert mode == "random" or ref.epoch >= 2


def test_load_refuses_another_kind_of_stream(store):
    state = WindowSampler(store, "train", 16, 4, seed=0).state_dict()
    with pytest.raises(ValueError, match="block_size"):
        WindowSampler(store, "train", 32, 4, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="mode"):
        WindowSampler(store, "train", 16, 4, seed=0, mode="epoch").load_state_dict(state)
    # Another seed or alignment is another stream: continuing it would not be the saved run's.
    with pytest.raises(ValueError, match="seed"):
        WindowSampler(store, "train", 16, 4, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="align_bos"):
        WindowSampler(store, "train", 16, 4, seed=0, align_bos=True).load_state_dict(state)


def epoch_starts(store, samplers, steps):
    return [p for _ in range(steps) for s in samplers for p in locate(store, "train", *s.next_batch())]


def test_epoch_mode_uses_each_grid_start_once_across_ranks(store):
    t, b, world = 16, 5, 2
    ranks = [WindowSampler(store, "train", t, b, seed=7, rank=r, world_size=world, mode="epoch") for r in range(world)]
    lengths = [len(s) for s in store.shards("train")]
    seen_phases = set()
    for epoch in range(3):
        assert all(r.epoch == epoch for r in ranks)
        _, order = ranks[0]._epoch_plan()
        steps = len(order) // (b * world)
        starts = epoch_starts(store, ranks, steps)
        phases = {p % t for _, p in starts}
        assert len(phases) == 1  # one grid per epoch
        phase = phases.pop()
        seen_phases.add(phase)
        grid = {(s, p) for s, n in enumerate(lengths) for p in range(phase, n - t, t)}
        assert len(set(starts)) == len(starts) == steps * b * world  # disjoint ranks, no repeats
        assert set(starts) <= grid and len(grid) - len(starts) < b * world  # only the last partial batch dropped
        assert all(r.epoch == epoch + 1 and r.pos == 0 for r in ranks)
    assert len(seen_phases) > 1


def test_epoch_resume_with_another_batch_size_repeats_nothing(store):
    first = WindowSampler(store, "train", 16, 6, seed=2, mode="epoch")
    starts = epoch_starts(store, [first], 10)
    second = WindowSampler(store, "train", 16, 4, seed=2, mode="epoch")
    second.load_state_dict(first.state_dict())
    while second.epoch == 0:
        starts += epoch_starts(store, [second], 1)
    assert len(set(starts)) == len(starts) > 170


@pytest.mark.parametrize("align_bos", [False, True])
def test_batches_until_counts_each_epochs_batches_exactly(store, align_bos):
    """Grids differ in size with each epoch's phase; the count must follow next_batch() exactly, from
    any position and after a resume with another batch size."""

    def drawn_until(sampler, epochs):
        n = 0
        while sampler.epoch < epochs:
            sampler.next_batch()
            n += 1
        return n

    sampler = WindowSampler(store, "train", 16, 3, seed=5, mode="epoch", align_bos=align_bos)
    expected = sampler.batches_until(4)
    assert drawn_until(sampler, 4) == expected > 0 and sampler.batches_until(4) == 0
    sampler = WindowSampler(store, "train", 16, 3, seed=5, mode="epoch", align_bos=align_bos)
    for _ in range(expected // 3):
        sampler.next_batch()
    wider = WindowSampler(store, "train", 16, 4, seed=5, mode="epoch", align_bos=align_bos)
    wider.load_state_dict(sampler.state_dict())
    assert wider.batches_until(3) == drawn_until(wider, 3)


@pytest.mark.parametrize("mode", ["random", "epoch"])
def test_align_bos_windows_start_at_documents(tmp_path, mode):
    store = sharded_store(tmp_path, [30, 50, 20, 70, 40] * 4, shard_tokens=400)
    sampler = WindowSampler(store, "train", 24, 4, seed=0, mode=mode, align_bos=True)
    docs = {(s, int(p)) for s, idx in enumerate(store.doc_index("train")) for p in idx}
    for _ in range(4):
        x, y = sampler.next_batch()
        assert (x[:, 0] == BOS).all()
        assert set(locate(store, "train", x, y)) <= docs


def test_too_small_split_is_a_clear_error(tmp_path):
    store = write_store(tmp_path, {"train": [np.arange(6, 100)], "val": [np.arange(6, 20)]}, vocab_size=300)
    with pytest.raises(ValueError, match=r"split 'val'.*15 tokens.*block_size \+ 1 = 33"):
        WindowSampler(store, "val", 32, 4, seed=0)
    with pytest.raises(ValueError, match="epoch mode has only"):
        WindowSampler(store, "train", 32, 4, seed=0, mode="epoch")


@pytest.mark.parametrize(("kw", "match"), [
    (dict(block_size=0), "block_size"),
    (dict(batch_size=0), "batch_size"),
    (dict(rank=2, world_size=2), "rank 2 outside world_size 2"),
    (dict(rank=-1, world_size=2), "rank -1 outside"),
])
def test_bad_sizes_and_ranks_are_refused(store, kw, match):
    with pytest.raises(ValueError, match=match):
        WindowSampler(store, "train", **{"block_size": 16, "batch_size": 4, "seed": 0, **kw})


def test_a_shard_of_block_size_plus_one_tokens_is_exactly_one_window(tmp_path):
    """The last valid start is len - block_size - 1: a shard one token longer than the block holds one
    window (a [BOS] at 0 included), and a block as long as the shard none."""
    store = write_store(tmp_path, {"train": [np.arange(6, 22)], "val": [np.arange(6, 22)]}, vocab_size=300)
    shard = store.shards("train")[0]
    assert len(shard) == 17
    for align_bos in (False, True):
        x, y = WindowSampler(store, "train", 16, 3, seed=0, align_bos=align_bos).next_batch()
        assert x.tolist() == [shard[:16].tolist()] * 3 and y.tolist() == [shard[1:].tolist()] * 3
    with pytest.raises(ValueError, match=r"longest 17; a window needs block_size \+ 1 = 18"):
        WindowSampler(store, "train", 17, 3, seed=0)


def test_random_mode_draws_the_last_start_too(tmp_path):
    store = write_store(tmp_path, {"train": [np.arange(6, 23)], "val": [np.arange(6, 23)]}, vocab_size=300)
    shard = store.shards("train")[0]
    x, _ = WindowSampler(store, "train", 16, 32, seed=0).next_batch()
    assert set(x[:, 0].tolist()) == {shard[0], shard[1]}  # 18 tokens: starts 0 and 1


def test_epoch_mode_needs_a_global_batch_at_the_worst_phase(tmp_path):
    """49 tokens hold 3 grid windows of 16 at phase 0 but 2 at phase 15: every phase an epoch may draw
    must fill one global batch, all ranks together, or that epoch would hand out short batches."""
    store = write_store(tmp_path, {"train": [np.arange(6, 54)], "val": [np.arange(6, 54)]}, vocab_size=300)
    assert len(store.shards("train")[0]) == 49
    with pytest.raises(ValueError, match=r"only 2 windows of 16 per epoch, fewer than batch_size \* world_size = 3"):
        WindowSampler(store, "train", 16, 3, seed=0, mode="epoch")
    with pytest.raises(ValueError, match=r"batch_size \* world_size = 4"):
        WindowSampler(store, "train", 16, 2, seed=0, rank=1, world_size=2, mode="epoch")
    sampler = WindowSampler(store, "train", 16, 2, seed=0, mode="epoch")
    assert all(len(sampler.next_batch()[0]) == 2 for _ in range(20))


def test_shards_shorter_than_a_window_leave_the_others_starts_alone(tmp_path):
    """Shards of 10 tokens hold no window of 17: they count zero starts, not a negative number that
    would shift or cut the range of the one shard that holds windows."""
    store = sharded_store(tmp_path, [10] * 40 + [900] + [10] * 40, shard_tokens=10)
    assert [len(s) for s in store.shards("train")] == [10] * 40 + [900] + [10] * 40
    sampler = WindowSampler(store, "train", 16, 64, seed=0)
    starts = [p for _ in range(30) for _, p in locate(store, "train", *sampler.next_batch())]
    # 1920 uniform draws from the 884 starts reach both ends of the range.
    assert min(starts) < 50 and max(starts) > 830


def test_a_resume_with_a_larger_batch_near_an_epochs_end_starts_the_next_epoch(store):
    """Fewer windows left than the new global batch: the resumed sampler rolls over and hands out a full
    batch of the next epoch, not the short rest of this one."""
    small = WindowSampler(store, "train", 16, 1, seed=2, mode="epoch")
    windows = len(small._epoch_plan()[1])
    for _ in range(windows - 3):
        small.next_batch()
    large = WindowSampler(store, "train", 16, 8, seed=2, mode="epoch")
    large.load_state_dict(small.state_dict())
    x, _ = large.next_batch()
    assert x.shape == (8, 16) and (large.epoch, large.pos) == (1, 8)


def test_fixed_batches_are_stable_and_split_across_ranks(store):
    whole = WindowSampler(store, "val", 16, 4, seed=0).fixed_batches(20, seed=9)
    assert [len(x) for x, _ in whole] == [4] * 5
    again = WindowSampler(store, "val", 16, 4, seed=1).fixed_batches(20, seed=9)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole, again, strict=True))
    windows = torch.cat([x for x, _ in whole])
    assert len(torch.unique(windows, dim=0)) > 15  # random starts, not one window repeated
    for rank in range(2):
        sampler = WindowSampler(store, "val", 16, 4, seed=0, rank=rank, world_size=2)
        mine = sampler.fixed_batches(20, seed=9)
        assert [m[0].tolist() for m in mine] == [w[0].tolist() for w in whole[rank::2]]
        assert sampler.step == 0  # eval leaves the training stream alone


def test_fixed_windows_do_not_depend_on_the_batch_size(store):
    """init_batch may fit another micro-batch on another machine: the eval set must stay the same."""
    def windows(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[int, ...]]:
        return sorted(map(tuple, torch.cat([x for x, _ in batches]).tolist()))  # a batch's rows come sorted

    by_4 = windows(WindowSampler(store, "val", 16, 4, seed=0).fixed_batches(20, seed=9))
    batches = WindowSampler(store, "val", 16, 8, seed=0).fixed_batches(20, seed=9)
    assert [len(x) for x, _ in batches] == [8, 8, 4] and windows(batches) == by_4
    shares = [WindowSampler(store, "val", 16, 3, seed=0, rank=r, world_size=2).fixed_batches(20, seed=9)
              for r in range(2)]
    assert windows(shares[0] + shares[1]) == by_4


@pytest.mark.parametrize("mode", ["random", "epoch"])
def test_prefetcher_state_counts_consumed_batches_only(store, mode):
    reference = WindowSampler(store, "train", 16, 12, seed=4, mode=mode)
    want = [reference.next_batch() for _ in range(30)]
    pre = Prefetcher(WindowSampler(store, "train", 16, 12, seed=4, mode=mode), torch.device("cpu"), depth=4)
    for i in range(20):
        assert torch.equal(pre.next()[0], want[i][0])
    while pre.sampler.step < 24:  # let the thread fill its queue: batches in flight
        threading.Event().wait(0.01)
    state = pre.state_dict()
    assert state["step"] == 20 and pre.epoch == state["epoch"]
    pre.close()
    resumed = Prefetcher(WindowSampler(store, "train", 16, 12, seed=4, mode=mode), torch.device("cpu"))
    resumed.load_state_dict(state)
    for i in range(20, 30):
        x, y = resumed.next()
        assert torch.equal(x, want[i][0]) and torch.equal(y, want[i][1])
    resumed.close()
    pre.close()  # idempotent, and a closed prefetcher continues where it was consumed
    assert torch.equal(pre.next()[0], want[20][0])
    pre.close()


def test_loading_a_state_into_a_running_prefetcher_drops_the_batches_in_flight(store):
    reference = WindowSampler(store, "train", 16, 4, seed=4)
    want = [reference.next_batch() for _ in range(11)]
    pre = Prefetcher(WindowSampler(store, "train", 16, 4, seed=4), torch.device("cpu"), depth=2)
    pre.next()
    while pre.sampler.step < 3:  # the second batch is queued
        threading.Event().wait(0.01)
    pre.load_state_dict({**pre.state_dict(), "step": 10})
    x, y = pre.next()
    assert torch.equal(x, want[10][0]) and torch.equal(y, want[10][1])
    pre.close()


def test_prefetcher_reraises_sampler_errors(store):
    sampler = WindowSampler(store, "train", 16, 4, seed=0)
    sampler.next_batch = lambda: 1 / 0
    with pytest.raises(ZeroDivisionError):
        Prefetcher(sampler, torch.device("cpu")).next()


def test_after_a_sampler_error_next_starts_over_where_the_trainer_was(store):
    """The error closes the prefetcher, so a later next() starts a new thread; left open, it waited
    forever on the dead thread's queue."""
    reference = WindowSampler(store, "train", 16, 4, seed=0)
    want = [reference.next_batch() for _ in range(3)][2]
    sampler = WindowSampler(store, "train", 16, 4, seed=0)
    real, calls = sampler.next_batch, [0]

    def fails_third_call():
        calls[0] += 1
        if calls[0] == 3:
            raise ZeroDivisionError
        return real()

    sampler.next_batch = fails_third_call
    pre = Prefetcher(sampler, torch.device("cpu"))
    pre.next(), pre.next()
    with pytest.raises(ZeroDivisionError):
        pre.next()
    assert torch.equal(pre.next()[0], want[0]) and pre.state_dict()["step"] == 3
    pre.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prefetcher_copies_pinned_batches_to_cuda(store):
    want = WindowSampler(store, "train", 16, 4, seed=0).next_batch()
    pre = Prefetcher(WindowSampler(store, "train", 16, 4, seed=0), torch.device("cuda"))
    x, y = pre.next()
    assert x.is_cuda and y.is_cuda
    assert torch.equal(x.cpu(), want[0]) and torch.equal(y.cpu(), want[1])
    pre.close()

"""Training windows from the token store: `block_size + 1` contiguous tokens per row, gathered vectorised.

Every batch is a pure function of a small state, so resume is exact and each rank's stream is
reproducible on its own:

- `random`: B starts drawn with replacement from a generator keyed by (seed, rank) at a position
  set by `step`. Nothing but `step` has to be saved, and ranks never share a stream.
- `epoch`: the grid `phase + k * block_size` (a fresh random phase each epoch) is shuffled by a
  generator seeded by (seed, epoch) -- the same permutation on every rank -- and each global batch
  takes the next `batch_size * world_size` entries, rank r the ones at r, r + world, ... So ranks are
  disjoint, every grid start is used at most once per epoch, and the state is (epoch, pos) with `pos`
  counted in windows, which keeps resume meaningful even if the batch size or world size changes.

With `align_bos` the candidate starts are the documents' [BOS] offsets instead of arbitrary tokens.
Windows never cross a shard boundary: shards are separate files and their concatenation is not a
real text. Sampling a global start number uniformly picks shards in proportion to their valid starts.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.store import TokenStore

MODES = ("random", "epoch")
# Mixed into fixed_batches' seeds so eval windows never coincide with a training stream that
# happens to use the same seed.
_EVAL_TAG = 0xE7A1


class _Starts:
    """The valid window starts of a split, numbered 0..total-1 shard after shard.

    A shard's starts are either explicit offsets ([BOS] positions) or the arithmetic sequence
    first + k * stride, which is never materialised (a 10B-token split would need 80 GB of it).
    """

    def __init__(self, tokens: list[np.memmap], window: int, counts: list[int],
                 explicit: list[np.ndarray] | None = None, first: int = 0, stride: int = 1):
        self.explicit, self.first, self.stride, self.window = explicit, first, stride, window
        # A [len - window + 1, window] view of each shard (no copy): indexing it with B starts reads
        # B contiguous rows, ~20x faster than gathering B * window single elements.
        self.rows = [sliding_window_view(t, window) if len(t) >= window else None for t in tokens]
        self.ends = np.cumsum(counts, dtype=np.int64)
        self.begins = self.ends - np.asarray(counts, dtype=np.int64)
        self.total = int(self.ends[-1]) if len(counts) else 0

    def gather(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows for global start numbers `idx`: one vectorised read per shard touched.

        Rows come out sorted by start. Order within a batch carries no meaning, and sorting groups
        each shard's rows into one slice and reads every file front to back.
        """
        idx = np.sort(idx)
        cuts = np.searchsorted(idx, self.begins[1:]).tolist()
        x, y = np.empty((len(idx), self.window - 1), np.int64), np.empty((len(idx), self.window - 1), np.int64)
        for s, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(idx)], strict=True)):
            if a == b:
                continue
            local = idx[a:b] - self.begins[s]
            starts = self.explicit[s][local] if self.explicit is not None else self.first + local * self.stride
            w = self.rows[s][starts]
            x[a:b], y[a:b] = w[:, :-1], w[:, 1:]
        return torch.from_numpy(x), torch.from_numpy(y)


class TooFewEpochWindows(ValueError):
    """Epoch mode's grid holds fewer windows than one global batch (a smaller batch would fit)."""


class WindowSampler:
    """Batches (x, y) of int64 [batch_size, block_size] on CPU, y being x shifted left by one token."""

    def __init__(self, store: TokenStore, split: str, block_size: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, mode: str = "random", align_bos: bool = False):
        if mode not in MODES:
            raise ValueError(f"sampler mode {mode!r}: expected one of {', '.join(MODES)}")
        if block_size < 1 or batch_size < 1:
            raise ValueError(f"block_size ({block_size}) and batch_size ({batch_size}) must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.split, self.block_size, self.batch_size, self.seed = split, block_size, batch_size, seed
        self.rank, self.world_size, self.mode, self.align_bos = rank, world_size, mode, align_bos
        self.tokens = store.shards(split)
        self.lengths = [len(t) for t in self.tokens]
        window = block_size + 1
        if max(self.lengths, default=0) < window:
            raise ValueError(
                f"split {split!r} of {store.root} is too small: {sum(self.lengths)} tokens in "
                f"{len(self.lengths)} shard(s), longest {max(self.lengths, default=0)}; a window needs "
                f"block_size + 1 = {window} tokens inside one shard")
        self._bos = None
        if align_bos:
            self._bos = [d[d + window <= n] for d, n in zip(store.doc_index(split), self.lengths, strict=True)]
            if not sum(len(b) for b in self._bos):
                raise ValueError(f"split {split!r}: no document start has {window} tokens after it in its shard")
        self._random = self._starts(first=0, stride=1)
        if mode == "epoch":
            # The smallest grid any phase can give: an epoch must hold at least one global batch.
            worst = self._starts(first=0 if align_bos else block_size - 1, stride=block_size).total
            if worst < batch_size * world_size:
                raise TooFewEpochWindows(
                    f"split {split!r}: epoch mode has only {worst} windows of {block_size} per epoch, fewer "
                    f"than batch_size * world_size = {batch_size * world_size}")
        self.step = 0  # batches drawn so far (both modes)
        self.epoch = 0  # completed epochs (epoch mode)
        self.pos = 0  # windows of the current epoch's permutation already handed out, all ranks together
        self._plan: tuple[int, _Starts, np.ndarray] | None = None

    def _counts(self, first: int, stride: int) -> list[int]:
        """Valid starts per shard of the grid first + k * stride (or of the [BOS] offsets)."""
        if self._bos is not None:
            return [len(b) for b in self._bos]
        return [max(0, (n - self.block_size - 1 - first) // stride + 1) for n in self.lengths]

    def _starts(self, first: int, stride: int) -> _Starts:
        counts = self._counts(first, stride)
        if self._bos is not None:
            return _Starts(self.tokens, self.block_size + 1, counts, explicit=self._bos)
        return _Starts(self.tokens, self.block_size + 1, counts, first=first, stride=stride)

    def _phase(self, epoch: int) -> tuple[int, np.random.Generator]:
        """Epoch `epoch`'s grid phase, and the generator that then shuffles its grid."""
        rng = np.random.default_rng([self.seed, epoch])
        return (0 if self.align_bos else int(rng.integers(self.block_size))), rng

    def _epoch_plan(self) -> tuple[_Starts, np.ndarray]:
        """This epoch's grid and its shuffled order: identical on every rank, rebuilt once per epoch."""
        if self._plan is None or self._plan[0] != self.epoch:
            phase, rng = self._phase(self.epoch)
            grid = self._starts(first=phase, stride=self.block_size)
            self._plan = (self.epoch, grid, rng.permutation(grid.total))
        return self._plan[1], self._plan[2]

    def batches_until(self, epochs: int) -> int:
        """Global batches (one next_batch() on every rank) from the current position until `epochs`
        epochs are complete, counted exactly: each epoch's grid size depends on its phase, and an
        epoch hands out batches while a whole one is left (as _roll_over decides)."""
        span, epoch, pos, batches = self.batch_size * self.world_size, self.epoch, self.pos, 0
        while epoch < epochs:
            batches += max(sum(self._counts(self._phase(epoch)[0], self.block_size)) - pos, 0) // span
            epoch, pos = epoch + 1, 0
        return batches

    def _roll_over(self) -> None:
        """Start the next epoch once the rest of the permutation cannot fill a global batch."""
        if self.pos + self.batch_size * self.world_size > len(self._epoch_plan()[1]):
            self.epoch, self.pos = self.epoch + 1, 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "random":
            # Philox is counter-based: keyed by (seed, rank) and started at a counter block of its own
            # for each step, its output is a pure function of (seed, rank, step) with no per-batch
            # seeding hash (the bulk of default_rng's cost at this size). The modulo's bias is below
            # total / 2**64.
            philox = np.random.Philox(key=[self.seed, self.rank], counter=[0, 0, self.step, 0])
            starts = self._random
            idx = (philox.random_raw(self.batch_size) % np.uint64(starts.total)).astype(np.int64)
        else:
            self._roll_over()  # only does something after a resume with a larger batch or world
            starts, order = self._epoch_plan()
            span = self.batch_size * self.world_size
            idx = order[self.pos + self.rank : self.pos + span : self.world_size]
            self.pos += span
            self._roll_over()  # eagerly, so `epoch` counts the epoch as done right after its last batch
        self.step += 1
        return starts.gather(idx)

    def state_dict(self) -> dict:
        return {"mode": self.mode, "step": self.step, "epoch": self.epoch, "pos": self.pos, "seed": self.seed,
                "block_size": self.block_size, "align_bos": self.align_bos}

    def load_state_dict(self, state: dict) -> None:
        # A stream position only means something for the same kind of stream; batch and world size may
        # change (pos counts windows, and random mode reseeds per step anyway).
        for key in ("mode", "seed", "block_size", "align_bos"):
            if state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]!r}, this sampler {getattr(self, key)!r}")
        self.step, self.epoch, self.pos = int(state["step"]), int(state["epoch"]), int(state["pos"])

    def fixed_batches(self, n_windows: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The same `n_windows` random-start windows on every call, in batches of this sampler's
        batch_size (the last one may be short); rank r gets batches r, r + world, ...

        The windows depend only on (seed, n_windows), not on the batch size (init_batch may pick
        another one on another machine) or the world size; the ranks together hold the set once.
        """
        starts = np.random.default_rng([seed, _EVAL_TAG]).integers(0, self._random.total, n_windows)
        cuts = range(self.rank * self.batch_size, n_windows, self.world_size * self.batch_size)
        return [self._random.gather(starts[at:at + self.batch_size]) for at in cuts]

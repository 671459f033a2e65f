"""Trainer benchmark on CPU: the window sampler against a per-row loop, and our GPT against a plain
GPT-2-style reference written below, at the same shape.

    .venv/bin/python bench/train.py [--tokens 50000000] [--batch 64] [--block 256] [--reps 5]

(a) Sampler batches/s on a synthetic uint16 store (written to a temp dir) against the usual per-row
    loop: a fresh np.memmap per batch and torch.stack of one slice per row. Also the sampler's share
    of one forward + backward + AdamW step of the tiny model at the same batch shape.
(b) Training tokens/s of our model -- as configured in configs/tiny.yml, and configured GPT-2-style
    (learned positions, LayerNorm, GELU, biases: the reference's architecture) -- against the
    reference. Our model runs as the trainer calls it (no logits returned, so its loss is the fused
    one, model/kernels/chunked_loss.py on CPU), while the reference computes the full logits and
    F.cross_entropy: same architecture, different loss, so those rows' gain is partly the loss's.
    A last row runs our GPT-2-style model with its plain loss (model.fused_loss=false), like for
    like with the reference in both.
Timings take turns (sampler / loop, and the models, four unless --models names fewer, step by step,
each rep starting one model later) so that load from other processes on a shared machine hits them
alike; each figure is a median, with the best rep beside it.
Each model's peak resident memory over two training steps is measured in a fresh process.

Targets (issue 3): sampler >= 20x the loop and < 1% of a step; our model >= 1.0x the reference.
Not a test: prints a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
# Run as `python bench/train.py`, this file's folder comes first on the path and its name would
# shadow the `train` package: put the repository root there instead.
sys.path[0] = str(ROOT)

from common.cli import number  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from pipeline.store import FORMAT_VERSION, ShardWriter, TokenStore, write_manifest  # noqa: E402
from train.sampler import WindowSampler  # noqa: E402


def synthetic_store(root: Path, tokens: int, vocab: int, seed: int = 0) -> TokenStore:
    """~`tokens` random ids in documents of 50..2000 tokens, written in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype("<u2")
    splits = {}
    for split, n in (("train", tokens), ("val", max(tokens // 100, 10_000))):
        writer = ShardWriter(root, split, dtype, vocab, shard_tokens=1 << 24)
        written = docs = 0
        while written < n:
            lengths = rng.integers(50, 2000, size=1000)
            ids = rng.integers(6, vocab, size=int(lengths.sum()), dtype=np.uint16)
            ids[np.cumsum(lengths) - lengths] = 5  # [BOS]
            writer.add(ids, lengths)
            written, docs = written + int(lengths.sum()), docs + len(lengths)
        splits[split] = {"tokens": written, "documents": docs, "shards": writer.close()}
    write_manifest(root, {"format_version": FORMAT_VERSION, "dtype": dtype.name, "vocab_size": vocab, "bos_id": 5,
                          "tokenizer": {"path": "tokenizer.json", "sha256": ""}, "splits": splits})
    return TokenStore(root)


def per_row_loop_batch(path: Path, block: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline: reopen the file every batch, then one slice, cast and tensor per row."""
    data = np.memmap(path, dtype=np.uint16, mode="r")
    starts = torch.randint(len(data) - block, (batch,))
    x = torch.stack([torch.from_numpy(data[i : i + block].astype(np.int64)) for i in starts])
    y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + block].astype(np.int64)) for i in starts])
    return x, y


def interleaved(fns: dict[str, tuple[Callable[[], object], int]], reps: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each fn, one timing per rep; the fns take turns within every rep so that
    load from other processes on a shared machine hits them alike, starting one later each rep so
    that none always runs right after the same other (whose freed memory, caches or heat it would
    inherit). Warmup reps (page cache, lazy allocations, oneDNN kernel selection) are not recorded."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    for rep in range(warmup + reps):
        for name, (fn, calls) in order[rep % len(order):] + order[: rep % len(order)]:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            if rep >= warmup:
                times[name].append((time.perf_counter() - t0) / calls)
    return times


class RefBlock(nn.Module):
    """GPT-2's block: pre-LayerNorm, fused qkv, SDPA causal attention, 4x GELU MLP, biases everywhere."""

    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.fc_out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class RefGPT(nn.Module):
    """Learned positions, tied token embedding / output head, final LayerNorm; returns (logits, loss)."""

    def __init__(self, vocab: int, block: int, n_layer: int, n_head: int, d: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList(RefBlock(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.wte(idx) + self.wpe.weight[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def train_step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    # The same optimizer for every model: AdamW (fused where this torch has it on CPU), decay on matrices.
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=3e-4, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(groups, lr=3e-4)

    # Our GPT as the trainer calls it: no logits wanted, so the loss may fuse with the projection.
    kwargs = {"return_logits": False} if isinstance(model, GPT) else {}

    def step() -> None:
        _, loss = model(x, y, **kwargs)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


KINDS = ("ours", "gpt2-style", "gpt2-style-plain", "reference")


def build_model(kind: str, shape: dict) -> nn.Module:
    """ours: GPTConfig(**shape); gpt2-style: our GPT configured as GPT-2, gpt2-style-plain: the same with the
    plain loss (logits, then F.cross_entropy); reference: RefGPT at that shape."""
    if kind == "ours":
        return GPT(GPTConfig(**shape))
    if kind.startswith("gpt2-style"):
        gpt2 = {"pos_encoding": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True,
                "fused_loss": kind != "gpt2-style-plain"}
        return GPT(GPTConfig(**{**shape, **gpt2}))
    return RefGPT(shape["vocab_size"], shape["block_size"], shape["n_layer"], shape["n_head"], shape["d_model"])


def peak_rss_mib(kind: str, shape: dict, x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak resident memory (MiB) of this process after building one model and taking two training
    steps on (x, y): run in a fresh process, so the peak is this model's alone."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    step = train_step_fn(build_model(kind, shape), x, y)
    step()
    step()
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so a spawned child
    # would report at least the parent's size at the fork.
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Checked before any work: --reps 0 failed in statistics.median after every model had been timed,
    # and a --vocab past uint16 (the synthetic store's dtype) in numpy while writing the store.
    ap.add_argument("--tokens", type=number(int, 1), default=50_000_000, help="train tokens in the synthetic store")
    ap.add_argument("--batch", type=number(int, 1), default=64)
    ap.add_argument("--block", type=number(int, 1), default=256)
    ap.add_argument("--vocab", type=number(int, 7, high=1 << 16), default=16384,
                    help="the pipeline's default BPE vocabulary (ids 6 and up; a uint16 store)")
    ap.add_argument("--reps", type=number(int, 1), default=5,
                    help="timed training steps per model (after 2 warmup steps)")
    ap.add_argument("--config", default=str(ROOT / "configs/tiny.yml"))
    ap.add_argument("--models", nargs="+", choices=KINDS, default=list(KINDS),
                    help="which models to time (the reference always); fewer share the process with fewer others")
    args = ap.parse_args()
    # Read before the store is written and the sampler timed: a missing file used to end the run there.
    try:
        shape = yaml.safe_load(Path(args.config).read_text())["model"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        ap.error(f"--config {args.config}: no model section to read ({type(err).__name__}: {err})")
    torch.set_num_threads(2)
    torch.manual_seed(0)
    B, T = args.batch, args.block

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store = synthetic_store(Path(tmp), args.tokens, args.vocab)
        print(f"synthetic store: {store.num_tokens('train'):,} train tokens in {len(store.shards('train'))} "
              f"uint16 shards, written in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        sampler = WindowSampler(store, "train", T, B, seed=0)
        first_shard = store.shard_path(store.manifest["splits"]["train"]["shards"][0]["file"])
        data = interleaved({"sampler": (sampler.next_batch, 200),
                            "loop": (lambda: per_row_loop_batch(first_shard, T, B), 20)}, reps=7, warmup=1)
        x, y = sampler.next_batch()

    shape.update(vocab_size=args.vocab, block_size=T)
    ours = f"ours ({Path(args.config).stem}.yml), chunked loss"
    labels = {"ours": ours, "gpt2-style": "ours GPT-2-style, chunked loss",
              "gpt2-style-plain": "ours GPT-2-style, plain loss", "reference": "reference GPT-2"}
    kinds = {labels[kind]: kind for kind in KINDS if kind in {*args.models, "reference"}}
    models = {name: build_model(kind, shape) for name, kind in kinds.items()}
    steps = interleaved({name: (train_step_fn(m, x, y), 1) for name, m in models.items()}, args.reps, warmup=2)
    # Spawned, not forked: a fork would start from this process's peak, not from an empty heap.
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        rss = {name: pool.apply(peak_rss_mib, (kind, shape, x, y)) for name, kind in kinds.items()}

    # Medians are the headline; on a shared machine the best rep is the closer estimate of the cost
    # itself, so both are shown.
    med = {name: statistics.median(t) for name, t in {**data, **steps}.items()}
    best = {name: min(t) for name, t in {**data, **steps}.items()}
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nB={B} T={T} vocab={args.vocab}, model {shape}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs ({platform.machine()}), load average {load}\n")
    print("| measure | median (best) | ratio: median (best) | target | peak RSS |")
    print("|---|---|---|---|---|")
    for name, label in (("sampler", "sampler (vectorised)"), ("loop", "per-row loop (memmap per batch)")):
        print(f"| {label} | {1 / med[name]:,.0f} ({1 / best[name]:,.0f}) batches/s, {med[name] * 1e6:.0f} us "
              f"| {med['loop'] / med[name]:.1f}x ({best['loop'] / best[name]:.1f}x) the loop "
              f"| {'>= 20x' if name == 'sampler' else ''} | |")
    if ours in med:
        print(f"| sampler share of a train step, {ours} | {med['sampler'] * 1e6:.0f} us / {med[ours]:.2f} s "
              f"| {100 * med['sampler'] / med[ours]:.4f}% ({100 * best['sampler'] / best[ours]:.4f}%) | < 1% | |")
    ref = "reference GPT-2"
    for name, m in models.items():
        params = sum(p.numel() for p in m.parameters())
        print(f"| {name}: {params / 1e6:.2f}M params | {B * T / med[name]:,.0f} ({B * T / best[name]:,.0f}) "
              f"tokens/s, {med[name]:.2f} s/step | {med[ref] / med[name]:.2f}x ({best[ref] / best[name]:.2f}x) "
              f"the reference | {'' if name == ref else '>= 1.0x'} | {rss[name]:,.0f} MiB |")
    print("\nThe chunked-loss rows differ from the reference in the loss too (no [B*T, vocab] logits): same "
          "architecture, different loss. The plain-loss row is like for like.")


if __name__ == "__main__":
    main()

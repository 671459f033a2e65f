#!/usr/bin/env python3
"""GPU check (`make gpu-check`): train gpt-45m for ~200 steps compiled + bf16, then the same eagerly,
and report tokens/s, MFU, peak memory and compile time.

Made for a lent machine with no internet and no venv: it needs only torch, numpy and pyyaml, builds a
synthetic token store on the spot unless data_cache/shakespeare exists, runs bin/train.py in
subprocesses (a fresh process per run, so peak memory and compile caches are per run), and writes
its logs and a JSON summary under $OUT when that is set. `--smoke` runs the same path on CPU with a
tiny model (about 2 minutes on 2 cores, most of it compiling), so the one GPU run cannot die of a typo.

Runs, in order: `compiled` (the defaults) and `eager` (the same without torch.compile), the two the
issue asks for; then speed-only compiled runs: `plain` (the model's own Triton kernels off,
model/kernels: their gain measured in the same call) and two other shapes of about the same size,
`deep512` (12 layers x 512, 8 heads of 64: gpt-45m's shape until 2026-11-28, which missed the MFU
target on an H100 at 39.8%) and `wide128` (7 layers x 640, 5 heads of 128; 45.2M), so each lent GPU
measures the preset's speed beside them (their quality: bench/shapes.py).
`--variant 'NAME: key=value ...'`
(repeatable) adds compiled runs after those, so several settings are compared on one lent machine
in one call.
Upper-case keys (`TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1`) are set in the run's environment
instead. Variant runs skip evaluation: they measure training speed only.

The whole call keeps within `--budget` seconds (default 540; the device tool stops a command at 600):
each run's limit is `--timeout` or what is left, whichever is less, and a run with too little time
left is skipped, with a line saying so in the table and the JSON (the exit status is then 1). Rates
are medians over the steps from STEADY_FROM on; a run that logged none of those (too few --steps,
or killed early) shows no rates rather than those of its compile-laden first steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.cli import number  # noqa: E402
from pipeline.store import StoreError, TokenStore, write_store  # noqa: E402
from train.metrics import read_metrics  # noqa: E402

SHAKESPEARE = REPO / "data_cache" / "shakespeare"
# After this many steps compile, cudnn autotuning and the allocator have settled.
STEADY_FROM = 30
# gpt-45m's compiled runs took ~60 s on an H200 (init + compile ~35 s of it): a run given less would
# be killed before its steady steps, so it is skipped instead.
SHORTEST_RUN_S = 60.0
# The built-in runs in their order, with their overrides; all but `eager` are compiled, and only
# `compiled` and `eager` evaluate (the rest measure training speed only).
RUNS = {
    "compiled": [],
    "eager": [],
    "plain": ["model.fused_loss=false", "model.fused_swiglu=false", "model.fused_rope=false"],
    "deep512": ["model.n_layer=12", "model.d_model=512", "model.n_head=8"],
    "wide128": ["model.n_layer=7", "model.d_model=640", "model.n_head=5"],
}
OTHER_SHAPES = ("deep512", "wide128")
EVALUATED = ("compiled", "eager")
# --smoke's model: two layers of 64 over windows of 64 tokens, the `tiny` preset cut to a CPU test's size.
SMOKE_SHAPE = ["model.n_layer=2", "model.n_head=2", "model.d_model=64", "model.block_size=64"]


def synthetic_store(root: Path, tokens: int, vocab: int, seed: int = 0) -> TokenStore:
    """Documents of 500-4000 tokens: an arithmetic walk through the vocabulary with 25% Zipf-distributed
    noise, so there is something to learn while every id gets used."""
    if (root / "manifest.json").exists():
        return TokenStore(root)
    rng = np.random.default_rng(seed)
    docs, total = [], 0
    while total < tokens:
        n = int(rng.integers(500, 4000))
        ids = (rng.integers(6, vocab) + 7 * np.arange(n)) % (vocab - 6) + 6
        noise = rng.random(n) < 0.25
        ids[noise] = np.minimum(rng.zipf(1.2, int(noise.sum())) + 5, vocab - 1)
        docs.append(ids)
        total += n + 1
    n_val = max(len(docs) // 100, 2)
    bytes_per_token = 4  # a made-up figure so val_bpb is printed; the tokens mean nothing
    return write_store(root, {"train": docs[n_val:], "val": docs[:n_val]}, vocab_size=vocab,
                       train_text_bytes=bytes_per_token * (total - sum(map(len, docs[:n_val]))),
                       val_text_bytes=bytes_per_token * sum(map(len, docs[:n_val])))


def pick_store(args: argparse.Namespace, work: Path) -> Path:
    if not args.smoke and SHAKESPEARE.exists():
        try:
            TokenStore(SHAKESPEARE)
            return SHAKESPEARE
        except StoreError as err:
            print(f"not using {SHAKESPEARE}: {err}")
    t0 = time.perf_counter()
    # Named by its size and vocabulary: a store left by a --smoke run in the same --work-dir was reused
    # whatever --tokens and --vocab said.
    store = synthetic_store(work / f"store-{args.tokens}-v{args.vocab}", args.tokens, args.vocab)
    print(f"synthetic store {store.root}: {store.num_tokens('train'):,} train tokens, vocab {store.vocab_size} "
          f"({time.perf_counter() - t0:.1f}s)")
    return store.root


def cuda_missing(script: str) -> bool:
    """True, after saying so on stderr, when there is no CUDA device: the GPU scripts then exit 2 before
    building a store or compiling anything, pointing at their CPU smoke path."""
    import torch

    if torch.cuda.is_available():
        return False
    print(f"error: no CUDA device; `{script} --smoke` runs the same path on CPU", file=sys.stderr)
    return True


def run_timeout(left: float, per_run: float) -> float | None:
    """The next run's time limit from what is `left` of the budget: `per_run` or less; None to skip the
    run when less than SHORTEST_RUN_S (or than `per_run`, if that is shorter) is left."""
    if left < min(per_run, SHORTEST_RUN_S):
        return None
    return min(per_run, left)


SUMMARY_KEYS = ("kernels_speedup", "compile_s", "device", "torch", "store", "steps", "steady_from", "block_size")
"""The keys of gpu_check.json that are not a run's name (main sets them after the runs)."""


def parse_variant(text: str) -> tuple[str, list[str], dict[str, str]]:
    """'NAME: key=value ENV_VAR=value ...' -> (name, overrides, environment)."""
    name, sep, rest = text.partition(":")
    name = name.strip()
    # Not a built-in run's name, nor a key gpu_check.json keeps beside the runs' results: a variant named
    # block_size had its result replaced by 1024 at the end, and the table then crashed on it.
    if not sep or not name.replace("_", "").replace("-", "").isalnum() or name in RUNS or name in SUMMARY_KEYS:
        raise argparse.ArgumentTypeError(f"--variant wants 'NAME: key=value ...' with a new plain NAME; got {text!r}")
    overrides, env = [], {}
    for token in rest.split():
        key, eq, value = token.partition("=")
        if not eq:
            raise argparse.ArgumentTypeError(f"--variant {name}: {token!r} is not key=value")
        if key.isupper():
            env[key] = value
        else:
            overrides.append(token)
    return name, overrides, env


def run_args(smoke: bool, store: Path, out_dir: Path, steps: int, micro_batch: int, log_interval: int) -> list[str]:
    """bin/train.py's arguments for one measured run (shared with bench/shapes.py): the preset (`tiny`
    on the CPU in float32 for --smoke, else gpt-45m on CUDA in bf16), a fresh run, no checkpoints
    kept along the way, one micro-batch per step."""
    preset, device = ("tiny", ["device=cpu", "dtype=float32"]) if smoke else \
        ("gpt-45m", ["device=cuda", "dtype=bfloat16"])
    return ["--config", str(REPO / f"configs/{preset}.yml"), f"data={store}", f"out_dir={out_dir}", "resume=none",
            f"max_steps={steps}", f"micro_batch={micro_batch}", "grad_accum=1", "ckpt_interval=0", "keep_last=1",
            f"log_interval={log_interval}", *device]


def train_args(args: argparse.Namespace, store: Path, out_dir: Path, compiled: bool) -> list[str]:
    argv = [*run_args(args.smoke, store, out_dir, args.steps, args.micro_batch, args.log_interval),
            f"warmup_steps={min(20, args.steps // 2)}", "eval_interval=0", f"eval_batches={args.eval_batches}",
            f"compile={str(compiled).lower()}"]
    return [*argv, *SMOKE_SHAPE] if args.smoke else argv


def run_training(argv: list[str], log_path: Path, timeout: float, extra_env: dict[str, str]) -> tuple[int, float]:
    """bin/train.py in a child process, its output echoed live and saved; returns (exit code, seconds)."""
    cmd = [sys.executable, str(REPO / "bin/train.py"), *argv]
    print("$ " + " ".join([*(f"{k}={v}" for k, v in extra_env.items()), *cmd]), flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), **extra_env}
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # A timer, not a check per output line: a compile or autotuning stall prints nothing for minutes.
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        try:
            in_config = False
            for line in proc.stdout:
                log.write(line)
                # The config dump runs from "config:" to "parameters: ..."; it stays in the log file only.
                in_config = line.startswith("config:") or (in_config and not line.startswith("parameters:"))
                if not in_config:
                    print("   " + line, end="", flush=True)
            code = proc.wait()
        finally:
            watchdog.cancel()
        if time.perf_counter() - t0 >= timeout:
            print(f"   ... killed after {timeout:.0f}s", flush=True)
    return code, time.perf_counter() - t0


def summarise(run_dir: Path, code: int, wall_s: float, steady_from: int) -> dict:
    """A run's figures from its metrics.jsonl; rates only from steps >= steady_from (None if it logged none)."""
    records = read_metrics(run_dir / "metrics.jsonl")
    start = next((r for r in records if r.get("event") == "start"), {})
    steps = [r for r in records if "loss" in r]
    steady = [r for r in steps if r["step"] >= steady_from]
    med = lambda key: statistics.median(r[key] for r in steady) if steady and steady[0].get(key) is not None else None  # noqa: E731
    evals = [r for r in records if "val_loss" in r]
    first = next((r["first_step_s"] for r in steps if "first_step_s" in r), None)
    return {
        "exit_code": code, "wall_s": round(wall_s, 1), "steps": steps[-1]["step"] if steps else 0,
        "steady": bool(steady),
        "micro_batch": start.get("micro_batch"), "grad_accum": start.get("grad_accum"), "params": start.get("params"),
        "tokens_per_s": med("tokens_per_s"), "mfu": med("mfu"), "step_s": med("step_s"),
        "peak_mem_gb": max((r["peak_mem_gb"] for r in steps if r.get("peak_mem_gb") is not None), default=None),
        "init_s": start.get("init_s"), "first_step_s": first,
        "first_loss": steps[0]["loss"] if steps else None, "last_loss": steps[-1]["loss"] if steps else None,
        "val_loss": evals[-1]["val_loss"] if evals else None,
    }


def fmt(value, spec: str) -> str:
    """format(), with '-' for a missing value; a trailing '%' in spec is a literal percent sign."""
    if value is None:
        return "-"
    return format(value, spec[:-1]) + "%" if spec.endswith("%") else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, a few steps: tests this script")
    # Refused here, on the CPU: `--steps 0` and `--micro-batch 0` silently became the defaults (the
    # `or` below), and other bad numbers failed in every training run on the lent GPU.
    parser.add_argument("--steps", type=number(int, 1), default=None, help="steps per run (default 200; smoke 6)")
    parser.add_argument("--micro-batch", type=number(int, 1), default=None,
                        help="sequences of 1024 per step (default 64)")
    parser.add_argument("--tokens", type=number(int, 1), default=50_000_000, help="synthetic store size in tokens")
    parser.add_argument("--vocab", type=number(int, 7), default=16384, help="synthetic store vocabulary")
    parser.add_argument("--eval-batches", type=number(int, 0), default=8)
    parser.add_argument("--log-interval", type=number(int, 1), default=10)
    parser.add_argument("--timeout", type=number(float, 0, above=True), default=150.0,
                        help="seconds allowed per training run (one takes ~60 s on an H200)")
    parser.add_argument("--budget", type=number(float, 0), default=540.0,
                        help="seconds for the whole call, store included (default %(default)s)")
    parser.add_argument("--runs", default=",".join(RUNS),
                        help=f"which built-in runs, comma-separated, from {', '.join(RUNS)} (default: all)")
    parser.add_argument("--variant", type=parse_variant, action="append", default=[],
                        help="'NAME: key=value ...': an extra compiled run with these overrides (repeatable)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/smallgpt-gpu-check"))
    args = parser.parse_args(argv)
    names = [name for name, _, _ in args.variant]
    if len(set(names)) < len(names):  # the second run's results, log and row replaced the first's
        parser.error(f"--variant: {sorted({n for n in names if names.count(n) > 1})[0]!r} named twice")
    deadline = time.monotonic() + args.budget
    if args.smoke:
        args.steps, args.micro_batch = args.steps or 6, args.micro_batch or 4
        args.tokens, args.vocab, args.log_interval = min(args.tokens, 200_000), min(args.vocab, 512), 2
    args.steps, args.micro_batch = args.steps or 200, args.micro_batch or 64
    # A smoke run's few steps are all start-up; its second half stands in for the steady state.
    steady_from = args.steps // 2 if args.smoke else STEADY_FROM
    out = Path(os.environ.get("OUT") or REPO / "runs" / "gpu-check")

    import torch  # after argparse: --help stays instant

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    print(f"torch {torch.__version__} | cuda {torch.version.cuda} | device {device} | python {sys.version.split()[0]}")
    if not args.smoke and cuda_missing("bench/gpu_check.py"):
        return 2

    chosen = args.runs.split(",")
    if not set(chosen) <= set(RUNS):
        print(f"error: --runs takes {', '.join(RUNS)}; got {args.runs!r}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused call leaves no empty folder in runs/
    store = pick_store(args, args.work_dir)
    # --smoke keeps every run at its tiny shape: the shape runs' overrides came after it, and the smoke
    # trained two 35M-parameter models on the CPU (minutes more, for nothing the tiny shape does not test).
    shapes = {name: [] if args.smoke and name in OTHER_SHAPES else overrides for name, overrides in RUNS.items()}
    plan = [(name, overrides if name in EVALUATED else [*overrides, "eval_batches=0"], {})
            for name, overrides in shapes.items() if name in chosen]
    plan += [(name, [*overrides, "eval_batches=0"], env) for name, overrides, env in args.variant]
    runs, results = [name for name, _, _ in plan], {}
    for name, overrides, env in plan:
        left = deadline - time.monotonic()
        timeout = run_timeout(left, args.timeout)
        if timeout is None:
            results[name] = {"skipped": f"{left:.0f} s of --budget {args.budget:.0f} left", "overrides": overrides,
                             "env": env}
            print(f"skipped {name}: {results[name]['skipped']}", flush=True)
            (out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")
            continue
        run_dir = args.work_dir / name
        shutil.rmtree(run_dir, ignore_errors=True)
        argv = [*train_args(args, store, run_dir, name != "eager"), *overrides]
        # Cold compile caches per run: compile times compare, and no run reuses another's graph (the
        # cache key does not cover e.g. the attention-kernel preference, which is decided at tracing).
        # Triton's own cache too: inductor points TRITON_CACHE_DIR into its cache only once it loads
        # compiled kernels, so without it the model's @triton.jit kernels (model/kernels) of an eager
        # run went to ~/.triton/cache, which outlives the run: warm for a later run or call.
        caches = args.work_dir / f"{name}-caches"
        shutil.rmtree(caches, ignore_errors=True)
        cache_env = {"TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"), "TRITON_CACHE_DIR": str(caches / "triton")}
        code, wall = run_training(argv, out / f"train_{name}.log", timeout, {**cache_env, **env})
        results[name] = summarise(run_dir, code, wall, steady_from) | {"overrides": overrides, "env": env}
        # Written after every run: a call cut short by its time limit still returns what finished.
        (out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")
    c, e, p = results.get("compiled", {}), results.get("eager", {}), results.get("plain", {})
    if c.get("tokens_per_s") and p.get("tokens_per_s"):
        results["kernels_speedup"] = round(c["tokens_per_s"] / p["tokens_per_s"], 3)
    startup = [r.get("init_s", 0) + r.get("first_step_s", 0) if r.get("first_step_s") else None for r in (c, e)]
    if None not in startup:
        # Both runs do the same probe and first step; what the compiled one spends beyond that is compiling.
        results["compile_s"] = round(startup[0] - startup[1], 1)
    results.update(device=device, torch=torch.__version__, store=str(store), steps=args.steps,  # SUMMARY_KEYS
                   steady_from=steady_from, block_size=1024 if not args.smoke else 64)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")

    print(f"\n== gpu check on {device} (torch {torch.__version__}), {args.steps} steps, store {store}")
    print(f"{'run':<12} {'exit':>4} {'mb x ga':>8} {'tok/s':>10} {'MFU':>6} {'step ms':>8} {'peak GB':>8} "
          f"{'init s':>7} {'1st step s':>10} {'wall s':>7} {'loss':>13} {'val':>6}")
    for name in runs:
        r = results[name]
        if "skipped" in r:
            print(f"{name:<12} skipped: {r['skipped']}")
            continue
        print(f"{name:<12} {r['exit_code']:>4} {fmt(r['micro_batch'], 'd'):>3} x {fmt(r['grad_accum'], 'd'):<2} "
              f"{fmt(r['tokens_per_s'], ',.0f'):>10} {fmt(r['mfu'] and 100 * r['mfu'], '.1f%'):>6} "
              f"{fmt(r['step_s'] and 1000 * r['step_s'], '.1f'):>8} {fmt(r['peak_mem_gb'], '.1f'):>8} "
              f"{fmt(r['init_s'], '.1f'):>7} {fmt(r['first_step_s'], '.1f'):>10} {r['wall_s']:>7.1f} "
              f"{fmt(r['first_loss'], '.2f'):>6}->{fmt(r['last_loss'], '.2f'):<6} {fmt(r['val_loss'], '.2f'):>6}")
    unsteady = [name for name in runs if results[name].get("steady") is False]
    if unsteady:
        print(f"  no rates for {', '.join(unsteady)}: no step >= {steady_from} logged (not steady)")
    # What each run was given: --smoke ran the other shapes at its tiny shape, not RUNS' shapes.
    legend = [(name, shapes[name] or ["(--smoke: the tiny shape)"], {})
              for name in RUNS if name in chosen and RUNS[name]]
    for name, overrides, env in [*legend, *args.variant]:
        print(f"  {name}: {' '.join([*(f'{k}={v}' for k, v in env.items()), *overrides])}")
    print(f"compile time (compiled minus eager, init + first step): {fmt(results.get('compile_s'), '.1f')} s")
    print(f"model/kernels: compiled / plain tokens/s = {fmt(results.get('kernels_speedup'), '.3f')}")
    if c.get("mfu") is not None:
        verdict = "met" if c["mfu"] >= 0.45 else "NOT met"
        print(f"MFU target >= 45% (set for an H100; this is {device}): {verdict} by the preset ({100 * c['mfu']:.1f}%)")
        for name in OTHER_SHAPES:
            if results.get(name, {}).get("mfu") is not None:
                print(f"  other shape {name}: {100 * results[name]['mfu']:.1f}% (speed only, not quality)")
    print(f"summary: {out / 'gpu_check.json'}")
    return 0 if all(results[name].get("exit_code") == 0 for name in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())

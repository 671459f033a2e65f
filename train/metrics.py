"""Progress lines, the run's metrics.jsonl, and model FLOPs utilisation (MFU).

metrics.jsonl holds one JSON object per line, each with a `step`: training records (loss, lr,
tokens_per_s, ...), eval records (val_loss, val_ppl, val_bpb) and a few events (`event` key). A
resumed run first cuts the file back to its checkpoint's step, so the file always tells one
consistent history even after a kill -9.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from common.files import atomic_write_bytes

# Dense (no sparsity) bf16/fp16 tensor-core peaks in FLOP/s, from the vendors' datasheets. Matched as
# substrings of torch.cuda.get_device_name(), the longest match winning: a variant's name contains
# its family's ("NVIDIA H200 NVL" contains "H200"), and an order-based rule mis-rated the variants
# whenever one was added below its family.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12),
    ("H200", 989e12),  # SXM
    ("H200 NVL", 835e12),
    ("H100", 989e12),  # SXM, e.g. "NVIDIA H100 80GB HBM3"
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H800", 989e12),
    ("H800 PCIe", 756e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("RTX A6000", 155e12),
    ("V100", 125e12),
    ("T4", 65e12),
)


def peak_flops_of(name: str) -> float | None:
    """The peak bf16/fp16 FLOP/s of a GPU named `name` (torch.cuda.get_device_name), None if unknown."""
    matches = [(len(key), peak) for key, peak in PEAK_FLOPS if key in name]
    return max(matches)[1] if matches else None


def peak_flops(device: torch.device) -> float | None:
    """The GPU's peak bf16/fp16 FLOP/s, or None on CPU or an unknown card (then no MFU is shown)."""
    if device.type != "cuda":
        return None
    return peak_flops_of(torch.cuda.get_device_name(device))


def format_duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def format_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def progress_line(rec: dict[str, Any], max_steps: int, eta_s: float | None) -> str:
    parts = [
        f"step {rec['step']}/{max_steps}",
        "loss n/a" if rec["loss"] is None else f"loss {rec['loss']:.4f}",
        f"lr {rec['lr']:.2e}",
        f"gnorm {rec['grad_norm']:.2f}",
        f"{format_count(rec['tokens_per_s'])} tok/s",
    ]
    if rec.get("mfu") is not None:
        parts.append(f"mfu {100 * rec['mfu']:.1f}%")
    if rec.get("peak_mem_gb") is not None:
        parts.append(f"mem {rec['peak_mem_gb']:.1f}GB")
    if rec.get("skipped"):
        parts.append(f"skipped {rec['skipped']}")
    if eta_s is not None:
        parts.append(f"eta {format_duration(eta_s)}")
    return " | ".join(parts)


def eval_line(rec: dict[str, Any]) -> str:
    line = f"eval step {rec['step']} | val_loss {rec['val_loss']:.4f} | val_ppl {rec['val_ppl']:.2f}"
    if rec.get("val_bpb") is not None:
        line += f" | val_bpb {rec['val_bpb']:.4f}"
    return line


def eval_record(step: int, tokens: int, loss: float, bytes_per_token: float) -> dict[str, Any]:
    """Loss in nats per token, perplexity, and bits per UTF-8 byte (None if the store lacks byte counts)."""
    return {
        "step": step,
        "tokens": tokens,
        "val_loss": loss,
        "val_ppl": math.exp(min(loss, 700.0)),  # exp overflows a float past ~709
        "val_bpb": loss / math.log(2) / bytes_per_token if bytes_per_token > 0 else None,
    }


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl; a torn last line (the writer was killed mid-write) is dropped."""
    records = []
    path = Path(path)
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


class MetricsLog:
    """Appends records to run_dir/metrics.jsonl, flushed per record so a kill loses none that were
    logged. Only rank 0 makes one; records are identical on every rank anyway (all-reduced)."""

    def __init__(self, path: str | Path, keep_through: int):
        """Keep the records of steps <= keep_through (the resumed checkpoint's step; -1 on a fresh
        start): later ones belong to steps the resumed run will redo."""
        self.path = Path(path)
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= keep_through]
        # Replaced whole, never truncated in place: a kill -9 in between lost the run's whole history.
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        self._file = open(self.path, "a")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

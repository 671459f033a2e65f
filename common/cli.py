"""argparse helpers shared by the scripts in bin/ that do not take a stage config (sample, eval, demo).

`number(...)` is a `type=` whose error names what the option expects: argparse reports a failing
type function by its __name__ (`invalid parse value: 'abc'` for a closure called parse), so the
check raises its own message. `path_arg` refuses an empty path (`--data "$STORE"` with STORE unset),
which was taken as the current folder or, for an optional one, as not given. `resolve_device` turns
--device into a device this torch can use, or a one-line error instead of torch's RuntimeError
traceback at the first tensor moved there.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Callable

UINT64_MAX = (1 << 64) - 1  # torch.Generator.manual_seed takes seeds up to this


def number(kind: type, low: float | None = None, *, above: bool = False,
           high: float | None = None) -> Callable[[str], int | float]:
    """An argparse `type=` for an int or (finite) float option that is >= low (> low with `above`)
    and <= high; any other text is an error saying so, e.g. `--top-k: expected an integer >= 1, got 'x'`."""
    want = "an integer" if kind is int else "a number"
    if low is not None:
        want += f" {'>' if above else '>='} {low}"
    if high is not None:
        want += f"{' and' if low is not None else ''} <= {high}"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if (value is None or (kind is float and not math.isfinite(value)) or (low is not None and value < low)
                or (above and value == low) or (high is not None and value > high)):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return value

    return parse


def path_arg(text: str) -> str:
    """An argparse `type=` for a file or folder option: any text but the empty string. Empty is what an
    unset shell variable gives (`--out "$DIR"`): exporting into the current folder, or evaluating the
    training store instead of the one meant, would go on without a word."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path; name the file or folder")
    return text


def resolve_device(spec: str) -> str:
    """`auto` (cuda when this torch sees a GPU, else cpu) or a device torch can allocate on; anything
    else is a ValueError naming --device: `tpu`, `cuda` on a machine without CUDA, `cuda:3` of two GPUs."""
    import torch  # here, not at the top: bin/demo.py uses number() without needing torch loaded

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"--device {spec}: not a device name (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: this torch sees no CUDA device")
    if device.type == "meta":  # allocates nothing, so the probe below passes: the model would hold no weights
        raise ValueError(f"--device {spec}: holds no data; use cpu or a GPU")
    try:
        torch.empty(0, device=device)
    except Exception as err:  # an index past the last GPU, a backend this build lacks (several exception types)
        reason = (str(err).strip() or type(err).__name__).splitlines()[0].split(". ")[0][:120]
        raise ValueError(f"--device {spec}: not usable by this torch ({reason})") from None
    return spec


def quiet_ctrl_c(main: Callable[..., int]) -> Callable[..., int]:
    """`main` with Ctrl-C ending it in one line on stderr and exit code 130 (the shell's 128 + SIGINT):
    sample and eval printed a KeyboardInterrupt traceback from deep inside torch, as if they had failed."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    return wrapper

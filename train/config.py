"""TrainConfig: every option of a training run, one typed and documented field each.

A preset YAML (configs/*.yml) holds a `model:` section (GPTConfig) beside these flat training keys;
the command line overrides either (`lr=1e-3`, `model.n_layer=4`). The resolved config is printed at
start, saved as the run directory's config.yml and inside every checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from common.config import ConfigError
from common.precision import DTYPES, resolve_dtype
from model.attention_backend import ATTENTION_BACKENDS
from model.config import GPTConfig

SAMPLER_MODES = ("random", "epoch")
LR_SCHEDULES = ("cosine", "wsd", "constant")
OPTIMIZERS = ("adamw", "muon")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    model: GPTConfig = field(default_factory=GPTConfig)
    """The network (see model/config.py); model.vocab_size is always taken from the token store."""
    data: str = "data_cache/shakespeare"
    """Token store directory written by `make prepare`."""
    out_dir: str = ""
    """Run directory for checkpoints, metrics.jsonl, config.yml and tokenizer.json. Empty means
    runs/<name of the --config file>, e.g. runs/tiny (runs/default without a config file)."""
    seed: int = 1337
    """Seeds the model init (same on every rank) and the per-rank samplers, dropout and RNGs."""
    max_steps: int = 0
    """Optimizer steps to train for. 0 means as many as `epochs` full passes take (sampler_mode=epoch)."""
    epochs: int = 0
    """Full passes over the train split (needs sampler_mode=epoch). With max_steps too, the first
    limit reached ends training."""
    micro_batch: int = 16
    """Sequences per forward pass on each rank (the starting candidate when init_batch is on)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step on each rank. Global batch in sequences =
    micro_batch * grad_accum * world_size."""
    optimizer: str = "adamw"
    """adamw: AdamW for every parameter | muon: torch.optim.Muon (torch >= 2.9) for the 2-D weight
    matrices inside the transformer blocks, AdamW for the rest (embeddings, output head, norms,
    biases). Muon's step is scaled to AdamW's update size, so lr, the schedule and weight_decay carry over."""
    lr: float = 6e-4
    """Peak learning rate, reached after warmup_steps."""
    lr_schedule: str = "cosine"
    """After the warmup: cosine (from lr down to min_lr at the run's end) | wsd (warmup-stable-decay:
    lr, then a linear decay to min_lr over the last decay_frac of the run) | constant (lr to the end)."""
    decay_frac: float = 0.2
    """lr_schedule=wsd: the fraction of the run's steps (max_steps, or where the last of `epochs` ends)
    spent decaying, in (0, 1]; the decay never starts before the warmup ends."""
    min_lr: float = 6e-5
    """Learning rate at the end of the cosine or wsd decay (reached at the last step: max_steps, or where
    the last of `epochs` ends if that comes first). Unused by lr_schedule=constant."""
    warmup_steps: int = 100
    """Steps of linear warmup from ~0 to lr."""
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to matrices only (not norms or biases); with optimizer=muon
    Muon decays the blocks' matrices by the same rule."""
    beta1: float = 0.9
    """AdamW first-moment decay."""
    beta2: float = 0.95
    """AdamW second-moment decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged)."""
    eval_interval: int = 250
    """Evaluate on the fixed validation windows every N steps (and always at the end); 0 = end only."""
    eval_batches: int = 20
    """Validation micro-batches per evaluation, in total, shared out across the ranks; 0 = no evaluation.
    Counted in micro-batches as configured: the windows stay the same when init_batch fits a smaller one."""
    ckpt_interval: int = 500
    """Save a checkpoint every N steps (and at each epoch end and at the end); 0 = only those."""
    keep_last: int = 3
    """Complete checkpoints kept in the run directory, epoch-end ones included; 0 keeps all."""
    resume: str = "auto"
    """auto: continue from the newest complete checkpoint in out_dir if there is one; none: start
    afresh (refused if out_dir already holds checkpoints); or the path of a checkpoint or run dir (a
    rerun of that command, once it has checkpointed in out_dir, continues from those)."""
    log_interval: int = 10
    """Print a progress line and write a metrics.jsonl record every N steps (1 = every step)."""
    sampler_mode: str = "random"
    """random: window offsets drawn with replacement; epoch: each window start once per epoch."""
    align_bos: bool = False
    """Start every training window at a document's [BOS]."""
    compile: bool | str = "auto"
    """torch.compile the model: true | false | auto (on for CUDA, off on CPU)."""
    dtype: str = "auto"
    """Autocast dtype: auto (bfloat16 where the GPU has it natively, Ampere on; else float16 with a
    GradScaler; float32 on CPU) | float32 | bfloat16 | float16."""
    attention: str = "auto"
    """Attention kernel on CUDA: auto (torch's choice: cuDNN first on Hopper GPUs with cuDNN 9, else
    FlashAttention-2) | flash | cudnn | efficient | math. A named kernel is the only one allowed,
    with math as the fallback for calls it cannot serve. No effect on CPU."""
    init_batch: bool = True
    """Before training, probe a full step at micro_batch and halve it until it fits in GPU memory
    (the minimum over ranks wins); grad_accum grows to keep the global batch."""
    max_skips: int = 10
    """Abort after this many consecutive steps skipped for a non-finite loss or gradient norm."""
    allow_world_size_change: bool = False
    """Allow resuming with another number of processes (the data order then differs from the
    uninterrupted run's). grad_accum is then set to keep the checkpoint's global batch where
    micro_batch * world_size divides it; where not, the global batch changes and a warning says so.
    It does so on every resume, at the same world size too: a rerun of the same command after a kill
    goes on with the global batch of the checkpoints it wrote."""
    device: str = "auto"
    """auto (cuda when available, else cpu) | cpu | cuda. Under torchrun each rank takes cuda:LOCAL_RANK."""

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("sampler_mode", self.sampler_mode, SAMPLER_MODES),
            ("dtype", self.dtype, DTYPES),
            ("device", self.device, DEVICES),
            ("attention", self.attention, ATTENTION_BACKENDS),
            ("lr_schedule", self.lr_schedule, LR_SCHEDULES),
            ("optimizer", self.optimizer, OPTIMIZERS),
        ):
            if value not in allowed:
                raise ConfigError(f"TrainConfig.{name} must be one of {', '.join(allowed)}; got {value!r}")
        if isinstance(self.compile, str) and self.compile != "auto":
            raise ConfigError(f"TrainConfig.compile must be true, false or auto; got {self.compile!r}")
        for name in ("micro_batch", "grad_accum", "max_skips"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "epochs", "warmup_steps", "eval_interval", "eval_batches", "ckpt_interval",
                     "keep_last"):
            if getattr(self, name) < 0:
                raise ConfigError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.log_interval < 1:
            raise ConfigError(f"TrainConfig.log_interval must be >= 1, got {self.log_interval}")
        if not 0 <= self.seed < 2**62:  # numpy seeds are non-negative; room for the per-rank/step offsets
            raise ConfigError(f"TrainConfig.seed must be in [0, 2**62), got {self.seed}")
        # Numbers torch would take without a word: a negative grad_clip flips the gradient (the loss
        # climbs), a negative weight_decay inflates weights, an infinite lr skips every step.
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"TrainConfig.lr must be a finite number > 0, got {self.lr}")
        for name in ("min_lr", "weight_decay", "grad_clip"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ConfigError(f"TrainConfig.{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.decay_frac) and 0 < self.decay_frac <= 1):
            raise ConfigError(f"TrainConfig.decay_frac must be in (0, 1], got {self.decay_frac}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be in [0, 1), got {getattr(self, name)}")

    def validate(self) -> None:
        """Checks across fields. Not in __post_init__: a YAML file may set epochs and the command line
        sampler_mode, and the config built from the file alone must not fail in between."""
        if self.max_steps == 0 and self.epochs == 0:
            # The dataclass defaults set neither: a preset or the command line says how long to train.
            raise ConfigError("TrainConfig: set max_steps or epochs (or both), e.g. max_steps=1000, or start from a "
                              "preset that does: --config configs/tiny.yml")
        if self.epochs and self.sampler_mode != "epoch":
            raise ConfigError("TrainConfig: epochs counts passes of sampler_mode=epoch; set sampler_mode=epoch")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"TrainConfig: need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        # Here, not in __post_init__: a config naming muon still loads on an older torch (to read a
        # checkpoint's settings); only training with it needs the class.
        if self.optimizer == "muon" and not hasattr(torch.optim, "Muon"):
            raise ConfigError(f"TrainConfig: optimizer=muon needs torch.optim.Muon (torch >= 2.9); this torch is "
                              f"{torch.__version__}: upgrade torch or use optimizer=adamw")

    def resolve_auto(self, device_type: str, bf16_supported: bool) -> None:
        """Replace `auto` values by what this machine gives, so the saved config says what ran."""
        self.device = device_type
        if self.compile == "auto":
            self.compile = device_type == "cuda"
        self.dtype = resolve_dtype(self.dtype, device_type, bf16_supported)

    def resolve_out_dir(self, config_path: str | None) -> None:
        """Fill an empty out_dir with runs/<config file stem> (runs/default without a file)."""
        if not self.out_dir:
            self.out_dir = str(Path("runs") / (Path(config_path).stem if config_path else "default"))

    def model_for_store(self, vocab_size: int, log: Callable[[str], None] | None = None) -> GPTConfig:
        """The model config with the store's vocabulary (model.vocab_size always comes from the store;
        a value set to neither the default nor the store's is replaced with a note to `log`).
        replace() reruns GPTConfig's checks, which a config-level error reports (pad_id must be an id)."""
        asked = self.model.vocab_size
        if log is not None and asked not in (vocab_size, GPTConfig.vocab_size):
            log(f"warning: model.vocab_size={asked} is replaced by the vocabulary of {self.data}, {vocab_size}")
        try:
            return replace(self.model, vocab_size=vocab_size)
        except ValueError as err:
            raise ConfigError(f"{self.data}: {err}") from None

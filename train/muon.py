"""optimizer=muon: torch.optim.Muon for the 2-D weight matrices inside the transformer blocks
(attention's qkv and output projections, the MLP's), AdamW for everything else: the token embedding
(also the tied output head), an untied head, learned position embeddings, norms and biases. Muon
orthogonalises each matrix's momentum (Newton-Schulz iterations), which suits hidden layers only:
an embedding's rows are looked up one token at a time, and vectors have no matrix to orthogonalise.

The fused qkv projection is one (3 * d_model, d_model) parameter, so Muon orthogonalises q, k and v
together, as one matrix.
"""

from __future__ import annotations

import torch

from model import GPT


def muon_split(model: GPT, weight_decay: float) -> tuple[list[torch.nn.Parameter], list[dict]]:
    """The blocks' matrices (Muon's), and AdamW's groups for the rest: the model's own decay rule
    (GPT.optim_groups: matrices decayed, vectors not) minus the matrices Muon takes."""
    matrices = [p for p in model.blocks.parameters() if p.dim() == 2]
    taken = {id(p) for p in matrices}
    groups = [{**group, "params": [p for p in group["params"] if id(p) not in taken]}
              for group in model.optim_groups(weight_decay)]
    return matrices, groups


class MuonAdamW:
    """Muon and AdamW stepped as one optimizer, so that setting the LR, GradScaler's unscale_, the skip
    flag and checkpoints treat them as one: `param_groups` lists Muon's groups, then AdamW's."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.AdamW):
        self.muon, self.adamw = muon, adamw
        self.found_inf: torch.Tensor | None = None  # the trainer's skip flag, as the fused AdamW takes it

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    @property
    def state(self) -> dict:
        return {**self.muon.state, **self.adamw.state}

    def step(self) -> None:
        # Muon has no found_inf to skip a step on the device, so the skip flag is read here: one host
        # sync per step (as under fp16), where AdamW alone queues steps without waiting.
        if self.found_inf is not None and self.found_inf.item():
            return
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])

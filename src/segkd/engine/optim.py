"""AdamW with SegFormer's parameter groups, and the poly schedule with linear warm-up (both from timm).

Groups: encoder at `lr`, decode head (and distillation adapters, also freshly initialised) at
`lr * head_lr_mult`; no weight decay on norms and biases (timm's `param_groups_weight_decay`).
"""

from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import PolyLRScheduler

WARMUP_LR_INIT = 1e-6


def create_optimizer(model: torch.nn.Module, extra: torch.nn.Module | None, train: dict) -> torch.optim.Optimizer:
    groups = []
    for module, lr in ((model.encoder, train["lr"]), (model.decode_head, train["lr"] * train["head_lr_mult"]),
                       (extra, train["lr"] * train["head_lr_mult"])):
        if module is None:
            continue
        for group in param_groups_weight_decay(module, train["weight_decay"]):
            if group["params"]:
                groups.append({**group, "lr": lr})
    # fused: one kernel for all parameters; on CPU 3.4x faster than foreach (B0: 10 vs 34 ms a step)
    return create_optimizer_v2(groups, opt="adamw", lr=train["lr"], weight_decay=train["weight_decay"], fused=True)


def create_scheduler(optimizer: torch.optim.Optimizer, iterations: int, train: dict) -> PolyLRScheduler:
    """Per-iteration poly decay (power from params; timm's default 0.5 is not SegFormer's 1.0)."""
    return PolyLRScheduler(optimizer, t_initial=iterations, power=train["poly_power"], lr_min=0.0,
                           warmup_t=train["warmup_iterations"], warmup_lr_init=WARMUP_LR_INIT,
                           t_in_epochs=False)

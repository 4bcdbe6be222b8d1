"""Optimizer and learning-rate schedule of one model section, the schedule aware of the epochs and the time budget."""

from __future__ import annotations

import math

import torch
from torch import nn

from petseg.config import ModelTrainConfig


def build_optimizer(cfg: ModelTrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    # One fused kernel over all weights: on a CPU the per-tensor loop over the ResNet34-UNet's 24M weights is a
    # sizeable part of a small batch's time.
    return kind(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


class WarmupCosine:
    """Per-step learning rate: linear warm-up, then cosine down to zero.

    Progress is the larger of steps done / steps planned and, under a time budget, seconds spent / budget: the
    schedule ends with the epochs or with the budget, whichever comes first. (With a budget the learning rate
    depends on this machine's speed, so only the same machine reproduces the run.)
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, budget_s: float):
        """``total_steps`` 0: none planned, the time budget alone ends training (and the schedule)."""
        self.optimizer, self.total, self.warmup, self.budget_s = optimizer, total_steps, warmup_steps, budget_s
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.steps = 0
        self._apply(0.0)

    def progress(self, elapsed_s: float) -> float:
        by_time = elapsed_s / self.budget_s if self.budget_s else 0.0
        return min(1.0, max(self.steps / self.total if self.total else 0.0, by_time))

    def step(self, elapsed_s: float) -> None:
        self.steps += 1
        self._apply(self.progress(elapsed_s))

    def _apply(self, progress: float) -> None:
        if self.steps < self.warmup:
            factor = (self.steps + 1) / (self.warmup + 1)
        else:  # the cosine spans what the warm-up leaves: of the planned steps, or (none planned) of the budget
            start = self.warmup / self.total if self.total else 0.0
            span = max(1e-12, 1.0 - start)
            factor = 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress - start) / span)))
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    def epoch_end(self, score: float) -> None:
        """Per epoch: nothing (this schedule moves every step)."""

    def state_dict(self) -> dict:
        return {"steps": self.steps, "base_lrs": self.base_lrs}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.base_lrs = state["steps"], state["base_lrs"]


class EpochPlateau:
    """ReduceLROnPlateau on the validation score, stepped once per epoch (the reference report's schedule)."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ModelTrainConfig, maximize: bool):
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max" if maximize else "min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )

    def step(self, elapsed_s: float) -> None:
        """Per optimizer step: nothing (this schedule moves once per epoch)."""

    def epoch_end(self, score: float) -> None:
        self.scheduler.step(score)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


def build_schedule(
    cfg: ModelTrainConfig, optimizer: torch.optim.Optimizer, maximize: bool, steps_per_epoch: int, budget_s: float
) -> WarmupCosine | EpochPlateau:
    if cfg.schedule == "cosine":
        return WarmupCosine(optimizer, cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch, budget_s)
    return EpochPlateau(optimizer, cfg, maximize)

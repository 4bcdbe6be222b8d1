"""The resume point ``<model>.last.pt`` of one training run: written at most every ``resources.checkpoint_minutes``
(and after the last epoch), read back only by the very same run (its fingerprint: params, data and code)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from petseg.models.checkpoint import load_checkpoint, save_checkpoint
from petseg.training.state import TrainState


class ResumePoint:
    def __init__(self, path: Path, fingerprint: str, every_minutes: float):
        self.path, self.fingerprint, self.every_s = path, fingerprint, every_minutes * 60
        self.saved_epoch = 0  # the epoch of this run's resume point on disk; 0: none yet
        self._saved_at = time.perf_counter()  # when it was written (or this run started)

    def load(self) -> tuple[dict | None, str]:
        """(the saved run, what to say): None when there is none, or it is from other params, data or code."""
        if not self.path.exists():
            return None, ""
        saved = load_checkpoint(self.path)
        if saved.get("fingerprint") != self.fingerprint:
            return None, f"{self.path} is from other params, data or code; starting over"
        self.saved_epoch = saved["train_state"]["epoch"]
        return saved, f"resuming after epoch {self.saved_epoch} from {self.path}"

    def due(self) -> bool:
        """After every epoch, or once ``every_minutes`` have passed since the last one: a 300 MB file per 3-second
        epoch would cost a fifth of the training time. The final epoch is always saved (by the caller)."""
        return time.perf_counter() - self._saved_at >= self.every_s

    def save(self, parts: dict, state: TrainState, best_weights: dict | None) -> None:
        """``parts``: the state dicts to restore; ``best_weights``: only when the best epoch lies behind."""
        extra = {"fingerprint": self.fingerprint, "best_state_dict": best_weights, "train_state": asdict(state)}
        save_checkpoint(self.path, parts | extra)
        self.saved_epoch, self._saved_at = state.epoch, time.perf_counter()

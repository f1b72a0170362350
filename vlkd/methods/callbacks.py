"""Training callbacks shared by the methods.

:class:`EpochWeightAveraging` is the weight ensembling FROSTER (and Open-VCLIP
before it) applies: the model that is evaluated and exported is the uniform mean
of the weights at the end of each epoch from ``start_epoch`` on.

Use it in a config::

    trainer:
      callbacks:
        - class_path: vlkd.methods.callbacks.EpochWeightAveraging
          init_args: {start_epoch: 2}

:class:`ResumeHint` is added to every ``vlkd fit``: when training stops on an error
(a lost teacher server, say), it names the checkpoint that resumes the run.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

log = logging.getLogger(__name__)


class EpochWeightAveraging(Callback):
    """Uniform average of a submodule's weights over training epochs, swapped in when training ends.

    At the end of every training epoch ``e >= start_epoch`` the floating-point
    entries of ``pl_module.<module>.state_dict()`` are added to a running mean (kept
    in float32 on the CPU). When training ends the mean replaces the module's
    weights, so evaluation in the same process and anything exported afterwards use
    it, and it is saved as ``averaged.ckpt`` next to the ModelCheckpoint files:
    evaluate with ``vlkd test --config ... --ckpt_path .../averaged.ckpt``.

    The running mean is part of this callback's state in every checkpoint, so a run
    resumed from ``last.ckpt`` continues the same average. Lightning runs checkpoint
    callbacks after all others, so an end-of-epoch checkpoint already includes that
    epoch. (Resume from ``last.ckpt``, not ``averaged.ckpt``: the latter holds the
    averaged weights, not the weights training had reached.)

    Args:
        start_epoch: first epoch (0-based) whose end-of-epoch weights enter the mean.
        module: attribute path of the averaged submodule (the part inference uses);
            ``""`` averages the whole LightningModule.
        save_name: file name of the averaged checkpoint; ``None`` saves none.
    """

    def __init__(self, start_epoch: int = 0, module: str = "student", save_name: str | None = "averaged.ckpt"):
        if start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0, got {start_epoch}")
        self.start_epoch = start_epoch
        self.module = module
        self.save_name = save_name
        self.average: dict[str, torch.Tensor] | None = None
        self.num_averaged = 0
        self.last_epoch = -1  # the last epoch added, so no epoch is counted twice

    # -- the average --------------------------------------------------------------------
    def target(self, pl_module: pl.LightningModule) -> nn.Module:
        module: nn.Module = pl_module
        for name in filter(None, self.module.split(".")):
            module = getattr(module, name)
        return module

    @staticmethod
    def _float_state(module: nn.Module) -> dict[str, torch.Tensor]:
        return {key: value for key, value in module.state_dict().items() if value.is_floating_point()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Add ``module``'s current weights to the running mean."""
        weights = self._float_state(module)
        if self.average is None:
            self.average = {key: value.detach().float().cpu().clone() for key, value in weights.items()}
        else:
            count = self.num_averaged + 1
            for key, value in weights.items():
                mean = self.average[key]
                mean.add_((value.detach().float().cpu() - mean) / count)
        self.num_averaged += 1

    @torch.no_grad()
    def apply_to(self, module: nn.Module) -> None:
        """Copy the mean into ``module``'s weights (in their own dtype and device)."""
        if self.average is None:
            raise RuntimeError("no epoch has been averaged yet")
        for key, value in self._float_state(module).items():
            value.copy_(self.average[key])

    # -- hooks --------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch < self.start_epoch or epoch <= self.last_epoch:
            return
        self.update(self.target(pl_module))
        self.last_epoch = epoch

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.average is None:
            log.warning(
                "EpochWeightAveraging: training ended before epoch %d, nothing was averaged; "
                "the final weights are used as they are", self.start_epoch,
            )
            return
        self.apply_to(self.target(pl_module))
        log.info("EpochWeightAveraging: swapped in the mean of %d epochs' weights", self.num_averaged)
        checkpoint = trainer.checkpoint_callback
        dirpath = getattr(checkpoint, "dirpath", None)
        if self.save_name and dirpath and not trainer.fast_dev_run:
            # Every rank calls save_checkpoint (it may be collective); only rank 0 writes.
            trainer.save_checkpoint(str(Path(dirpath) / self.save_name))

    # -- checkpointed state -------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "average": self.average,
            "num_averaged": self.num_averaged,
            "last_epoch": self.last_epoch,
            "start_epoch": self.start_epoch,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.average = state_dict["average"]
        self.num_averaged = state_dict["num_averaged"]
        self.last_epoch = state_dict["last_epoch"]
        if state_dict["start_epoch"] != self.start_epoch:
            log.warning(
                "EpochWeightAveraging: resuming an average started at epoch %d with start_epoch=%d; "
                "the epochs already averaged are kept", state_dict["start_epoch"], self.start_epoch,
            )


class ResumeHint(Callback):
    """When ``fit`` stops on an error, print the last checkpoint and the option that resumes from it."""

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not trainer.is_global_zero or isinstance(exception, KeyboardInterrupt):
            return
        saved = [Path(callback.last_model_path) for callback in trainer.checkpoint_callbacks
                 if isinstance(callback, ModelCheckpoint) and callback.last_model_path]
        saved = [path for path in saved if path.is_file()]
        if saved:
            last = max(saved, key=lambda path: path.stat().st_mtime)
            # Printed, not logged: it must reach the terminal whatever logging is configured.
            print(f"training stopped ({type(exception).__name__}); its last checkpoint is {last}: fix the cause and "
                  f"run the same command with --ckpt_path {last} to resume", file=sys.stderr)

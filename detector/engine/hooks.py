"""The training loop's hooks: each one job, called by the :class:`~detector.engine.trainer.Trainer`.

A hook may implement any of

* ``before_train(trainer)``: once, before the first step;
* ``after_step(trainer)``: after every optimisation step (``trainer.iteration`` already counts it);
* ``before_save(trainer)``: before anything is saved or evaluated (a checkpoint, an evaluation);
* ``after_epoch(trainer)``: at the end of each epoch, or of the last partial one;
* ``after_train(trainer)``: once, after the last step, when training ended without an error.

Hooks run in the order they are given; :func:`~detector.engine.trainer.default_hooks` gives the order
the training loop relies on (the loss check first, the checkpoint before the evaluation).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Optional

import torch

from ..errors import RunError
from ..loss_window import LossWindow
from ..utils import dist as du
from ..utils.checkpoint import save_rotating
from .writers import numeric_items


class NonFiniteLossError(RunError, FloatingPointError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


class Hook:
    """A hook that does nothing: subclasses implement the events they need."""

    def before_train(self, trainer) -> None:
        pass

    def after_step(self, trainer) -> None:
        pass

    def before_save(self, trainer) -> None:
        pass

    def after_epoch(self, trainer) -> None:
        pass

    def after_train(self, trainer) -> None:
        pass


class NonFiniteStop(Hook):
    """Keeps each step's losses on the device (:class:`~detector.loss_window.LossWindow`), reads them
    at log lines (their means become ``trainer.logged``) and before anything is saved, and raises
    :class:`NonFiniteLossError` at the first non-finite total loss: no checkpoint is written after it."""

    def __init__(self):
        self.window = LossWindow()

    def after_step(self, trainer) -> None:
        self.window.add(trainer.iteration - 1, trainer.losses)
        if trainer.is_log_step():
            trainer.logged, bad = self.window.take()
            self._stop_if_bad(trainer, bad)

    def before_save(self, trainer) -> None:
        self._stop_if_bad(trainer, self.window.check())

    @staticmethod
    def _stop_if_bad(trainer, bad) -> None:
        if bad is None:
            return
        value = "on another process" if bad[1] is None else bad[1]
        raise NonFiniteLossError(
            f"non-finite loss ({value}) at iteration {bad[0]}, epoch {bad[0] // trainer.iters_per_epoch}; "
            f"training stopped. The last good checkpoint is {trainer.last_checkpoint or 'none (none was written yet)'}. "
            f"Try a lower train.lr, a smaller train.clip_max_norm, or train.amp=false.")


class LogMetrics(Hook):
    """At each log line, a ``train`` record (epoch, iteration, learning rate, images/s, wall time,
    the mean losses since the previous line) to the trainer's writers, and the progress bar's text.
    Run after :class:`NonFiniteStop`, which reads the losses."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.window_start, self.window_images = 0.0, 0

    def before_train(self, trainer) -> None:
        self.window_start = time.time()

    def after_step(self, trainer) -> None:
        self.window_images += trainer.images
        if not trainer.is_log_step():
            return
        speed = self.window_images / max(time.time() - self.window_start, 1e-9)
        trainer.write({"type": "train", "epoch": trainer.epoch, "iter": trainer.iteration,
                       "lr": self.optimizer.param_groups[-1]["lr"], "images_per_s": speed,
                       "time_s": time.time() - trainer.start_time, **trainer.logged})
        trainer.bar.set_postfix(loss=f"{trainer.logged['loss']:.3f}", img_s=f"{speed:.1f}")
        self.window_start, self.window_images = time.time(), 0


class TimeBudget(Hook):
    """The wall-clock safety net: stops training after ``minutes`` (0: never), and says loudly, on
    stderr and in the records, that it did. Under DDP the processes agree at the log lines only (a
    collective, not a wait for the device at every step)."""

    def __init__(self, minutes: float):
        self.minutes = minutes

    def after_step(self, trainer) -> None:
        if self.minutes <= 0:
            return
        over = (time.time() - trainer.start_time) > 60 * self.minutes
        if du.is_distributed():
            over = trainer.is_log_step() and du.any_process(over)
        trainer.stop = trainer.stop or over
        trainer.stopped_by_time_budget = over and trainer.iteration < trainer.total_iters

    def after_train(self, trainer) -> None:
        if not (trainer.stopped_by_time_budget and du.is_main_process()):
            return
        message = (f"WARNING: train.time_budget_min={self.minutes:g} stopped training at iteration "
                   f"{trainer.iteration} of {trainer.total_iters}: this run's numbers depend on how fast and "
                   f"how busy the machine was; the planned schedule did not finish")
        print("\n" + "!" * 100 + f"\n{message}\n" + "!" * 100, file=sys.stderr, flush=True)
        trainer.write({"type": "warning", "iter": trainer.iteration, "message": message})


class Checkpointer(Hook):
    """Rotating checkpoints in ``folder`` (the newest ``keep``): every ``every_iters`` iterations
    inside an epoch, every ``every_epochs`` epochs, at the last iteration, and once at the end if
    none was written. ``state(epoch, iteration)`` builds the checkpoint (a collective under DDP:
    every process calls it; rank 0 writes). Sets ``trainer.last_checkpoint``."""

    def __init__(self, folder: str, state: Callable[[int, int], dict], keep: int, every_epochs: int = 1,
                 every_iters: int = 0):
        self.folder, self.state, self.keep = folder, state, keep
        self.every_epochs, self.every_iters = every_epochs, every_iters

    def save(self, trainer) -> None:
        state = self.state(trainer.epoch, trainer.iteration)
        path = ""
        if du.is_main_process():
            path = save_rotating(self.folder, trainer.iteration, state, self.keep)
        du.barrier()
        trainer.last_checkpoint = path

    def after_step(self, trainer) -> None:
        if self.every_iters > 0 and trainer.iteration % self.every_iters == 0 and not trainer.stop:
            trainer.before_save()
            self.save(trainer)

    def after_epoch(self, trainer) -> None:
        periodic = trainer.epoch_done and self.every_epochs > 0 and trainer.epoch % self.every_epochs == 0
        if trainer.stop or periodic:
            self.save(trainer)

    def after_train(self, trainer) -> None:
        if trainer.last_checkpoint is None:
            self.save(trainer)


class Evaluator(Hook):
    """Evaluations: every ``every_epochs`` epochs during training with ``runs`` runs, and (with
    ``final_runs``) once at the end, whose metrics carry the training's length and whether the
    time budget cut it. ``evaluate(runs, final) -> metrics`` runs on rank 0 (the others wait);
    each result is an ``eval`` record and ``trainer.metrics``. The global RNG is forked around it,
    so that training after an evaluation continues exactly as after a resume."""

    def __init__(self, evaluate: Callable[[int, bool], dict], every_epochs: int, runs: int,
                 final_runs: Optional[int] = None, on_final: Optional[Callable[[dict], None]] = None):
        self.evaluate, self.every_epochs, self.runs = evaluate, every_epochs, runs
        self.final_runs, self.on_final = final_runs, on_final

    def _run(self, trainer, runs: int, final: bool) -> dict:
        result: dict = {}
        if du.is_main_process():
            with torch.random.fork_rng(devices=[]):
                result = self.evaluate(runs, final)
            trainer.write({"type": "eval", "epoch": trainer.epoch, "iter": trainer.iteration, "final": final,
                           "split": result["split"], **numeric_items(result)})
        du.barrier()
        return result

    def after_epoch(self, trainer) -> None:
        if (not trainer.stop and trainer.epoch_done and self.every_epochs > 0
                and trainer.epoch % self.every_epochs == 0):
            trainer.metrics = self._run(trainer, self.runs, final=False)

    def after_train(self, trainer) -> None:
        if self.final_runs is None:
            return
        metrics = self._run(trainer, self.final_runs, final=True)
        metrics["training"] = {"iterations": trainer.iteration, "planned_iterations": trainer.total_iters,
                               "stopped_by_time_budget": trainer.stopped_by_time_budget}
        if self.on_final is not None and du.is_main_process():
            self.on_final(metrics)
        trainer.metrics = metrics


class TrainingCurves(Hook):
    """``training_curves.png`` from ``metrics.jsonl`` at the end (rank 0); a plotting failure is a
    warning, never a lost run."""

    def __init__(self, folder: str):
        self.folder = folder

    def after_train(self, trainer) -> None:
        if not du.is_main_process():
            return
        try:
            from ..visualize import plot_training_curves
            plot_training_curves(os.path.join(self.folder, "metrics.jsonl"),
                                 os.path.join(self.folder, "training_curves.png"))
        except Exception as e:  # noqa: BLE001 - a plotting failure must not lose a finished run
            print(f"warning: could not draw the training curves: {e}")

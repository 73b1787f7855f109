"""Training and evaluation.

* :mod:`.step`: one optimisation step and what puts a batch on the device for it;
* :mod:`.hooks`: the loop's jobs around the step (loss check, logging, time budget, checkpoints,
  evaluation, curves), each small and on its own;
* :mod:`.writers`: where records go (``metrics.jsonl``, TensorBoard);
* :mod:`.trainer`: the :class:`Trainer` that runs steps and calls hooks, and :func:`train`, which
  assembles one from a config;
* :mod:`.evaluator`: the evaluation protocol wrapped for a model; :mod:`.sampler`: the sharded,
  restartable training sampler.
"""
from .evaluator import make_predict, run_evaluation, run_oracle, write_evaluation
from .hooks import (Checkpointer, Evaluator, Hook, LogMetrics, NonFiniteLossError, NonFiniteStop, TimeBudget,
                    TrainingCurves)
from .sampler import ShardedSampler
from .step import amp_dtype, each_support, move_targets, select_device, to_device, train_step
from .trainer import Trainer, default_hooks, train
from .writers import MetricsLog, TensorBoardWriter

__all__ = ["Checkpointer", "Evaluator", "Hook", "LogMetrics", "MetricsLog", "NonFiniteLossError", "NonFiniteStop",
           "ShardedSampler", "TensorBoardWriter", "TimeBudget", "Trainer", "TrainingCurves", "amp_dtype",
           "default_hooks", "each_support", "make_predict", "move_targets", "run_evaluation", "run_oracle", "select_device",
           "to_device", "train", "train_step", "write_evaluation"]

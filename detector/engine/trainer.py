"""The training loop: a :class:`Trainer` that runs steps and calls hooks, and :func:`train`, which
assembles one from a config.

``train(cfg)`` runs one training job into ``cfg.train.output_dir``: the resolved config and git
revision, ``metrics.jsonl`` (one JSON line per logging step and per evaluation; TensorBoard scalars
beside it with ``train.tensorboard``), rotating checkpoints, a training-curve PNG, and at the end
``metrics.json`` / ``metrics.md`` of the final evaluation. ``resume=`` continues a run exactly
(model, optimiser, scheduler, scaler, epoch, iteration, RNG states; the sampler restarts at the next
batch of the interrupted epoch).
"""
from __future__ import annotations

import os
import time
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from ..config import Config, to_dict
from ..errors import ConfigError
from ..features import FeatureCache
from ..models import build_model
from ..optim import build_optimizer, build_scheduler, load_optimizer_state
from ..run_folder import check_fresh, discard_after, start_run_folder
from ..utils import dist as du
from ..utils.checkpoint import checkpoint_state, load_checkpoint, load_weights, rng_state, set_rng_state
from ..utils.output_paths import check_output_path
from .evaluator import run_evaluation, write_evaluation
from .hooks import Checkpointer, Evaluator, Hook, LogMetrics, NonFiniteStop, TimeBudget, TrainingCurves
from .sampler import ShardedSampler
from .step import amp_dtype, select_device, to_device, train_step
from .writers import MetricsLog, TensorBoardWriter, check_tensorboard


class Trainer:
    """Runs optimisation steps over epochs and calls the hooks around them (the shape of
    detectron2's ``SimpleTrainer`` with its hooks).

    Args:
        step: ``step(batch) -> (losses, images)``: one optimisation step on a loader batch; the
            losses as tensors (not read), ``images`` the number of images it trained on (all processes).
        epoch_batches: ``epoch_batches(epoch, skip) -> iterable of batches``: ``epoch``'s batches
            after its first ``skip`` (a run resumed inside an epoch).
        iters_per_epoch, total_iters: the schedule; ``start_iter``: where a resumed run starts.
        hooks: called in order (:mod:`detector.engine.hooks`); writers: get every record
            (:mod:`detector.engine.writers`).
        log_every: iterations between log lines (the last iteration always logs).
        progress: a tqdm bar on rank 0.

    The hooks read and set ``iteration``, ``epoch``, ``stop``, ``losses`` and ``images`` (the last
    step's), ``logged`` (the mean losses at a log line), ``metrics`` (the latest evaluation),
    ``last_checkpoint``, ``stopped_by_time_budget``, ``start_time`` and ``bar``.
    """

    def __init__(self, step: Callable, epoch_batches: Callable[[int, int], Iterable], iters_per_epoch: int,
                 total_iters: int, start_iter: int = 0, hooks: Sequence[Hook] = (), writers: Sequence = (),
                 log_every: int = 20, progress: bool = True):
        self.step, self.epoch_batches = step, epoch_batches
        self.iters_per_epoch, self.total_iters = iters_per_epoch, total_iters
        self.hooks, self.writers, self.log_every, self.progress = list(hooks), list(writers), log_every, progress
        self.iteration = start_iter
        self.epoch = start_iter // iters_per_epoch
        self.stop = start_iter >= total_iters
        self.losses: dict = {}
        self.images = 0
        self.logged: dict = {}
        self.metrics: dict = {}
        self.last_checkpoint: Optional[str] = None
        self.stopped_by_time_budget = False
        self.start_time = 0.0
        self.bar = None

    @property
    def epoch_done(self) -> bool:
        """Whether the last step finished an epoch."""
        return self.iteration % self.iters_per_epoch == 0

    def is_log_step(self) -> bool:
        return self.iteration % self.log_every == 0 or self.iteration == self.total_iters

    def write(self, record: dict) -> None:
        """``record`` to every writer."""
        for writer in self.writers:
            writer.write(record)

    def before_save(self) -> None:
        """Called before any checkpoint or evaluation (the hooks check the losses there)."""
        for hook in self.hooks:
            hook.before_save(self)

    def run(self) -> None:
        """Train until ``total_iters`` or until a hook stops it; then the hooks' ``after_train``."""
        from tqdm import tqdm

        self.start_time = time.time()
        self.bar = tqdm(total=self.total_iters, initial=self.iteration, dynamic_ncols=True, mininterval=1.0,
                        disable=not (self.progress and du.is_main_process()), desc="train")
        try:
            for hook in self.hooks:
                hook.before_train(self)
            while not self.stop:
                self.run_epoch()
                self.before_save()  # before any checkpoint or evaluation of the epoch
                self.epoch = self.iteration // self.iters_per_epoch
                for hook in self.hooks:
                    hook.after_epoch(self)
            self.bar.close()
            for hook in self.hooks:
                hook.after_train(self)
        finally:
            self.bar.close()
            for writer in self.writers:
                writer.close()

    def run_epoch(self) -> None:
        """The steps of the current epoch, up to its end or a stop."""
        skip = self.iteration - self.epoch * self.iters_per_epoch
        for batch in self.epoch_batches(self.epoch, skip):
            self.losses, self.images = self.step(batch)
            self.iteration += 1
            self.bar.update(1)
            self.stop = self.iteration >= self.total_iters
            for hook in self.hooks:
                hook.after_step(self)
            if self.stop or self.iteration % self.iters_per_epoch == 0:
                break


def _schedule(cfg: Config, size: int, world: int, rank: int) -> tuple[ShardedSampler, int, int]:
    """The sampler, iterations per epoch and total iterations; ConfigError for a batch larger than the data."""
    t = cfg.train
    sampler = ShardedSampler(size, world, rank, seed=t.seed, shuffle=True)
    iters_per_epoch = len(sampler) // t.batch_size
    if iters_per_epoch == 0:
        raise ConfigError(f"train.batch_size={t.batch_size} is larger than the training set ({size} items over "
                          f"{world} process(es)); lower train.batch_size")
    total_iters = t.epochs * iters_per_epoch
    if t.max_iters > 0:
        total_iters = min(total_iters, t.max_iters)
    return sampler, iters_per_epoch, total_iters


def _feature_cache(cfg: Config, model, feature_cache: Optional[FeatureCache]) -> Optional[FeatureCache]:
    if not cfg.train.cache_features:
        return None
    cache = FeatureCache(model.backbone) if feature_cache is None else feature_cache
    if not cache.encodes_like(model.backbone):
        raise ValueError("feature_cache: its backbone's weights differ from this model's")
    cache.keep_pixels = cache.keep_pixels or model.uses_pixels  # a shared cache serves a model that compares pixels
    return cache


def _resume(path: str, model, optimizer, scheduler, scaler, rank: int) -> int:
    """Every state of the checkpoint at ``path`` restored (this process's RNG); its iteration."""
    state = load_checkpoint(path)
    load_weights(model, state["model"], path)
    load_optimizer_state(optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    rngs = state["rng"]
    set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
    return int(state["iteration"])


def _training_model(model, device: torch.device, compile_model: bool):
    """The module the steps run: DDP-wrapped under torch.distributed, compiled with ``train.compile``
    (the same parameters: checkpoints and evaluations use ``model`` itself)."""
    train_model = model
    if du.is_distributed():
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(train_model) if compile_model else train_model


def _epoch_batches(cfg: Config, train_set, sampler: ShardedSampler, train_model, collate_fn, pin: bool) -> Callable:
    """``epoch_batches(epoch, skip)`` for the :class:`Trainer`: a data loader over ``epoch``'s order."""
    t = cfg.train

    def batches(epoch: int, skip: int):
        sampler.set_epoch(epoch, start=skip * t.batch_size)
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        train_model.train()
        # A per-epoch generator: the loader's worker seeds do not consume the global RNG, so a loader
        # created mid-epoch on resume leaves it where the uninterrupted run has it.
        generator = torch.Generator().manual_seed(t.seed * 1000 + epoch)
        return DataLoader(train_set, generator=generator, batch_size=t.batch_size, sampler=sampler,
                          collate_fn=collate_fn, drop_last=True, num_workers=cfg.data.num_workers,
                          persistent_workers=False, pin_memory=pin)

    return batches


def default_hooks(cfg: Config, optimizer, checkpoint_state_fn: Callable, evaluate: Callable,
                  final_eval: bool) -> list[Hook]:
    """The training loop's hooks, in the order they must run: losses checked, logged, the time budget,
    checkpoints, evaluations, the curves."""
    t, out = cfg.train, cfg.train.output_dir
    on_final = lambda metrics: write_evaluation(metrics, out)  # noqa: E731
    return [NonFiniteStop(), LogMetrics(optimizer), TimeBudget(t.time_budget_min),
            Checkpointer(out, checkpoint_state_fn, t.keep_checkpoints, t.checkpoint_every, t.checkpoint_every_iters),
            Evaluator(evaluate, t.eval_every, t.eval_runs or cfg.eval.runs,
                      final_runs=cfg.eval.runs if final_eval else None, on_final=on_final),
            TrainingCurves(out)]


def train(cfg: Config, resume: Optional[str] = None, device: Optional[torch.device] = None,
          datasets: Optional[tuple] = None, final_eval: bool = True, progress: bool = True,
          collate_fn: Optional[Callable] = None, overwrite: bool = False,
          on_start: Optional[Callable[[str], None]] = None, feature_cache: Optional[FeatureCache] = None,
          hooks: Sequence[Hook] = ()) -> dict:
    """Train the model of ``cfg``; returns ``{"output_dir", "checkpoint", "iteration",
    "planned_iterations", "stopped_by_time_budget", "metrics", "cache"}``.

    Nothing is written before the inputs (data, batch size, checkpoints) are validated; a fresh
    run starts only in a missing or empty ``cfg.train.output_dir`` (:mod:`detector.run_folder`).

    Args:
        cfg: the resolved config.
        resume: a checkpoint path to continue from (exactly).
        device: defaults to :func:`select_device`.
        datasets: ``(train, val, split_info)`` instead of ``build_datasets(cfg)``.
        final_eval: evaluate (``cfg.eval.runs`` runs) after the last iteration.
        progress: show a tqdm bar on rank 0.
        collate_fn: defaults to :func:`detector.data.collate_oneshot`.
        overwrite: a fresh run empties the folder of a previous run first.
        on_start: called with the output folder once it is written (rank 0), e.g. to start ``train.log``.
        feature_cache: with ``train.cache_features``, a cache whose frozen backbone is this model's
            (e.g. the one ``tools/demo.py`` keeps for both stages): the images both runs see are
            encoded once. ``ValueError`` when the backbones differ.
        hooks: further :class:`~detector.engine.hooks.Hook` objects (EMA, early stopping, another
            logger), run after the default ones at every event; a hook stops training early by
            setting ``trainer.stop = True``.

    Raises:
        InputError, ConfigError, CheckpointError: bad inputs, before anything is written.
        NonFiniteLossError: on a NaN/inf loss (no checkpoint is written after it).
        CheckpointWriteError: a checkpoint could not be written (the previous ones are intact).
    """
    t, out = cfg.train, cfg.train.output_dir
    device = device or select_device()
    world, rank = du.get_world_size(), du.get_rank()
    if resume:
        check_output_path(out, "output folder")  # a resumed run writes into its folder too
    else:
        check_fresh(out, overwrite)
    if t.tensorboard:
        check_tensorboard()
    du.barrier()  # every process has looked at the folder before rank 0 writes into it
    if t.num_threads > 0:
        torch.set_num_threads(t.num_threads)
    torch.manual_seed(t.seed)
    if datasets is None:
        from ..data import build_datasets
        datasets = build_datasets(cfg)
    train_set, val_set, split_info = datasets

    model, criterion, postprocessor = build_model(cfg)
    if t.init_checkpoint:
        load_weights(model, load_checkpoint(t.init_checkpoint)["model"], t.init_checkpoint)
    model.to(device)
    cache = _feature_cache(cfg, model, feature_cache)
    optimizer = build_optimizer(model, t)
    sampler, iters_per_epoch, total_iters = _schedule(cfg, len(train_set), world, rank)
    scheduler = build_scheduler(optimizer, iters_per_epoch, total_iters, t)
    amp = amp_dtype(device, t.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    iteration = _resume(resume, model, optimizer, scheduler, scaler, rank) if resume else 0
    if du.is_main_process():
        start_run_folder(cfg, out, overwrite and not resume, on_start)
    du.barrier()
    train_model = _training_model(model, device, t.compile)

    writers = _writers(cfg, iteration, bool(resume))
    step = _step_fn(cfg, train_model, criterion, optimizer, scheduler, scaler, amp, device, cache, world)
    state = _state_fn(cfg, model, optimizer, scheduler, scaler)
    evaluate = _evaluate_fn(cfg, model, postprocessor, val_set, split_info, device, cache)
    if collate_fn is None:
        from ..data import collate_oneshot as collate_fn
    batches = _epoch_batches(cfg, train_set, sampler, train_model, collate_fn,
                             pin=device.type == "cuda" and cache is None)
    trainer = Trainer(step, batches, iters_per_epoch, total_iters, iteration,
                      hooks=default_hooks(cfg, optimizer, state, evaluate, final_eval) + list(hooks),
                      writers=writers, log_every=t.log_every, progress=progress)
    trainer.run()
    return {"output_dir": out, "checkpoint": trainer.last_checkpoint, "iteration": trainer.iteration,
            "planned_iterations": total_iters, "stopped_by_time_budget": trainer.stopped_by_time_budget,
            "metrics": trainer.metrics,
            "cache": {"items": len(cache), "hits": cache.hits, "misses": cache.misses} if cache else None}


def _writers(cfg: Config, iteration: int, resumed: bool) -> list:
    """``metrics.jsonl`` (cut back to ``iteration`` on resume, with the checkpoints past it), and
    TensorBoard scalars when ``train.tensorboard``."""
    out = cfg.train.output_dir
    log = MetricsLog(os.path.join(out, "metrics.jsonl"))
    if resumed and du.is_main_process():
        log.truncate_after(iteration)
        discard_after(out, iteration)
    return [log] + ([TensorBoardWriter(os.path.join(out, "tensorboard"), iteration)] if cfg.train.tensorboard else [])


def _step_fn(cfg: Config, train_model, criterion, optimizer, scheduler, scaler, amp, device, cache,
             world: int) -> Callable:
    """One optimisation step on a batch: ``(losses, images seen across all processes)``."""
    def step(batch):
        query, support, targets = to_device(*batch, device, cache, cfg.model.support_size)
        losses = train_step(train_model, criterion, optimizer, scaler, query, support, targets, amp,
                            cfg.train.clip_max_norm)
        scheduler.step()
        return losses, len(query) * world
    return step


def _state_fn(cfg: Config, model, optimizer, scheduler, scaler) -> Callable[[int, int], dict]:
    """What a checkpoint holds at ``(epoch, iteration)``: weights, optimiser, schedule, scaler and
    every process's RNG states, so that a resume continues exactly."""
    def state(epoch: int, at: int) -> dict:
        rngs = du.all_gather_objects(rng_state()) if du.is_distributed() else [rng_state()]
        return checkpoint_state(model, to_dict(cfg), optimizer=optimizer.state_dict(),
                                scheduler=scheduler.state_dict(),
                                scaler=scaler.state_dict() if scaler.is_enabled() else {},
                                epoch=epoch, iteration=at, rng=rngs)
    return state


def _evaluate_fn(cfg: Config, model, postprocessor, val_set, split_info, device, cache) -> Callable[[int, bool], dict]:
    """Evaluations during training use val (settings are chosen on it); the final one uses
    ``eval.split``, the held-out test set for the numbers a run reports."""
    def evaluate(runs: int, final: bool) -> dict:
        dataset = val_set
        if final and cfg.eval.split != "val":
            from ..data import build_eval_dataset
            dataset = build_eval_dataset(cfg, cfg.eval.split)[0]
        return run_evaluation(model, postprocessor, dataset, split_info, cfg, device, runs, cache)
    return evaluate

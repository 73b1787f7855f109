"""The training loop and the evaluation wrapper.

``train(cfg)`` runs one training job into ``cfg.train.output_dir``: the resolved config and git
revision, ``metrics.jsonl`` (one JSON line per logging step and per evaluation), rotating
checkpoints, a training-curve PNG, and at the end ``metrics.json`` / ``metrics.md`` of the final
evaluation. ``resume=`` continues a run exactly (model, optimiser, scheduler, scaler, epoch,
iteration, RNG states; the sampler restarts at the next batch of the interrupted epoch).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Sampler

from .config import Config, to_dict
from .errors import ConfigError, RunError
from .features import FeatureCache
from .loss_window import LossWindow
from .models import build_model
from .models.postprocess import results_to_host
from .optim import build_optimizer, build_scheduler, load_optimizer_state
from .run_folder import check_fresh, discard_after, start_run_folder
from .utils import dist as du
from .utils.checkpoint import checkpoint_state, load_checkpoint, load_weights, rng_state, save_rotating, set_rng_state
from .utils.device import resolve_device, upload


class NonFiniteLossError(RunError, FloatingPointError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


class ShardedSampler(Sampler):
    """Epoch-seeded shuffling, sharded over processes, restartable mid-epoch.

    Each epoch's order is a permutation drawn from ``seed + epoch`` (identical on every process),
    padded to a multiple of ``num_replicas`` and split ``rank::num_replicas``. ``start`` skips the
    first indices of this process's shard (resume inside an epoch) without loading them.
    """

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.size, self.num_replicas, self.rank = size, num_replicas, rank
        self.seed, self.shuffle = seed, shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and the first index of this shard to yield."""
        self.epoch, self.start = epoch, start

    def shard(self) -> list[int]:
        """This process's full index list for the current epoch."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = math.ceil(self.size / self.num_replicas) * self.num_replicas
        order += order[: total - self.size]
        return order[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard()[self.start:])

    def __len__(self) -> int:
        return max(math.ceil(self.size / self.num_replicas) - self.start, 0)


def select_device(requested: str = "") -> torch.device:
    """``requested``, or ``cuda`` (this process's local rank) when available, else the CPU;
    :class:`~detector.errors.InputError` for a device this machine does not have."""
    return resolve_device(requested, "device")


def amp_dtype(device: torch.device, enabled: bool) -> Optional[torch.dtype]:
    """Mixed-precision dtype: bf16 on CUDA where supported, else fp16; ``None`` (off) on the CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def move_targets(targets: list[dict], device: torch.device) -> list[dict]:
    """Tensors of each target dict moved to ``device`` (without waiting for it: :func:`upload`)."""
    return [{k: (upload(v, device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]


def to_device(query, support, targets: list[dict], device: torch.device, cache: Optional[FeatureCache],
              support_size: int):
    """A training batch from the loader -> on ``device``: features from ``cache`` when there is one
    (they are kept on the device), else the images; the targets. No copy makes the host wait."""
    if cache is not None:
        query, support = cache(query), each_support(support, lambda s: cache(s, support_size))
    query = query.to(device, non_blocking=True)  # (no copy where they already are)
    support = each_support(support, lambda s: s.to(device, non_blocking=True))
    return query, support, move_targets(targets, device)


def each_support(support, fn: Callable):
    """``fn`` applied to one support batch, or to each of a list of ``k`` (k-shot)."""
    return [fn(s) for s in support] if isinstance(support, list) else fn(support)


def make_predict(model: torch.nn.Module, postprocessor: Callable, device: torch.device,
                 cache: Optional[FeatureCache] = None, amp: Optional[torch.dtype] = None,
                 support_size: int = 32, record: Optional[list] = None,
                 path_supports: Optional[Callable] = None) -> Callable:
    """The ``predict(query, support, targets)`` callable of the evaluation protocol: boxes (xyxy,
    absolute pixels of the original image) and scores per item, from ``targets[i]["orig_size"]``.
    With a ``cache``, exemplar crops are encoded padded to ``support_size`` as the collate pads them.
    With ``record``, each item's ``(image_id, category_id, result)`` is appended to it. With
    ``path_supports(targets) -> {path: ImageBatch}``, those support paths of the model see other
    exemplars than the items' own (the support-path probe). ``support`` may be a list of ``k``
    batches (k-shot items), passed to the model as such."""

    @torch.no_grad()
    def predict(query, support, targets):
        model.eval()
        others = path_supports(targets) if path_supports is not None else {}
        if cache is not None:
            query, support = cache(query), each_support(support, lambda s: cache(s, support_size))
            others = {path: cache(batch, support_size) for path, batch in others.items()}
        sizes = upload(torch.stack([torch.as_tensor(t["orig_size"]) for t in targets]), device)
        others = {path: batch.to(device) for path, batch in others.items()}
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            outputs = model(query.to(device), each_support(support, lambda s: s.to(device)), path_supports=others or None)
        results = results_to_host(postprocessor(outputs, sizes))
        if record is not None:
            record.extend((int(t["image_id"]), int(t["category_id"]), r) for t, r in zip(targets, results))
        return results

    return predict


def run_evaluation(model, postprocessor, dataset, split_info, cfg: Config, device: torch.device, runs: int,
                   cache: Optional[FeatureCache] = None, record: Optional[list] = None, progress: bool = False,
                   path_supports: Optional[Callable] = None) -> dict:
    """The protocol (:func:`detector.evaluation.evaluate_oneshot`) on ``dataset`` with ``runs``
    exemplar runs (``dataset.shots`` exemplars per item); ``record`` collects the raw per-item
    detections and ``path_supports`` feeds support paths other exemplars (see :func:`make_predict`).
    The metrics name the evaluated set (``split``: ``val`` or ``test``) and record ``shots``."""
    from .evaluation import evaluate_oneshot

    predict = make_predict(model, postprocessor, device, cache, amp_dtype(device, cfg.train.amp),
                           support_size=cfg.model.support_size, record=record, path_supports=path_supports)
    metrics = evaluate_oneshot(predict, dataset, runs=runs, seen_ids=split_info["seen_ids"],
                               unseen_ids=split_info["unseen_ids"], batch_size=cfg.eval.batch_size,
                               num_workers=cfg.data.num_workers, max_detections=cfg.eval.max_detections,
                               progress=progress)
    return {"split": getattr(dataset, "split_name", "val"), **metrics}


def write_evaluation(metrics: dict, folder: str) -> tuple[str, str]:
    """``metrics.json`` and ``metrics.md`` (the markdown tables) in ``folder``; returns both paths."""
    from .evaluation import format_metrics_table, write_evaluation_files

    return write_evaluation_files(metrics, folder, format_metrics_table(metrics))


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, appended (rank 0 only)."""

    def __init__(self, path: str):
        self.path = path

    def truncate_after(self, iteration: int) -> None:
        """Drop records past ``iteration`` (written by a run killed after its last checkpoint)."""
        if not os.path.isfile(self.path):
            return
        with open(self.path, "r", encoding="utf-8") as f:
            kept = [line for line in f if line.strip() and json.loads(line).get("iter", 0) <= iteration]
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(kept)

    def write(self, record: dict) -> None:
        if du.is_main_process():
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def _scalar_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _warn_budget_fired(log: MetricsLog, budget_min: float, iteration: int, total_iters: int) -> None:
    """Say loudly, on stderr and in ``metrics.jsonl``, that the wall-clock safety net stopped the run:
    its numbers then depend on the machine's speed and load, not only on the config."""
    import sys

    message = (f"WARNING: train.time_budget_min={budget_min:g} stopped training at iteration {iteration} of "
               f"{total_iters}: this run's numbers depend on how fast and how busy the machine was; "
               f"the planned schedule did not finish")
    print("\n" + "!" * 100 + f"\n{message}\n" + "!" * 100, file=sys.stderr, flush=True)
    log.write({"type": "warning", "iter": iteration, "message": message})


def train_step(model: torch.nn.Module, criterion: Callable, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, query, support, targets: list[dict], amp: Optional[torch.dtype],
               clip_max_norm: float) -> dict:
    """One optimisation step on a batch already on the device: forward and losses (under autocast
    with ``amp``), backward, gradient clipping, optimiser step. Returns the losses, not read: the
    host never waits for the device here except for the matching's one copy of its costs."""
    with torch.autocast(query.tensors.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        losses = criterion(model(query, support), targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["loss"]).backward()
    if clip_max_norm > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
    scaler.step(optimizer)
    scaler.update()
    return losses


def train(cfg: Config, resume: Optional[str] = None, device: Optional[torch.device] = None,
          datasets: Optional[tuple] = None, final_eval: bool = True, progress: bool = True,
          collate_fn: Optional[Callable] = None, overwrite: bool = False,
          on_start: Optional[Callable[[str], None]] = None, feature_cache: Optional[FeatureCache] = None) -> dict:
    """Train the model of ``cfg``; returns ``{"output_dir", "checkpoint", "iteration", "metrics",
    "feature_cache", ...}``.

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
        feature_cache: with ``train.cache_features``, the cache of an earlier run whose frozen
            backbone is this model's (e.g. stage 1's, passed on by ``tools/demo.py``): the images
            both runs see are encoded once. ``ValueError`` when the backbones differ.

    Raises:
        InputError, ConfigError, CheckpointError: bad inputs, before anything is written.
        NonFiniteLossError: on a NaN/inf loss (no checkpoint is written after it).
        CheckpointWriteError: a checkpoint could not be written (the previous ones are intact).
    """
    from tqdm import tqdm

    t = cfg.train
    device = device or select_device()
    distributed = du.is_distributed()
    world, rank = du.get_world_size(), du.get_rank()
    out = t.output_dir
    if not resume:
        check_fresh(out, overwrite)
    du.barrier()  # every process has looked at the folder before rank 0 writes into it
    if t.num_threads > 0:
        torch.set_num_threads(t.num_threads)
    torch.manual_seed(t.seed)
    if datasets is None:
        from .data import build_datasets
        datasets = build_datasets(cfg)
    train_set, val_set, split_info = datasets

    model, criterion, postprocessor = build_model(cfg)
    if t.init_checkpoint:
        load_weights(model, load_checkpoint(t.init_checkpoint)["model"], t.init_checkpoint)
    model.to(device)
    cache = None
    if t.cache_features:
        cache = FeatureCache(model.backbone) if feature_cache is None else feature_cache
        if not cache.encodes_like(model.backbone):
            raise ValueError("feature_cache: its backbone's weights differ from this model's")
    optimizer = build_optimizer(model, t)
    batch = t.batch_size
    sampler = ShardedSampler(len(train_set), world, rank, seed=t.seed, shuffle=True)
    iters_per_epoch = len(sampler) // batch
    if iters_per_epoch == 0:
        raise ConfigError(f"train.batch_size={batch} is larger than the training set ({len(train_set)} items over "
                          f"{world} process(es)); lower train.batch_size")
    total_iters = t.epochs * iters_per_epoch
    if t.max_iters > 0:
        total_iters = min(total_iters, t.max_iters)
    scheduler = build_scheduler(optimizer, iters_per_epoch, total_iters, t)
    amp = amp_dtype(device, t.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)

    iteration = 0
    if resume:
        state = load_checkpoint(resume)
        load_weights(model, state["model"], resume)
        load_optimizer_state(optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        iteration = int(state["iteration"])
        rngs = state["rng"]
        set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
    if du.is_main_process():
        start_run_folder(cfg, out, overwrite and not resume, on_start)
    du.barrier()
    train_model = model
    if distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        # The same parameters: checkpoints and evaluations use `model` itself.
        train_model = torch.compile(train_model)

    if collate_fn is None:
        from .data import collate_oneshot as collate_fn
    loader_kwargs = dict(batch_size=batch, sampler=sampler, collate_fn=collate_fn, drop_last=True,
                         num_workers=cfg.data.num_workers, persistent_workers=False,
                         pin_memory=device.type == "cuda" and cache is None)
    log = MetricsLog(os.path.join(out, "metrics.jsonl"))
    if resume and du.is_main_process():
        log.truncate_after(iteration)
        discard_after(out, iteration)
    last_ckpt = None
    metrics: dict = {}

    def checkpoint(epoch_done: int) -> str:
        rngs = du.all_gather_objects(rng_state()) if distributed else [rng_state()]
        state = checkpoint_state(model, to_dict(cfg), optimizer=optimizer.state_dict(),
                                 scheduler=scheduler.state_dict(),
                                 scaler=scaler.state_dict() if scaler.is_enabled() else {},
                                 epoch=epoch_done, iteration=iteration, rng=rngs)
        path = ""
        if du.is_main_process():
            path = save_rotating(out, iteration, state, t.keep_checkpoints)
        du.barrier()
        return path

    def evaluate(runs: int, epoch: int, final: bool) -> dict:
        result: dict = {}
        if du.is_main_process():
            # Evaluations during training use val (settings are chosen on it); the final one uses
            # eval.split, the held-out test set for the numbers a run reports.
            dataset = val_set
            if final and cfg.eval.split != "val":
                from .data import build_eval_dataset
                dataset = build_eval_dataset(cfg, cfg.eval.split)[0]
            # The evaluation's data loader draws from the global RNG: fork it so that training after an
            # evaluation continues exactly as after a resume.
            with torch.random.fork_rng(devices=[]):
                result = run_evaluation(model, postprocessor, dataset, split_info, cfg, device, runs, cache)
                log.write({"type": "eval", "epoch": epoch, "iter": iteration, "final": final, "split": result["split"],
                           **_scalar_metrics(result)})
        du.barrier()
        return result

    start_time = time.time()
    bar = tqdm(total=total_iters, initial=iteration, disable=not (progress and du.is_main_process()),
               dynamic_ncols=True, mininterval=1.0, desc="train")
    window = LossWindow()
    window_start, window_images = time.time(), 0

    def stop_if_not_finite(bad) -> None:
        if bad is None:
            return
        bar.close()
        value = "on another process" if bad[1] is None else bad[1]
        raise NonFiniteLossError(
            f"non-finite loss ({value}) at iteration {bad[0]}, epoch {bad[0] // iters_per_epoch}; training "
            f"stopped. The last good checkpoint is {last_ckpt or 'none (none was written yet)'}. "
            f"Try a lower train.lr, a smaller train.clip_max_norm, or train.amp=false.")

    def check_window() -> None:
        """Before a checkpoint or an evaluation: stop at a non-finite loss (nothing after it is saved)."""
        stop_if_not_finite(window.check())

    stop = iteration >= total_iters
    budget_fired = False
    epoch = iteration // iters_per_epoch
    while not stop:
        offset = (iteration - epoch * iters_per_epoch) * batch
        sampler.set_epoch(epoch, start=offset)
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        train_model.train()
        # A per-epoch generator: the loader's worker seeds do not consume the global RNG, so a loader
        # created mid-epoch on resume leaves it where the uninterrupted run has it.
        generator = torch.Generator().manual_seed(t.seed * 1000 + epoch)
        for query, support, targets in DataLoader(train_set, generator=generator, **loader_kwargs):
            query, support, targets = to_device(query, support, targets, device, cache, cfg.model.support_size)
            losses = train_step(train_model, criterion, optimizer, scaler, query, support, targets, amp,
                                t.clip_max_norm)
            window.add(iteration, losses)
            scheduler.step()
            iteration += 1
            window_images += len(query) * world
            bar.update(1)
            if iteration % t.log_every == 0 or iteration == total_iters:
                reduced, bad = window.take()
                stop_if_not_finite(bad)
                speed = window_images / max(time.time() - window_start, 1e-9)
                log.write({"type": "train", "epoch": epoch, "iter": iteration, "lr": optimizer.param_groups[-1]["lr"],
                           "images_per_s": speed, "time_s": time.time() - start_time, **reduced})
                bar.set_postfix(loss=f"{reduced['loss']:.3f}", img_s=f"{speed:.1f}")
                window_start, window_images = time.time(), 0
            budget_over = t.time_budget_min > 0 and (time.time() - start_time) > 60 * t.time_budget_min
            if distributed and t.time_budget_min > 0:
                # The processes agree (a collective, on the backend's device) at the log lines only:
                # not a wait for the device at every step.
                logged = iteration % t.log_every == 0 or iteration == total_iters
                budget_over = logged and du.any_process(budget_over)
            stop = iteration >= total_iters or budget_over
            budget_fired = budget_over and iteration < total_iters
            if t.checkpoint_every_iters > 0 and iteration % t.checkpoint_every_iters == 0 and not stop:
                check_window()
                last_ckpt = checkpoint(epoch)
            if stop or iteration % iters_per_epoch == 0:
                break
        check_window()  # before any checkpoint or evaluation of the epoch
        epoch_done = iteration % iters_per_epoch == 0
        epoch = iteration // iters_per_epoch
        if stop or (epoch_done and t.checkpoint_every > 0 and epoch % t.checkpoint_every == 0):
            last_ckpt = checkpoint(epoch)
        if not stop and epoch_done and t.eval_every > 0 and epoch % t.eval_every == 0:
            metrics = evaluate(t.eval_runs or cfg.eval.runs, epoch, final=False)
    bar.close()
    if budget_fired and du.is_main_process():
        _warn_budget_fired(log, t.time_budget_min, iteration, total_iters)
    if last_ckpt is None:
        last_ckpt = checkpoint(epoch)
    if final_eval:
        metrics = evaluate(cfg.eval.runs, epoch, final=True)
        metrics["training"] = {"iterations": iteration, "planned_iterations": total_iters,
                               "stopped_by_time_budget": budget_fired}
        if du.is_main_process():
            write_evaluation(metrics, out)
    if du.is_main_process():
        try:
            from .visualize import plot_training_curves
            plot_training_curves(os.path.join(out, "metrics.jsonl"), os.path.join(out, "training_curves.png"))
        except Exception as e:  # noqa: BLE001 - a plotting failure must not lose a finished run
            print(f"warning: could not draw the training curves: {e}")
    return {"output_dir": out, "checkpoint": last_ckpt, "iteration": iteration, "planned_iterations": total_iters,
            "stopped_by_time_budget": budget_fired, "metrics": metrics,
            "cache": {"items": len(cache), "hits": cache.hits, "misses": cache.misses} if cache else None,
            "feature_cache": cache}

"""The training loop as a step plus hooks: the recorded losses bit for bit, those of the loop it
replaced to float rounding, and each hook on its own against a stand-in trainer."""
import json
import math
import os

import pytest
import torch

from detector.config import load_config
from detector.engine import (Checkpointer, Evaluator, Hook, LogMetrics, MetricsLog, NonFiniteLossError,
                             NonFiniteStop, TensorBoardWriter, TimeBudget, Trainer, train)
from toy import ToyDataset, collate

pytestmark = pytest.mark.usefixtures("one_thread")

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(os.path.dirname(os.path.dirname(HERE)), "configs", "tiny.yaml")
with open(os.path.join(HERE, "data", "loop_reference.json"), encoding="utf-8") as _f:
    REFERENCE = json.load(_f)


def records(folder):
    with open(os.path.join(folder, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def without_timing(record):
    return {k: v for k, v in record.items() if not k.endswith("time_s") and k != "images_per_s"}


def assert_within_rounding(got, old_loop, rel=1e-5):
    """Every number of ``got`` within ``rel`` of the old loop's: the step's kernels changed after the
    old loop was recorded (the same values to float rounding, 5e-7 measured), the loop did not. A
    changed loop moves the toy losses far more (measured: a 1% higher learning rate 6e-3, gradients
    clipped at 0.11 instead of 0.1 2e-4, another seed 0.5)."""
    assert [sorted(r) for r in got] == [sorted(r) for r in old_loop]
    for i, (a, b) in enumerate(zip(got, old_loop)):
        for k, v in b.items():
            if isinstance(v, float):
                assert a[k] == pytest.approx(v, rel=rel, abs=1e-9), (i, k)
            else:
                assert a[k] == v, (i, k)


def test_the_same_losses_as_recorded_and_as_the_loop_it_replaced_on_the_toy_data(tmp_path):
    cfg = load_config(TINY, [f"train.output_dir={tmp_path}", "train.max_iters=0", "train.epochs=3",
                             "train.checkpoint_every_iters=3", "train.log_every=1", "train.num_threads=1"])
    train(cfg, datasets=(ToyDataset(), None, None), final_eval=False, progress=False, collate_fn=collate)
    losses = [{k: v for k, v in r.items() if k.startswith("loss")} for r in records(tmp_path) if r["type"] == "train"]
    assert losses == REFERENCE["toy"]  # bit for bit: every float as recorded
    assert_within_rounding(losses, REFERENCE["toy_old_loop"])


def test_the_same_losses_and_evaluations_on_the_tiny_benchmark(tmp_path):
    from detector.data import generate_synthetic

    generate_synthetic(str(tmp_path / "bench"), "tiny", seed=0, workers=1)
    cfg = load_config(TINY, [f"train.output_dir={tmp_path / 'run'}", f"data.root={tmp_path / 'bench'}",
                             "train.log_every=1", "train.eval_every=1", "train.max_iters=0", "train.epochs=2",
                             "train.num_threads=1"])
    result = train(cfg, progress=False)
    got = [without_timing(r) for r in records(tmp_path / "run")]
    assert [(r["iter"], r["final"]) for r in got if r["type"] == "eval"] == [(32, False), (64, True)]
    assert got == REFERENCE["tiny"]
    assert_within_rounding(got, REFERENCE["tiny_old_loop"])
    assert result["iteration"] == 64 and result["checkpoint"].endswith("checkpoint_00000064.pth")


class Stand:
    """The trainer state a hook reads, without a model."""

    def __init__(self, iters_per_epoch=4, total_iters=8, log_every=2):
        self.iteration, self.epoch, self.stop = 0, 0, False
        self.iters_per_epoch, self.total_iters, self.log_every = iters_per_epoch, total_iters, log_every
        self.losses, self.images, self.logged, self.metrics = {}, 2, {}, {}
        self.last_checkpoint, self.stopped_by_time_budget, self.start_time = None, False, 0.0
        self.records, self.saves = [], 0
        self.bar = type("Bar", (), {"set_postfix": lambda self, **kw: None})()

    epoch_done = property(lambda self: self.iteration % self.iters_per_epoch == 0)

    def is_log_step(self):
        return self.iteration % self.log_every == 0 or self.iteration == self.total_iters

    def write(self, record):
        self.records.append(record)

    def before_save(self):
        self.saves += 1


def step(stand, hook, loss):
    stand.iteration += 1
    stand.losses = {"loss": torch.tensor(loss), "loss_class": torch.tensor(1.0)}
    hook.after_step(stand)


def test_non_finite_stop_names_the_iteration_at_the_first_check():
    stand, hook = Stand(log_every=10), NonFiniteStop()
    step(stand, hook, 1.0)
    step(stand, hook, float("inf"))
    step(stand, hook, 2.0)  # not a log step: nothing read yet
    stand.last_checkpoint = "ckpt_1.pth"
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(inf\) at iteration 1, epoch 0.*ckpt_1\.pth"):
        hook.before_save(stand)


def test_non_finite_stop_gives_the_window_means_at_log_lines():
    stand, hook = Stand(log_every=2), NonFiniteStop()
    step(stand, hook, 1.0)
    assert stand.logged == {}
    step(stand, hook, 3.0)
    assert stand.logged == {"loss": 2.0, "loss_class": 1.0}


def test_log_metrics_writes_train_records_at_log_lines_only():
    stand = Stand(log_every=2)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.25)
    checker, log = NonFiniteStop(), LogMetrics(optimizer)
    log.before_train(stand)
    for loss in (1.0, 2.0, 3.0):
        step(stand, checker, loss)
        log.after_step(stand)
    assert len(stand.records) == 1
    record = stand.records[0]
    assert (record["type"], record["iter"], record["lr"], record["loss"]) == ("train", 2, 0.25, 1.5)
    assert record["images_per_s"] > 0


def test_time_budget_stops_and_warns(monkeypatch, capsys):
    import detector.engine.hooks as hooks

    stand, hook = Stand(), TimeBudget(minutes=1.0)
    clock = [0.0]
    monkeypatch.setattr(hooks.time, "time", lambda: clock[0])
    step(stand, hook, 1.0)
    assert not stand.stop
    clock[0] = 61.0
    step(stand, hook, 1.0)
    assert stand.stop and stand.stopped_by_time_budget
    hook.after_train(stand)
    assert "train.time_budget_min=1 stopped training at iteration 2 of 8" in capsys.readouterr().err
    assert stand.records[-1]["type"] == "warning"


def test_time_budget_is_silent_when_the_schedule_ends_first(monkeypatch):
    import detector.engine.hooks as hooks

    stand, hook = Stand(total_iters=1), TimeBudget(minutes=1.0)
    monkeypatch.setattr(hooks.time, "time", lambda: 100.0)
    step(stand, hook, 1.0)
    stand.stop = True
    hook.after_train(stand)
    assert not stand.stopped_by_time_budget and stand.records == []


def test_checkpointer_saves_inside_epochs_at_ends_and_once_at_the_end(tmp_path):
    stand = Stand(iters_per_epoch=4, total_iters=8)
    saved = []
    hook = Checkpointer(str(tmp_path), lambda epoch, it: saved.append((epoch, it)) or {"model": {}, "iteration": it},
                        keep=10, every_epochs=0, every_iters=3)
    for _ in range(4):
        step(stand, hook, 1.0)
    assert saved == [(0, 3)] and stand.saves == 1  # the losses were checked before it
    stand.epoch = 1
    hook.after_epoch(stand)  # every_epochs=0 and no stop: nothing
    assert len(saved) == 1
    stand.stop = True
    hook.after_epoch(stand)
    assert saved[-1] == (1, 4)
    assert stand.last_checkpoint.endswith("checkpoint_00000004.pth")
    assert torch.load(stand.last_checkpoint, weights_only=True)["iteration"] == 4
    hook.after_train(stand)  # one exists already
    assert len(saved) == 2


def test_evaluator_forks_the_rng_and_the_final_metrics_say_how_long_training_was():
    stand = Stand(iters_per_epoch=4, total_iters=8)
    finals = []

    def evaluate(runs, final):
        torch.rand(3)  # an evaluation that draws from the global RNG
        return {"split": "test" if final else "val", "runs": runs, "unseen_ap50": 0.5}

    hook = Evaluator(evaluate, every_epochs=1, runs=2, final_runs=5, on_final=finals.append)
    stand.iteration, stand.epoch = 4, 1
    before = torch.random.get_rng_state()
    hook.after_epoch(stand)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert stand.metrics["runs"] == 2 and stand.records[-1]["split"] == "val"
    stand.iteration, stand.stop = 8, True
    hook.after_train(stand)
    assert finals[0]["runs"] == 5 and finals[0]["training"] == {"iterations": 8, "planned_iterations": 8,
                                                                 "stopped_by_time_budget": False}
    assert stand.records[-1]["final"] is True


def test_a_new_hook_changes_the_loop_without_editing_it():
    """Early stopping as a hook: the trainer stops where it says, and the epoch-end hooks see it."""
    seen = []

    class StopAt(Hook):
        def after_step(self, trainer):
            trainer.stop = trainer.iteration >= 3

        def after_epoch(self, trainer):
            seen.append((trainer.iteration, trainer.stop))

    trainer = Trainer(lambda batch: ({"loss": torch.tensor(float(batch))}, 1), lambda epoch, skip: range(skip, 4),
                      iters_per_epoch=4, total_iters=100, hooks=[StopAt()], progress=False)
    trainer.run()
    assert trainer.iteration == 3 and seen == [(3, True)]


def test_train_takes_further_hooks_and_checkpoints_where_one_stops_it(tmp_path):
    class StopAt(Hook):
        def after_step(self, trainer):
            trainer.stop = trainer.stop or trainer.iteration >= 3

    cfg = load_config(TINY, [f"train.output_dir={tmp_path}", "train.max_iters=8", "train.log_every=1"])
    result = train(cfg, datasets=(ToyDataset(), None, None), final_eval=False, progress=False,
                   collate_fn=collate, hooks=[StopAt()])
    assert result["iteration"] == 3 and result["planned_iterations"] == 8
    assert os.path.basename(result["checkpoint"]) == "checkpoint_00000003.pth"
    assert [r["iter"] for r in records(tmp_path) if r["type"] == "train"] == [1, 2, 3]


def test_tensorboard_holds_the_logged_scalars_and_a_resume_drops_the_later_ones(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def scalars(folder, tag):
        acc = EventAccumulator(str(folder))
        acc.Reload()
        return [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)]

    writer = TensorBoardWriter(str(tmp_path))
    for it in (2, 4, 6):
        writer.write({"type": "train", "iter": it, "epoch": 0, "loss": float(it), "lr": 0.1})
    writer.write({"type": "eval", "iter": 6, "split": "val", "unseen_ap50": 0.25, "final": False})
    writer.close()
    assert scalars(tmp_path, "train/loss") == [(2, 2.0), (4, 4.0), (6, 6.0)]
    assert scalars(tmp_path, "val/unseen_ap50") == [(6, 0.25)]
    resumed = TensorBoardWriter(str(tmp_path), purge_after=4)  # resumed from the checkpoint at iteration 4
    resumed.write({"type": "train", "iter": 6, "loss": 5.0})
    resumed.close()
    assert scalars(tmp_path, "train/loss") == [(2, 2.0), (4, 4.0), (6, 5.0)]


def test_train_writes_tensorboard_beside_the_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(TINY, [f"train.output_dir={tmp_path}", "train.max_iters=4", "train.log_every=2",
                             "train.tensorboard=true"])
    train(cfg, datasets=(ToyDataset(), None, None), final_eval=False, progress=False, collate_fn=collate)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    logged = [(r["iter"], r["loss"]) for r in records(tmp_path) if r["type"] == "train"]
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(i, pytest.approx(v)) for i, v in logged]
    assert len(logged) == 2 and all(math.isfinite(v) for _, v in logged)


def test_tensorboard_missing_is_a_config_error_before_anything_is_written(tmp_path, monkeypatch):
    import builtins

    from detector.errors import ConfigError

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "tensorboard" or name.startswith("torch.utils.tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    cfg = load_config(TINY, [f"train.output_dir={tmp_path / 'run'}", "train.tensorboard=true"])
    with pytest.raises(ConfigError, match="train.tensorboard=true needs the tensorboard package"):
        train(cfg, datasets=(ToyDataset(), None, None), final_eval=False, progress=False, collate_fn=collate)
    assert not (tmp_path / "run").exists()


def test_metrics_log_truncates_records_after_a_resume_point(tmp_path):
    log = MetricsLog(str(tmp_path / "metrics.jsonl"))
    for it in (1, 2, 3):
        log.write({"type": "train", "iter": it})
    log.truncate_after(2)
    assert [r["iter"] for r in records(tmp_path)] == [1, 2]


def test_metrics_log_drops_a_line_cut_short_by_a_kill_and_keeps_the_rest(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(str(path))
    for it in (1, 2):
        log.write({"type": "train", "iter": it})
    with open(path, "a") as f:
        f.write('{"type": "train", "it')  # the process died inside this write
    log.truncate_after(2)
    log.write({"type": "train", "iter": 3})
    assert [r["iter"] for r in records(tmp_path)] == [1, 2, 3]
    # The cut is a rename: when the new file's write fails, the old one is still all there.
    import detector.utils.atomic as atomic

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError):
        log.truncate_after(1)
    assert [r["iter"] for r in records(tmp_path)] == [1, 2, 3]


def test_a_feature_cache_is_shared_only_with_the_same_backbone(tmp_path):
    from detector.features import FeatureCache
    from detector.models.build import build_backbone

    cfg = load_config(TINY, [f"train.output_dir={tmp_path / 'a'}", "train.max_iters=4"])
    first = train(cfg, datasets=(ToyDataset(), None, None), final_eval=False, progress=False, collate_fn=collate)
    torch.manual_seed(123)  # a different random backbone
    other = FeatureCache(build_backbone(cfg.model))
    cfg_b = load_config(TINY, [f"train.output_dir={tmp_path / 'b'}", "train.max_iters=4",
                               f"train.init_checkpoint={first['checkpoint']}"])
    with pytest.raises(ValueError, match="feature_cache: its backbone's weights differ"):
        train(cfg_b, datasets=(ToyDataset(), None, None), final_eval=False, progress=False, collate_fn=collate,
              feature_cache=other)

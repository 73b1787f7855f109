"""The training loop on a toy dataset: exact resume in-process, sampler sharding, non-finite losses."""
import json
import math
import os

import pytest
import torch

from detector.engine import NonFiniteLossError, ShardedSampler, train
from detector.utils.checkpoint import list_checkpoints, load_checkpoint
from toy import ToyDataset, collate

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs", "tiny.yaml")


def run(tmp, *overrides, resume=None, dataset=None):
    from detector.config import load_config

    cfg = load_config(TINY, [f"train.output_dir={tmp}", "train.max_iters=0", "train.epochs=3",
                             "train.checkpoint_every_iters=3", *overrides])
    data = (dataset or ToyDataset(), None, None)
    return train(cfg, resume=resume, datasets=data, final_eval=False, progress=False, collate_fn=collate)


def test_resume_mid_epoch_is_exact(tmp_path):
    full = run(tmp_path / "full", "train.keep_checkpoints=10")
    assert full["iteration"] == 12  # 3 epochs x 4 batches of 2
    # Resume from the mid-epoch checkpoint at iteration 3 (epoch 0 has 4 iterations) in a new folder.
    ckpt = [p for p in list_checkpoints(str(tmp_path / "full")) if p.endswith("00000003.pth")][0]
    resumed = run(tmp_path / "resumed", resume=ckpt)
    a = load_checkpoint(full["checkpoint"])["model"]
    b = load_checkpoint(resumed["checkpoint"])["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(x) for x in open(tmp_path / "full" / "metrics.jsonl")]
    assert lines and all(math.isfinite(x["loss"]) for x in lines if x["type"] == "train")
    assert os.path.isfile(tmp_path / "full" / "config.yaml") and os.path.isfile(tmp_path / "full" / "training_curves.png")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from detector.models.criterion import SetCriterion

    forward, calls = SetCriterion.forward, []

    def poisoned(self, outputs, targets):
        losses = forward(self, outputs, targets)
        calls.append(1)
        if len(calls) == 5:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(SetCriterion, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at iteration 4.*checkpoint_00000004\.pth"):
        run(tmp_path)
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path))] == ["checkpoint_00000003.pth", "checkpoint_00000004.pth"]


def test_sampler_shards_are_disjoint_and_restartable():
    shards = [ShardedSampler(10, num_replicas=2, rank=r, seed=1) for r in range(2)]
    for s in shards:
        s.set_epoch(3)
    a, b = list(shards[0]), list(shards[1])
    assert len(a) == len(b) == 5 and sorted(set(a) | set(b)) == list(range(10))
    shards[0].set_epoch(3, start=2)
    assert list(shards[0]) == a[2:] and len(shards[0]) == 3
    shards[0].set_epoch(4)
    assert list(shards[0]) != a


def test_pretrain_stage_runs_on_the_tiny_benchmark(tmp_path):
    from detector.config import load_config
    from detector.data import build_datasets

    cfg = load_config(TINY, [f"data.root={tmp_path / 'bench'}", f"train.output_dir={tmp_path / 'run'}",
                             "train.stage=pretrain", "train.max_iters=2"])
    train_set, val_set, split_info = build_datasets(cfg)
    result = train(cfg, datasets=(train_set, val_set, split_info), final_eval=False, progress=False)
    assert result["iteration"] == 2
    # The stage-1 weights start stage 2.
    cfg2 = load_config(TINY, [f"data.root={tmp_path / 'bench'}", f"train.output_dir={tmp_path / 'stage2'}",
                              "train.max_iters=1", f"train.init_checkpoint={result['checkpoint']}"])
    assert train(cfg2, final_eval=False, progress=False)["iteration"] == 1


def test_train_compile_trains_the_compiled_module_and_saves_the_model_itself(tmp_path, monkeypatch):
    """``train.compile=true`` wraps the model in ``torch.compile`` for the steps (here a spy that
    counts the calls of what it wraps: compiling takes minutes on the CPU); checkpoints hold the
    model's own weights, which the compiled module shares."""
    wrapped = []

    class Spy(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module, self.calls = module, 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            return self.module(*args, **kwargs)

    def spy_compile(module, **kwargs):
        wrapped.append(Spy(module))
        return wrapped[-1]

    monkeypatch.setattr(torch, "compile", spy_compile)
    plain = run(tmp_path / "plain")
    compiled = run(tmp_path / "compiled", "train.compile=true")
    assert len(wrapped) == 1 and wrapped[0].calls == compiled["iteration"] == 12
    a = load_checkpoint(plain["checkpoint"])["model"]
    b = load_checkpoint(compiled["checkpoint"])["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

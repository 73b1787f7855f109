"""Two CPU processes with gloo: sharded sampling, synchronised weights, reduced metrics."""
import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs", "tiny.yaml")


def _worker(rank: int, world: int, tmp: str, extra: tuple = ()) -> None:
    from detector.config import load_config
    from detector.engine import train
    from detector.models.criterion import SetCriterion
    from toy import ToyDataset, collate

    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    torch.set_num_threads(1)
    forward = SetCriterion.forward

    def recording(self, outputs, targets):
        losses = forward(self, outputs, targets)
        with open(f"{tmp}/loss_rank{rank}.txt", "a") as f:
            f.write(f"{losses['loss'].item()!r}\n")
        return losses

    SetCriterion.forward = recording
    cfg = load_config(TINY, [f"train.output_dir={tmp}/run", "train.max_iters=4", "train.epochs=2", "train.log_every=2",
                             "train.checkpoint_every_iters=0", *extra])
    result = train(cfg, datasets=(ToyDataset(n=8, log_path=f"{tmp}/served_rank{rank}.txt"), None, None),
                   final_eval=False, progress=False, collate_fn=collate)
    with open(f"{tmp}/result_rank{rank}.json", "w") as f:
        json.dump({k: result[k] for k in ("iteration", "stopped_by_time_budget")}, f)
    dist.destroy_process_group()


def test_two_gloo_processes(tmp_path):
    tmp = str(tmp_path)
    mp.spawn(_worker, args=(2, tmp), nprocs=2, join=True)
    served = [[tuple(map(int, line.split())) for line in open(f"{tmp}/served_rank{r}.txt")] for r in range(2)]
    # Epoch 0: 8 items, 2 per batch, 2 iterations per epoch on each of 2 processes: disjoint halves.
    epoch0 = [{i for e, i in s if e == 0} for s in served]
    assert len(epoch0[0]) == len(epoch0[1]) == 4 and not epoch0[0] & epoch0[1]
    assert epoch0[0] | epoch0[1] == set(range(8))
    # The logged loss is the mean over both processes of their window means.
    losses = [[float(x) for x in open(f"{tmp}/loss_rank{r}.txt")] for r in range(2)]
    logged = [json.loads(x) for x in open(f"{tmp}/run/metrics.jsonl") if '"train"' in x]
    assert [rec["iter"] for rec in logged] == [2, 4]
    for rec, sl in zip(logged, (slice(0, 2), slice(2, 4))):
        expected = (sum(losses[0][sl]) / 2 + sum(losses[1][sl]) / 2) / 2
        assert abs(rec["loss"] - expected) < 1e-5 * max(1.0, abs(expected))
    # Only rank 0 wrote checkpoints (end of each epoch), and no temporary files are left.
    files = sorted(os.listdir(f"{tmp}/run"))
    assert [f for f in files if "checkpoint" in f] == ["checkpoint_00000002.pth", "checkpoint_00000004.pth"]


def test_the_time_budget_stops_every_process_at_the_same_log_line(tmp_path):
    """The processes agree on the budget at the log lines (a collective), not at every step: with
    a budget spent after the first step, all of them stop at the first log line, iteration 2."""
    tmp = str(tmp_path)
    mp.spawn(_worker, args=(2, tmp, ("train.time_budget_min=0.000001",)), nprocs=2, join=True)
    results = [json.load(open(f"{tmp}/result_rank{r}.json")) for r in range(2)]
    assert results == [{"iteration": 2, "stopped_by_time_budget": True}] * 2

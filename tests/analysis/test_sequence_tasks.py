"""Training on the sequence tasks: the prediction rule, and short runs that must learn.

The short runs use a reduced model (hidden 64, 2 layers) for 150 steps; chance is 0.1 (sorting, per
symbol) and 0.125 (retrieval). With seed 0 they reach about 0.8 and 0.75; the thresholds leave room
for platform differences while staying far above chance.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tools.analysis.sequence_data import CHANCE, load_task  # noqa: E402
from tools.analysis.sequence_tasks import lr_factor, predict, slot_loss, summarise, train_run  # noqa: E402

SMALL = dict(d_model=64, num_heads=4, num_layers=2, dim_feedforward=128, bias_hidden_dim=32)


def test_prediction_rule():
    logits = torch.tensor([[[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]])  # [B=1, Q=2, n=3]
    assert predict(logits, 2).tolist() == [[1, 0]]  # one target per slot
    # One shared target: arg-max of the mean log-probability over slots.
    mean_logp = logits.log_softmax(-1).mean(1)
    assert predict(logits, 1).tolist() == [[int(mean_logp.argmax())]]
    shared = slot_loss(logits, torch.tensor([[1]]))
    torch.testing.assert_close(shared, slot_loss(logits, torch.tensor([[1, 1]])))


def test_schedule_warms_up_then_decays_to_zero():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)


def test_summary_of_final_accuracies():
    runs = {"indirect": {0: {"test_acc": [0.1, 0.8]}, 1: {"test_acc": [0.1, 0.6]}}}
    row = summarise(runs)["indirect"]
    assert row["mean"] == pytest.approx(0.7) and (row["min"], row["max"]) == (0.6, 0.8)


@pytest.mark.parametrize("task,threshold", [("sort", 0.6), ("retrieval", 0.55)])
def test_short_indirect_run_learns_well_above_chance(task, threshold):
    torch.set_num_threads(1)
    train, test = load_task(task)
    curve = train_run(task, "indirect", 0, train, test, steps=150, batch_size=32, lr=2e-3, eval_every=150,
                      model_kwargs=SMALL)
    assert curve["test_acc"][0] < 2 * CHANCE[task]  # untrained: near chance
    assert threshold > 4 * CHANCE[task]
    assert curve["test_acc"][-1] > threshold, curve["test_acc"]

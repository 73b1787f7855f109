"""detector.models.exemplar_similarity: known cosine values, no parameters in the maps, and the
path's place in the detector (every attention and layout, the probe, k-shot, the shared dropout)."""
import pytest
import torch

from detector.models import build_model
from detector.models.exemplar_similarity import MAPS, ExemplarSimilarity
from detector.structures import ImageBatch


def _masks(b, h, w, valid_hw=None):
    mask = torch.zeros(b, h, w, dtype=torch.bool)
    if valid_hw is not None:
        mask[:, valid_hw[0]:, :] = True
        mask[:, :, valid_hw[1]:] = True
    return mask


def test_a_copy_of_a_constant_exemplar_scores_one_where_it_lies():
    torch.manual_seed(0)
    c, v = 16, torch.randn(16)
    query = torch.randn(1, c, 8, 9)
    query[0, :, 2:5, 4:7] = v[:, None, None] * 3.0  # a 3 x 3 copy of the exemplar's feature (any length)
    support = v[None, :, None, None].expand(1, c, 4, 5).clone()  # a constant exemplar, 4 x 5 cells
    s_mask = _masks(1, 4, 5)
    maps = ExemplarSimilarity.maps(query, _masks(1, 8, 9), support, s_mask).view(8, 9, len(MAPS))
    mean, best, window = maps[..., 0], maps[..., 1], maps[..., 2]
    assert torch.allclose(mean[2:5, 4:7], torch.ones(3, 3), atol=1e-5)
    assert torch.allclose(best[2:5, 4:7], torch.ones(3, 3), atol=1e-5)
    assert window[3, 5] == pytest.approx(1.0, abs=1e-5)
    assert int(window.flatten().argmax()) == 3 * 9 + 5  # the copy's centre is the best window
    assert (maps.abs() <= 1 + 1e-5).all()


def test_padded_support_cells_are_never_the_best_match():
    v = torch.randn(16)
    query = v[None, :, None, None].expand(1, 16, 4, 4).clone()
    support = torch.randn(1, 16, 5, 5)
    support[0, :, 3:, :] = v[:, None, None]  # the perfect match lies in the padding only
    support[0, :, :, 3:] = v[:, None, None]
    support[0, :, :3, :3] = -v[:, None, None]
    maps = ExemplarSimilarity.maps(query, _masks(1, 4, 4), support, _masks(1, 5, 5, (3, 3)))
    assert torch.allclose(maps[0, :, 1], -torch.ones(16), atol=1e-5)  # best = the valid cells' -1
    assert torch.allclose(maps[0, :, 0], -torch.ones(16), atol=1e-5)  # mean of the valid cells only


def test_padded_query_cells_are_zero_and_the_maps_have_no_parameters():
    q_mask = _masks(2, 5, 6, (3, 4))
    maps = ExemplarSimilarity.maps(torch.randn(2, 8, 5, 6), q_mask, torch.randn(2, 8, 4, 4), _masks(2, 4, 4))
    assert maps.shape == (2, 30, len(MAPS))
    assert (maps.view(2, 5, 6, -1)[q_mask] == 0).all()
    module = ExemplarSimilarity(32)
    assert {n for n, _ in module.named_parameters()} == {"to_values.weight", "to_values.bias",
                                                          "to_proposals.weight", "to_proposals.bias"}


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    query = ImageBatch.from_tensors([torch.rand(3, 96, 128, generator=g), torch.rand(3, 128, 80, generator=g)])
    support = ImageBatch.from_tensors([torch.rand(3, 64, 64, generator=g), torch.rand(3, 32, 64, generator=g)],
                                      size_divisibility=64)
    return query, support


@pytest.mark.parametrize("attention, layout", [("indirect", "box"), ("indirect", "pad"), ("misaligned", "resize"),
                                               ("double_cross", "resize")])
@pytest.mark.parametrize("maps", ["model.exemplar_similarity=true", "model.pixel_similarity=true"])
def test_the_similarity_path_reaches_the_detections_and_trains(tiny_cfg, attention, layout, maps):
    cfg = tiny_cfg(maps, f"model.attention={attention}", f"model.support_layout={layout}",
                   "model.correlation_dropout=0")  # the path trains on every image
    model, _, _ = build_model(cfg)
    assert "similarity" in model.support_paths
    query, support = _batch()
    _, other = _batch(1)
    model.eval()
    with torch.no_grad():
        base = model(query, support)
        probed = model(query, support, path_supports={"similarity": other})
        same = model(query, support, path_supports={"similarity": support})
    assert not torch.allclose(base["pred_logits"], probed["pred_logits"])  # the path carries the exemplar
    assert torch.equal(base["pred_logits"], same["pred_logits"])
    model.train()
    out = model(query, support)
    (out["pred_logits"].sum() + out["pred_boxes"].sum() + out["enc_outputs"]["pred_logits"].sum()).backward()
    for reader in (model.exemplar_similarity.to_values, model.exemplar_similarity.to_proposals):
        assert reader.weight.grad is not None and reader.weight.grad.abs().sum() > 0


def test_k_copies_of_one_exemplar_give_the_one_shot_output(tiny_cfg):
    model, _, _ = build_model(tiny_cfg("model.exemplar_similarity=true", "model.support_layout=box"))
    model.eval()
    query, support = _batch()
    with torch.no_grad():
        one, three = model(query, support), model(query, [support] * 3)
    assert torch.allclose(one["pred_logits"], three["pred_logits"], atol=1e-4)


def test_dropout_leaves_out_the_similarity_with_the_correlation(tiny_cfg, monkeypatch):
    cfg = tiny_cfg("model.exemplar_similarity=true", "model.correlation_channels=4", "model.correlation_dropout=0.5")
    model, _, _ = build_model(cfg)
    query, support = _batch()
    _, other = _batch(1)
    model.train()
    monkeypatch.setattr(torch, "rand", lambda n, device=None: torch.ones(n))  # keep every image
    kept = model(query, support)
    kept_other = model(query, support, path_supports={"similarity": other, "correlation": other})
    monkeypatch.setattr(torch, "rand", lambda n, device=None: torch.zeros(n))  # leave out every image
    dropped = model(query, support)
    dropped_other = model(query, support, path_supports={"similarity": other, "correlation": other})
    assert not torch.allclose(kept["pred_logits"], kept_other["pred_logits"])
    assert torch.allclose(dropped["pred_logits"], dropped_other["pred_logits"])  # both side paths out


@pytest.mark.parametrize("maps", ["model.exemplar_similarity=true", "model.pixel_similarity=true"])
def test_a_model_with_the_similarity_path_exports_to_onnx_for_any_batch_size(tmp_path, maps):
    pytest.importorskip("onnxruntime")
    import numpy as np

    from detector.config import load_config
    from detector.export import check_onnx, export_onnx, random_inputs
    from tests.conftest import TINY_MODEL

    torch.manual_seed(0)
    cfg = load_config(None, TINY_MODEL + [maps, "model.support_layout=box", "model.attention_impl=reference",
                                          "model.support_size=32"])
    model, _, post = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    rng = np.random.default_rng(0)
    path = str(tmp_path / "sim.onnx")
    assert export_onnx(model.eval(), post, path, 64, 32, [random_inputs(2, 64, 32, rng)])["ok"]
    again = check_onnx(path, model, post, [random_inputs(b, 64, 32, rng) for b in (1, 3)])
    assert again["ok"] and again["count_mismatches"] == 0

"""detector.models.pixel_correlation: OpenCV's TM_CCOEFF_NORMED values, the exemplar found where
its copy lies, padding, and cached features that carry their pixels (the path in the detector, the
probe and the ONNX export: tests/models/test_exemplar_similarity.py, for both kinds of maps)."""
import cv2
import numpy as np
import pytest
import torch

from detector.features import FeatureCache
from detector.models import build_model
from detector.models.pixel_correlation import SCALES, ncc, pixel_ncc_maps, template_boxes
from detector.structures import ImageBatch


def test_ncc_is_opencvs_normalised_correlation_coefficient():
    g = torch.Generator().manual_seed(0)
    image, template = torch.rand(2, 3, 30, 41, generator=g), torch.rand(2, 3, 7, 7, generator=g)
    ours = ncc(image, template)
    assert ours.shape == (2, 30, 41)
    for b in range(2):
        ref = cv2.matchTemplate(image[b].permute(1, 2, 0).numpy(), template[b].permute(1, 2, 0).numpy(),
                                cv2.TM_CCOEFF_NORMED)  # the windows that fit: centred at 3..
        inner = ours[b, 3:3 + ref.shape[0], 3:3 + ref.shape[1]].numpy()
        assert np.abs(inner - ref).max() < 2e-3  # the flat-window regulariser's only difference


def test_the_exports_unfolded_windows_give_the_grouped_convolutions_numbers(monkeypatch):
    g = torch.Generator().manual_seed(3)
    image, template = torch.rand(3, 3, 20, 24, generator=g), torch.rand(3, 3, 6, 6, generator=g)
    grouped = ncc(image, template)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    assert torch.allclose(ncc(image, template), grouped, atol=1e-5)


def test_a_template_cut_from_the_image_scores_one_at_its_place_and_nowhere_else():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 32, 32, generator=g)
    score = ncc(image, image[:, :, 10:17, 20:27])
    assert score[0, 13, 23] == pytest.approx(1.0, abs=2e-3)
    assert int(score.flatten().argmax()) == 13 * 32 + 23
    assert (score.abs() <= 1).all()
    flat = ncc(torch.full((1, 3, 16, 16), 0.5), image[:, :, :5, :5])
    assert flat.abs().max() < 1e-4  # a flat image matches nothing (float rounding only)


def _disc_object(side: int) -> torch.Tensor:
    """A ``[3, side, side]`` object: a red disc with a blue centre on grey."""
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    r = ((yy - side / 2 + 0.5) ** 2 + (xx - side / 2 + 0.5) ** 2).sqrt() / (side / 2)
    out = torch.full((3, side, side), 0.5)
    out[:, r < 0.9] = torch.tensor([0.9, 0.2, 0.1])[:, None]
    out[:, r < 0.4] = torch.tensor([0.1, 0.2, 0.9])[:, None]
    return out


def test_the_maps_peak_on_the_exemplars_copy_at_its_scale_and_are_zero_in_the_padding():
    query = torch.zeros(1, 3, 160, 192)
    query[:, :, :128, :160] = 0.5  # valid 128 x 160; the rest is batch padding
    query[0, :, 64:112, 96:144] = _disc_object(48)  # a 48 px copy whose centre lies in cell (5, 7)
    margin = 0.1
    crop = torch.full((3, 58, 58), 0.5)
    crop[:, 5:53, 5:53] = _disc_object(48)  # the exemplar crop: the box plus 10% context each side
    support = torch.zeros(1, 3, 64, 64)
    support[0, :, :58, :58] = crop
    maps = pixel_ncc_maps(query, torch.tensor([[128, 160]]), support, torch.tensor([[58, 58]]), 16, margin)
    assert maps.shape == (1, 10 * 12, len(SCALES))
    grid = maps.view(10, 12, len(SCALES))
    at_48 = grid[..., SCALES.index(48)]
    assert int(at_48.flatten().argmax()) == 5 * 12 + 7
    assert at_48[5, 7] > 0.9 and at_48[0, 0] < 0.5
    assert (grid[8:] == 0).all() and (grid[:, 10:] == 0).all()  # padded cells


def test_template_boxes_leave_out_the_crops_context_margin():
    boxes = template_boxes(torch.tensor([[120, 60]]), 0.1)
    assert boxes[0].tolist() == pytest.approx([0, 5, 10, 55, 110])


def test_cached_features_carry_their_pixels_and_give_the_image_paths_output(tiny_cfg):
    cfg = tiny_cfg("model.pixel_similarity=true", "model.exemplar_similarity=true", "model.support_layout=box",
                   "model.support_size=32", "model.backbone.freeze=true")
    model, _, _ = build_model(cfg)
    assert model.uses_pixels and model.exemplar_similarity.to_values.in_features == 4 + len(SCALES)  # both maps
    pixels_only, _, _ = build_model(tiny_cfg("model.pixel_similarity=true"))
    assert pixels_only.uses_pixels and pixels_only.exemplar_similarity.to_values.in_features == len(SCALES)
    g = torch.Generator().manual_seed(2)
    query = ImageBatch.from_tensors([torch.rand(3, 96, 128, generator=g)])
    support = ImageBatch.from_tensors([torch.rand(3, 32, 24, generator=g)], size_divisibility=32)
    model.eval()
    cache = FeatureCache(model.backbone, keep_pixels=True)
    with torch.no_grad():
        direct = model(query, support)
        cached = model(cache(query), cache(support, 32))
        assert torch.allclose(direct["pred_logits"], cached["pred_logits"], atol=1e-4)
        assert torch.equal(cache(query).to("cpu").pixels, query.tensors)
        with pytest.raises(ValueError, match="pixel correlation maps"):
            model(FeatureCache(model.backbone)(query), cache(support, 32))  # features without pixels


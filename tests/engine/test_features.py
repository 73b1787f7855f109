"""The feature cache: same outputs as the image path, computed once per distinct image."""
import pytest
import torch

from detector.features import FeatureCache
from detector.models import build_model
from detector.structures import ImageBatch


def test_cached_features_match_the_image_path(tiny_cfg):
    model, _, _ = build_model(tiny_cfg("model.backbone.freeze=true"))
    model.eval()
    query = ImageBatch.from_tensors([torch.rand(3, 64, 64), torch.rand(3, 64, 64)])
    support = ImageBatch.from_tensors([torch.rand(3, 32, 32)] * 2)
    cache = FeatureCache(model.backbone)
    with torch.no_grad():
        direct = model(query, support)
        cached = model(cache(query), cache(support))
        again = model(cache(query), cache(support))
    assert torch.allclose(direct["pred_boxes"], cached["pred_boxes"], atol=1e-5)
    assert torch.allclose(direct["pred_logits"], cached["pred_logits"], atol=1e-4)
    assert torch.equal(cached["pred_logits"], again["pred_logits"])
    # Two distinct queries + one distinct support were encoded; everything else was a hit.
    assert (cache.misses, len(cache), cache.hits) == (3, 3, 5)


def test_cache_refuses_a_trainable_backbone(tiny_cfg):
    model, _, _ = build_model(tiny_cfg("model.backbone.freeze=false"))
    with pytest.raises(ValueError, match="frozen"):
        FeatureCache(model.backbone)


def test_cached_training_step_trains_the_projection_only(tiny_cfg):
    model, criterion, _ = build_model(tiny_cfg("model.backbone.freeze=true"))
    cache = FeatureCache(model.backbone)
    query = ImageBatch.from_tensors([torch.rand(3, 64, 48)])
    support = ImageBatch.from_tensors([torch.rand(3, 32, 32)])
    targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]]), "labels": torch.zeros(1, dtype=torch.long)}]
    loss = criterion(model(cache(query), cache(support)), targets)["loss"]
    loss.backward()
    assert model.backbone.proj[0].weight.grad is not None
    assert all(p.grad is None for p in model.backbone.body.parameters())


def test_misses_are_encoded_in_batches_by_padded_shape(tiny_cfg):
    model, _, _ = build_model(tiny_cfg("model.backbone.freeze=true"))
    model.eval()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 48), torch.rand(3, 64, 64), torch.rand(3, 40, 60)]
    batched = FeatureCache(model.backbone, batch_pixels=1 << 18)
    calls = []
    original = model.backbone.body_features
    model.backbone.body_features = lambda batch: calls.append(tuple(batch.tensors.shape)) or original(batch)
    feats = batched.encode_many(images + [images[0]])
    # 64x64 twice (one batch of 2), 64x48 -> 64x64 padded too, 40x60 -> 64x64: all one padded shape.
    assert calls == [(4, 3, 64, 64)]
    assert (batched.misses, batched.hits) == (4, 1)
    assert feats[4] is feats[0]
    # A pixel budget splits the misses of one shape into several batches.
    capped = FeatureCache(model.backbone, batch_pixels=2 * 64 * 64)
    calls.clear()
    capped.encode_many(images)
    assert calls == [(2, 3, 64, 64), (2, 3, 64, 64)]
    model.backbone.body_features = original
    alone = FeatureCache(model.backbone)  # the default: one image per backbone pass
    for image, f in zip(images, feats):
        one = alone.encode(image)
        assert one.shape == f.shape
        # float rounding of the batched convolutions only (random weights: activations of order 10-100)
        assert (one - f).abs().max() <= 1e-5 * one.abs().max()

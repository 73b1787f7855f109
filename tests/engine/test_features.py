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
    model.backbone.body_features = lambda batch, body=None: calls.append(tuple(batch.tensors.shape)) or original(batch, body)
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


def _randomise_batchnorm(body):
    gen = torch.Generator().manual_seed(0)
    for m in body.modules():
        if hasattr(m, "running_var") and m.running_var is not None:
            n = m.running_var.numel()
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.2)


def test_folded_body_matches_the_body_with_no_batchnorm_left(tiny_cfg):
    from timm.layers.norm_act import FrozenBatchNormAct2d

    model, _, _ = build_model(tiny_cfg("model.backbone.freeze=true"))
    _randomise_batchnorm(model.backbone.body)  # non-trivial statistics, as pretrained weights have
    images = ImageBatch.from_tensors([torch.rand(3, 64, 96)])
    folded = model.backbone.folded_body()
    assert not any(isinstance(m, FrozenBatchNormAct2d) for m in folded.modules())
    assert any(isinstance(m, FrozenBatchNormAct2d) for m in model.backbone.body.modules())  # original untouched
    with torch.no_grad():
        ref = model.backbone.body_features(images)
        got = model.backbone.body_features(images, folded)
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()
    # The cache encodes with the folded copy: same maps within rounding.
    cached = FeatureCache(model.backbone).encode(images.tensors[0])
    assert (cached - ref[0]).abs().max() <= 1e-5 * ref.abs().max()


def test_fold_handles_torchvision_frozen_batchnorm_and_skips_unpaired_ones():
    from torch import nn
    from torchvision.ops.misc import FrozenBatchNorm2d

    from detector.models.backbone import fold_frozen_batchnorm

    torch.manual_seed(0)
    bn1, bn2 = FrozenBatchNorm2d(8), FrozenBatchNorm2d(3)
    for bn in (bn1, bn2):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    # bn2 normalises the input: no conv before it, so it must stay.
    net = nn.Sequential(bn2, nn.Conv2d(3, 8, 3, padding=1), bn1, nn.ReLU())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = net(x)
        assert fold_frozen_batchnorm(net) == 1
        got = net(x)
    assert isinstance(net[0], FrozenBatchNorm2d) and isinstance(net[2], nn.Identity)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_folded_body_falls_back_when_the_pairing_is_wrong(tiny_cfg):
    from torch import nn
    from torchvision.ops.misc import FrozenBatchNorm2d

    class BnBeforeConv(nn.Module):
        # Registered conv-then-BN, but applied BN-then-conv: folding by registration order is wrong.
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = FrozenBatchNorm2d(3)
            self.bn.running_mean.fill_(2.0)

        def forward(self, x):
            return [self.conv(self.bn(x))]

    model, _, _ = build_model(tiny_cfg("model.backbone.freeze=true"))
    model.backbone.body = BnBeforeConv()
    with pytest.warns(UserWarning, match="plain body"):
        body = model.backbone.folded_body()
    assert isinstance(body.bn, FrozenBatchNorm2d)


def test_a_cache_is_reused_only_by_a_backbone_that_encodes_alike():
    from detector.features import FeatureCache
    from detector.models.backbone import Backbone

    a = Backbone("mobilenetv2_100", 32, pretrained="none", freeze=True)
    b = Backbone("mobilenetv2_100", 32, pretrained="none", freeze=True)
    b.load_state_dict(a.state_dict())
    cache = FeatureCache(a)
    assert cache.encodes_like(a) and cache.encodes_like(b)
    with torch.no_grad():
        next(b.body.parameters()).add_(1e-3)
    assert not cache.encodes_like(b)


def test_a_byte_budget_stops_adding_maps_but_not_computing_them(tiny_cfg):
    model, _, _ = build_model(tiny_cfg("model.backbone.freeze=true"))
    images = [torch.rand(3, 64, 64) for _ in range(3)]
    unlimited = FeatureCache(model.backbone)
    one = unlimited.encode(images[0])
    size = one.numel() * one.element_size()
    assert unlimited.max_bytes == 0 and unlimited.nbytes == size  # on the CPU: no byte limit by default
    cache = FeatureCache(model.backbone, max_bytes=2 * size)
    with pytest.warns(UserWarning, match="feature cache full"):
        maps = [cache.encode(im) for im in images]
    assert len(cache) == 2 and cache.nbytes == 2 * size
    assert torch.equal(maps[2], unlimited.encode(images[2]))  # the third is computed all the same
    assert torch.equal(cache.encode(images[0]), maps[0]) and cache.hits == 1

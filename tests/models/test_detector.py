"""The whole model: contracts, a training step for every attention choice, overfitting, postprocessing."""
import pytest
import torch

from detector.config import ConfigError
from detector.models import build_model
from detector.structures import ImageBatch


def batch(sizes=((96, 128), (128, 80)), support=64):
    query = ImageBatch.from_tensors([torch.rand(3, h, w) for h, w in sizes])
    supp = ImageBatch.from_tensors([torch.rand(3, support, support), torch.rand(3, support // 2, support)][: len(sizes)],
                                   size_divisibility=support)
    return query, supp


TARGETS = [
    {"boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]]), "labels": torch.zeros(2, dtype=torch.long)},
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},  # an image with no targets
]


@pytest.mark.parametrize("attention, layout, sink", [
    ("indirect", "resize", False), ("indirect", "pad", False), ("indirect", "box", False), ("indirect", "box", True),
    ("misaligned", "resize", False), ("misaligned", "pad", True), ("misaligned", "box", False),
    ("double_cross", "pad", False), ("double_cross", "resize", True),  # double_cross has no layout
])
def test_training_step_every_attention_choice(tiny_cfg, attention, layout, sink):
    cfg = tiny_cfg(f"model.attention={attention}", f"model.support_layout={layout}", "model.num_queries_one2many=12",
                   f"model.attention_sink={str(sink).lower()}")
    model, criterion, _ = build_model(cfg)
    model.train()
    query, support = batch()
    out = model(query, support)
    assert out["pred_logits"].shape == (2, 6, 1) and out["pred_boxes"].shape == (2, 6, 4)
    assert out["one2many"]["pred_logits"].shape == (2, 12, 1)
    assert len(out["aux_outputs"]) == cfg.model.num_decoder_layers - 1
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    losses = criterion(out, TARGETS)
    assert torch.isfinite(losses["loss"])
    assert {"loss_class", "loss_bbox", "loss_giou", "loss_class_enc", "loss_class_o2m"} <= set(losses)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.zero_grad()
    losses["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    opt.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert any(n.startswith("decoder.layers.0.cross_attn") for n in changed)
    if attention != "misaligned":
        assert any(n.startswith("decoder.biases.") for n in changed), "the box-bias MLPs must train"
    else:
        assert model.decoder.biases is None
    if sink:
        assert {"decoder.layers.0.cross_attn.sink_key", "decoder.layers.0.cross_attn.sink_value"} <= set(changed)


def test_one2many_queries_only_in_training(tiny_cfg):
    model, _, _ = build_model(tiny_cfg("model.num_queries_one2many=12"))
    model.eval()
    query, support = batch()
    with torch.no_grad():
        out = model(query, support)
    assert "one2many" not in out and out["pred_logits"].shape == (2, 6, 1)


def test_overfitting_one_batch_lowers_the_loss(tiny_cfg):
    model, criterion, _ = build_model(tiny_cfg("model.num_queries_one2many=0"))
    query, support = batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss = criterion(model(query, support), TARGETS)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::8]


def test_the_support_changes_the_prediction(tiny_cfg):
    model, _, _ = build_model(tiny_cfg())
    model.eval()
    query, support = batch()
    other = ImageBatch.from_tensors([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], size_divisibility=64)
    with torch.no_grad():
        a, b = model(query, support), model(query, other)
    assert (a["pred_logits"] - b["pred_logits"]).abs().max() > 1e-4


@pytest.mark.parametrize("conditioned", [False, True])
def test_proposals_see_the_support_only_when_conditioned(tiny_cfg, conditioned):
    model, _, _ = build_model(tiny_cfg(f"model.proposal_conditioning={str(conditioned).lower()}"))
    model.eval()
    with torch.no_grad():  # FiLM starts at identity: give it weights so that the support can matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    query, support = batch()
    other = ImageBatch.from_tensors([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], size_divisibility=64)
    with torch.no_grad():
        a, b = model(query, support)["enc_outputs"], model(query, other)["enc_outputs"]
    change = max((a[k] - b[k]).abs().max().item() for k in ("pred_logits", "pred_boxes"))
    if conditioned:
        assert change > 1e-4
    else:  # Plain-DETR proposals: a function of the query image alone
        assert change == 0.0


def test_padding_does_not_change_the_prediction(tiny_cfg):
    """The same image alone and padded inside a batch with a larger one gives the same output."""
    model, _, _ = build_model(tiny_cfg("model.two_stage=false"))
    model.eval()
    img, big = torch.rand(3, 64, 64), torch.rand(3, 128, 128)
    sup = torch.rand(3, 64, 64)
    with torch.no_grad():
        alone = model(ImageBatch.from_tensors([img]), ImageBatch.from_tensors([sup], 64))
        padded = model(ImageBatch.from_tensors([img, big]), ImageBatch.from_tensors([sup, sup], 64))
    # Backbone convolutions see the zero padding at the image border, so equality is approximate.
    torch.testing.assert_close(alone["pred_boxes"][0], padded["pred_boxes"][0], atol=0.05, rtol=0)


def test_postprocess_returns_absolute_boxes_of_the_original_image(tiny_cfg):
    _, _, post = build_model(tiny_cfg())
    outputs = {"pred_logits": torch.tensor([[[2.0], [-1.0]]]), "pred_boxes": torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.4, 0.4]]])}
    res = post(outputs, torch.tensor([[400, 600]]))[0]
    torch.testing.assert_close(res["boxes"][0], torch.tensor([150.0, 100.0, 450.0, 300.0]))
    torch.testing.assert_close(res["boxes"][1], torch.tensor([0.0, 0.0, 180.0, 120.0]))  # clipped at 0
    assert res["scores"][0] > res["scores"][1]


def test_postprocess_nms_drops_duplicates_and_keeps_distinct_boxes(tiny_cfg):
    # Three detections: the best one, a near-copy of it (IoU 0.82), and a distinct box.
    outputs = {"pred_logits": torch.tensor([[[3.0], [2.0], [1.0]]]),
               "pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.52, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]])}
    sizes = torch.tensor([[100, 100]])
    _, _, plain = build_model(tiny_cfg())
    _, _, with_nms = build_model(tiny_cfg("eval.nms_iou=0.5"))
    assert len(plain(outputs, sizes)[0]["scores"]) == 3
    res = with_nms(outputs, sizes)[0]
    torch.testing.assert_close(res["scores"], torch.tensor([3.0, 1.0]).sigmoid())
    torch.testing.assert_close(res["boxes"], torch.tensor([[40.0, 40.0, 60.0, 60.0], [15.0, 15.0, 25.0, 25.0]]))
    # At a threshold above their overlap both copies stay.
    _, _, loose = build_model(tiny_cfg("eval.nms_iou=0.9"))
    assert len(loose(outputs, sizes)[0]["scores"]) == 3


def test_select_distinct_skips_duplicates_and_fills_up_to_k():
    from detector.models.detector import select_distinct

    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.51, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1]]])
    assert select_distinct(scores, boxes, 3, 0.7).tolist() == [[0, 2, 3]]  # proposal 1 duplicates 0
    assert select_distinct(scores, boxes, 4, 0.7).tolist() == [[0, 2, 3, 1]]  # too few survivors: refilled
    assert select_distinct(scores, boxes, 3, 1.0).tolist() == [[0, 1, 2]]  # threshold 1: plain top-k


def test_select_distinct_over_the_best_candidates_equals_nms_over_all():
    from torchvision.ops import nms

    from detector.models.detector import select_distinct
    from detector.utils.box_ops import box_cxcywh_to_xyxy

    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 1024, generator=gen)
    boxes = torch.cat([torch.rand(3, 1024, 2, generator=gen), 0.05 + 0.3 * torch.rand(3, 1024, 2, generator=gen)], -1)
    got = select_distinct(scores, boxes, 40, 0.5)  # 320 candidates
    for s, b, g in zip(scores, boxes, got):
        assert g.tolist() == nms(box_cxcywh_to_xyxy(b), s, 0.5)[:40].tolist()


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_proposal_nms_gives_object_queries_distinct_starting_boxes(tiny_cfg, threshold):
    from torchvision.ops import box_iou

    from detector.utils.box_ops import box_cxcywh_to_xyxy

    torch.manual_seed(0)
    model, _, _ = build_model(tiny_cfg(f"model.proposal_nms={threshold}", "model.num_queries=4",
                                       "model.num_queries_one2many=3", "model.num_decoder_layers=1"))
    model.train()
    proposals = model._proposals
    duplicate = torch.tensor([0.5, 0.5, 0.3, 0.3])

    def three_copies_on_top(*args):
        # The three best proposals are one box: what neighbouring cells and anchors produce.
        logits, boxes, valid = proposals(*args)
        logits, boxes = logits.clone(), boxes.clone()
        logits[:, :3], boxes[:, :3] = 10.0, duplicate
        return logits, boxes, valid

    model._proposals = three_copies_on_top
    seen = {}
    # The first decoder layer's input boxes are the selected proposals: capture them.
    model.decoder.register_forward_pre_hook(lambda mod, args: seen.update(ref=args[1]))
    with torch.no_grad():
        model(*batch())
    for ref in seen["ref"][:, :4]:  # the one-to-one queries
        copies = int((ref - duplicate).abs().amax(dim=1).lt(1e-6).sum())
        iou = box_iou(box_cxcywh_to_xyxy(ref), box_cxcywh_to_xyxy(ref)) - torch.eye(len(ref))
        if threshold == 0:
            assert copies == 3  # plain top-k: three object queries start on the same box
        else:
            assert copies == 1 and iou[:4, :4].max() <= threshold + 1e-6
    # The one-to-many queries take the best proposals left over, without NMS: the two suppressed
    # copies when the one-to-one queries took one.
    for ref in seen["ref"][:, 4:]:
        assert int((ref - duplicate).abs().amax(dim=1).lt(1e-6).sum()) == (0 if threshold == 0 else 2)


def test_too_many_queries_for_the_feature_map_is_a_clear_error(tiny_cfg):
    model, _, _ = build_model(tiny_cfg("model.num_queries=500", "model.proposal_sizes=[0.1]"))
    model.eval()
    with pytest.raises(ValueError, match="object queries but only"):
        model(*batch())


def test_invalid_attention_choice_is_rejected(tiny_cfg):
    with pytest.raises(ConfigError, match="model.attention"):
        tiny_cfg("model.attention=direct")


OTHER_SUPPORT = ImageBatch.from_tensors([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], size_divisibility=64)


@pytest.mark.parametrize("overrides, paths", [
    ((), ("keys", "correlation")),  # the product: the keys and the exemplar correlation
    (("model.correlation_channels=0",), ("keys",)),  # paper-faithful: the keys the only way in
    (("model.support_conditioning=true", "model.proposal_conditioning=true"),
     ("keys", "object_queries", "logits", "correlation", "proposals")),
    (("model.attention=double_cross", "model.correlation_channels=0"), ("fusion",)),
    (("model.fusion_layers=1",), ("keys", "fusion", "correlation")),  # the light fusion step: the keys stay
    (("model.attention=misaligned", "model.fusion_layers=2", "model.correlation_channels=0"), ("keys", "fusion")),
])
def test_support_paths_list_every_way_the_support_enters(tiny_cfg, overrides, paths):
    assert build_model(tiny_cfg(*overrides))[0].support_paths == paths


@pytest.mark.parametrize("layout", ["pad", "box"])
def test_each_support_path_can_be_fed_its_own_exemplar(tiny_cfg, layout):
    model, _, _ = build_model(tiny_cfg(f"model.support_layout={layout}", "model.correlation_channels=4",
                                       "model.attention_sink=true", "model.d_model=64", "model.bias_box_prior=8"))
    model.eval()
    query, support = batch()
    with torch.no_grad():
        base = model(query, support)
        same = model(query, support, path_supports={p: support for p in model.support_paths})
        assert torch.equal(base["pred_logits"], same["pred_logits"])
        for path in model.support_paths:  # every path of this model is used: its exemplar changes the scores
            other = model(query, support, path_supports={path: OTHER_SUPPORT})
            assert (other["pred_logits"] - base["pred_logits"]).abs().max() > 1e-4, path
            # The proposals see the query image alone: no path but "proposals" may move them.
            assert torch.equal(other["enc_outputs"]["pred_logits"], base["enc_outputs"]["pred_logits"])


def test_a_path_the_model_does_not_use_changes_nothing(tiny_cfg):
    """Object queries that score every key alike (q = 0) read the same whatever the keys hold."""
    model, _, _ = build_model(tiny_cfg("model.support_conditioning=false", "model.attention_sink=true",
                                       "model.support_layout=box"))
    model.eval()
    with torch.no_grad():
        for layer in model.decoder.layers:
            layer.cross_attn.q_proj.weight.zero_()
            layer.cross_attn.q_proj.bias.zero_()
        query, support = batch()
        a = model(query, support)
        b = model(query, support, path_supports={"keys": OTHER_SUPPORT})
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_boxes"], b["pred_boxes"])


def test_unknown_or_absent_support_paths_are_rejected(tiny_cfg):
    model, _, _ = build_model(tiny_cfg("model.support_conditioning=false"))
    model.eval()
    query, support = batch()
    with pytest.raises(ValueError, match="does not have"):
        model(query, support, path_supports={"logits": OTHER_SUPPORT})


def test_proposal_content_gives_object_queries_the_query_image_feature_of_their_cell(tiny_cfg):
    model, _, _ = build_model(tiny_cfg("model.query_content=proposal", "model.num_queries=3", "model.num_decoder_layers=1"))
    model.eval()
    seen = {}
    model.decoder.register_forward_pre_hook(lambda mod, args: seen.update(content=args[0]))
    query, support = batch()
    with torch.no_grad():
        model(query, support)
        learned = model.query_embed.weight[:3]
        # The content differs per image (the cells differ), and by exactly the projected cell features.
        extra = seen["content"] - learned[None]
        assert (extra[0] - extra[1]).abs().max() > 1e-3
        torch.testing.assert_close(extra.norm(dim=-1).pow(2) / 32, torch.ones(2, 3), atol=0.3, rtol=0)  # LayerNorm'd


def test_proposal_content_needs_proposals(tiny_cfg):
    with pytest.raises(ConfigError, match="query_content"):
        tiny_cfg("model.query_content=proposal", "model.two_stage=false")


@pytest.mark.parametrize("layout", ["pad", "box"])
def test_light_fusion_reaches_values_and_proposals_and_the_keys_stay_the_exemplars(tiny_cfg, layout):
    """``model.fusion_layers``: the query features see the exemplar before the decoder, so a wrong
    exemplar in ``fusion`` moves the proposals (their memory is fused); one in ``keys`` moves the
    scores but not the proposals (the keys are the exemplar's own, not fused features)."""
    model, _, _ = build_model(tiny_cfg(f"model.support_layout={layout}", "model.fusion_layers=1",
                                       "model.correlation_channels=0", "model.d_model=64", "model.bias_box_prior=8"))
    assert model.fusion_encoder is not None and len(model.fusion_encoder.attn) == 1
    assert isinstance(model.fusion_encoder.norm, torch.nn.Identity)  # the fused features keep their scale
    model.eval()
    query, support = batch()
    with torch.no_grad():
        base = model(query, support)
        by_fusion = model(query, support, path_supports={"fusion": OTHER_SUPPORT})
        by_keys = model(query, support, path_supports={"keys": OTHER_SUPPORT})
    assert (by_fusion["enc_outputs"]["pred_logits"] - base["enc_outputs"]["pred_logits"]).abs().max() > 1e-4
    assert torch.equal(by_keys["enc_outputs"]["pred_logits"], base["enc_outputs"]["pred_logits"])
    assert (by_keys["pred_logits"] - base["pred_logits"]).abs().max() > 1e-4


def test_light_fusion_left_out_by_the_path_dropout_is_the_model_without_it(tiny_cfg):
    """An image whose side paths the dropout leaves out reads the unfused query features: its cross
    inputs equal those of the same weights without the fusion step, bit for bit; a kept image's differ."""
    model, _, _ = build_model(tiny_cfg("model.fusion_layers=1", "model.correlation_channels=0"))
    plain, _, _ = build_model(tiny_cfg("model.correlation_channels=0"))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("fusion_encoder.")})
    query, support = batch()
    with torch.no_grad():
        _, q_feat, q_mask = model.backbone.encode(query)
        shots = [model._encode_supports(support, None)]
        keep = torch.tensor([False, True])
        fused = model.cross_inputs(q_feat, q_mask, shots, keep)
        unfused = plain.cross_inputs(q_feat, q_mask, [{"keys": shots[0]["keys"]}], None)
    values, memory = fused[1], fused[3]
    assert torch.equal(values[0], unfused[1][0]) and torch.equal(memory[0], unfused[3][0])
    assert not torch.allclose(values[1], unfused[1][1]) and not torch.allclose(memory[1], unfused[3][1])
    assert torch.equal(fused[0].features, unfused[0].features)  # the keys are the exemplar's either way


def test_light_fusion_trains_and_is_refused_with_double_cross(tiny_cfg):
    model, criterion, _ = build_model(tiny_cfg("model.fusion_layers=1", "model.correlation_dropout=0.5"))
    model.train()
    query, support = batch()
    losses = criterion(model(query, support), TARGETS)
    losses["loss"].backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("fusion_encoder.")]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    with pytest.raises(ConfigError, match="model.fusion_layers"):
        tiny_cfg("model.attention=double_cross", "model.fusion_layers=1")
    with pytest.raises(ConfigError, match="model.fusion_layers"):
        tiny_cfg("model.fusion_layers=-1")

"""Where do the object queries read? The share of each head's attention that falls inside its box.

``python tools/analysis/attention_locality.py --checkpoint CKPT [--images 16] [--top 10]``

For validation images of the checkpoint's dataset, with an exemplar of a category present in the
image (another image's largest instance of it, as the demo picks one), it runs the model and, for
every decoder layer and head, measures the attention mass that the ``--top`` highest-scoring object
queries put on value cells inside their reference box (the box the layer's bias was computed from).
It prints a table: mass inside the box per head, the box's share of the image (what uniform
attention would give), and the spread of the bias and of ``q . k`` over the cells (logits).

A box bias that has learned to steer gives masses far above the box share; a mass equal to the box
share means the object queries read the whole image (what happens when the bias stays near zero).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

import torch

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, _REPO)

from detector.data import under_root  # noqa: E402
from detector.models.detector import OneShotDETR  # noqa: E402
from detector.models.box_frame import BoxFrame  # noqa: E402
from detector.models.indirect_attention import indirect_attention_weights, key_scores  # noqa: E402
from detector.models.relative_bias import FactoredBias, cell_centres  # noqa: E402
from detector.models.transformer import Decoder  # noqa: E402
from detector.structures import ImageBatch  # noqa: E402
from detector.utils.box_ops import box_cxcywh_to_xyxy  # noqa: E402


@torch.no_grad()
def attention_locality(model: OneShotDETR, query: ImageBatch, support: ImageBatch, top: Optional[int] = None) -> dict:
    """Attention statistics of every decoder layer for one batch.

    Returns ``mass [L, heads]`` (mean attention mass inside the reference box over the selected
    object queries and images), ``box_share [L]`` (mean fraction of valid cells inside those boxes),
    ``bias_std [L, heads]`` and ``qk_std [L, heads]`` (mean over queries of the std over cells, in
    logits; ``bias_std`` is zero without a bias), ``sink [L, heads]`` (mean attention on the
    attention sink; zero without one). ``top``: only the ``top`` highest-scoring object
    queries of the last layer per image (all when ``None``).
    """
    decoder: Decoder = model.decoder
    captured: dict = {"layers": []}

    def decoder_pre(_module, args, kwargs):
        names = ["object_queries", "reference_boxes", "keys", "values", "key_padding_mask", "grid_hw", "valid_hw"]
        captured.update(dict(zip(names, args)), **{k: v for k, v in kwargs.items() if k in names})

    def layer_pre(module, args, kwargs):
        captured["layers"].append({"queries": args[0], "keys": args[1], "values": args[2],
                                   "bias": kwargs.get("bias", args[3] if len(args) > 3 else None),
                                   "mask": kwargs.get("key_padding_mask", args[4] if len(args) > 4 else None),
                                   "frame": kwargs.get("frame", args[5] if len(args) > 5 else None)})

    def decoder_post(_module, _args, output):
        captured["boxes"] = output[1]

    handles = [decoder.register_forward_pre_hook(decoder_pre, with_kwargs=True),
               decoder.register_forward_hook(decoder_post)]
    handles += [layer.cross_attn.register_forward_pre_hook(layer_pre, with_kwargs=True) for layer in decoder.layers]
    recompute = decoder.recompute_layers
    decoder.recompute_layers = False  # the hooks must see each layer once
    try:
        model.eval()
        out = model(query, support)
    finally:
        decoder.recompute_layers = recompute
        for h in handles:
            h.remove()

    nq = out["pred_logits"].shape[1]
    order = out["pred_logits"][..., 0].argsort(dim=1, descending=True)
    chosen = order[:, : (top or nq)]  # [B, T]
    cy, cx = cell_centres(captured["grid_hw"], captured["valid_hw"])
    masses, shares, bias_stds, qk_stds, sinks = [], [], [], [], []

    def pick(t: torch.Tensor) -> torch.Tensor:  # [B, h, Q, X] -> the chosen object queries [B, h, T, X]
        t = t[:, :, :nq]
        return torch.gather(t, 2, chosen[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[-1]))

    for i, rec in enumerate(captured["layers"]):
        ref = captured["reference_boxes"] if i == 0 else captured["boxes"][i - 1]
        ref = torch.gather(ref[:, :nq], 1, chosen[..., None].expand(-1, -1, 4)).float()
        attn = decoder.layers[i].cross_attn
        q = attn._split(attn.q_proj(rec["queries"][:, :nq]))  # [B, h, Q, d_head]
        k = attn._split(attn.k_proj(rec["keys"]))  # [B, h, N, d_head]
        bias, frame = rec["bias"], rec["frame"]
        if bias is not None:
            bias = FactoredBias(bias_y=bias.bias_y[:, :, :nq], bias_x=bias.bias_x[:, :, :nq])
            bias_stds.append(pick(bias.materialise()).std(-1).mean(dim=(0, 2)))
        else:
            bias_stds.append(torch.zeros(q.shape[1]))
        if frame is not None:
            frame = BoxFrame(frame.weight_y[:, :nq], frame.weight_x[:, :nq])
        n = rec["values"].shape[1]
        all_weights = pick(indirect_attention_weights(q, k, bias, rec["mask"], attn.sink, frame))  # [B, h, T, N (+1)]
        weights = all_weights[..., :n]
        sinks.append(all_weights[..., n:].sum(-1).mean(dim=(0, 2)))
        qk = pick(key_scores(q, k, frame))
        xyxy = box_cxcywh_to_xyxy(ref)  # [B, T, 4]
        in_x = (cx[:, None, :] >= xyxy[..., 0:1]) & (cx[:, None, :] <= xyxy[..., 2:3])  # [B, T, W]
        in_y = (cy[:, None, :] >= xyxy[..., 1:2]) & (cy[:, None, :] <= xyxy[..., 3:4])  # [B, T, H]
        inside = (in_y[..., :, None] & in_x[..., None, :]).flatten(2)  # [B, T, N]
        masses.append((weights * inside[:, None]).sum(-1).mean(dim=(0, 2)))
        image_cells = captured["valid_hw"].prod(dim=1).float()  # [B]
        shares.append((inside.sum(-1).float() / image_cells[:, None]).mean())
        qk_stds.append(qk.std(-1).mean(dim=(0, 2)))
    return {"mass": torch.stack(masses), "box_share": torch.stack(shares), "bias_std": torch.stack(bias_stds),
            "qk_std": torch.stack(qk_stds), "sink": torch.stack(sinks)}


def _pairs(coco: dict, num_images: int) -> list[tuple[dict, dict, dict]]:
    """(query image, exemplar annotation, its image): the first ``num_images`` validation images,
    each with the largest instance, from another image, of its first annotated category."""
    images = {im["id"]: im for im in coco["images"]}
    by_cat: dict = {}
    by_image: dict = {}
    for a in coco["annotations"]:
        if not a.get("iscrowd", 0):
            by_cat.setdefault(a["category_id"], []).append(a)
            by_image.setdefault(a["image_id"], []).append(a)
    pairs = []
    for im in coco["images"]:
        anns = by_image.get(im["id"])
        if not anns:
            continue
        others = [a for a in by_cat[anns[0]["category_id"]] if a["image_id"] != im["id"]]
        if not others:
            continue
        ex = max(others, key=lambda a: a["bbox"][2] * a["bbox"][3])
        pairs.append((im, ex, images[ex["image_id"]]))
        if len(pairs) == num_images:
            break
    return pairs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by tools/train.py")
    p.add_argument("--images", type=int, default=16, help="validation images to measure on")
    p.add_argument("--top", type=int, default=10, help="highest-scoring object queries per image (0: all)")
    args = p.parse_args(argv)

    from detector import OneShotDetector

    det = OneShotDetector.from_checkpoint(args.checkpoint)
    d = det.cfg.data
    root = under_root(_REPO, d.root)
    ann_path, img_dir = under_root(root, d.val_annotations), under_root(root, d.val_images)
    with open(ann_path, "r", encoding="utf-8") as f:
        coco = json.load(f)
    stats = []
    for im, ex, ex_im in _pairs(coco, args.images):
        q, _ = det.prepare_query(os.path.join(img_dir, im["file_name"]))
        s, _ = det.prepare_support(os.path.join(img_dir, ex_im["file_name"]), ex["bbox"])
        stats.append(attention_locality(det.model, ImageBatch.from_tensors([q]),
                                        ImageBatch.from_tensors([s], size_divisibility=det.cfg.model.support_size),
                                        top=args.top or None))
    if not stats:
        raise SystemExit(f"{ann_path}: no validation image with an exemplar of its category in another image")
    mean = {k: torch.stack([s[k] for s in stats]).mean(0) for k in stats[0]}
    heads = mean["mass"].shape[1]
    print(f"{args.checkpoint}: attention {det.cfg.model.attention}, {len(stats)} images, top {args.top or 'all'} object queries")
    print("| layer | box share | " + " | ".join(f"h{h}" for h in range(heads)) + " | bias std | q.k std | sink |")
    print("|---" * (heads + 5) + "|")
    for layer in range(mean["mass"].shape[0]):
        masses = " | ".join(f"{v:.2f}" for v in mean["mass"][layer].tolist())
        print(f"| {layer} | {mean['box_share'][layer]:.2f} | {masses} | {mean['bias_std'][layer].mean():.2f} | "
              f"{mean['qk_std'][layer].mean():.2f} | {mean['sink'][layer].mean():.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

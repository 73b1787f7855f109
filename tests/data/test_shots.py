"""Several exemplars per evaluation item (eval.shots = k): shot 0 is the one-shot exemplar, the
others come from other images, distinct when the pool allows, reproducibly; the items and the
collate carry k crops; k = 1 is the one-shot protocol unchanged."""
import numpy as np
import torch

from detector.data import Exemplar, ExemplarPool, OneShotEvalDataset, collate_oneshot, synthetic_split

SPLIT = synthetic_split()


def _val(root, **kw):
    return OneShotEvalDataset(f"{root}/annotations/val.json", f"{root}/images/val", SPLIT.seen_ids + SPLIT.unseen_ids,
                              support_size=48, eval_size=128, min_exemplar_area=100, **kw)


def _one_shot_rule(pool, category_id, image_id, run):
    """The published rule, written out: candidates outside the image, shuffled with the image id."""
    lst = pool.by_category[category_id]
    allowed = [i for i, e in enumerate(lst) if e.image_id != image_id]
    order = np.random.default_rng(image_id).permutation(len(allowed))
    return lst[allowed[order[run % len(allowed)]]]


def _pool():
    # Category 1: 7 candidates over images 0-4 (image 0 holds three); category 2: two, one per image.
    images = [0, 0, 0, 1, 2, 3, 4]
    exemplars = [Exemplar(1, (i, 0, i + 10, 10), image_id=im, ann_id=i) for i, im in enumerate(images)]
    exemplars += [Exemplar(2, (0, 0, 5, 5), image_id=7, ann_id=20), Exemplar(2, (0, 0, 5, 5), image_id=8, ann_id=21)]
    return ExemplarPool(exemplars)


def test_shot_0_is_the_one_shot_exemplar():
    pool = _pool()
    for image_id in range(6):
        for run in range(6):
            expected = _one_shot_rule(pool, 1, image_id, run)
            assert pool.eval_choice(1, image_id, run) == expected == pool.eval_choice(1, image_id, run, shot=0)
    # Pinned: the one-shot choices of this pool before k-shot existed (commit 5de7493).
    assert [pool.eval_choice(1, 0, r).ann_id for r in range(5)] == [5, 3, 4, 6, 5]
    assert [pool.eval_choice(1, 3, r).ann_id for r in range(5)] == [2, 6, 4, 1, 3]


def test_other_shots_come_from_other_images_distinct_and_reproducible():
    pool, again = _pool(), _pool()
    for image_id in range(6):
        for run in range(4):
            shots = [pool.eval_choice(1, image_id, run, shot=s) for s in range(5)]
            outside = sum(e.image_id != image_id for e in pool.by_category[1])
            assert all(e.image_id != image_id for e in shots)
            assert len({e.ann_id for e in shots}) == min(5, outside)  # distinct while the pool allows
            assert shots == [again.eval_choice(1, image_id, run, shot=s) for s in range(5)]
    # Runs draw their extra shots independently; with one other candidate the shots repeat it.
    assert [pool.eval_choice(2, 7, 0, shot=s).ann_id for s in range(3)] == [21, 21, 21]
    assert pool.eval_choice(1, 9, 0, shot=1) is not None and pool.eval_choice(3, 0, 0, shot=1) is None


def test_items_and_collate_carry_k_exemplars(tiny_root):
    one, three = _val(tiny_root), _val(tiny_root, shots=3)
    assert one.shots == 1 and one.items == three.items
    for i in range(0, len(one), 7):
        a, b = one[i], three[i]
        assert "support_images" not in a and "support_image" not in b and len(b["support_images"]) == 3
        assert torch.equal(a["support_image"], b["support_images"][0])  # shot 0 is the one-shot exemplar
        assert torch.equal(a["query_image"], b["query_image"])
        assert [three.exemplar(i, shot=s).image_id != three.items[i].image_id for s in range(3)] == [True] * 3
    query, support, targets = collate_oneshot([three[0], three[1], three[2]])
    assert isinstance(support, list) and len(support) == 3
    assert all(s.tensors.shape == (3, 3, 48, 48) for s in support)
    assert torch.equal(support[1].tensors[2, :, :three[2]["support_images"][1].shape[1], :three[2]["support_images"][1].shape[2]],
                       three[2]["support_images"][1])
    q1, s1, t1 = collate_oneshot([one[0], one[1], one[2]])
    assert torch.equal(q1.tensors, query.tensors) and torch.equal(s1.tensors, support[0].tensors)


def test_training_items_with_several_exemplars(tiny_root):
    """train_shots = 1 draws exactly the one-shot item; k > 1 adds k - 1 exemplars from other images
    after every one-shot draw, or repeats the first one for a share of the items."""
    from detector.data import OneShotDataset, QueryTransform

    def train(**kw):
        qt = QueryTransform(train=True, augment=True, shorter_sides=(96, 128), max_size=128)
        return OneShotDataset(f"{tiny_root}/annotations/train.json", f"{tiny_root}/images/train", SPLIT.seen_ids,
                              support_size=48, query_transform=qt, min_exemplar_area=100, seed=1, **kw)

    one, default, mixed = train(shots=1), train(), train(shots=3)
    copies, distinct = train(shots=3, single_share=1.0), train(shots=3, single_share=0.0)
    kinds = set()
    for i in range(12):
        a, b, m = one[i], default[i], mixed[i]
        assert torch.equal(a["support_image"], b["support_image"]) and torch.equal(a["query_image"], b["query_image"])
        assert len(m["support_images"]) == 3 and torch.equal(m["support_images"][0], a["support_image"])
        assert torch.equal(m["query_image"], a["query_image"]) and torch.equal(m["target"]["boxes"], a["target"]["boxes"])
        kinds.add(all(torch.equal(s, m["support_images"][0]) for s in m["support_images"]))
        assert all(torch.equal(s, a["support_image"]) for s in copies[i]["support_images"])
        assert len(distinct[i]["support_images"]) == 3
    assert kinds == {True, False}  # both kinds of items occur

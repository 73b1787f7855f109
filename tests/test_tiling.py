"""Tiling geometry (detector/tiling.py): the tiles cover the image with the overlap asked, the last
ones end at the border, the owned regions partition the image, and the merge keeps each object once."""
import pytest
import torch

from detector.tiling import keep_owned, merge_tiles, shift_to_image, tile_grid, tile_starts


@pytest.mark.parametrize("height, width, tile, overlap", [(300, 500, 64, 0.25), (256, 700, 256, 0.5), (97, 130, 32, 0.0),
                                                          (2472, 2299, 256, 0.25)])
def test_tiles_cover_the_image_with_the_overlap_asked(height, width, tile, overlap):
    grid = tile_grid(height, width, tile, overlap)
    covered = torch.zeros(height, width, dtype=torch.bool)
    for x0, y0, x1, y1 in grid.tiles.tolist():
        assert (x1 - x0, y1 - y0) == (min(tile, width), min(tile, height))  # every tile full size
        assert 0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert grid.tiles[:, 2].max() == width and grid.tiles[:, 3].max() == height  # flush with the border
    xs = tile_starts(width, tile, overlap)
    stride = tile - round(overlap * tile)
    assert all(b - a == stride for a, b in zip(xs[:-2], xs[1:-1]))  # the overlap asked between regular tiles
    assert all(0 < b - a <= stride for a, b in zip(xs, xs[1:]))  # the shifted last tile overlaps more, never less
    assert len(grid) == len(xs) * len(tile_starts(height, tile, overlap))


def test_regular_starts_and_the_last_tile_shifted_to_the_border():
    assert tile_starts(400, 256, 0.25) == [0, 144]
    assert tile_starts(1000, 256, 0.25) == [0, 192, 384, 576, 744]
    assert tile_starts(448, 256, 0.25) == [0, 192]  # the regular start already ends at the border: no extra tile


@pytest.mark.parametrize("height, width", [(64, 64), (40, 64), (10, 3)])
def test_an_image_that_fits_is_one_tile(height, width):
    grid = tile_grid(height, width, 64, 0.25)
    assert grid.tiles.tolist() == [[0, 0, width, height]]
    assert torch.isinf(grid.owned).all()  # it owns everything


def test_owned_regions_partition_the_image_and_lie_inside_their_tiles():
    grid = tile_grid(300, 500, 64, 0.25)
    ys, xs = torch.meshgrid(torch.arange(0, 300, 0.5), torch.arange(0, 500, 0.5), indexing="ij")
    points = torch.stack([xs.flatten(), ys.flatten()], dim=1).double()
    inside = ((points[:, None] >= grid.owned[None, :, :2]) & (points[:, None] < grid.owned[None, :, 2:])).all(-1)
    assert (inside.sum(dim=1) == 1).all()  # every point (on half pixels too) owned by exactly one tile
    clipped = torch.maximum(grid.owned, torch.zeros(4, dtype=torch.float64))
    clipped = torch.minimum(clipped, torch.tensor([500, 300, 500, 300], dtype=torch.float64))
    assert (clipped[:, :2] >= grid.tiles[:, :2]).all() and (clipped[:, 2:] <= grid.tiles[:, 2:]).all()


def test_boxes_are_shifted_by_their_tile_offset():
    grid = tile_grid(100, 400, 256, 0.25)  # tiles start at x = 0 and 144
    boxes = torch.tensor([[10.0, 5.0, 20.0, 15.0], [10.0, 5.0, 20.0, 15.0]])
    shifted = shift_to_image(boxes, torch.tensor([0, 1]), grid.tiles)
    assert shifted.tolist() == [[10, 5, 20, 15], [154, 5, 164, 15]]


def test_a_box_straddling_the_cut_or_inside_both_tiles_is_kept_once():
    grid = tile_grid(100, 400, 256, 0.25)  # two tiles, x in [0, 256) and [144, 400); the cut at x = 200
    straddling = [180.0, 10.0, 220.0, 50.0]  # across the cut, whole in both tiles; its centre on the cut: tile 1's
    in_both = [150.0, 10.0, 170.0, 30.0]  # inside the shared strip, left of the cut
    truncated = [144.0, 10.0, 170.0, 30.0]  # tile 1's view of an object cut by its left edge
    boxes = torch.tensor([straddling, straddling, in_both, in_both, truncated])
    tile = torch.tensor([0, 1, 0, 1, 1])
    assert keep_owned(boxes, tile, grid.owned).tolist() == [False, True, True, False, False]
    kept, scores = merge_tiles(boxes, torch.tensor([0.9, 0.8, 0.7, 0.6, 0.95]), tile, grid.owned, 0.0, 100)
    assert kept.tolist() == [straddling, in_both] and scores.tolist() == pytest.approx([0.8, 0.7])


def test_nms_removes_a_duplicate_that_two_tiles_both_own():
    grid = tile_grid(100, 400, 256, 0.25)
    boxes = torch.tensor([[179.0, 10.0, 219.0, 50.0], [182.0, 10.0, 222.0, 50.0]])  # centres 199 and 202
    tile = torch.tensor([0, 1])
    scores = torch.tensor([0.6, 0.9])
    assert len(merge_tiles(boxes, scores, tile, grid.owned, 0.0, 100)[0]) == 2  # both owned
    kept, kept_scores = merge_tiles(boxes, scores, tile, grid.owned, 0.5, 100)
    assert kept.tolist() == [boxes[1].tolist()] and kept_scores.tolist() == pytest.approx([0.9])


def test_the_merge_keeps_the_best_max_detections():
    grid = tile_grid(64, 64, 64, 0.25)
    boxes = torch.tensor([[i * 6.0, 0.0, i * 6.0 + 5, 5.0] for i in range(10)])
    scores = torch.linspace(0.1, 1.0, 10)
    kept, kept_scores = merge_tiles(boxes, scores, torch.zeros(10, dtype=torch.long), grid.owned, 0.5, 3)
    assert kept_scores.tolist() == pytest.approx([1.0, 0.9, 0.8]) and kept.tolist() == boxes[[9, 8, 7]].tolist()


def test_bad_geometry_is_refused():
    with pytest.raises(ValueError, match="overlap in"):
        tile_starts(100, 32, 1.0)

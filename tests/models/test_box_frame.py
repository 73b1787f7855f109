"""The ``box`` support layout: the exemplar laid into each object query's (enlarged) box."""
import torch

from detector.models.box_frame import BoxFrame, SupportGrid, box_frame


def grid(support_hw=(8, 8), valid=None, margin=0.0, batch=1, d=4):
    valid = torch.tensor([list(valid or support_hw)] * batch)
    feats = torch.randn(batch, support_hw[0] * support_hw[1], d)
    return SupportGrid(feats, support_hw, valid, margin)


def xyxy_to_cxcywh(x0, y0, x1, y1):
    return torch.tensor([[[(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]]])


def test_a_box_of_four_cells_takes_two_support_cells_each():
    # Value grid 16 x 16; the box spans columns 4-7 and rows 8-11; the support is 8 x 8: each value
    # cell inside the box is the mean of 2 x 2 support cells, in order.
    frame = box_frame(xyxy_to_cxcywh(4 / 16, 8 / 16, 8 / 16, 12 / 16), (16, 16), torch.tensor([[16, 16]]), grid())
    wx, wy = frame.weight_x[0, 0], frame.weight_y[0, 0]
    assert wx.shape == (16, 8) and wy.shape == (16, 8)
    for k in range(4):
        expected = torch.zeros(8)
        expected[2 * k:2 * k + 2] = 0.5
        torch.testing.assert_close(wx[4 + k], expected)
        torch.testing.assert_close(wy[8 + k], expected)
    outside_x = [x for x in range(16) if not 4 <= x < 8]
    assert wx[outside_x].abs().max() == 0 and wy[[y for y in range(16) if not 8 <= y < 12]].abs().max() == 0


def test_weights_sum_to_the_share_of_the_cell_inside_the_enlarged_box():
    # Box x in [0.30, 0.55] (cells of 1/10), margin 0.2 -> enlarged to [0.25, 0.60].
    frame = box_frame(xyxy_to_cxcywh(0.30, 0.0, 0.55, 1.0), (10, 10), torch.tensor([[10, 10]]), grid(margin=0.2))
    sums = frame.weight_x[0, 0].sum(-1)
    torch.testing.assert_close(sums, torch.tensor([0, 0, 0.5, 1, 1, 1, 0, 0, 0, 0.0]), atol=1e-5, rtol=0)


def test_support_columns_beyond_the_crop_get_no_weight():
    # A crop 8 rows x 4 columns (a tall exemplar padded to 8 x 8): only support columns 0-3 are used,
    # and they cover the whole box.
    frame = box_frame(xyxy_to_cxcywh(0.0, 0.0, 1.0, 1.0), (8, 8), torch.tensor([[8, 8]]), grid(valid=(8, 4)))
    wx = frame.weight_x[0, 0]
    assert wx[:, 4:].abs().max() == 0
    torch.testing.assert_close(wx.sum(-1), torch.ones(8))
    torch.testing.assert_close(wx[0, :4], torch.tensor([1.0, 0, 0, 0]))  # value cells 0-1 <- support column 0
    torch.testing.assert_close(wx[7, :4], torch.tensor([0, 0, 0, 1.0]))


def test_scores_equal_keys_laid_out_explicitly():
    """``BoxFrame.scores`` (two small matmuls) = the dot product with explicitly resized keys."""
    gen = torch.Generator().manual_seed(0)
    b, heads, q, hs, ws, h, w, d = 2, 3, 5, 4, 6, 7, 9, 8
    frame = BoxFrame(torch.rand(b, q, h, hs, generator=gen), torch.rand(b, q, w, ws, generator=gen))
    queries = torch.randn(b, heads, q, d, generator=gen)
    support = torch.randn(b, heads, hs * ws, d, generator=gen)
    got = frame.scores(queries @ support.transpose(-1, -2))  # [B, heads, Q, H*W]
    s = support.view(b, heads, hs, ws, d)
    keys = torch.einsum("bqya,bqxc,bhacd->bhqyxd", frame.weight_y, frame.weight_x, s)  # per object query
    expected = torch.einsum("bhqd,bhqyxd->bhqyx", queries, keys).flatten(-2)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_the_layout_follows_the_box():
    """The exemplar's top-left support cell lands on the box's top-left value cell, wherever the box is."""
    g = grid(support_hw=(2, 2))
    for x0, y0 in ((0.0, 0.0), (0.5, 0.25)):
        frame = box_frame(xyxy_to_cxcywh(x0, y0, x0 + 0.5, y0 + 0.5), (4, 4), torch.tensor([[4, 4]]), g)
        col, row = int(x0 * 4), int(y0 * 4)
        assert frame.weight_x[0, 0, col].argmax() == 0 and frame.weight_y[0, 0, row].argmax() == 0
        assert frame.weight_x[0, 0, col + 1].argmax() == 1 and frame.weight_y[0, 0, row + 1].argmax() == 1

"""Broken and unusual inputs: each is handled correctly or fails with a message naming the file."""
import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from detector.data import CocoIndex, ImageReadError, OneShotEvalDataset, read_image
from detector.data.image_io import image_size


def test_missing_corrupt_and_truncated_images(tmp_path, noise_image):
    with pytest.raises(ImageReadError, match=r"nothere\.jpg.*not found"):
        read_image(str(tmp_path / "nothere.jpg"))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageReadError, match=r"corrupt\.jpg.*not a recognised image"):
        read_image(str(corrupt))
    full = tmp_path / "full.jpg"
    Image.fromarray(noise_image(0, 128, 128)).save(full, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    with pytest.raises(ImageReadError, match=r"truncated\.jpg.*(corrupt or truncated|truncated)"):
        read_image(str(truncated))


def test_grayscale_palette_and_rgba(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    out = read_image(str(tmp_path / "gray.png"))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], gray) and np.array_equal(out[..., 1], gray) and np.array_equal(out[..., 2], gray)

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 0  # fully transparent -> white
    rgba[1:, :, 3] = 255  # opaque red
    rgba[0, 1:, 3] = 128  # half transparent -> between red and white
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = read_image(str(tmp_path / "rgba.png"))
    assert out.shape == (4, 4, 3)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[2, 2]) == (200, 0, 0)
    assert 120 <= out[0, 2, 1] <= 135 and 220 <= out[0, 2, 0] <= 235

    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.save(tmp_path / "pal.png")
    assert tuple(read_image(str(tmp_path / "pal.png"))[1, 1]) == (10, 20, 30)


def test_16bit_images_are_scaled_not_clipped(tmp_path):
    gray16 = np.array([[0, 257 * 128, 65535, 257 * 10]], dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "gray16.png")
    out = read_image(str(tmp_path / "gray16.png"))
    assert list(out[0, :, 0]) == [0, 128, 255, 10]

    rgb16 = np.zeros((2, 2, 3), np.uint16)
    rgb16[0, 0] = (65535, 257 * 100, 0)  # RGB order
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])  # OpenCV writes BGR
    out = read_image(str(tmp_path / "rgb16.png"))
    assert tuple(out[0, 0]) == (255, 100, 0)


def _with_orientation(path, array, orientation):
    im = Image.fromarray(array)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, exif=exif.tobytes(), quality=95)


def test_exif_rotation_and_the_annotation_size(tmp_path):
    array = np.zeros((20, 40, 3), np.uint8)  # stored 20 high, 40 wide
    array[:, :10] = 255  # white band on the left of the stored pixels
    path = str(tmp_path / "rotated.jpg")
    _with_orientation(path, array, 6)  # "rotate 90 CW to display"
    shown = read_image(path)
    assert shown.shape == (40, 20, 3)
    assert shown[:10].mean() > 200 and shown[-10:].mean() < 50  # the band is now on top
    assert image_size(path) == (40, 20)
    # annotations made on the displayed image agree with the rotated pixels ...
    assert read_image(path, expected_hw=(40, 20)).shape == (40, 20, 3)
    # ... annotations made on the raw pixels get the raw pixels ...
    assert read_image(path, expected_hw=(20, 40)).shape == (20, 40, 3)
    # ... and a size matching neither is an error naming the file
    with pytest.raises(ImageReadError, match=r"rotated\.jpg.*annotation file says 30x30"):
        read_image(path, expected_hw=(30, 30))


def _write(tmp_path, data, name="ann.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def _valid():
    return {"images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 50}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], "iscrowd": 0}],
            "categories": [{"id": 3, "name": "thing"}]}


@pytest.mark.parametrize("mutate, message", [
    (lambda d: "{not json", "not valid JSON"),
    (lambda d: [1, 2], "top level is a list"),
    (lambda d: {k: v for k, v in d.items() if k != "annotations"}, "'annotations' must be a list"),
    (lambda d: {**d, "images": [{"id": "1", "file_name": "a.png"}]}, "integer 'id'"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "bbox": "10 10 20 20"}]}, r"annotation 1: 'bbox'"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "bbox": [1, 2, -3, 4]}]}, "negative box size"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "bbox": [1, 2, float("nan"), 4]}]}, "finite"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "image_id": 9}]}, "image_id 9"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "category_id": 4}]}, "category_id 4"),
    (lambda d: {**d, "annotations": d["annotations"] * 2}, "duplicate annotation id 1"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "iscrowd": 2}]}, "'iscrowd' must be 0 or 1"),
    (lambda d: {**d, "images": [{**d["images"][0], "width": 0}]}, "positive integers"),
])
def test_invalid_coco_files_raise_naming_file_and_problem(tmp_path, mutate, message):
    data = mutate(_valid())
    path = _write(tmp_path, data if isinstance(data, str) else json.dumps(data, allow_nan=True))
    with pytest.raises(ValueError, match=message) as err:
        CocoIndex(path)
    assert path in str(err.value)


def test_degenerate_and_outside_boxes_are_clipped_or_dropped(tmp_path):
    data = _valid()
    data["annotations"] = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 0, 20]},  # zero width: dropped
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [90, 40, 30, 30]},  # partly outside: clipped
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [150, 10, 10, 10]},  # fully outside: dropped
        {"id": 4, "image_id": 1, "category_id": 3, "bbox": [-5, -5, 10, 10.5]},  # clipped at the origin
        {"id": 5, "image_id": 1, "category_id": 3, "bbox": [99.5, 0, 5, 5]},  # 0.5 px left inside: dropped
    ]
    index = CocoIndex(_write(tmp_path, data))
    assert index.num_dropped_boxes == 3
    boxes = {a.id: a.box_xyxy for a in index.annotations}
    assert boxes == {2: (90.0, 40.0, 100.0, 50.0), 4: (0.0, 0.0, 5.0, 5.5)}
    assert [a.area for a in index.annotations] == [100.0, 27.5]


def test_missing_sizes_are_read_from_the_image(tmp_path, noise_image):
    (tmp_path / "images").mkdir()
    Image.fromarray(noise_image(1, 30, 50)).save(tmp_path / "images" / "a.png")
    data = _valid()
    del data["images"][0]["width"], data["images"][0]["height"]
    path = _write(tmp_path, data)
    index = CocoIndex(path, str(tmp_path / "images"))
    assert (index.images[1].height, index.images[1].width) == (30, 50)
    with pytest.raises(ValueError, match="no width/height"):
        CocoIndex(path)


def test_dataset_names_a_missing_image_file(tmp_path, noise_image):
    (tmp_path / "images").mkdir()
    data = {"images": [{"id": 1, "file_name": "present.png", "width": 64, "height": 64},
                       {"id": 2, "file_name": "absent.png", "width": 64, "height": 64}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 30, 30]},
                            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [5, 5, 30, 30]}],
            "categories": [{"id": 1, "name": "a"}]}
    Image.fromarray(noise_image(0)).save(tmp_path / "images" / "present.png")
    ds = OneShotEvalDataset(_write(tmp_path, data), str(tmp_path / "images"), [1], support_size=32, eval_size=64,
                            min_exemplar_area=16)
    missing = [i for i, it in enumerate(ds.items) if it.image_id == 2][0]
    with pytest.raises(ImageReadError, match=r"absent\.png.*not found"):
        ds[missing]
    assert os.path.basename(ds.index.image_path(2)) == "absent.png"


def test_images_from_memory_and_the_pixel_limit_before_decoding(tmp_path, noise_image):
    import io

    from detector.data.image_io import ImageTooLargeError

    path = tmp_path / "a.png"
    Image.fromarray(noise_image(1, 30, 40)).save(path)
    data = path.read_bytes()
    assert np.array_equal(read_image(io.BytesIO(data), name="upload"), read_image(str(path)))
    assert read_image(io.BytesIO(data), max_pixels=30 * 40).shape == (30, 40, 3)  # at the limit: fine
    with pytest.raises(ImageTooLargeError, match=r"upload: 40x30 pixels \(0.0012 megapixels\) is over the limit of 0.001199 megapixels"):
        read_image(io.BytesIO(data), max_pixels=30 * 40 - 1, name="upload")
    # The header is all it takes: a few kB of 1-bit pixels, 150 MB once decoded to RGB, refused unread.
    buf = io.BytesIO()
    Image.new("1", (5000, 10000)).save(buf, format="PNG")
    with pytest.raises(ImageTooLargeError, match="5000x10000 pixels"):
        read_image(io.BytesIO(buf.getvalue()), max_pixels=10_000_000)
    with pytest.raises(ImageReadError, match=r"not a recognised image format \(the accepted formats: JPEG\)"):
        read_image(io.BytesIO(data), formats=("JPEG",), name="upload")

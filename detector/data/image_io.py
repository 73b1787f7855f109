"""Robust image reading: every image becomes an RGB ``uint8`` array, or a clear error.

Rules (tested in ``tests/data/test_robustness.py``):

* EXIF orientation is applied. When the annotation gives the image size and only the *raw*
  (un-rotated) pixels match it, the raw pixels are used: the boxes were drawn on them.
* Grayscale, palette, CMYK, ... are converted to RGB; images with alpha (RGBA, LA, P with
  transparency) are composited onto white.
* 16-bit and 32-bit integer images are scaled to 8 bit by their type's range
  (``v * 255 / 65535``), never clipped; float images are read as ``[0, 1]`` if their maximum is at
  most 1, else as ``[0, 255]``.
* A missing, unreadable, corrupt or truncated file raises :class:`ImageReadError` naming the file.
* ``max_pixels`` refuses an image whose header gives more pixels, before its pixels are decoded
  (decompression bombs: a few kilobytes that decode to gigabytes), with :class:`ImageTooLargeError`;
  PIL's own decompression-bomb limit is replaced by it while the file is opened.
* The source is a path or an open binary file (an upload held in memory); ``formats`` restricts
  the PIL formats accepted.

:func:`load_image` is the inference API's entry: a path, a PIL image or a numpy array, each by
these rules, as an RGB PIL image or an :class:`~detector.errors.InputError`.
"""
from __future__ import annotations

import contextlib
import os
from typing import BinaryIO, Iterator, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..config import DEFAULT_MAX_PIXELS
from ..errors import InputError

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]  # what load_image accepts
# The formats a user's photo may come in (PIL names), for load_image and the web API: none that PIL
# decodes through an outside program (EPS runs Ghostscript) or that is rarely a photo.
PHOTO_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


class ImageReadError(InputError):
    """An image file that cannot be used; the message names the file and the problem."""


class ImageTooLargeError(ImageReadError):
    """An image with more pixels than allowed, refused from its header before decoding."""


def check_pixels(width: int, height: int, max_pixels: Optional[int], what: str) -> None:
    """:class:`ImageTooLargeError` when ``width * height`` exceeds ``max_pixels`` (``None`` or 0:
    no limit)."""
    if max_pixels and width * height > max_pixels:
        mp = width * height / 1e6
        size = f"{mp:.1f}" if mp >= 1 else f"{mp:.3g}"
        raise ImageTooLargeError(f"{what}: {width}x{height} pixels ({size} megapixels) is over the limit of "
                                 f"{max_pixels / 1e6:g} megapixels; downscale it or raise the limit")


@contextlib.contextmanager
def _pil_bomb_check_off() -> Iterator[None]:
    # PIL warns above MAX_IMAGE_PIXELS and raises above twice that, before our own limit can name
    # the file; the caller checks the size itself. Not thread-safe: PIL offers only the global.
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def to_rgb_uint8(im: Image.Image) -> np.ndarray:
    """A PIL image of any mode as an ``[H, W, 3]`` ``uint8`` array, by the rules of the module
    docstring (16/32-bit scaled by their range, alpha composited onto white)."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im)
        if mode == "F":
            arr = arr.astype(np.float64)
            arr = arr * 255.0 if np.nanmax(arr) <= 1.0 else arr
        elif mode == "I":
            arr = arr.astype(np.float64)
            top = float(arr.max()) if arr.size else 0.0
            # 32-bit containers usually hold 16-bit data (PNG, TIFF): scale by the smallest range that fits.
            scale = 255.0 if top <= 255 else (65535.0 if top <= 65535 else float(2 ** 32 - 1))
            arr = arr * (255.0 / scale)
        else:
            arr = arr.astype(np.float64) * (255.0 / 65535.0)
        gray = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def read_image(path: Union[str, BinaryIO], expected_hw: Optional[tuple[int, int]] = None,
               max_pixels: Optional[int] = None, *, formats: Optional[Sequence[str]] = None,
               name: str = "") -> np.ndarray:
    """Read ``path`` as an RGB image.

    Args:
        path: image file, or an open binary file (an upload held in memory, ``io.BytesIO``).
        expected_hw: ``(height, width)`` recorded in the annotation file, or ``None``. Decides
            between the EXIF-rotated and the raw pixels (module docstring) and is checked.
        max_pixels: refuse images with more pixels than this, from the header, before decoding
            them (``None`` or 0: PIL's decompression-bomb limit applies).
        formats: PIL format names to accept (``None``: every format PIL reads).
        name: what messages call the image (default: the path, or the open file's name).

    Returns:
        ``[H, W, 3]`` ``uint8`` array (C-contiguous).

    Raises:
        ImageTooLargeError: more pixels than ``max_pixels`` (or than PIL's limit).
        ImageReadError: missing, unreadable, corrupt or truncated file, a format not in
            ``formats``, or a size that matches neither the annotation's nor its transpose.
    """
    if isinstance(path, (str, os.PathLike)):
        path = os.fspath(path)
        _check_file(path)
        label = name or path
    else:
        label = name or getattr(path, "name", "image")
    unknown = (f"not a recognised image format (the accepted formats: {', '.join(formats)})" if formats
               else "not a recognised image format")
    try:
        with contextlib.ExitStack() as stack:
            if max_pixels:
                stack.enter_context(_pil_bomb_check_off())
            im = stack.enter_context(Image.open(path, formats=list(formats) if formats else None))
            check_pixels(im.width, im.height, max_pixels, label)
            im.load()
            try:
                oriented = ImageOps.exif_transpose(im)
            except Exception as e:  # noqa: BLE001 - a broken EXIF block should not lose the image
                raise ImageReadError(f"{label}: cannot apply its EXIF orientation ({e})") from None
            if expected_hw is not None and (oriented.height, oriented.width) != tuple(expected_hw):
                if (im.height, im.width) == tuple(expected_hw):
                    oriented = im  # the annotation was made on the raw (un-rotated) pixels
                else:
                    raise ImageReadError(
                        f"{label}: image is {oriented.height}x{oriented.width} (h x w) after EXIF orientation "
                        f"({im.height}x{im.width} raw) but the annotation file says {expected_hw[0]}x{expected_hw[1]}")
            arr = to_rgb_uint8(oriented)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"{label}: {unknown} (corrupt file or not an image)") from None
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{label}: refused as a possible decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageReadError(f"{label}: corrupt or truncated image ({e})") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(f"{label}: unusable image of shape {arr.shape}")
    return np.array(arr, dtype=np.uint8, order="C", copy=True)  # writable, so torch can wrap it


def image_size(path: str) -> tuple[int, int]:
    """``(height, width)`` of an image file after EXIF orientation, reading only its header."""
    _check_file(path)
    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(0x0112, 1)
            h, w = im.height, im.width
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not a recognised image format (corrupt file or not an image)") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{path}: refused as a possible decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path}: cannot read the image header ({e})") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def _check_file(path: str) -> None:
    if os.path.isdir(path):
        raise ImageReadError(f"{path}: is a folder, not an image file")
    if not os.path.isfile(path):
        raise ImageReadError(f"{path}: image file not found")


def load_image(image: ImageLike, what: str = "image", max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An image as an RGB PIL image; :class:`InputError` (one line) for anything else.

    Accepted:

    * a path to a file of one of :data:`PHOTO_FORMATS`, by the rules of the module docstring (EXIF
      orientation, grayscale, palette, 16-bit, alpha onto white; :func:`read_image`);
    * a PIL image of any mode, converted by the same rules;
    * a numpy array ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` (RGB) or ``[H, W, 4]`` (RGBA, alpha
      onto white) of dtype ``uint8`` (0-255), another integer dtype with values in 0-255, or a
      float dtype with values in [0, 1]. Anything else (float values above 1, negative or
      non-finite values, channels first, ``bool``) is refused, never rescaled by a guess.

    ``what`` names the image in messages. ``max_pixels`` (``None`` or 0: no limit; default
    :data:`detector.config.DEFAULT_MAX_PIXELS`) refuses larger images, files before decoding them.
    """
    if isinstance(image, Image.Image):
        check_pixels(image.width, image.height, max_pixels, what)
        return Image.fromarray(to_rgb_uint8(image))
    if isinstance(image, np.ndarray):
        return Image.fromarray(_array_to_rgb(image, what, max_pixels))
    if isinstance(image, (str, os.PathLike)):
        try:
            return Image.fromarray(read_image(os.fspath(image), max_pixels=max_pixels, formats=PHOTO_FORMATS))
        except ImageReadError as e:
            raise InputError(f"{what}: {e}") from None
    raise InputError(f"{what}: expected a path, a PIL image or a numpy array, got {type(image).__name__}")


def _array_to_rgb(arr: np.ndarray, what: str, max_pixels: Optional[int]) -> np.ndarray:
    """The array rules of :func:`load_image`: ``[H, W, 3]`` ``uint8`` or :class:`InputError`."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        hint = " (channels first? use array.transpose(1, 2, 0))" if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) else ""
        raise InputError(f"{what}: expected an array [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], "
                         f"got shape {tuple(arr.shape)}{hint}")
    check_pixels(arr.shape[1], arr.shape[0], max_pixels, what)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputError(f"{what}: a float array must hold finite values in [0, 1]; it holds NaN or inf")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(f"{what}: a float array must hold values in [0, 1], got {lo:g} to {hi:g} "
                             f"(for 0-255 values pass arr.astype(np.uint8), or divide by 255)")
        arr = (arr.astype(np.float64) * 255.0).round().astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.uint8:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise InputError(f"{what}: an integer array must hold values in 0-255, got {lo} to {hi} "
                             f"(scale {arr.dtype} data to uint8 first)")
        arr = arr.astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InputError(f"{what}: unsupported array dtype {arr.dtype} (expected uint8, an integer or a float dtype)")
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 4:
        return to_rgb_uint8(Image.fromarray(np.ascontiguousarray(arr), "RGBA"))
    return np.ascontiguousarray(arr)

"""Robust loading of one image file, used by folder datasets and by ``msresnet predict``.

Every failure becomes a :class:`BadImageError` that says which file and why (empty, not an image, truncated,
too many pixels), so a folder loader can skip it with a one-line reason and the CLI can print it. Decoded images are
converted to 8-bit ``"L"`` or ``"RGB"`` correctly whatever they were stored as: 16/32-bit integer and float grayscale
are rescaled rather than clipped, palette images go through their palette, transparent pixels are composited on the
background colour (black by default, the canvas colour of the scale protocols), CMYK goes through PIL's conversion,
animated images give their first frame, and the EXIF orientation is applied.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import threading
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from msresnet.errors import UserError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_SIDE",
    "BadImageError",
    "convert_mode",
    "install_bomb_filter",
    "load_image",
    "to_8bit",
]

EXIF_ORIENTATION = 0x0112
DEFAULT_MAX_PIXELS = 50_000_000  # 50 Mpx: well above any camera image, far below a decompression bomb's size
# The largest side (px) of anything msresnet is asked to make: a model input, a canvas, a fitted size. Sizes read from
# checkpoint metadata or protocol parameters are checked against it, so a crafted number cannot exhaust memory.
MAX_SIDE = 8192


class BadImageError(UserError):
    """An image file that cannot be used, with the reason.

    Attributes:
        path: the file.
        reason: a short reason (``"empty file"``, ``"not an image"``, ``"truncated or corrupt: ..."``, ...).
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def to_8bit(im: Image.Image) -> Image.Image:
    """Map high-bit-depth grayscale modes (``I;16*``, ``I``, ``F``) to ``L`` by rescaling their value range.

    16-bit data spans 0..65535 and is divided by 257; 32-bit integer data (how PIL often opens 16-bit PNGs) is treated
    as 16-bit when it exceeds 255 and kept otherwise; float data in [0, 1] is multiplied by 255.
    """
    if im.mode.startswith("I;16"):
        a = np.asarray(im, dtype=np.float64) / 257.0
    elif im.mode == "I":
        a = np.asarray(im, dtype=np.float64)
        if a.size and a.max() > 255:
            a = a / 257.0
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if a.size and a.max() <= 1.0:
            a = a * 255.0
    else:
        return im
    return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))


def _convert(im: Image.Image, mode: str, background: tuple[int, int, int]) -> Image.Image:
    im = to_8bit(im)
    if im.mode == "P":
        # Palette images may carry transparency in their info; RGBA keeps it for the composite below.
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode in ("PA", "La", "LA") or (im.mode in ("L", "RGB") and "transparency" in im.info):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "RGBa"):
        base = Image.new("RGB", im.size, background)
        base.paste(im.convert("RGBA"), mask=im.convert("RGBA").getchannel("A"))
        im = base
    elif im.mode not in ("L", "RGB"):  # CMYK, YCbCr, LAB, HSV, ...
        im = im.convert("RGB")
    return im if im.mode == mode else im.convert(mode)


def convert_mode(im: Image.Image, mode: str, background: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """An already opened image in 8-bit ``"L"`` or ``"RGB"``, converted as :func:`load_image` converts files."""
    if mode not in ("L", "RGB"):
        raise UserError(f"image mode must be 'L' or 'RGB', not {mode!r}")
    return _convert(im, mode, background)


def load_image(
    path: str | os.PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    mode: str = "RGB",
    background: tuple[int, int, int] = (0, 0, 0),
) -> Image.Image:
    """Open, fully decode and convert an image file.

    Args:
        path: the image file.
        max_pixels: refuse images with more pixels than this (checked from the header, before decoding);
            ``None`` = no limit of ours (PIL's own bomb check still applies).
        mode: ``"L"`` (grayscale) or ``"RGB"``.
        background: colour under transparent pixels.

    Returns:
        a decoded PIL image in ``mode``, independent of the file.

    Raises:
        BadImageError: the file is missing, empty, not an image, truncated/corrupt, or too large.
    """
    if mode not in ("L", "RGB"):
        raise UserError(f"image mode must be 'L' or 'RGB', not {mode!r}")
    path = os.fspath(path)  # os.stat, not pathlib: this runs once per image of every training step
    try:
        st = os.stat(path)
    except OSError as e:
        raise BadImageError(path, "no such file" if isinstance(e, FileNotFoundError) else str(e)) from None
    if not stat.S_ISREG(st.st_mode):
        raise BadImageError(path, "not a file")
    if st.st_size == 0:
        raise BadImageError(path, "empty file")
    try:
        with bomb_warnings_as_errors(), Image.open(path) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise BadImageError(path, f"too large: {w}x{h} = {w * h} pixels > max_pixels={max_pixels}")
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)  # animated: first frame
            im.load()
            if im.getexif().get(EXIF_ORIENTATION, 1) != 1:  # most files have none: skip exif_transpose's copy
                im = ImageOps.exif_transpose(im) or im
            return _convert(im, mode, background)  # decoded by load(): independent of the file closed here
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError(path, f"too large (decompression bomb check: {e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as e:
        # struct.error / IndexError: what some PIL plugins raise on corrupt headers.
        raise BadImageError(path, f"truncated or corrupt: {e}") from None


_PROCESS_FILTER = False  # set in processes that only decode images (loader workers): the filter is process-wide


def install_bomb_filter(*_: object) -> None:
    """Make PIL's DecompressionBombWarning an error for the whole process, once (a DataLoader ``worker_init_fn``:
    a worker only decodes images, so a process-wide filter is right there and saves a context per image)."""
    global _PROCESS_FILTER
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    _PROCESS_FILTER = True


@contextlib.contextmanager
def bomb_warnings_as_errors() -> Iterator[None]:
    """Turn PIL's DecompressionBombWarning (it only *warns* between its limit and twice it) into an error.

    Warning filters are process-global and ``catch_warnings`` is not thread-safe, so the folder loader enters this
    once in the main thread around its worker threads, and :func:`load_image` enters it itself only when called from
    the main thread.
    """
    if _PROCESS_FILTER or threading.current_thread() is not threading.main_thread():
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield

"""Scenes: coloured objects in front of natural-looking backgrounds, anywhere in the frame (``fmnist-ls-scene``).

A user's objects are rarely alone on black: they stand in front of things, off-centre, in colour. This module makes
such images from single-channel objects (Fashion-MNIST) with two families of backgrounds that share the statistics
of natural images:

* **dead leaves** — occluding discs with a power-law size distribution (density ``r**-3``), painted back to front:
  the classic scale-invariant model of natural images (Matheron; Lee, Mumford and Huang). Discs partly outside the
  frame are drawn too, so the frame does not bound them;
* **1/f noise** — a Gaussian field whose amplitude spectrum falls as ``f**-alpha`` (``alpha`` drawn per image around
  the natural-image value 1), coloured by a random mixing of three fields with a dominant luminance.

Every background is drawn at the canvas resolution for its own image, so when the object is nearer (larger) the
scene behind it does not scale with it. The object keeps its shading: its pixel intensity is both its coverage
(alpha, premultiplied so resampling stays correct at the edges) and its brightness under a random colour.

Everything is vectorised over chunks of images and driven by explicit :class:`torch.Generator` seeds, one per
fixed-size chunk: the first ``n`` images of a part are the same whatever ``limit`` asks for.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from msresnet.data.scaling import paste, resize_images

__all__ = ["BACKGROUNDS", "colour_objects", "compose", "dead_leaves", "pink_noise", "scene_backgrounds", "scenes"]

CHUNK = 1024
"""Images per generator seed (fixed, so a part's prefix does not depend on how many images are made)."""


def dead_leaves(
    n: int,
    size: int,
    generator: torch.Generator,
    leaves: int = 320,
    r_min: float = 1.5,
    r_max: float | None = None,
    draw: int | None = None,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """``n`` dead-leaves images ``[n, 3, size, size]`` in [0, 1]: ``leaves`` discs with radius density ``r**-3``
    on ``[r_min, r_max]`` (default ``r_max``: the canvas side), grey levels with a slight random tint, around a
    random mean with a random contrast. ``draw`` (>= n): rows of random numbers drawn, so that image ``i`` is the
    same whatever ``n``; ``keep``: the ``n`` rows to render (default: the first ``n``)."""
    r_max = float(size if r_max is None else r_max)
    m, rows = _rows(n, draw, keep)
    # inverse CDF of p(r) ~ r^-3 on [r_min, r_max]
    u = torch.rand(m, leaves, generator=generator)[rows]
    a, b = r_min**-2, r_max**-2
    radius = (a - u * (a - b)).rsqrt()
    margin = radius.clamp(max=size / 2)
    cy = torch.rand(m, leaves, generator=generator)[rows] * (size + 2 * margin) - margin
    cx = torch.rand(m, leaves, generator=generator)[rows] * (size + 2 * margin) - margin
    # grey levels around a per-image mean with a per-image contrast (a scene is rarely black-and-white throughout)
    mean = 0.3 + 0.4 * torch.rand(m, 1, 1, generator=generator)[rows]
    contrast = 0.2 + 0.3 * torch.rand(m, 1, 1, generator=generator)[rows]
    grey = mean + contrast * (torch.rand(m, leaves, 1, generator=generator)[rows] - 0.5)
    tint = 0.08 * torch.randn(m, leaves, 3, generator=generator)[rows]
    colour = (grey + tint).clamp(0, 1)  # [n, leaves, 3]
    top = _top_leaf(radius, cy, cx, size)  # [n, size*size] index of the front leaf at each pixel, -1: none
    painted = colour.gather(1, top.clamp_min(0).unsqueeze(-1).expand(-1, -1, 3))  # [n, size*size, 3]
    out = torch.where(top.unsqueeze(-1) >= 0, painted, mean.view(n, 1, 1).expand(-1, size * size, 3))
    return out.transpose(1, 2).reshape(n, 3, size, size).contiguous()


def _top_leaf(radius: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: int) -> torch.Tensor:
    """For discs ``[n, leaves]`` painted in index order (later on top), the index of the disc seen at each pixel
    ``[n, size * size]`` (-1: none). Small discs, the great majority under a power law, are tested in a window
    around their centre only; the few large ones against every pixel."""
    n, leaves = radius.shape
    top = torch.full((n, size * size), -1, dtype=torch.long)
    order = radius.argsort(dim=1)  # radius classes are contiguous in this order
    r_sorted = radius.gather(1, order)
    prev = 0.0
    for bound in (2.0, 4.0, 8.0, 16.0, float("inf")):
        in_class = (r_sorted > prev) & (r_sorted <= bound)
        start, stop = int((r_sorted <= prev).sum(1).min()), int((r_sorted <= bound).sum(1).max())
        prev = bound
        if stop <= start:
            continue
        ids, valid = order[:, start:stop], in_class[:, start:stop]  # [n, k]
        r, y0, x0 = radius.gather(1, ids), cy.gather(1, ids), cx.gather(1, ids)
        if math.isinf(bound):  # the large discs: every pixel
            ys = torch.arange(size, dtype=torch.float32).view(1, 1, size, 1)
            xs = torch.arange(size, dtype=torch.float32).view(1, 1, 1, size)
            inside = (ys - y0[..., None, None]) ** 2 + (xs - x0[..., None, None]) ** 2 <= r[..., None, None] ** 2
            inside &= valid[..., None, None]
            best = torch.where(inside, ids[..., None, None], -1).amax(1).flatten(1)
            top = torch.maximum(top, best)
            continue
        k = int(math.ceil(bound))
        d = torch.arange(-k, k + 1, dtype=torch.float32)
        py = (y0.round()[..., None] + d).view(n, -1, 2 * k + 1, 1)  # [n, k, w, 1]
        px = (x0.round()[..., None] + d).view(n, -1, 1, 2 * k + 1)  # [n, k, 1, w]
        inside = (py - y0[..., None, None]) ** 2 + (px - x0[..., None, None]) ** 2 <= r[..., None, None] ** 2
        inside &= (py >= 0) & (py < size) & (px >= 0) & (px < size) & valid[..., None, None]
        pix = (py.clamp(0, size - 1) * size + px.clamp(0, size - 1)).long()
        val = torch.where(inside, ids[..., None, None], -1)
        top.scatter_reduce_(1, pix.flatten(1), val.flatten(1), reduce="amax")
    return top


def pink_noise(
    n: int,
    size: int,
    generator: torch.Generator,
    alpha: tuple[float, float] = (0.8, 1.4),
    draw: int | None = None,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """``n`` coloured ``1/f**alpha`` noise images ``[n, 3, size, size]`` in [0, 1] (``alpha`` uniform per image;
    ``draw`` and ``keep`` as in :func:`dead_leaves`)."""
    m, rows = _rows(n, draw, keep)
    fy = torch.fft.fftfreq(size).view(size, 1)
    fx = torch.fft.rfftfreq(size).view(1, -1)
    f = (fy**2 + fx**2).sqrt().clamp_min(1.0 / size)
    a = alpha[0] + (alpha[1] - alpha[0]) * torch.rand(m, 1, 1, 1, generator=generator)[rows]
    white = torch.randn(m, 3, size, size, generator=generator)[rows]
    field = torch.fft.irfft2(torch.fft.rfft2(white) * f.pow(-a), s=(size, size))
    field = (field - field.mean((-2, -1), keepdim=True)) / field.std((-2, -1), keepdim=True).clamp_min(1e-6)
    # one dominant luminance field plus weaker chroma: natural colours are strongly correlated across channels
    mix = torch.eye(3) * 0.35 + 0.65 * torch.rand(m, 1, 3, generator=generator)[rows].expand(n, 3, 3).transpose(1, 2)
    mix = mix * (0.6 + 0.4 * torch.rand(m, 3, 1, generator=generator)[rows])
    rgb = torch.einsum("ncd,ndhw->nchw", mix, field) / mix.sum(-1).view(n, 3, 1, 1).clamp_min(1e-6)
    mean = 0.2 + 0.6 * torch.rand(m, 1, 1, 1, generator=generator)[rows]
    contrast = 0.06 + 0.10 * torch.rand(m, 1, 1, 1, generator=generator)[rows]
    return (mean + contrast * rgb).clamp(0, 1)


BACKGROUNDS: dict[str, Callable[..., torch.Tensor]] = {
    "dead_leaves": dead_leaves,
    "pink_noise": pink_noise,
}
"""Background families by name: ``fn(n, size, generator, draw=None, keep=None) -> [n, 3, size, size]``."""


def scene_backgrounds(n: int, size: int, families: list[str], seed: tuple[int, ...]) -> torch.Tensor:
    """``n`` backgrounds, each from a family drawn uniformly from ``families``; image ``i`` depends on ``seed`` and
    ``i`` only (every family draws :data:`CHUNK` rows from its own stream)."""
    which = torch.randint(len(families), (CHUNK,), generator=_gen((*seed, 0)))[:n]
    out = torch.empty(n, 3, size, size)
    for i, name in enumerate(families):
        idx = torch.nonzero(which == i).flatten()
        if len(idx):  # each family renders only its own images, from the rows of its stream they own
            out[idx] = BACKGROUNDS[name](len(idx), size, _gen((*seed, i + 1)), draw=CHUNK, keep=idx)
    return out


def colour_objects(objects: torch.Tensor, generator: torch.Generator, draw: int | None = None) -> torch.Tensor:
    """Premultiplied RGBA ``[n, 4, h, w]`` of grey objects ``[n, 1, h, w]`` in [0, 1]: a random saturated colour
    per object, shaded by the object's own intensity; coverage ``min(1, 2.5 * intensity)`` (``draw`` as in
    :func:`dead_leaves`)."""
    n = objects.shape[0]
    hue, sat, val = torch.rand(3, max(n, draw or 0), generator=generator)[:, :n]
    sat, val = 0.5 + 0.5 * sat, 0.6 + 0.4 * val
    k = (torch.tensor([5.0, 3.0, 1.0]).view(1, 3) + hue.view(n, 1) * 6) % 6  # HSV -> RGB
    rgb = val.view(n, 1) * (1 - sat.view(n, 1) * (torch.minimum(k, 4 - k).clamp(0, 1)))
    alpha = (2.5 * objects).clamp(0, 1)
    shade = 0.3 + 0.7 * objects
    return torch.cat([rgb.view(n, 3, 1, 1) * shade * alpha, alpha], 1)


def compose(rgba: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Premultiplied RGBA objects (already placed in the canvas) over backgrounds: ``rgb + (1 - alpha) * bg``."""
    return (rgba[:, :3] + (1 - rgba[:, 3:]) * background).clamp(0, 1)


def scenes(
    objects: torch.Tensor,
    scale: float,
    canvas: int,
    families: list[str],
    seed: tuple[int, ...],
    *,
    mode: str = "bilinear",
    colour_seed: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """uint8 scenes ``[n, 3, canvas, canvas]`` of uint8 objects ``[n, 1, h, w]``: each object coloured, resized by
    ``scale`` (antialiased ``mode``), placed uniformly where it fits, over a fresh background.

    Args:
        objects: grey objects (their intensity is their coverage).
        scale: object resize factor.
        canvas: side of the square output.
        families: background families (:data:`BACKGROUNDS`) drawn from uniformly.
        seed: identifies the random stream (placement, backgrounds); chunk ``i`` uses ``(*seed, i)``.
        colour_seed: the stream of the objects' colours (default ``seed``): the same test object keeps its colour
            at every scale while its background and place change.
    """
    out = []
    for i, start in enumerate(range(0, len(objects), CHUNK)):
        x = objects[start : start + CHUNK].float().div(255)
        n = len(x)
        rgba = colour_objects(x, _gen((*(colour_seed or seed), i, 7)), draw=CHUNK)
        obj = resize_images(rgba, (max(1, round(x.shape[-2] * scale)), max(1, round(x.shape[-1] * scale))), mode=mode)
        # uniform where the object fits (it covers the canvas where it does not)
        oh, ow = obj.shape[-2:]
        g = _gen((*seed, i, 1))
        oy = torch.randint(min(0, canvas - oh), max(0, canvas - oh) + 1, (CHUNK,), generator=g)[:n]
        ox = torch.randint(min(0, canvas - ow), max(0, canvas - ow) + 1, (CHUNK,), generator=g)[:n]
        placed = paste(obj, (canvas, canvas), oy, ox, 0.0)
        bg = scene_backgrounds(n, canvas, families, (*seed, i, 2))
        out.append(compose(placed.clamp(0, 1), bg).mul(255).round().to(torch.uint8))
    return torch.cat(out) if out else torch.empty(0, 3, canvas, canvas, dtype=torch.uint8)


def _rows(n: int, draw: int | None, keep: torch.Tensor | None) -> tuple[int, slice | torch.Tensor]:
    """How many rows of random numbers to draw, and which ``n`` of them to use."""
    if keep is None:
        return max(n, draw or 0), slice(0, n)
    return max(n, draw or 0, int(keep.max()) + 1 if len(keep) else 0), keep


def _gen(parts: tuple[int, ...]) -> torch.Generator:
    h = 1469598103934665603
    for p in parts:  # FNV-1a over the parts: a stable 63-bit seed from a tuple of small integers
        h = ((h ^ (int(p) & 0xFFFFFFFF)) * 1099511628211) % (1 << 63)
    return torch.Generator().manual_seed(h)

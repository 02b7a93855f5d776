"""Scale canonicalisation (``wrap(trunk, method="canonical")``): estimate each image's object scale, resample the
image once so that its object lands at the training objects' size, classify once.

Inference: the :class:`~msresnet.scale.estimator.ScaleEstimator` reads a coarse view of every image and says how
large its object is relative to the frame (log2 ``e``); one batched, antialiased zoom
(:func:`~msresnet.scale.resample.zoom`) with a span of ``2**e / target`` per image maps each image into a fixed
canvas (the training images' size once the model has been trained, else the input's own size), and the trunk
runs once on the result. A 4x range of object sizes therefore costs about one trunk pass plus the estimator.

Training (``model.train()``): the wrapper makes its own training views from single-scale images, with torch's
global generator (which the training loop reseeds every step, so resuming stays exact):

* the estimator sees each image zoomed by a random factor ``2**U(estimator_range)`` into its coarse view and learns
  the factor (:meth:`auxiliary_loss`); a random share of its views first lose detail (down-and-up resampling), so
  that blur, which says how an image was made, not how large its object is, is no cue for size;
* the trunk sees what canonicalisation hands it at test time: an image first shrunk inside its canvas by
  ``2**U(detail_range)`` (the detail a small test object has; with probability ``sharp_p`` not at all, the detail of
  a large one) and then zoomed so that its object has a size in ``[target**2, 1]`` of the training size — the
  sizes an estimate within ``tolerance`` octaves produces. By default (``trunk_view="true"``) the zoom back uses the
  known shrink, so training objects are never enlarged beyond their own size (every view of the trunk is a shrink,
  or an enlargement back after a shrink): the rule of single-scale training data. With ``"estimated"`` it uses the
  estimator's (detached) estimate of the shrunk image, as canonicalisation will at test time, which brings training
  objects of varied sizes to the canonical size as test images will be; it costs a second estimator pass per step
  and, on validation, did not beat ``"true"`` (see docs/design.md).

What surrounds a shrunk view (``fill``): by default (``"auto"``) each image's own surroundings: an image whose edge is
one colour (an object alone on a plain canvas) is extended with that colour, so the object stays alone; an image
whose edge is textured (an object in a scene) is mirrored, so the shrunk view continues its scene. Replicating a
textured border (``"border"``) draws a frame of streaks whose width is the shrink: the estimator can read the frame
instead of the object, and a small object in a full frame of clutter then reads as "not shrunk". Mirroring a plain
canvas (``"reflection"``) surrounds its object with copies of itself, which no test image has.

A mirrored scene is still a cue: a shrunk view is then a tiling of mirrored copies of its scene (and of its object),
and an estimator trained on such views reads a small object alone in an unmirrored scene as "not shrunk". So with
``"auto"`` the estimator's training views of a textured image shrunk by at most :data:`OWN_SURROUND` are the shrunk
image pasted over its own full-size view, centred on its object (where the estimator, without gradient, locates it):
the shrunk scene is surrounded by the same scene's background at its own scale, as a small test object is. Stronger
shrinks keep the mirrored fill: their window is too small to cover the full-size object.

A second look (``refine``): an object in clutter, shrunk, can still read as larger than it is. Where the first
estimate says the object is small, the estimator looks again at the image
zoomed in by that estimate (about the object): a zoom-in has no fill to read, and the object is larger in the
view, so what is left of the shrink can be read there. The residual only ever moves the estimate further in (a
zoom-out view would be framed by its fill, which the estimator does read), and by at most ``tolerance`` octaves,
what the trunk is trained to absorb: a plain-canvas object the first look sized right can read as smaller still on
a second look, and an uncapped residual then enlarges it out of the canvas. It costs one more estimator pass at the
estimator's coarse resolution, and changes nothing in training.

Localisation (``localise``): the estimator's attention centroid says where the object is, and canonicalisation zooms
about that point (clamped so that an enlarged window stays inside the image and a shrunk one keeps the whole image
in view) instead of about the image centre, so an off-centre small object is enlarged, not pushed out of the canvas.
The estimator's training views are shifted at random for the same reason: objects anywhere in the frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msresnet.errors import UserError
from msresnet.scale._factory import register_wrapper
from msresnet.scale._wrapper import ScaleWrapper
from msresnet.scale.estimator import ScaleEstimator
from msresnet.scale.resample import PADDINGS, _tracing, flat_edge, image_size, window_extent, zoom

__all__ = ["CANVASES", "CanonicalClassifier"]

CANVASES = ("train", "input")
TRUNK_VIEWS = ("true", "estimated")
OWN_SURROUND = 2.0
"""The largest shrink of an estimator training view pasted over its own image (``fill="auto"``, textured images): a
window of half the frame still covers a training object of up to half the frame's side; a smaller one would leave
the full-size object showing around it, a second object at another size that the label does not describe."""


def _range(name: str, r: Sequence[float], hi_max: float | None = None) -> tuple[float, float]:
    lo, hi = float(r[0]), float(r[1])
    if not lo <= hi or (hi_max is not None and hi > hi_max):
        top = f" and hi <= {hi_max}" if hi_max is not None else ""
        raise UserError(f"{name} must be (lo, hi) octaves with lo <= hi{top}, got {tuple(r)}")
    return lo, hi


def _exp2(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(x * math.log(2.0))  # torch.exp2 has no ONNX export


def _uniform(n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    # drawn on the CPU: the same numbers on every device for a given seed
    return (lo + (hi - lo) * torch.rand(n, dtype=torch.float32)).to(device)


@register_wrapper("canonical")
class CanonicalClassifier(ScaleWrapper):
    """Estimate, resample once, classify once (see the module docstring); keeps timm's classifier contract
    (:class:`~msresnet.scale._wrapper.ScaleWrapper`). The estimator learns from its own loss only: the logits do not
    depend on its parameters in training; its loss rides on the output's backward pass unless
    ``attach_auxiliary_loss`` is off (then the training loop adds :meth:`auxiliary_loss`).

    Args:
        trunk: any classifier with timm's contract (``forward_features`` -> ``[B, C, H, W]``); global max pooling
            suits it best (a small object does not dilute a max).
        view_size: side of the estimator's coarse view.
        estimator_range: log2 zoom factors the estimator is trained on (wider than the scales it must serve).
        detail_range: log2 shrink factors whose lost detail the trunk is trained with (``hi <= 0``).
        sharp_p: fraction of the trunk's training images kept at full detail.
        tolerance: octaves of estimator error the trunk is trained to absorb; the canonical object size is
            ``2**-tolerance`` of the training size.
        canvas: ``"train"``: resample into the training images' size once the model has been trained (so a model
            trained at 28 px sees 28 px whatever the input's resolution), ``"input"``: the input's own size.
        search: 0, or the octave step of a local search: the trunk also classifies the zooms ``2**+-search``
            around the estimate and each image keeps its most confident one (3 trunk passes).
        trunk_view: how the trunk's training views are zoomed back after the shrink: by the known factor
            (``"true"``) or by the estimate (``"estimated"``), see the module docstring.
        estimator_weight: weight of the estimator's loss in :meth:`auxiliary_loss`.
        estimator_width: channels of the estimator's first stage.
        fill: what surrounds a shrunk image (``"auto"``, ``"reflection"``, ``"border"``, ``"zeros"``; see the module
            docstring).
        localise: zoom about the estimated object centre (else about the image centre).
        refine: second looks at a small object (0: none; see the module docstring).
    """

    def __init__(
        self,
        trunk: nn.Module,
        view_size: int = 32,
        estimator_range: Sequence[float] = (-2.5, 1.25),
        detail_range: Sequence[float] = (-2.0, 0.0),
        sharp_p: float = 0.5,
        tolerance: float = 0.25,
        canvas: str = "train",
        search: float = 0.0,
        trunk_view: str = "true",
        estimator_weight: float = 1.0,
        estimator_width: int = 12,
        fill: str = "auto",
        localise: bool = True,
        refine: int = 1,
    ) -> None:
        super().__init__(trunk)
        if canvas not in CANVASES:
            raise UserError(f"canvas must be one of {', '.join(CANVASES)}, got {canvas!r}")
        if trunk_view not in TRUNK_VIEWS:
            raise UserError(f"trunk_view must be one of {', '.join(TRUNK_VIEWS)}, got {trunk_view!r}")
        if fill not in PADDINGS:
            raise UserError(f"fill must be one of {', '.join(PADDINGS)}, got {fill!r}")
        if not 0.0 <= sharp_p <= 1.0 or tolerance < 0 or search < 0 or estimator_weight < 0 or refine < 0:
            raise UserError("sharp_p must be in [0, 1]; tolerance, search, estimator_weight and refine must be >= 0")
        self.estimator_range = _range("estimator_range", estimator_range)
        self.detail_range = _range("detail_range", detail_range, hi_max=0.0)
        lo, hi = self.estimator_range
        in_chans = self._in_chans(trunk)
        self.estimator = ScaleEstimator(in_chans, view_size, (min(-0.5, lo - 0.5), max(0.5, hi + 0.5)),
                                        width=estimator_width)  # fmt: skip
        self.sharp_p, self.tolerance, self.canvas, self.search = float(sharp_p), float(tolerance), canvas, search
        self.estimator_weight, self.trunk_view = float(estimator_weight), trunk_view
        self.fill, self.localise, self.refine = fill, bool(localise), int(refine)
        # (H, W) of the training images, recorded by training forwards; zeros until then
        self.register_buffer("train_canvas", torch.zeros(2, dtype=torch.long))
        self._canvas_seen: tuple[int, int] | None = None  # its value, for graph capture (see _trained_size)

    @staticmethod
    def _in_chans(trunk: nn.Module) -> int:
        n = getattr(trunk, "in_chans", None)
        if n is None:  # timm models do not keep it: their first convolution says
            conv = next((m for m in trunk.modules() if isinstance(m, nn.Conv2d)), None)
            n = conv.in_channels if conv is not None else 3
        return int(n)

    # --------------------------------------------------------------------------------------------- estimate
    def log2_scale(self, x: torch.Tensor) -> torch.Tensor:
        """The estimated log2 object size relative to the frame, compared with training images ``[B]``."""
        return self.locate(x)[0]

    def locate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log2 object size ``[B]`` and, when the wrapper localises, object centre ``[B, 2]`` (normalised ``x, y``):
        the estimator's first look, refined by its second looks at a small object (see the module docstring)."""
        e, c = self.estimator.estimate(x, padding=self.fill)
        centre = c if self.localise else None
        for _ in range(self.refine):
            e = e + self._second_look(x, e, centre)
        return e, centre

    def _second_look(self, x: torch.Tensor, e: torch.Tensor, centre: torch.Tensor | None) -> torch.Tensor:
        """``[B]`` the further (negative) log2 shrink read from ``x`` zoomed in by ``2**e`` about ``centre`` where
        ``e < 0``, 0 elsewhere. Eager calls look again at those images only; a recorded graph looks at every image
        and selects."""
        small = e < 0
        if _tracing():
            return torch.where(small, self._residual(x, e, centre), torch.zeros_like(e))
        out = torch.zeros_like(e)
        idx = small.nonzero().squeeze(1)
        if idx.numel():
            out[idx] = self._residual(x[idx], e[idx], None if centre is None else centre[idx])
        return out

    def _residual(self, x: torch.Tensor, e: torch.Tensor, centre: torch.Tensor | None) -> torch.Tensor:
        v = self.estimator.view_size
        view = self._zoom(x, _exp2(e.clamp(max=0.0)), (v, v), centre)
        # at most ``tolerance`` further in: a wrong second look then costs no more than the trunk is trained to absorb
        return self.estimator.decode(self.estimator.logits(view)).clamp(min=-self.tolerance, max=0.0)

    def estimate_scale(self, x: torch.Tensor) -> torch.Tensor:
        """Each image's object size relative to the training objects', in pixels ``[B]`` (2.0: twice as large).

        For a model trained at another image size than ``x``'s, the frame-relative estimate is converted to pixels
        with the ratio of the two sizes.
        """
        rel = _exp2(self.log2_scale(x))
        trained = self._trained_size()
        if trained is not None:
            rel = rel * (image_size(x).prod() / float(trained[0] * trained[1])).sqrt()
        return rel

    def _trained_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of the training images, None before training: a Python constant of the model, so that fx,
        ONNX and ``torch.export`` graphs take no decision on a tensor's value. Read from the buffer (the real
        tensor, also while fx traces), except while ``torch.export``/``compile`` capture a graph, whose buffers hold
        no data: there the value read at the last eager call or ``load_state_dict``."""
        if not torch.compiler.is_compiling():
            h, w = (int(v) for v in self._buffers["train_canvas"].tolist())
            self._canvas_seen = (h, w) if h * w > 0 else None
        return self._canvas_seen

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if not self.train_canvas.is_meta:
            self._trained_size()

    def _out_size(self) -> tuple[int, int] | None:
        return self._trained_size() if self.canvas == "train" else None

    def canonicalise(
        self, x: torch.Tensor, log2_scale: torch.Tensor | None = None, centre: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` resampled so that each object has the canonical size (``log2_scale`` and ``centre``: else
        estimated; ``centre`` is ignored when the wrapper does not localise)."""
        if log2_scale is None:
            log2_scale, centre = self.locate(x)
        return self._zoom(x, _exp2(log2_scale + self.tolerance), self._out_size(), centre)

    def _zoom(
        self, x: torch.Tensor, span: torch.Tensor, size: tuple[int, int] | None, centre: torch.Tensor | None
    ) -> torch.Tensor:
        if centre is not None and self.localise:
            # an enlarged window stays inside the image; a shrunk one keeps the whole image in view
            size_out = image_size(x) if size is None else image_size(x).new_tensor(size)
            room = (1.0 - window_extent(span.float(), image_size(x), size_out)).abs()
            centre = torch.maximum(torch.minimum(centre.float(), room), -room)
        else:
            centre = None
        return zoom(x, span, size, centre=centre, padding=self.fill)

    # --------------------------------------------------------------------------------------------- training
    def _training_input(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's training view of ``x``; also sets the estimator's loss (see the module docstring)."""
        b, dev = x.shape[0], x.device
        if not _tracing():  # a traced training graph records no canvas (its sizes are not numbers then)
            with torch.no_grad():
                self.train_canvas.copy_(torch.tensor(x.shape[-2:], dtype=torch.long))
        self._aux, centre = self._estimator_step(x)
        f = _uniform(b, *self.detail_range, dev)
        f = torch.where(torch.rand(b).to(dev) < self.sharp_p, torch.zeros_like(f), f)
        shrunk = zoom(x, _exp2(-f), padding=self.fill)
        if centre is not None:  # the shrink about the image centre moves the object's centre by its factor
            centre = (centre * _exp2(f).view(-1, 1)).detach()  # detached also in a traced graph (no no_grad there)
        if self.trunk_view == "estimated":
            with torch.no_grad():
                e, centre = self.locate(shrunk)
            e, centre = e.detach(), (centre.detach() if centre is not None else None)
            f = e
        # the object finally lands at 2**U(-2 tolerance, 0) of the (estimated) training size, zoomed about the
        # estimated object centre as at test time
        return self._zoom(shrunk, _exp2(f + _uniform(b, 0.0, 2.0 * self.tolerance, dev)), None, centre)

    def estimator_loss(self, x: torch.Tensor) -> torch.Tensor:
        """The estimator's weighted loss on training images ``x``: each zoomed by a known random factor (and, when
        localising, about a random point), a random share blurred; the factor's log2 is the label."""
        return self._estimator_step(x)[0]

    def _estimator_step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`estimator_loss` and, when localising, each object's centre in ``x`` (normalised ``x, y``) read
        from the same pass: the view's attention centroid mapped back through the view's known zoom and shift (for a
        view pasted over its own image, where that image's full view located the object: the view then shows the
        object twice, and its centroid may be on either)."""
        b, dev = x.shape[0], x.device
        g = _uniform(b, *self.estimator_range, dev)
        span = _exp2(-g)
        shift = extent = None
        if self.localise:  # objects anywhere: a random window position that keeps the image in view / the window in it
            size_in = image_size(x)
            extent = window_extent(span, size_in, size_in.new_tensor([self.estimator.view_size] * 2))
            room = (1.0 - extent).abs()
            shift = (2 * _uniform(2 * b, 0.0, 1.0, dev).view(-1, 2) - 1) * room
        view, pasted = self._estimator_view(self._blur(x), span, shift)
        est_logits, c_view = self.estimator.logits_and_centre(view)
        loss = self.estimator.loss(est_logits, g) * self.estimator_weight
        if shift is None or extent is None:
            return loss, None
        centre = shift + c_view.to(shift.dtype) * extent
        if pasted is not None:
            centre = torch.where(pasted[0].view(-1, 1), pasted[1].to(centre.dtype), centre)
        return loss, centre

    def _estimator_view(
        self, x: torch.Tensor, span: torch.Tensor, shift: torch.Tensor | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """The estimator's training views of ``x`` zoomed by ``span`` about ``shift`` (None: the centre), and which
        views were pasted (``[B]`` bool) with the object centres located for them (``[B, 2]``), or None.

        With ``fill="auto"``, a textured image shrunk by at most :data:`OWN_SURROUND` is pasted over its own full-size
        view, centred on its object (the estimator's detached estimate), so that what surrounds the shrunk scene is the
        scene's own background at its own scale: no mirrored copies, no fill whose extent is the label (see the module
        docstring)."""
        est = self.estimator
        view = est.view(x, span, centre=shift, padding=self.fill)
        if self.fill != "auto":
            return view, None
        paste = (span > 1) & (span <= OWN_SURROUND) & ~flat_edge(x)
        if not _tracing() and not bool(paste.any()):
            return view, None  # e.g. objects alone on a plain canvas: their edge colour is their background already
        with torch.no_grad():
            mode = est.training
            est.train(False)  # running statistics: the look that inference takes, and no update of them
            centre = est.estimate(x, padding=self.fill)[1].detach()
            est.train(mode)
        v = est.view_size
        extent = window_extent(span, image_size(x), image_size(x).new_tensor([v, v]))
        room = (1.0 - extent).abs()
        # the shrunk image covers the view's [-1/extent, 1/extent] about -c/extent: that window centred on the object
        c = torch.maximum(torch.minimum(-centre * extent, room), -room)
        shrunk = est.view(x, span, centre=c, padding="zeros")
        cover = est.view(torch.ones_like(x[:, :1]), span, centre=c, padding="zeros")
        pasted = shrunk + (1.0 - cover) * est.view(x)
        return torch.where(paste.view(-1, 1, 1, 1), pasted, view), (paste, centre)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the detail of a ``2**U(detail_range)`` down-and-up resampling in a random ``1 - sharp_p`` of the
        images (one factor per batch): blur says how an image was made (upsampled from fewer pixels), not how large
        its object is, and the estimator must not read it as size."""
        if _tracing():  # an augmentation with Python decisions on sizes: not part of a recorded graph
            return x
        lo, hi = self.detail_range
        f = float(_uniform(1, lo, hi, torch.device("cpu")))
        keep = torch.rand(x.shape[0]).to(x.device) < self.sharp_p
        h, w = x.shape[-2:]
        small = (max(1, round(h * 2**f)), max(1, round(w * 2**f)))
        if small == (h, w):
            return x
        down = F.interpolate(x, size=small, mode="bilinear", align_corners=False, antialias=True)
        up = F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False)
        return torch.where(keep.view(-1, 1, 1, 1), x, up)

    # --------------------------------------------------------------------------------------------- forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's unpooled features ``[B, C, H, W]`` of the canonicalised images (training: of the training
        view, see the module docstring)."""
        if self.training:  # the estimator's loss rides on the features (see ScaleWrapper)
            return self._attach_auxiliary(self.trunk.forward_features(self._training_input(x)))
        e, c = self.locate(x)
        if not self.search:
            return self.trunk.forward_features(self.canonicalise(x, e, c))
        b = x.shape[0]
        views = torch.cat([self.canonicalise(x, e + d, c) for d in (0.0, -self.search, self.search)])
        feats = self.trunk.forward_features(views)
        conf = self.trunk.forward_head(feats).float().softmax(-1).amax(-1).view(3, -1)
        best = conf.argmax(0)  # [B]
        return feats.unflatten(0, (3, -1))[best, torch.arange(b, device=x.device)]

    def forward_intermediates(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """The trunk's ``forward_intermediates`` on the canonicalised images (timm's feature-extraction API)."""
        return self.trunk.forward_intermediates(self.canonicalise(x), *args, **kwargs)

    def extra_repr(self) -> str:
        lo, hi = self.estimator_range
        return (f"canvas={self.canvas!r}, tolerance={self.tolerance}, estimator_range=({lo}, {hi}), "
                f"search={self.search}, target={math.pow(2, -self.tolerance):.3f}, fill={self.fill!r}, "
                f"localise={self.localise}, refine={self.refine}")  # fmt: skip

"""Aggregate, vote, paint: the refiner's label arithmetic (METRICS.md 8.5), in plain torch.

These are the reference twins of the aggregate and vote kernels and run on any device.
- aggregate: masklets of one frame -> one masklet id per pixel (-1 where none), painted in a
  paint order (later wins: area-descending order lets smaller masklets win, as SSA does), or by
  the highest positive logit (SAM2's non-overlap rule).
- vote: per masklet, the histogram of the *unmodified* base labels S over the masklet's own
  pixels (its full mask, not only where it won the paint); c_k = argmax, ties to the lowest
  class id (torch.argmax returns the first maximum).
- paint: R = c[id] where a masklet won, S elsewhere.
`aggregate` and `vote_histogram` are written the straightforward way (a paint loop, nonzero and
bincount: host syncs on a GPU) for the reference pipeline; `aggregate_ranked` and `vote_counts`
compute the same without a host sync (a max over ranks, a scatter-add), as the kernels' twins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sam2vss.data import DataError

# A masklet-id map (refine --save-masklets) is a 16-bit PNG holding index + 1, 0 = no masklet.
MAX_MASKLET_IDS = 65535

_LERPS: dict[tuple, tuple[torch.Tensor, ...]] = {}


def _lerp(out_size: int, in_size: int, device) -> tuple[torch.Tensor, ...]:
    """Source indices and weights of F.interpolate's align_corners=False grid, in float32 ops,
    built on `device` (no host-to-device copy) and cached per sizes and device."""
    key = (out_size, in_size, str(device))
    if key not in _LERPS:
        f32 = {"dtype": torch.float32, "device": device}
        scale = torch.full((), in_size, **f32) / torch.full((), out_size, **f32)
        src = (scale * (torch.arange(out_size, **f32) + 0.5) - 0.5).clamp(min=0)
        i0 = src.long()
        i1 = i0 + (i0 < in_size - 1).long()
        l1 = src - i0.float()
        _LERPS[key] = (i0, i1, 1.0 - l1, l1)
    return _LERPS[key]


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) float32 -> (N, H, W): bilinear, align_corners=False, with the evaluation order
    of kernels/aggregate.cuh (horizontal then vertical) so the kernels match it bit for bit. It
    equals F.interpolate up to float rounding (~1e-5)."""
    y0, y1, hy0, hy1 = _lerp(size[0], logits.shape[1], logits.device)
    x0, x1, wx0, wx1 = _lerp(size[1], logits.shape[2], logits.device)
    r0, r1 = logits[:, y0], logits[:, y1]  # (N, H, w)
    t0 = wx0 * r0[:, :, x0] + wx1 * r0[:, :, x1]
    t1 = wx0 * r1[:, :, x0] + wx1 * r1[:, :, x1]
    return hy0[:, None] * t0 + hy1[:, None] * t1


def paint_order(areas: torch.Tensor, order: str) -> torch.Tensor:
    """Masklet indices in painting order (painted later wins). `areas`: (N,) keyframe areas."""
    n = areas.numel()
    if order == "amg":
        return torch.arange(n, device=areas.device)
    # Area descending, ties kept in AMG order (stable), so the smallest masklet is painted last.
    return torch.sort(areas, descending=True, stable=True).indices


def aggregate(masks: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool masks and a paint order (N,) -> (H, W) int32 ids, -1 where no masklet."""
    h, w = masks.shape[1:]
    ids = torch.full((h, w), -1, dtype=torch.int32, device=masks.device)
    for k in order.tolist():
        ids[masks[k]] = k
    return ids


def aggregate_ranked(masks: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """`aggregate` without a host sync: the covering masklet of the highest paint rank wins
    (rank (N,) distinct ints: position in the paint order), -1 where none covers."""
    if masks.shape[0] == 0:
        return torch.full(masks.shape[1:], -1, dtype=torch.int32, device=masks.device)
    score = torch.where(masks, rank.to(torch.int32)[:, None, None], -1)
    best, ids = score.max(dim=0)
    return torch.where(best >= 0, ids.int(), -1)


def aggregate_logits(logits: torch.Tensor) -> torch.Tensor:
    """(N, H, W) logits -> (H, W) int32 id of the highest logit where it is > 0, else -1."""
    if logits.shape[0] == 0:
        return torch.full(logits.shape[1:], -1, dtype=torch.int32, device=logits.device)
    best, ids = logits.max(dim=0)
    return torch.where(best > 0, ids.int(), -1)


def vote_histogram(masks: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) bool masks and (H, W) base labels -> (N, C) int64 pixel counts per class."""
    n = masks.shape[0]
    k, y, x = masks.nonzero(as_tuple=True)
    flat = k * num_classes + labels[y, x].long()
    return torch.bincount(flat, minlength=n * num_classes).view(n, num_classes)


def vote_counts(masks: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """`vote_histogram` without a host sync (a scatter-add over every pixel); labels >= C cast no
    vote, as in the kernels. (N, C) int64."""
    n = masks.shape[0]
    valid = (labels < num_classes).view(1, -1)
    index = torch.arange(n, device=masks.device)[:, None] * num_classes + labels.view(1, -1).long()
    index = torch.where(valid, index, 0)
    votes = (masks.reshape(n, labels.numel()) & valid).long()
    hist = torch.zeros(n * num_classes, dtype=torch.int64, device=masks.device)
    return hist.scatter_add_(0, index.view(-1), votes.view(-1)).view(n, num_classes)


def id_histogram(ids: torch.Tensor, labels: torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
    """Histogram over a partition (non-overlapping ids, e.g. superpixels): (n, C) int64."""
    keep = ids >= 0
    flat = ids[keep].long() * num_classes + labels[keep].long()
    return torch.bincount(flat, minlength=n * num_classes).view(n, num_classes)


def decide(hist: torch.Tensor) -> torch.Tensor:
    """(N, C) counts -> (N,) majority class, ties to the lowest class id."""
    if hist.numel() == 0:
        return torch.zeros(hist.shape[0], dtype=torch.uint8, device=hist.device)
    return hist.argmax(dim=1).to(torch.uint8)


def paint(ids: torch.Tensor, classes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """R = classes[id] where id >= 0, else the base label (Eq. 1); (H, W) uint8."""
    if classes.numel() == 0:
        return labels.clone()
    won = ids >= 0
    return torch.where(won, classes.to(labels.device)[ids.clamp(min=0).long()], labels)


def paint_rank(areas: torch.Tensor, order: str) -> torch.Tensor:
    """(N,) int32 paint position of each masklet (the highest covering rank wins): the inverse of
    `paint_order`, the form the aggregate kernels take."""
    n = areas.numel()
    rank = torch.empty(n, dtype=torch.int32, device=areas.device)
    rank[paint_order(areas, order)] = torch.arange(n, dtype=torch.int32, device=areas.device)
    return rank


class ReferenceOps:
    """The vote ops written the straightforward way (paint loop, nonzero, bincount: host syncs on
    a GPU), for the reference pipeline; kernels.KernelOps has the same three methods."""

    backend = "reference"

    def aggregate(
        self, logits: torch.Tensor, rank: torch.Tensor, labels: torch.Tensor, num_classes: int, by_logit: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, h, w) logits -> ((H, W) int32 ids, -1 for none; (N, C) int64 votes of the labels
        over each masklet's mask). Logits at another size than the labels are resized once,
        bilinearly (the label-resolution rule, reference.py)."""
        if logits.shape[-2:] != labels.shape:
            logits = F.interpolate(logits[:, None], labels.shape, mode="bilinear", align_corners=False)[:, 0]
        masks = logits > 0
        ids = aggregate_logits(logits) if by_logit else aggregate(masks, torch.argsort(rank))
        return ids, vote_histogram(masks, labels, num_classes)

    def decide(self, hist: torch.Tensor) -> torch.Tensor:
        return decide(hist)

    def paint(self, ids: torch.Tensor, classes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return paint(ids, classes, labels)


class Votes:
    """One window's votes, with any vote ops (METRICS.md 8.5). Masklet scope: each masklet's
    histogram sums over the window, one decision, every frame painted at the end; frame scope:
    decided and painted frame by frame. Paint order: `rank` (paint_rank); ties: decide's lowest
    class. `covered` counts label pixels won by a masklet, on the ops' device (no host sync).
    `keep_ids`: keep each frame's paint winners for `masklet_ids` (refine --save-masklets); the
    masklet scope keeps them anyway, to paint at the end."""

    def __init__(
        self,
        ops,
        rank: torch.Tensor,
        num_classes: int,
        scope: str,
        by_logit: bool = False,
        keep_ids: bool = False,
    ):
        self.ops, self.rank, self.num_classes = ops, rank, num_classes
        self.scope, self.by_logit, self.keep_ids = scope, by_logit, keep_ids
        self.hists = torch.zeros((rank.numel(), num_classes), dtype=torch.int64, device=rank.device)
        self.covered = torch.zeros((), dtype=torch.int64, device=rank.device)
        self.ids: list[torch.Tensor] = []  # per frame (H, W) int32 paint winner, -1: none
        self.labels: list[torch.Tensor] = []
        self.out: list[torch.Tensor] = []

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """One frame's (N, h, w) masklet logits and its (H, W) uint8 base labels. N = 0 (a frame
        before a re-detection found a window's first masklets) paints nothing."""
        if logits.shape[0] == 0:  # a shape: no sync
            none = torch.full(labels.shape, -1, dtype=torch.int32, device=labels.device)
            if self.scope == "frame":
                self.out.append(labels.clone())
            if self.scope == "masklet" or self.keep_ids:
                self.ids.append(none)
            if self.scope == "masklet":
                self.labels.append(labels)
            return
        ids, hist = self.ops.aggregate(logits, self.rank, labels, self.num_classes, self.by_logit)
        self.add_ids(ids, hist, labels)

    def grow(self, rank: torch.Tensor) -> None:
        """More masklets vote from this frame on (a re-detection, engine.py; a masklet is in the
        list from its detection frame, so every frame's logits cover all of it): `rank` (N,)
        ranks all of them (paint_rank); the new ones' histograms start at 0."""
        new = rank.numel() - self.rank.numel()
        self.rank = rank
        zeros = torch.zeros((new, self.num_classes), dtype=torch.int64, device=self.hists.device)
        self.hists = torch.cat([self.hists, zeros])

    def add_ids(self, ids: torch.Tensor, hist: torch.Tensor, labels: torch.Tensor) -> None:
        """One frame's (H, W) int32 masklet ids (-1: none) and their (N, C) votes."""
        if self.keep_ids and hist.shape[0] > MAX_MASKLET_IDS:  # N is the shape: no host sync
            raise DataError(
                f"--save-masklets: a frame has {hist.shape[0]} masklets, more than a 16-bit masklet-id"
                f" PNG holds ({MAX_MASKLET_IDS}); refine without --save-masklets, or with fewer"
                " masklets (--max-masklets, a larger --superpixel-size)"
            )
        self.covered += (ids >= 0).sum()
        if self.scope == "frame":
            self.out.append(self.ops.paint(ids, self.ops.decide(hist), labels))
            if self.keep_ids:
                self.ids.append(ids)
        else:
            self.ids.append(ids)
            self.labels.append(labels)
            self.hists += hist

    def painted(self) -> torch.Tensor:
        """The window's refined (T, H, W) uint8 labels."""
        if self.scope == "masklet":
            classes = self.ops.decide(self.hists)
            self.out = [self.ops.paint(i, classes, s) for i, s in zip(self.ids, self.labels, strict=True)]
        return torch.stack(self.out)

    def masklet_ids(self) -> torch.Tensor:
        """The window's (T, H, W) uint16 paint winners + 1 (0: no masklet), on the ops' device:
        three launches per window (stack, add, narrow), none per frame."""
        if not self.keep_ids:
            raise ValueError("Votes.masklet_ids: built without keep_ids=True, so no ids were kept")
        return torch.stack(self.ids).to(torch.int32).add_(1).to(torch.uint16)

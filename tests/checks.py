"""How tests compare results (STYLE.md 5): one module, so that a tolerance is a named argument
or a constant here, never a number sprinkled in a test. Labels, votes, ids, counts: exact, NaN
equal to NaN at the same place. Floats: error against a high-precision reference at most k times
the error of a plain low-precision torch run (flash-attention's rule); where a test compares with
another implementation's float output, a named absolute bound. Failures say where and by how much.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from sam2vss.data import read_label_png

# Fast pipeline vs reference (random weights, image size 256): batched float reductions may flip
# a label on a pixel in a thousand at most; a real bug (a wrong vote, a shifted window) costs more.
AGREEMENT = 0.999
# eval (torch, streaming) vs its numpy twin and the oracle: the same integer counts, summed and
# divided in another order; 1e-9 is far above float64 rounding, far below any real change.
METRIC_ATOL = 1e-9
# The batched detector vs SAM2's automatic mask generator: the same float32 ops on other batch
# shapes, so predicted IoU and stability round differently in the last bits.
SAM2_IOU_ATOL = 1e-5
SAM2_STABILITY_ATOL = 1e-6
# vote.upsample_logits (the kernels' evaluation order) vs F.interpolate (the reference's): float
# rounding, measured below 2e-7 on the tests' logits; with paint order "logit" two masklets whose
# logits are that close may swap a pixel's winner (the labels agree: both vote the same class).
UPSAMPLE_ATOL = 1e-5


def _tensor(x) -> torch.Tensor:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def assert_equal(got, want, what: str) -> None:
    """Same dtype, shape and values (tensors or arrays); NaN equals NaN at the same place. A
    failure names how many entries differ and the first one, with both values."""
    g, w = _tensor(got), _tensor(want)
    assert (g.dtype, g.shape) == (w.dtype, w.shape), (
        f"{what}: got {g.dtype} {tuple(g.shape)}, expected {w.dtype} {tuple(w.shape)}"
    )
    same = g == w
    if g.is_floating_point() or g.is_complex():
        same |= g.isnan() & w.isnan()
    if not same.all():
        bad = (~same).nonzero()
        first = tuple(bad[0].tolist())
        raise AssertionError(
            f"{what}: {len(bad)} of {g.numel()} entries differ; first at {first}:"
            f" got {g[first].item()}, expected {w[first].item()}"
        )


def assert_max_abs(got: torch.Tensor, want: torch.Tensor, atol: float, what: str) -> float:
    """Same dtype and shape, max |got - want| <= atol; prints and returns that error. For float
    outputs compared with another implementation's (SAM2's), where no low-precision run exists."""
    assert (got.dtype, got.shape) == (want.dtype, want.shape), (
        f"{what}: got {got.dtype} {tuple(got.shape)}, expected {want.dtype} {tuple(want.shape)}"
    )
    diff = (got.double() - want.double()).abs()
    err = float(diff.max()) if diff.numel() else 0.0
    print(f"{what}: max |diff| {err:.3e} (bound {atol:.1e})")
    if not err <= atol:
        where = tuple(int(i) for i in np.unravel_index(int(diff.argmax()), diff.shape))
        raise AssertionError(
            f"{what}: max |diff| {err:.3e} > {atol:.1e} at {where} (got {got[where].item()},"
            f" expected {want[where].item()}); {int((diff > atol).sum())} of {diff.numel()} entries over"
        )
    return err


def assert_error_ratio(got: torch.Tensor, low: torch.Tensor, ref: torch.Tensor, k: float, what: str) -> None:
    """max |got - ref| <= k * max |low - ref|: `ref` in high precision (fp64 / fp32), `low` the
    plain torch run at got's precision. The bound scales with what the precision itself costs,
    so it needs no absolute number. Prints both errors."""
    err = float((got.double() - ref.double()).abs().max())
    base = float((low.double() - ref.double()).abs().max())
    print(f"{what}: error {err:.3e}, plain low-precision run {base:.3e} (bound {k} x)")
    assert err <= k * base, f"{what}: error {err:.3e} > {k} x the low-precision run's {base:.3e}"


def label_agreement(got_dir: Path, want_dir: Path, what: str) -> tuple[float, int]:
    """Share of equal pixels over every label PNG under want_dir (matched by relative path in
    got_dir), and the number of pixels; printed."""
    same = total = 0
    for p in sorted(want_dir.rglob("*.png")):
        a, b = read_label_png(got_dir / p.relative_to(want_dir)), read_label_png(p)
        same += int((a == b).sum())
        total += a.size
    assert total, f"{what}: no label PNG under {want_dir}"
    print(f"{what}: label agreement {100 * same / total:.4f}% of {total} pixels")
    return same / total, total


def assert_agreement(share: float, at_least: float, what: str) -> None:
    assert share >= at_least, f"{what}: label agreement {100 * share:.4f}% < {100 * at_least:.4f}%"


def _same(got: np.ndarray, want: np.ndarray, atol: float) -> np.ndarray:
    """Element-wise equal within atol, NaN equal to NaN."""
    same = got == want if atol == 0 else np.abs(got.astype(np.float64) - want) <= atol
    if got.dtype.kind in "fc":
        same |= np.isnan(got) & np.isnan(want)
    return same


def _flat(m) -> dict:
    return dataclasses.asdict(m) if dataclasses.is_dataclass(m) else dict(m)


def assert_metrics_equal(got, want, what: str, keys=None, atol: float = 0.0) -> None:
    """Metrics (dicts, dataclasses, or scalars / arrays under each key) equal, NaN equal to NaN;
    exact unless `atol` is given. `keys`: the ones to compare (default: all of want's)."""
    got, want = _flat(got), _flat(want)
    bad = []
    for k in keys or want:
        a, b = np.asarray(got[k]), np.asarray(want[k])
        if a.shape != b.shape or not _same(a, b, atol).all():
            bad.append(f"{k}: got {got[k]!r}, want {want[k]!r}")
    assert not bad, f"{what}: " + "; ".join(bad)


def assert_ids_explain_labels(ids, refined, base, scope: str, what: str) -> None:
    """One window's masklet ids ((T, H, W): index + 1 of each pixel's paint winner, 0 = none)
    against its refined and base (T, H, W) labels: the base label wherever no masklet won, and
    one class per masklet region, over the window with vote scope masklet, per frame with frame."""
    ids, refined, base = (_tensor(x).long() for x in (ids, refined, base))
    none = ids == 0
    assert_equal(refined[none], base[none], f"{what}: refined labels where no masklet won")
    frame = torch.arange(ids.shape[0])[:, None, None].expand_as(ids)
    group = (ids if scope == "masklet" else frame * (int(ids.max()) + 1) + ids)[~none]
    n = int(group.max()) + 1 if group.numel() else 0
    lowest = torch.full((n,), 1 << 30).scatter_reduce(0, group, refined[~none], "amin")
    highest = torch.full((n,), -1).scatter_reduce(0, group, refined[~none], "amax")
    used = highest >= 0
    assert_equal(lowest[used], highest[used], f"{what}: lowest vs highest refined label per masklet region")

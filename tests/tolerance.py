"""The one float tolerance of the backend and kernel tests: a bound derived from the reference, not guessed.

The fast code computes in float32; float32 rounding alone makes it differ from exact arithmetic by an amount
that depends on the problem (sizes, conditioning, steps run). That amount is measured rather than assumed:
the same computation runs through the numpy reference in float32 and in float64, and the float32 reference's
error against float64 is what float32 rounding costs here. The code under test may be at most ``mult`` times
that error away from float64 (it rounds in a different order, so somewhat more is fair; a real bug, a wrong
mask, row, sign or sample, is orders of magnitude more), plus a small floor for results the float32 reference
happens to get (almost) exactly right.
"""
from __future__ import annotations

import numpy as np
import pytest


def assert_within_reference_error(name, got, ref32, ref64, mult=4.0, floor=1e-6, relative_floor=False):
    """Fail unless max|got - ref64| <= mult * max|ref32 - ref64| + floor (times max(1, max|ref64|) where
    ``relative_floor``: values of scale 10 round 10x coarser). ``got`` must be finite and shaped like ref64."""
    got, ref32, ref64 = (np.asarray(a, np.float64) for a in (got, ref32, ref64))
    assert got.shape == ref64.shape, f"{name}: shape {got.shape} != {ref64.shape}"
    assert np.all(np.isfinite(got)), f"{name}: not finite"
    err = np.abs(got - ref64).max(initial=0.0)
    err32 = np.abs(ref32 - ref64).max(initial=0.0)
    scale = max(1.0, np.abs(ref64).max(initial=0.0)) if relative_floor else 1.0
    bound = mult * err32 + floor * scale
    if not err <= bound:
        bad = np.argwhere(np.abs(got - ref64) > bound)[:5]
        rows = [(tuple(int(j) for j in i), got[tuple(i)], ref64[tuple(i)]) for i in bad]
        pytest.fail(f"{name}: error {err:.3g} vs float64 > {mult} x the float32 reference's error {err32:.3g} + "
                    f"floor (bound {bound:.3g}); first mismatches (index, got, float64 ref): {rows}")

"""Output precisions: float32, int8/uint8 with fixed calibration ranges, and packed binary."""

from __future__ import annotations

import numpy as np

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def calibration_ranges(embeddings: np.ndarray) -> np.ndarray:
    """Per-dimension [min; max] of a calibration set: float32 [2, D]."""
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError("calibration needs a 2-D array of at least 2 embeddings (ideally thousands)")
    return np.stack([embeddings.min(axis=0), embeddings.max(axis=0)]).astype(np.float32)


def quantize(embeddings: np.ndarray, precision: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """float32 [N, D] → the precision's dtype. int8/uint8: 256 buckets per dimension over `ranges`
    ([2, D] min/max, required: never derived from the batch); binary: packbits(x > 0), [N, ceil(D/8)]."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; allowed: {PRECISIONS}")
    if precision == "float32":
        return embeddings.astype(np.float32, copy=False)
    if precision.endswith("binary"):
        bits = np.packbits(embeddings > 0, axis=-1)
        return bits if precision == "ubinary" else (bits.astype(np.int16) - 128).astype(np.int8)
    if ranges is None:
        raise ValueError(
            f"precision={precision!r} needs calibration ranges: pass int8_ranges=<[2, D] min/max array>, or "
            "call Embedder.calibrate(texts) once on representative texts (the ranges are then stored)"
        )
    ranges = np.asarray(ranges, dtype=np.float32)
    if ranges.shape != (2, embeddings.shape[-1]):
        raise ValueError(
            f"int8 ranges have shape {ranges.shape}, expected (2, {embeddings.shape[-1]}) for these "
            "embeddings; calibrate with the same `dimensions`"
        )
    steps = (ranges[1] - ranges[0]) / 255
    steps = np.where(steps == 0, 1, steps)
    buckets = np.clip(np.floor((embeddings - ranges[0]) / steps), 0, 255)
    return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)

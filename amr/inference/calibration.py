"""Score calibration: a small scikit-learn model, fit on a run's validation candidates, that turns a
decoder's windows into P(IoU >= 0.7 with a ground-truth window) and ranks them by it.

Features of a candidate window (``FEATURES``): the decoder's score, the DETR score of the DETR
window that matches it best (times their IoU; DETR's own windows: their score), its rank, its
length (log seconds and fraction of the recording), and the per-frame saliency inside it (mean,
peak, mean inside minus mean outside).

``logistic``: logistic regression on the standardised features (re-ranks). ``isotonic``: a
monotone map of the decoder's score alone (keeps each query's ranking, so the official metrics do
not move; the scores become probabilities, comparable across systems, e.g. for fusion).

A calibrator is stored as JSON (numbers only, never a pickle), beside the checkpoint it was fit for
(``checkpoints/calibrator.json``), with the decoder it was fit on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from amr.errors import InputError
from amr.inference.decoders import DecodeConfig, Rows, to_frames
from amr.io import write_json
from amr.metrics.iou import window_iou

FEATURES = (
    "score",
    "detr_score",
    "rank",
    "log_length",
    "length_fraction",
    "saliency_mean",
    "saliency_peak",
    "saliency_contrast",
)
METHODS = ("logistic", "isotonic")
TARGET_IOU = 0.7
FILE_NAME = "calibrator.json"


def features(rows: Rows, detr_rows: Rows, curve: np.ndarray, duration: float) -> np.ndarray:
    """One query's decoded rows (N, 3) -> (N, len(FEATURES)) features."""
    w = np.asarray(rows, dtype=float).reshape(-1, 3)
    detr = np.asarray(detr_rows, dtype=float).reshape(-1, 3)
    n = len(w)
    out = np.zeros((n, len(FEATURES)))
    if n == 0:
        return out
    out[:, 0] = w[:, 2]
    if len(detr):
        out[:, 1] = (window_iou(w, detr) * detr[None, :, 2]).max(1)
    out[:, 2] = np.arange(n)
    length = np.maximum(w[:, 1] - w[:, 0], 0.0)
    out[:, 3] = np.log1p(length)
    out[:, 4] = length / max(duration, 1e-9)
    curve = np.asarray(curve, dtype=float)
    if len(curve):
        cum = np.concatenate([[0.0], np.cumsum(curve)])
        spans = to_frames(w, len(curve), duration)
        inside = (cum[spans[:, 1]] - cum[spans[:, 0]]) / (spans[:, 1] - spans[:, 0])
        rest = len(curve) - (spans[:, 1] - spans[:, 0])
        outside = np.where(rest > 0, (cum[-1] - cum[spans[:, 1]] + cum[spans[:, 0]]) / np.maximum(rest, 1), inside)
        out[:, 5] = inside
        out[:, 6] = [curve[a:b].max() for a, b in spans]
        out[:, 7] = inside - outside
    return out


def hits(rows: Rows, gt_windows: Sequence[Sequence[float]], iou: float = TARGET_IOU) -> np.ndarray:
    """(N,) whether each row overlaps some ground-truth window by ``iou`` or more."""
    w = np.asarray(rows, dtype=float).reshape(-1, 3)[:, :2]
    gt = np.asarray(gt_windows, dtype=float).reshape(-1, 2)
    if len(w) == 0 or len(gt) == 0:
        return np.zeros(len(w), dtype=bool)
    return window_iou(w, gt).max(1) >= iou


def _numbers(params: dict[str, Any], key: str, size: int | None = None) -> np.ndarray:
    values = np.asarray(params[key], dtype=float)
    if values.ndim != 1 or (size is not None and len(values) != size) or not np.isfinite(values).all():
        want = f"{size} finite numbers" if size is not None else "a list of finite numbers"
        raise ValueError(f"params.{key} must be {want}")
    return values


def _check_params(method: str, params: dict[str, Any]) -> None:
    if method == "isotonic":
        x, y = _numbers(params, "x"), _numbers(params, "y")
        if len(x) < 1 or len(x) != len(y) or (np.diff(x) < 0).any() or (np.diff(y) < 0).any():
            raise ValueError("params.x and params.y must be one non-decreasing table of equal lengths")
        if y.min() < 0 or y.max() > 1:
            raise ValueError("params.y must be probabilities in [0, 1]")
        return
    n = len(FEATURES)
    _numbers(params, "mean", n)
    _numbers(params, "coef", n)
    _numbers(params, "intercept", 1)
    if (_numbers(params, "scale", n) <= 0).any():
        raise ValueError("params.scale must be positive")


@dataclass
class Calibrator:
    method: str
    decode: dict[str, Any]  # the decoder whose windows it scores
    params: dict[str, list[float]]
    fit_on: dict[str, Any] = field(default_factory=dict)  # candidates, positives, source

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(N, len(FEATURES)) -> (N,) P(IoU >= target, 0.7 by default)."""
        if len(x) == 0:
            return np.zeros(0)
        if self.method == "isotonic":
            return np.interp(x[:, 0], self.params["x"], self.params["y"])
        z = (x - np.asarray(self.params["mean"])) / np.asarray(self.params["scale"])
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.params["coef"]) + self.params["intercept"][0])))

    def rescore(self, rows: Rows, detr_rows: Rows, curve: np.ndarray, duration: float) -> Rows:
        """One query's rows scored by the calibrator and ranked by it (ties keep the decoder's order)."""
        p = self.probabilities(features(rows, detr_rows, curve, duration))
        order = np.argsort(-p, kind="stable")
        return [[float(rows[i][0]), float(rows[i][1]), round(float(p[i]), 4)] for i in order]

    def save(self, path: str | Path) -> None:
        write_json(path, {"features": list(FEATURES), **asdict(self)})

    @classmethod
    def load(cls, path: str | Path) -> Calibrator:
        """Refuses, naming the file, a calibrator of other features or of an unknown method, and
        parameters that are not finite numbers of the right shapes (an isotonic table: increasing
        x, non-decreasing y in [0, 1])."""
        try:
            doc = json.loads(Path(path).read_text())
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            if doc.get("features") != list(FEATURES) or doc.get("method") not in METHODS:
                raise ValueError(f"expects method in {list(METHODS)} and features {list(FEATURES)}")
            cal = cls(doc["method"], doc["decode"], doc["params"], doc.get("fit_on", {}))
            DecodeConfig(**cal.decode).check()
            _check_params(cal.method, cal.params)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise InputError(f"not a usable calibrator ({e})", path) from None
        return cal

    def decoder(self) -> DecodeConfig:
        return DecodeConfig(**self.decode)


def fit(
    x: np.ndarray, y: np.ndarray, method: str, decode: DecodeConfig, target_iou: float = TARGET_IOU, seed: int = 0
) -> Calibrator:
    """A calibrator of ``method`` fit on candidates' features (N, F) and hits (N,) at ``target_iou``."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {list(METHODS)}, got {method!r}")
    y = np.asarray(y, dtype=int)
    if len(np.unique(y)) < 2:
        raise ValueError(f"the validation candidates are all {'hits' if y.any() else 'misses'}: nothing to calibrate")
    info = {"candidates": int(len(y)), "positives": int(y.sum()), "target_iou": target_iou}
    cfg = asdict(decode)
    if method == "isotonic":
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x[:, 0], y)
        return Calibrator(method, cfg, {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}, info)
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    lr = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit((x - mean) / scale, y)
    params = {
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "coef": lr.coef_[0].tolist(),
        "intercept": lr.intercept_.tolist(),
    }
    return Calibrator(method, cfg, params, info)


def beside(ckpt: str | Path) -> Path:
    """Where the calibrator of a checkpoint lives."""
    return Path(ckpt).parent / FILE_NAME

"""A finished run's checkpoint, decoded again: other decoders, settings chosen on validation, score
calibrators. The network runs once per split; every decoding after that reads its outputs.

The result is a folder that reads as a run (``amr report``, ``amr compare``, ``amr ensemble``):
``run.json`` (the source run's, with the decoding among its overrides), ``.hydra/config.yaml``
(the source's, with the ``decode`` node replaced), predictions and metrics of validation and test,
and ``rescore.json`` (what was chosen, from which validation figures).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from amr.checkpoints import load_model
from amr.data.dataset import MomentDataset, SplitData
from amr.data.features import Encoder, Layout
from amr.errors import InputError
from amr.inference.batch import Candidates
from amr.inference.calibration import TARGET_IOU, Calibrator, features, fit, hits
from amr.inference.decoders import DECODERS, DecodeConfig
from amr.inference.predictor import collect
from amr.io import check_output
from amr.metrics.predictions import evaluate_lines
from amr.metrics.retrieval import DEFAULT_BUCKET_EDGES, MONITOR, SHORT_NAMES, length_buckets
from amr.results.run_folder import RESCORE_RECORD, RunFolder, derived_overrides, write_derived_run
from amr.runtime import progress

DATA_KEYS = ("name", "feat_dir", "max_a_l", "max_windows", "clip_len", "dtype", "overlong")


@dataclass
class Source:
    """The run a rescoring starts from (followed back through earlier rescorings)."""

    run: Path
    info: dict[str, Any]  # its run.json
    config: dict[str, Any]  # its .hydra/config.yaml, unresolved
    ckpt: Path
    decode: DecodeConfig  # the decoding its predictions were made with

    @classmethod
    def of(cls, run: Path) -> Source:
        folder = RunFolder(run)
        for path in (folder.info_file, folder.config_file):
            if not path.is_file():
                raise InputError(f"not a finished run: no {folder.rel(path)}", run)
        info, config = folder.info(), folder.config()
        ckpt = Path(info.get("checkpoint") or folder.best_ckpt)
        if not ckpt.is_file():
            raise InputError(f"the run's checkpoint {ckpt} is missing", run)
        if not (info.get("annotations") or {}).get("val") or not info["annotations"].get("test"):
            what = f"{folder.rel(folder.info_file)} names no val/test annotations (a run from an older amr?)"
            raise InputError(what, folder.info_file)
        try:
            decode = DecodeConfig(**(config.get("decode") or {}))
            decode.check()
        except (TypeError, ValueError) as e:
            raise InputError(f"the run's decode config is not usable ({e})", folder.config_file) from None
        return cls(run, info, config, ckpt, decode)

    @property
    def encoder(self) -> Encoder:
        """The encoder whose features the run read (MS-CLAP 2023 for runs that predate the setting)."""
        return Encoder.of(self.config.get("features"))

    def split(self, role: str, cache_dir: Path) -> MomentDataset:
        """The run's val or test split, read from where its run.json says its annotations are."""
        ann = Path(self.info["annotations"][role])
        data_cfg = self.config.get("data") or {}
        cfg: dict[str, Any] = {k: data_cfg.get(k) for k in DATA_KEYS}
        if any(v is None or (isinstance(v, str) and "${" in v) for v in cfg.values()):
            raise InputError(f"the run's data config lacks plain values for {list(DATA_KEYS)}", self.run)
        layout = Layout(ann.parent.parent, cfg["name"], cfg["feat_dir"], self.encoder)
        split = ann.name.removeprefix(f"{cfg['name']}_").removesuffix("_release.jsonl")
        data = SplitData.load(layout, split, cache_dir, dtype=cfg["dtype"], overlong=cfg["overlong"], annotations=ann)
        return MomentDataset(
            data, train=False, max_a_l=cfg["max_a_l"], max_windows=cfg["max_windows"], clip_len=cfg["clip_len"]
        )


def output_folders(runs: Sequence[Path], out: Path) -> list[Path]:
    """Where each rescored run goes: one run -> ``out``; several -> ``out/<run folder name>``;
    refused when any exists (a run folder is never overwritten)."""
    targets = [out] if len(runs) == 1 else [out / r.resolve().name for r in runs]
    if len({t.name for t in targets}) != len(targets):
        raise InputError("several runs share a folder name; rescore them one at a time", "--out")
    for t in targets:
        check_output(t, runs)  # never an existing folder, never inside or around an input run
    return targets


def grid(base: DecodeConfig, choices: Mapping[str, Sequence[Any]]) -> list[DecodeConfig]:
    """Every combination of ``choices`` (key -> values) on top of ``base``, each checked."""
    configs = []
    for values in itertools.product(*choices.values()):
        cfg = replace(base, **dict(zip(choices, values, strict=True)))
        try:
            cfg.check()
        except ValueError as e:
            raise InputError(str(e), "--choose") from None
        configs.append(cfg)
    return configs


def metric_key(metric: str) -> str:
    """``R1@0.7`` -> the brief key ``MR-full-R1@0.7``."""
    names = {v: k for k, v in SHORT_NAMES.items()}
    if metric not in names:
        raise InputError(f"unknown metric {metric!r} (one of {', '.join(names)})", "--metric")
    return names[metric]


def choose(
    val: Candidates, gt: Path, configs: Sequence[DecodeConfig], metric: str
) -> tuple[DecodeConfig, list[dict[str, Any]]]:
    """The configuration with the best validation ``metric`` (the first of equals) and every
    configuration's figure."""
    key = metric_key(metric)
    table = [
        {"decode": asdict(c), metric: evaluate_lines(val.lines(c), gt)["brief"][key]}
        for c in progress(configs, f"choosing on validation {metric}", unit="setting")
    ]
    best = int(np.argmax([row[metric] for row in table]))
    return configs[best], table


def fit_data(
    cands: Candidates, gt: Path, decode: DecodeConfig, target_iou: float = TARGET_IOU
) -> tuple[np.ndarray, np.ndarray]:
    """Features and hits (IoU >= ``target_iou`` with a GT window) of every decoded candidate of a split."""
    from amr.data.annotations import load_annotations

    windows = {q.qid: q.windows or [] for q in load_annotations(gt)}
    xs, ys = [], []
    for line, detr, curve, duration in zip(
        cands.lines(decode), cands.detr_rows, cands.curves, cands.durations, strict=True
    ):
        rows = line["pred_relevant_windows"]
        xs.append(features(rows, detr, curve, duration))
        ys.append(hits(rows, windows[str(line["qid"])], target_iou))
    return np.concatenate(xs), np.concatenate(ys)


def decode_overrides(cfg: DecodeConfig, chosen: Sequence[str] = ()) -> list[str]:
    """``decode=NAME`` and the settings the decoder reads that differ from their defaults; a chosen
    setting reads ``chosen`` (its value differs between runs; the config holds it), so the runs of
    one recipe group as one system."""
    default = DecodeConfig()
    keys = [k for k in DECODERS[cfg.name] if k in chosen or getattr(cfg, k) != getattr(default, k)]
    values = {k: "chosen" if k in chosen else getattr(cfg, k) for k in keys}
    return [f"decode={cfg.name}", *(f"decode.{k}={v}" for k, v in values.items())]


def write_result(
    out: Path,
    src: Source,
    splits: Mapping[str, Candidates],
    decode: DecodeConfig,
    calibrator: Calibrator | None,
    doc: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Decode every split once with the chosen settings and write ``out`` as a run; the metrics."""
    buckets = length_buckets(DEFAULT_BUCKET_EDGES)
    lines = {
        role: c.lines(decode, calibrator) for role, c in progress(splits.items(), "decoding", len(splits), "split")
    }
    results = {role: evaluate_lines(ln, src.info["annotations"][role], buckets) for role, ln in lines.items()}
    extra = decode_overrides(decode, doc.get("chosen", ())) + (
        [f"calibrator={calibrator.method}"] if calibrator else []
    )
    info = dict(src.info, overrides=derived_overrides([src.info], extra), derived_from=[str(src.run.resolve())])
    info["checkpoint"] = str(src.ckpt.resolve())
    folder = write_derived_run(out, info, lines, results, (RESCORE_RECORD, dict(doc, decode=asdict(decode))))
    folder.write_config(dict(src.config, decode=asdict(decode)))
    return results


def rescore(
    run: Path,
    out: Path,
    decode: DecodeConfig | None = None,
    choices: Mapping[str, Sequence[Any]] | None = None,
    metric: str = MONITOR,
    calibrate: str | None = None,
    target_iou: float = TARGET_IOU,
    cache_dir: Path = Path("outputs/.cache/packs"),
) -> dict[str, dict[str, Any]]:
    """Decode ``run``'s checkpoint with ``decode`` (default: the run's), the ``choices`` picked by
    validation ``metric``, then (``calibrate``: a method) a calibrator fit on validation and saved
    as ``out/calibrator.json``; test is decoded once, with what was chosen. Writes ``out`` (and
    nothing else); the metrics."""
    src = Source.of(run)
    configs = grid(decode or src.decode, choices or {})
    metric_key(metric)
    cal_path = RunFolder(out).calibrator  # written under out alone: the source run is never touched
    model = load_model(src.ckpt, src.encoder)
    splits = {
        role: collect(model, src.split(role, cache_dir), desc=f"{run.name}: {role} queries") for role in ("val", "test")
    }
    gt_val = Path(src.info["annotations"]["val"])
    chosen, table = choose(splits["val"], gt_val, configs, metric) if len(configs) > 1 else (configs[0], [])
    doc: dict[str, Any] = {"source": str(run), "metric": metric, "chosen": sorted(choices or {}), "validation": table}
    cal = None
    if calibrate:
        x, y = fit_data(splits["val"], gt_val, chosen, target_iou)
        try:
            cal = fit(x, y, calibrate, chosen, target_iou)
        except ValueError as e:
            raise InputError(str(e), gt_val) from None
        cal.fit_on["source"] = str(run)
        cal.save(cal_path)
        doc["calibrator"] = str(cal_path)
    return write_result(out, src, splits, chosen, cal, doc)

"""The run folder, the project's main on-disk format: the one place that knows its names.

    <run>/
      run.json                  what the run was (experiment, system, overrides, seed, stage, what it
                                started from, its val/test annotation files)
      test_metrics.json         the best checkpoint's official test metrics: the run is finished
      pretrain.json             the pre-training stage it started from (checkpoint, cache key, W&B run)
      .hydra/config.yaml        the composed config (written by Hydra; by ``amr decode`` for its runs)
      train.log                 the job's log: epoch lines and the results table (Hydra's, conf/hydra)
      checkpoints/best.ckpt     the best epoch's weights and config; last.ckpt adds the optimiser and
                                loop state (resuming)
      predictions/              {val,test}_preds.jsonl, {val,test}_metrics.json, test_timeline.png
      logs/<stage>/metrics.csv  CSV rows of a stage (metrics.before-resume-<n>.csv: earlier attempts)
      seed=<s>/                 a member's own run folder (``stacked_runs=N``)
      rescore.json, ensemble.json   what a derived run (``amr decode``/``calibrate``/``ensemble``) was made of
      failed.json               a sweep job that failed: its error line (the traceback is in train.log)
      calibrator.json           the calibrator ``amr calibrate`` fit (its run's own; the source run is not touched)

A training stage writes the same checkpoints/, predictions/ and logs/ into its stage folder (the
run's own, or a pre-training cache entry's, whose finished form keeps ``best.ckpt`` at its top).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amr.errors import InputError
from amr.inference.calibration import FILE_NAME as CALIBRATOR
from amr.io import atomic_open, write_json
from amr.metrics.predictions import write_metrics, write_predictions

RUN_INFO = "run.json"
TEST_METRICS = "test_metrics.json"
PRETRAIN_INFO = "pretrain.json"
BEST = "best"  # checkpoints/best.ckpt
LAST = "last"  # checkpoints/last.ckpt
CKPT_SUFFIX = ".ckpt"
CHECKPOINTS = "checkpoints"
PREDICTIONS = "predictions"
LOGS = "logs"
CSV_LOG = "metrics.csv"
SET_ASIDE_CSV = "metrics.before-resume-{n}.csv"
RESCORE_RECORD = "rescore.json"  # what a re-decoded run (amr decode, amr calibrate) was made of
ENSEMBLE_RECORD = "ensemble.json"  # what a fused run (amr ensemble) was made of
RECORDS = (RESCORE_RECORD, ENSEMBLE_RECORD)
FAILURE = "failed.json"
RESUME_LOCK = ".resume.lock"  # held by the process resuming the run


@dataclass(frozen=True)
class RunFolder:
    """A run folder (or a stage folder) at ``path``: where each of its files is, and reading them."""

    path: Path

    @property
    def info_file(self) -> Path:
        return self.path / RUN_INFO

    @property
    def test_metrics(self) -> Path:
        return self.path / TEST_METRICS

    @property
    def pretrain_info(self) -> Path:
        return self.path / PRETRAIN_INFO

    @property
    def config_file(self) -> Path:
        return self.path / ".hydra" / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def best_ckpt(self) -> Path:
        return self.checkpoints / f"{BEST}{CKPT_SUFFIX}"

    @property
    def last_ckpt(self) -> Path:
        return self.checkpoints / f"{LAST}{CKPT_SUFFIX}"

    @property
    def stored_best(self) -> Path:
        """A finished pre-training cache entry's weights (checkpoints/ is spent once it is stored)."""
        return self.path / f"{BEST}{CKPT_SUFFIX}"

    def predictions(self, split: str) -> Path:
        return self.path / PREDICTIONS / f"{split}_preds.jsonl"

    def split_metrics(self, split: str) -> Path:
        return self.path / PREDICTIONS / f"{split}_metrics.json"

    @property
    def timeline(self) -> Path:
        return self.path / PREDICTIONS / "test_timeline.png"

    @property
    def logs(self) -> Path:
        """Where CSV and TensorBoard loggers write (``logs/<stage>/``)."""
        return self.path / LOGS

    @property
    def calibrator(self) -> Path:
        return self.path / CALIBRATOR

    @property
    def resume_lock(self) -> Path:
        return self.path / RESUME_LOCK

    @property
    def failure(self) -> Path:
        return self.path / FAILURE

    def member(self, seed: int) -> RunFolder:
        """A stacked member's own run folder."""
        return RunFolder(self.path / f"seed={seed}")

    def holds_run(self) -> bool:
        """True when a run (finished, or stopped with checkpoints) is here: never written into again."""
        return self.checkpoints.exists() or self.test_metrics.exists()

    def finished(self) -> bool:
        """True when the run here (or a stacked member of it) wrote its ``run.json``: it ended."""
        return self.info_file.is_file() or any(p.is_file() for p in self.path.glob(f"seed=*/{self.info_file.name}"))

    def info(self) -> dict[str, Any]:
        """Its ``run.json`` ({} when there is none); one that is not a JSON object is one line."""
        return read_record(self.info_file) if self.info_file.is_file() else {}

    def test_metrics_record(self) -> dict[str, Any]:
        """Its ``test_metrics.json``; one that is not a JSON object is one line."""
        return read_record(self.test_metrics)

    def config(self) -> dict[str, Any]:
        """Its saved config, unresolved ({} when there is none); one that is no YAML mapping is one line."""
        if not self.config_file.is_file():
            return {}
        from omegaconf import OmegaConf

        try:
            loaded = OmegaConf.to_container(OmegaConf.load(self.config_file), resolve=False)
        except Exception as e:  # noqa: BLE001 - yaml's and OmegaConf's errors alike
            raise InputError(f"not a readable config ({str(e).splitlines()[0]})", self.config_file) from None
        if not isinstance(loaded, dict):
            raise InputError("not a readable config (not a mapping)", self.config_file)
        return {str(k): v for k, v in loaded.items()}

    def annotations(self, split: str) -> Path | None:
        """The annotation file its ``split`` was scored against (None when run.json names none)."""
        name = (self.info().get("annotations") or {}).get(split)
        return Path(name) if name else None

    def rel(self, path: Path) -> str:
        """A path inside the folder as messages name it (``predictions/test_preds.jsonl``)."""
        return str(path.relative_to(self.path))

    def write_info(self, info: Mapping[str, Any]) -> None:
        write_json(self.info_file, dict(info))

    def write_pretrain_info(self, info: Mapping[str, Any]) -> None:
        write_json(self.pretrain_info, dict(info))

    def write_test_metrics(self, metrics: dict[str, Any]) -> None:
        write_metrics(self.test_metrics, metrics)

    def write_evaluation(self, split: str, lines: Iterable[dict[str, Any]], metrics: dict[str, Any] | None) -> None:
        """A split's prediction lines and (when scored) its metrics."""
        write_predictions(self.predictions(split), lines)
        if metrics is not None:
            write_metrics(self.split_metrics(split), metrics)

    def write_config(self, config: Mapping[str, Any]) -> None:
        from omegaconf import OmegaConf

        with atomic_open(self.config_file) as f:
            f.write(OmegaConf.to_yaml(OmegaConf.create(dict(config))))

    def write_failure(self, record: Mapping[str, Any]) -> None:
        write_json(self.failure, dict(record))

    def write_record(self, name: str, doc: Mapping[str, Any]) -> None:
        """What a derived run was made of (one of ``RECORDS``)."""
        if name not in RECORDS:
            raise ValueError(f"unknown record {name!r} (one of {', '.join(RECORDS)})")
        write_json(self.path / name, dict(doc))


def finished_runs(root: Path) -> Iterator[RunFolder]:
    """Every folder below ``root`` (itself included) that holds a test result, in path order;
    symlinked folders are followed (a folder of links to runs), each real folder once."""
    seen: set[str] = set()
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up, or a second link to one run
            dirs.clear()
            continue
        seen.add(real)
        if TEST_METRICS in files:
            found.append(Path(folder))
    yield from (RunFolder(f) for f in sorted(found, key=lambda f: f / TEST_METRICS))


def failed_jobs(sweep_dir: Path, launch: str) -> list[dict[str, Any]]:
    """The failure records of the jobs of one sweep launch (``launch``: its id), in folder order."""
    records = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob(f"*/{FAILURE}"))]
    return [r for r in records if r.get("launch") == launch]


def stage_logs(folder: Path) -> list[Path]:
    """The stage log folders (``logs/<stage>/``) of a run or stage folder that hold CSV rows."""
    return sorted(p.parent for p in RunFolder(folder).logs.glob(f"*/{CSV_LOG}"))


def csv_attempts(stage_logs_dir: Path) -> list[Path]:
    """A stage's CSV logs in order: those kept from attempts before a resume, then the last one."""
    earlier = sorted(stage_logs_dir.glob(SET_ASIDE_CSV.format(n="*")), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    return [*earlier, stage_logs_dir / CSV_LOG]


def set_aside_csv(stage_logs_dir: Path) -> None:
    """Before a resumed stage logs again: move its ``metrics.csv`` aside (Lightning would start it
    anew) as the next ``metrics.before-resume-<n>.csv``, which :func:`csv_attempts` reads first."""
    current = stage_logs_dir / CSV_LOG
    if current.is_file():
        n = len(list(stage_logs_dir.glob(SET_ASIDE_CSV.format(n="*")))) + 1
        os.replace(current, stage_logs_dir / SET_ASIDE_CSV.format(n=n))


def derived_overrides(infos: Iterable[Mapping[str, Any]], extra: Iterable[str]) -> list[str]:
    """The overrides of a run made from others (a re-decoding, an ensemble): those all source runs
    share, without ``seed=`` and settings ``extra`` sets again, then ``extra``."""
    extra = list(extra)
    keys = {e.split("=", 1)[0] for e in extra}
    lists = [list(i.get("overrides", [])) for i in infos]
    common = [o for o in lists[0] if all(o in other for other in lists[1:])]
    return [o for o in common if not o.startswith("seed=") and o.split("=", 1)[0] not in keys] + extra


def write_derived_run(
    out: Path,
    info: Mapping[str, Any],
    lines: Mapping[str, list[dict[str, Any]]],
    results: Mapping[str, dict[str, Any]],
    record: tuple[str, Mapping[str, Any]],
) -> RunFolder:
    """A folder that reads as a finished run (``amr report``, ``amr compare``, ``amr ensemble``):
    ``run.json`` (``info``), each split's predictions and metrics, ``test_metrics.json``, and the
    ``record`` (name, document) of how it was made."""
    folder = RunFolder(out)
    for split, split_lines in lines.items():
        folder.write_evaluation(split, split_lines, results.get(split))
    if "test" in results:
        folder.write_test_metrics(results["test"])
    folder.write_info(info)
    folder.write_record(*record)
    return folder


def read_record(path: Path) -> dict[str, Any]:
    """A JSON object a run folder holds (``run.json``, ``test_metrics.json``, ...): one line naming
    the file when it is not one."""
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"not valid JSON ({e})", path) from None
    if not isinstance(doc, dict):
        raise InputError("not a JSON object", path)
    return doc

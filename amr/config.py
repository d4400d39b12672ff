"""Typed schema of the training configuration, registered with Hydra's ConfigStore.

``conf/train.yaml`` starts from ``train_schema``, so a misspelt key fails at composition. Values
that a type cannot express (probabilities, pivots, stage names) are checked by :func:`validate`,
which the entry point calls before any data is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from amr.augment.caption_versions import PIVOTS
from amr.augment.time_mask import TimeMaskConfig  # the time mask's own dataclass
from amr.model import LossConfig as LossCfg  # the loss config is the criterion's own dataclass
from amr.model import QDDETRConfig as ModelCfg  # the model config is the network's own dataclass

STAGES = ("pretrain", "finetune")  # the stages augmentation can be switched on for


@dataclass
class SplitsCfg:
    train: str = "train"
    val: str = "val"
    test: str = "test"


@dataclass
class SynthCfg:
    preset: str = MISSING
    scale: float = 1.0
    seed: int = 0


@dataclass
class DataCfg:
    name: str = MISSING  # annotation prefix: data/<name>_<split>_release.jsonl
    feat_dir: str = MISSING  # features/<feat_dir>/{clap,clap_text}
    root: str = MISSING
    splits: SplitsCfg = field(default_factory=SplitsCfg)
    max_a_l: int = 300
    max_windows: int = 5
    clip_len: float = 1.0
    dtype: str = "float32"  # packed store precision
    overlong: str = "keep"  # windows ending > duration + 2: keep | clip | error
    synthetic: SynthCfg | None = None  # generate the root first if it holds no data


@dataclass
class StageCfg:
    """A training stage: the main one (``train``) or the optional pre-training (``pretrain``)."""

    max_epochs: int = 200
    batch_size: int = 32
    eval_batch_size: int = 100


@dataclass
class PretrainCfg(StageCfg):
    enabled: bool = True
    data: DataCfg | None = None  # chosen by the ``pretrain`` config group


@dataclass
class OptimCfg:
    lr: float = 1e-4
    weight_decay: float = 1e-4
    lr_drop: int = 400
    lr_gamma: float = 0.1


@dataclass
class BacktranslationCfg:
    pivots: list[str] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)


@dataclass
class AugmentCfg:
    time_mask: TimeMaskConfig = field(default_factory=TimeMaskConfig)
    backtranslation: BacktranslationCfg = field(default_factory=BacktranslationCfg)


@dataclass
class LoggerCfg:
    kind: str = "csv"  # csv | wandb | tensorboard | none
    project: str = "amr"
    entity: str | None = None
    mode: str = "offline"  # wandb: online | offline | disabled
    group: str | None = None


@dataclass
class PathsCfg:
    root: str = "."
    output_dir: str = MISSING
    data_root: str = "data/official"
    synthetic_root: str = "data/synthetic"
    cache_dir: str = MISSING
    pretrain_cache: str = MISSING


@dataclass
class TrainConfig:
    experiment_name: str = "default"
    seed: int = 2023
    data: DataCfg = MISSING
    pretrain: PretrainCfg = field(default_factory=PretrainCfg)
    train: StageCfg = field(default_factory=StageCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    augment: AugmentCfg = field(default_factory=AugmentCfg)
    trainer: dict[str, Any] = field(default_factory=dict)
    logger: LoggerCfg = field(default_factory=LoggerCfg)
    paths: PathsCfg = field(default_factory=PathsCfg)
    num_workers: int = 0
    ckpt_path: str | None = None  # resume the final stage: a path, or "last"
    init_from: str | None = None  # start the main stage from these weights (e.g. a converted official checkpoint)
    test: bool = True
    reuse_pretrain: bool = True
    tags: list[str] = field(default_factory=list)
    synthetic_scale: float = 1.0  # size of generated synthetic datasets (debug presets shrink it)


def register() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def _in(value: Any, allowed: tuple, what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {list(allowed)}, got {value!r}")


def validate(cfg: DictConfig) -> None:
    """Range and choice checks the schema types cannot express. Raises ValueError with the key."""
    TimeMaskConfig(**OmegaConf.to_container(cfg.augment.time_mask, resolve=True))  # type: ignore[arg-type]
    for key, stages in (
        ("augment.time_mask.stages", cfg.augment.time_mask.stages),
        ("augment.backtranslation.stages", cfg.augment.backtranslation.stages),
    ):
        for s in stages:
            _in(s, STAGES, f"each of {key}")
    for p in cfg.augment.backtranslation.pivots:
        _in(p, PIVOTS, "each of augment.backtranslation.pivots")
    _in(cfg.model.t2v_mask, ("official", "per_sample"), "model.t2v_mask")
    _in(cfg.logger.kind, ("csv", "wandb", "tensorboard", "none"), "logger.kind")
    for d in [cfg.data] + ([cfg.pretrain.data] if cfg.pretrain.enabled and cfg.pretrain.data else []):
        _in(d.dtype, ("float32", "float16"), "data.dtype")
        _in(d.overlong, ("keep", "clip", "error"), "data.overlong")
    if cfg.pretrain.enabled and cfg.pretrain.data is None:
        raise ValueError("pretrain.enabled is true but no pretrain data is configured (use pretrain=<dataset>)")
    if "max_epochs" in cfg.trainer:
        raise ValueError("trainer.max_epochs is not read: set pretrain.max_epochs and train.max_epochs")
    for name, stage in (("train", cfg.train), ("pretrain", cfg.pretrain)):
        if stage.batch_size < 1 or stage.eval_batch_size < 1:
            raise ValueError(f"{name} batch sizes must be >= 1")
        if stage.max_epochs < 0:
            raise ValueError(f"{name}.max_epochs must be >= 0, got {stage.max_epochs}")

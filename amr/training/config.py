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
from omegaconf.errors import ValidationError
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger

from amr.augment.caption_versions import PIVOTS
from amr.augment.time_mask import TimeMaskConfig  # the time mask's own dataclass
from amr.data.features import Encoder as FeaturesCfg  # the features config is the encoder's own dataclass
from amr.inference.decoders import DecodeConfig as DecodeCfg  # the decoding config is the decoder's own dataclass
from amr.metrics.retrieval import DEFAULT_BUCKET_EDGES, MONITOR, SHORT_NAMES, length_buckets
from amr.model import LossConfig as LossCfg  # the loss config is the criterion's own dataclass
from amr.model import retriever
from amr.model.criterion import CLS_LOSSES
from amr.model.matcher import SOLVERS
from amr.training.loggers import issubclass_of, logger_class

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
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
    root: str = MISSING  # where it is generated (data.root follows it unless set)


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
    verify: bool = False  # re-check every array of an existing pack for NaN/inf (reads the whole pack)
    # GT window length bucket edges (s) for per-length val/test metrics; [] for the official ones alone
    length_buckets: list[float] = field(default_factory=lambda: list(DEFAULT_BUCKET_EDGES))
    synthetic: SynthCfg | None = None  # generated at synthetic.root first when that holds no data


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
    # the encoder whose features both stages read; its widths are the group option's (0: not given)
    features: FeaturesCfg = field(default_factory=lambda: FeaturesCfg(audio_dim=0, text_dim=0))
    pretrain: PretrainCfg = field(default_factory=PretrainCfg)
    train: StageCfg = field(default_factory=StageCfg)
    # the network and its settings (the ``model`` group): ``name`` picks the network, the other keys
    # are its config dataclass's (checked against it by :func:`model_config`)
    model: dict[str, Any] = field(default_factory=dict)
    loss: LossCfg = field(default_factory=LossCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    augment: AugmentCfg = field(default_factory=AugmentCfg)
    decode: DecodeCfg = field(default_factory=DecodeCfg)
    trainer: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] = field(default_factory=dict)  # name -> Lightning logger (``_target_``)
    callbacks: dict[str, Any] = field(default_factory=dict)  # name -> Lightning callback (``_target_``)
    paths: PathsCfg = field(default_factory=PathsCfg)
    num_workers: int = 0
    batches_on_device: bool = False  # features held on the training device, batches built there
    fixed_shapes: bool = False  # every batch of a split padded to one shape (CUDA graphs, stacked runs)
    stacked_runs: int = 1  # N > 1: seeds seed .. seed + N - 1 trained as one stacked model
    compile: str | None = None  # torch.compile mode for the network: default | reduce-overhead (CUDA graphs) | ...
    ckpt_path: str | None = None  # resume the final stage: a path, or "last"
    init_from: str | None = None  # start the main stage from these weights (e.g. a converted official checkpoint)
    fit: bool = True  # false: only evaluate ``ckpt_path`` on the configured data
    calibrator: str | None = None  # fit=false: a calibrator file; default: one beside ckpt_path; none: no calibrator
    test: bool = True
    reuse_pretrain: bool = True
    tags: list[str] = field(default_factory=list)
    print_config: bool = True  # the composed config in the job log (and on the console) at the start
    monitor: str = MONITOR  # validation metric that picks the best checkpoint (and early stopping, searches)
    synthetic_scale: float = 1.0  # size of generated synthetic datasets (debug presets shrink it)


def plain(node: Any) -> dict[str, Any]:
    """A resolved config node as a plain dict."""
    out = OmegaConf.to_container(node, resolve=True)
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}


def stage_augment(cfg: DictConfig, stage: str) -> tuple[TimeMaskConfig | None, list[str]]:
    """The time mask (or None) and the caption-version pivots a stage trains with."""
    time_mask = TimeMaskConfig(**plain(cfg.augment.time_mask))
    bt = cfg.augment.backtranslation
    return (time_mask if time_mask.used_in(stage) else None), (list(bt.pivots) if stage in bt.stages else [])


def register() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def _in(value: Any, allowed: tuple | list, what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {list(allowed)}, got {value!r}")


def _lightning_precisions() -> tuple:
    """The ``precision`` values Lightning's Trainer accepts (its own type alias)."""
    import typing

    from lightning_fabric.connector import _PRECISION_INPUT

    flat: list = []
    for arg in typing.get_args(_PRECISION_INPUT):
        flat += [str(v) for v in typing.get_args(arg)]
    return tuple(dict.fromkeys(flat))


def _validate_trainer(trainer: DictConfig) -> None:
    if "max_epochs" in trainer:
        raise ValueError("trainer.max_epochs is not read: set pretrain.max_epochs and train.max_epochs")
    if "precision" in trainer:
        _in(str(trainer.precision), _lightning_precisions(), "trainer.precision")
    if "accelerator" in trainer:
        _in(trainer.accelerator, ("cpu", "gpu", "cuda", "mps", "tpu", "auto"), "trainer.accelerator")
    devices = trainer.get("devices", "auto")
    ok = devices == "auto" or (isinstance(devices, int) and devices >= -1 and devices != 0)
    ok = ok or (OmegaConf.is_list(devices) and all(isinstance(d, int) and d >= 0 for d in devices))
    if not ok:
        raise ValueError(f"trainer.devices must be 'auto', -1, a positive count or a list of ids, got {devices!r}")


def _validate_numbers(cfg: DictConfig) -> None:
    for key in ("model.dropout", "model.input_dropout"):
        value = OmegaConf.select(cfg, key)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{key} must be in [0, 1), got {value}")
    if not cfg.optim.lr > 0:
        raise ValueError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    if cfg.optim.weight_decay < 0:
        raise ValueError(f"optim.weight_decay must be >= 0, got {cfg.optim.weight_decay}")
    for name, stage in (("train", cfg.train), ("pretrain", cfg.pretrain)):
        for key in ("batch_size", "eval_batch_size"):
            if stage[key] < 1:
                raise ValueError(f"{name}.{key} must be >= 1, got {stage[key]}")
        if stage.max_epochs < 0:
            raise ValueError(f"{name}.max_epochs must be >= 0, got {stage.max_epochs}")


def _validate_stacked(cfg: DictConfig) -> None:
    n = cfg.stacked_runs
    if n < 1:
        raise ValueError(f"stacked_runs must be >= 1, got {n}")
    if n == 1:
        return
    if (why := retriever(cfg.model).stacks) is not None:
        raise ValueError(
            f"stacked_runs: model={cfg.model.get('name')} cannot be stacked ({why}); train its seeds as runs alone"
        )
    if not cfg.fixed_shapes:
        raise ValueError("stacked_runs > 1 needs fixed_shapes=true: the members' batches are stacked into one shape")
    if not cfg.fit:
        raise ValueError("stacked_runs is for training; evaluate a member's checkpoint with stacked_runs=1")
    devices = cfg.trainer.get("devices", "auto")
    if cfg.trainer.get("strategy") not in (None, "auto") or devices not in ("auto", 1, -1) and devices != [0]:
        raise ValueError("stacked_runs trains in one process on one device (set trainer.devices=1)")
    if cfg.trainer.get("gradient_clip_algorithm", "norm") != "norm":
        raise ValueError("stacked_runs clips each member's gradients by norm only (gradient_clip_algorithm=norm)")
    extra = [k for k, v in plain(cfg.callbacks).items() if "ProgressBar" not in str(v.get("_target_"))]
    if extra:
        raise ValueError(
            f"stacked_runs takes no extra callbacks (callbacks: {', '.join(extra)}); train those runs alone"
        )


def stages_of(cfg: DictConfig) -> tuple[str, ...]:
    """The stages this run has: ``finetune`` always (a run without pre-training has that one
    stage), ``pretrain`` before it when enabled."""
    return ("pretrain", "finetune") if cfg.pretrain.enabled else ("finetune",)


def _validate_augment(cfg: DictConfig) -> None:
    TimeMaskConfig(**plain(cfg.augment.time_mask))  # its own range checks
    bt = cfg.augment.backtranslation
    for key, stages in (
        ("augment.time_mask.stages", cfg.augment.time_mask.stages),
        ("augment.backtranslation.stages", bt.stages),
    ):
        for s in stages:
            _in(s, STAGES, f"each of {key}")
        if list(stages) and not set(stages) & set(stages_of(cfg)):
            raise ValueError(
                f"{key}={list(stages)} but this run has only the stages {list(stages_of(cfg))}: it would be ignored"
            )
    for p in bt.pivots:
        _in(p, PIVOTS, "each of augment.backtranslation.pivots")
    pivots, stages = list(bt.pivots), list(bt.stages)
    if stages and not pivots:
        raise ValueError(
            f"augment.backtranslation.stages={stages} but augment.backtranslation.pivots=[]: nothing to draw"
        )
    if pivots and not stages:
        raise ValueError(f"augment.backtranslation.pivots={pivots} but augment.backtranslation.stages=[]: never used")


def inactive_keys(cfg: DictConfig) -> set[str]:
    """Settings that the composed config never reads (a search over them would change nothing)."""
    off = set()
    tm = cfg.augment.time_mask
    if not list(tm.stages):
        off |= {"augment.time_mask.p", "augment.time_mask.max_ratio"}
    elif tm.p == 0:
        off.add("augment.time_mask.max_ratio")
    if not list(cfg.augment.backtranslation.stages):
        off.add("augment.backtranslation.pivots")
    if not cfg.pretrain.enabled:
        off |= {f"pretrain.{k}" for k in ("max_epochs", "batch_size", "eval_batch_size")}
    return off


def unknown_keys(node: Any, cls: Any = None, prefix: str = "") -> list[str]:
    """Keys of a composed config that the schema does not hold (added with ``+``, e.g. a misspelt
    ``+optim.lrr=0.1``); the free-form groups (trainer, logger, callbacks) hold what their targets take."""
    import dataclasses
    import typing

    cls = cls or TrainConfig
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    out = []
    for key in node:
        if key not in known:
            out.append(f"{prefix}{key}")
            continue
        kinds = [t for t in (hints[key], *typing.get_args(hints[key])) if dataclasses.is_dataclass(t)]
        child = node[key]
        if kinds and OmegaConf.is_dict(child):
            out += unknown_keys(child, kinds[0], f"{prefix}{key}.")
    return out


def model_config(cfg: DictConfig) -> Any:
    """The typed config dataclass of ``cfg.model``'s network; a ValueError names a bad network, key or value."""
    spec = retriever(cfg.model)
    settings = {k: v for k, v in plain(cfg.model).items() if k != "name"}
    spec.settings(settings)  # unknown keys, named with the network's own
    try:
        typed = OmegaConf.merge(OmegaConf.structured(spec.config), settings)
    except ValidationError as e:
        raise ValueError(f"model.{e.full_key}: {e.msg}") from None
    return OmegaConf.to_object(typed)


def _validate_keys(cfg: DictConfig) -> None:
    """Keys the schema lacks, the tracked metric, and network widths other than the features'."""
    unknown = unknown_keys(cfg)
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not a setting of the training config (misspelt?)")
    _in(cfg.monitor, tuple(SHORT_NAMES.values()), "monitor")
    for width in ("features.audio_dim", "features.text_dim"):
        if OmegaConf.select(cfg, width) == 0:
            raise ValueError(
                f"{width} is not set: give the width of your {cfg.features.name} features "
                f"(features={cfg.features.name} features.audio_dim=N features.text_dim=N)"
            )
        if OmegaConf.select(cfg, width) < 1:
            raise ValueError(f"{width} must be at least 1, got {OmegaConf.select(cfg, width)}")
    for key, width in (("model.aud_dim", "features.audio_dim"), ("model.txt_dim", "features.text_dim")):
        if OmegaConf.select(cfg, key) != OmegaConf.select(cfg, width):
            raise ValueError(
                f"{key} must be {OmegaConf.select(cfg, width)}, the {width} of {cfg.features.name} features, "
                f"got {OmegaConf.select(cfg, key)}"
            )


def validate(cfg: DictConfig, searched: list[str] | None = None) -> None:
    """Range and choice checks the schema types cannot express, and settings that would be accepted
    and then ignored. Raises ValueError naming the key (and the allowed values)."""
    _validate_keys(cfg)
    _validate_augment(cfg)
    if "t2v_mask" in cfg.model:
        _in(cfg.model.t2v_mask, ("official", "per_sample"), "model.t2v_mask")
    model_config(cfg)
    _in(cfg.loss.cls, tuple(CLS_LOSSES), "loss.cls")
    _in(cfg.loss.matcher, SOLVERS, "loss.matcher")
    _validate_stacked(cfg)
    if cfg.get("compile") is not None:
        _in(cfg.compile, COMPILE_MODES, "compile")
        if cfg.stacked_runs > 1:
            raise ValueError("compile is not applied to stacked runs (the network runs under vmap there); drop one")
    if cfg.batches_on_device and cfg.num_workers > 0:
        raise ValueError("num_workers is not read with batches_on_device=true (batches are built on the device)")
    DecodeCfg(**plain(cfg.decode)).check()
    if cfg.loss.cls == "ce" and (cfg.loss.cls_alpha is not None or cfg.loss.cls_gamma != LossCfg().cls_gamma):
        raise ValueError("loss.cls_alpha and loss.cls_gamma are read only by loss.cls=focal or varifocal")
    for name, node in cfg.logger.items():
        if issubclass(logger_class(str(name), node), WandbLogger) and node.get("mode") is not None:
            _in(node.mode, ("online", "offline", "disabled"), f"logger.{name}.mode")
    for d in [cfg.data] + ([cfg.pretrain.data] if cfg.pretrain.enabled and cfg.pretrain.data else []):
        _in(d.dtype, ("float32", "float16"), "data.dtype")
        _in(d.overlong, ("keep", "clip", "error"), "data.overlong")
        for key in ("max_a_l", "max_windows"):
            if d[key] < 1:
                raise ValueError(f"data.{key} must be >= 1, got {d[key]}")
        if d.synthetic is not None and d.synthetic.preset != d.name:
            where = "data" if d is cfg.data else "pretrain.data"
            raise ValueError(
                f"{where}.synthetic.preset={d.synthetic.preset} but {where}.name={d.name}: "
                "the generated set would not be read"
            )
        if not d.clip_len > 0:
            raise ValueError(f"data.clip_len must be > 0, got {d.clip_len}")
        try:
            if d.length_buckets:
                length_buckets(d.length_buckets)
        except ValueError as e:
            raise ValueError(f"data.length_buckets: {e}") from None
    if cfg.pretrain.enabled and cfg.pretrain.data is None:
        raise ValueError("pretrain.enabled is true but no pretrain data is configured (use pretrain=<dataset>)")
    _validate_trainer(cfg.trainer)
    _validate_numbers(cfg)
    for name, cb in cfg.callbacks.items():
        if not OmegaConf.is_dict(cb) or "_target_" not in cb:
            raise ValueError(f"callbacks.{name} needs a _target_ (a Lightning callback class), got {cb!r}")
        if not issubclass_of(str(cb._target_), Callback):
            raise ValueError(f"callbacks.{name}._target_: {cb._target_} is not an importable Lightning callback")
    if not cfg.fit and not cfg.ckpt_path:
        raise ValueError("fit=false evaluates a checkpoint: give ckpt_path=PATH")
    if cfg.fit and cfg.calibrator is not None:
        raise ValueError("calibrator is read only by fit=false (a trained run's calibrator: amr calibrate RUN)")
    dead = sorted(set(searched or ()) & inactive_keys(cfg))
    if dead:
        raise ValueError(
            f"the search space covers {', '.join(dead)}, which this config never reads (its stages are off)"
        )

"""No option is inert. Every key the training schema accepts, every option of every ``conf/`` group
and every flag of every ``amr`` command is enumerated from the code's own lists (the schema's
dataclasses, the config folder, the argparse parsers) and is accounted for in one of three ways:

- exercised here: its change changes what it claims to (the network, the losses, the decoded
  moments, the optimiser, a stage's batches and epochs, or the key it feeds);
- a group option whose composed values differ from its siblings' only in accounted-for schema keys
  (so its effect is theirs);
- listed in ``ELSEWHERE`` (the test that asserts its effect, which must exist and mention it) or in
  ``PRESENTATION`` (with the reason it changes no result).

A new option with none of these fails ``test_every_option_is_accounted_for``; the last tests show
that it does.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import fnmatch
import shutil
import typing
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from amr.cli import build_parser
from amr.inference.decoders import DecodeConfig, decode_batch
from amr.model import MODELS, LossConfig, QDDETRConfig, build, build_criterion, criterion, network_inputs
from amr.training.config import OptimCfg, StageCfg, TrainConfig
from amr.training.module import optimisers
from amr.training.run import CONF_DIR
from amr.training.stage import MAIN_STAGE, PRETRAIN_STAGE, build_datamodule, build_trainer

TESTS = Path(__file__).parent
FREE_FORM = ("trainer", "logger", "callbacks")  # name -> Lightning object: their entries are the user's

# --- what the code offers ------------------------------------------------------------------------


def model_keys() -> list[str]:
    """``model.name`` and every setting of every network of the ``model`` group's registry."""
    return sorted({"name"} | {f.name for spec in MODELS.values() for f in dataclasses.fields(spec.config)})


def schema_keys(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """Every leaf key of a schema dataclass (a free-form dict is one key; ``model`` is each
    network's settings, see :func:`model_keys`)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if issubclass(cls, TrainConfig) and f.name == "model":
            out += [f"model.{k}" for k in model_keys()]
            continue
        kinds = [t for t in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(t)]
        out += schema_keys(kinds[0], f"{prefix}{f.name}.") if kinds else [prefix + f.name]
    return out


def group_options(conf: Path) -> list[str]:
    """``group=option`` for every YAML file of every config group (the per-machine ``local`` group
    aside: it holds no options of the project's own)."""
    return sorted(f"{p.parent.name}={p.stem}" for p in conf.glob("*/*.yaml") if p.parent.name != "local")


def cli_flags(parser: argparse.ArgumentParser, prefix: str = "amr") -> list[str]:
    """``amr <command> --flag`` for every optional argument of every (sub)command."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += cli_flags(sub, f"{prefix} {name}")
        elif action.option_strings and not isinstance(action, argparse._HelpAction):
            out.append(f"{prefix} {max(action.option_strings, key=len)}")
    return out


# --- exercised here ------------------------------------------------------------------------------

SMALL_NET = {"hidden_dim": 32, "nheads": 4, "dim_feedforward": 64, "aud_dim": 24, "txt_dim": 20}
# model key -> a value other than SMALL_NET's (or the default)
MODEL_CHANGES: dict[str, Any] = {
    "hidden_dim": 48,
    "nheads": 8,
    "enc_layers": [3, 1],  # the first value other than the network's own
    "dec_layers": 1,
    "dim_feedforward": 96,
    "dropout": 0.3,
    "input_dropout": 0.2,
    "num_queries": 6,
    "n_input_proj": 1,
    "aud_dim": 16,
    "txt_dim": 12,
    "max_q_l": 20,
    "aux_loss": False,
    "t2v_mask": "per_sample",
    # CG-DETR's own
    "t2v_layers": 1,
    "sent_layers": 2,
    "moment_layers": 2,
    "dummy_layers": 1,
    "num_dummies": 5,
    "total_prompts": 6,
    "num_prompts": 3,
}
# network settings that weigh loss terms (CG-DETR's): -> a value other than the default
MODEL_LOSS_CHANGES: dict[str, float] = {"lw_wattn": 3.0, "lw_ms_align": 3.0, "lw_distill": 3.0}
# loss key -> (a base that reads it, a value other than the base's)
LOSS_CHANGES: dict[str, tuple[dict[str, Any], Any]] = {
    "set_cost_class": ({}, 0.0),
    "set_cost_span": ({}, 0.0),
    "set_cost_giou": ({}, 20.0),
    "span_loss_coef": ({}, 3.0),
    "giou_loss_coef": ({}, 3.0),
    "label_loss_coef": ({}, 1.0),
    "lw_saliency": ({}, 3.0),
    "eos_coef": ({}, 0.5),
    "saliency_margin": ({}, 0.7),
    "cls": ({}, "focal"),
    "cls_alpha": ({"cls": "focal"}, 0.6),
    "cls_gamma": ({"cls": "focal"}, 0.5),
}
# decode key -> (a decoder that reads it, a value other than the default)
DECODE_CHANGES: dict[str, tuple[str, Any]] = {
    "name": ("detr", "saliency"),
    "threshold_k": ("segmental", 1.0),
    "min_len": ("saliency", 8),
    "max_len": ("segmental", 2),
    "penalty": ("segmental", -0.5),
    "detr_weight": ("hybrid", 0.05),
}
OPTIM_CHANGES: dict[str, Any] = {"lr": 3e-4, "weight_decay": 0.0, "lr_drop": 3, "lr_gamma": 0.5}
STAGE_CHANGES: dict[str, Any] = {"max_epochs": 3, "batch_size": 5, "eval_batch_size": 7}
# keys whose value is interpolated into another key (which is accounted for in its own right)
FEEDS: dict[str, tuple[str, Any, str]] = {  # key -> (the key it feeds, a value, a group choice)
    "synthetic_scale": ("data.synthetic.scale", 0.5, "data=synthetic_castella"),
    "paths.synthetic_root": ("data.synthetic.root", "/elsewhere", "data=synthetic_castella"),
    "paths.data_root": ("data.root", "/elsewhere", "data=castella"),
}
# keys a test below asserts beside the generic cases
PRETRAIN_DATA = "pretrain.data."


def exercised_here() -> set[str]:
    keys = {f"model.{k}" for k in (*MODEL_CHANGES, *MODEL_LOSS_CHANGES)} | {f"loss.{k}" for k in LOSS_CHANGES}
    keys |= {f"decode.{k}" for k in DECODE_CHANGES} | {f"optim.{k}" for k in OPTIM_CHANGES}
    keys |= {f"{s}.{k}" for s in ("train", "pretrain") for k in STAGE_CHANGES} | set(FEEDS)
    return keys | {k for k in schema_keys() if k.startswith(PRETRAIN_DATA)}


def _model_batch(txt_dim: int, aud_dim: int) -> dict[str, Any]:
    """A collated batch of two items in the official layout, with training targets."""
    g = torch.Generator().manual_seed(1)
    sal = torch.zeros(2, 12)
    sal[:, 3:6] = 1.0
    return {
        "inputs": {
            "src_txt": torch.randn(2, 7, txt_dim, generator=g),
            "src_txt_mask": torch.tensor([[1.0] * 5 + [0.0] * 2, [1.0] * 7]),
            "src_aud": torch.randn(2, 12, aud_dim + 2, generator=g),
            "src_aud_mask": torch.tensor([[1.0] * 9 + [0.0] * 3, [1.0] * 12]),
        },
        "meta": [{"vid": "a"}, {"vid": "b"}],
        "targets": {
            "span_labels": [{"spans": torch.tensor([[0.4, 0.2]])}, {"spans": torch.tensor([[0.5, 0.3]])}],
            "saliency_pos_labels": torch.tensor([[3, 4], [4, 5]]),
            "saliency_neg_labels": torch.tensor([[0, 8], [9, 11]]),
            "saliency_all_labels": sal,
        },
    }


def _net_fingerprint(name: str, **changes: Any) -> tuple[dict[str, tuple], dict[str, torch.Tensor]]:
    """The weight shapes of a small network of ``model.name=name``, and its training-mode outputs
    (training path included) on a fixed batch."""
    settings = {"name": name, **SMALL_NET, **changes}
    torch.manual_seed(0)
    net, cfg = build(settings)
    batch = _model_batch(cfg.txt_dim, cfg.aud_dim)
    torch.manual_seed(2)
    out = net.train()(**network_inputs(net, batch))
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    flat = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
    flat["aux"] = torch.tensor(float(len(out.get("aux_outputs", []))))
    return shapes, flat


def _settings_of_each_model() -> list[tuple[str, str]]:
    return [(name, f.name) for name, spec in MODELS.items() for f in dataclasses.fields(spec.config)]


@pytest.mark.parametrize(("name", "field"), _settings_of_each_model())
def test_model_setting_changes_the_network(name: str, field: str) -> None:
    """Every setting of every network (``model=qd_detr|moment_detr|cg_detr``) changes its weights
    or its outputs, or (CG-DETR's loss weights) its loss."""
    if field in MODEL_LOSS_CHANGES:
        before, after = _model_loss(name), _model_loss(name, **{field: MODEL_LOSS_CHANGES[field]})
        assert before != after, f"model.{field} did not change the loss of {name}"
        return
    assert field in MODEL_CHANGES, f"model.{field} is new: give MODEL_CHANGES a value to test it with"
    own = getattr(build({"name": name, **SMALL_NET})[1], field)
    value = next(v for v in np.atleast_1d(MODEL_CHANGES[field]).tolist() if v != own)
    shapes, outputs = _net_fingerprint(name)
    shapes2, outputs2 = _net_fingerprint(name, **{field: value})
    same_outputs = outputs.keys() == outputs2.keys() and all(
        outputs[k].shape == outputs2[k].shape and torch.equal(outputs[k], outputs2[k]) for k in outputs
    )
    assert shapes != shapes2 or not same_outputs, f"model.{field} changed neither weights nor outputs of {name}"


def _model_loss(name: str, **changes: Any) -> float:
    settings = {"name": name, **SMALL_NET, **changes}
    torch.manual_seed(0)
    net, cfg = build(settings)
    batch = _model_batch(cfg.txt_dim, cfg.aud_dim)
    out = net.eval()(**network_inputs(net, batch))
    crit = criterion(settings, {})
    return float(crit.total(crit(out, batch["targets"])).detach())


def _loss_case() -> tuple[dict, dict]:
    torch.manual_seed(0)
    b, nq, t = 3, 10, 12
    outputs = {
        "pred_logits": torch.randn(b, nq, 2),
        "pred_spans": torch.rand(b, nq, 2) * 0.6 + 0.2,
        "saliency_scores": torch.randn(b, t),
        "saliency_scores_neg": torch.randn(b, t),
        "audio_mask": torch.ones(b, t),
        "aux_outputs": [{"pred_logits": torch.randn(b, nq, 2), "pred_spans": torch.rand(b, nq, 2)}],
    }
    targets = {
        "span_labels": [{"spans": torch.rand(n, 2) * 0.5 + 0.25} for n in (1, 3, 2)],
        "saliency_pos_labels": torch.tensor([[1, 2], [3, 4], [0, 5]]),
        "saliency_neg_labels": torch.tensor([[7, 8], [9, 10], [6, 11]]),
        "saliency_all_labels": (torch.rand(b, t) > 0.5).float(),
    }
    return outputs, targets


def _loss_terms(**losses: Any) -> dict[str, float]:
    outputs, targets = _loss_case()
    crit = build_criterion(dec_layers=2, aux_loss=True, **losses)
    terms = crit(outputs, targets)
    return {**{k: float(v) for k, v in terms.items()}, "total": float(crit.total(terms))}


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(LossConfig) if f.name != "matcher"])
def test_loss_setting_changes_the_loss(field: str) -> None:
    assert field in LOSS_CHANGES, f"loss.{field} is new: give LOSS_CHANGES a case to test it with"
    base, value = LOSS_CHANGES[field]
    assert _loss_terms(**base) != _loss_terms(**{**base, field: value}), f"loss.{field} changed no loss term"


def _decoded(cfg: DecodeConfig) -> list:
    rng = np.random.default_rng(0)
    durations = [30.0, 20.0, 12.0]
    curves = [np.sin(np.arange(int(d)) / 2.0) * 2 + rng.normal(0, 0.5, int(d)) for d in durations]
    detr = []
    for d in durations:
        st = np.sort(rng.uniform(0, d - 3, 5))
        detr.append(
            [[float(a), float(a + rng.uniform(1, 3)), float(s)] for a, s in zip(st, rng.uniform(0, 1, 5), strict=True)]
        )
    return decode_batch(detr, curves, durations, cfg)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(DecodeConfig)])
def test_decode_setting_changes_the_moments(field: str) -> None:
    assert field in DECODE_CHANGES, f"decode.{field} is new: give DECODE_CHANGES a case to test it with"
    name, value = DECODE_CHANGES[field]
    base = DecodeConfig(name=name)
    changed = dataclasses.replace(base, **{field: value})
    changed.check()
    assert _decoded(base) != _decoded(changed), f"decode.{field} changed no moment or score"


def test_optim_settings_change_the_optimiser() -> None:
    def state(**changes: Any) -> tuple:
        opt = optimisers([torch.nn.Parameter(torch.zeros(2))], {**dataclasses.asdict(OptimCfg()), **changes}, "32")
        group, sched = opt["optimizer"].param_groups[0], opt["lr_scheduler"]["scheduler"]
        return group["lr"], group["weight_decay"], sched.step_size, sched.gamma

    assert set(OPTIM_CHANGES) == {f.name for f in dataclasses.fields(OptimCfg)}, "a new optim key needs a case"
    for key, value in OPTIM_CHANGES.items():
        assert state() != state(**{key: value}), f"optim.{key} changed nothing"


@cache
def _compose(conf: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        return compose("train", overrides=["paths.root=/r", "paths.output_dir=/r/out", *overrides])


def _stage_state(cfg: DictConfig, stage: str, tmp: Path) -> tuple:
    dm = build_datamodule(cfg, stage)
    trainer, _ = build_trainer(cfg, stage, tmp, [])
    return dm.batch_size, dm.eval_batch_size, trainer.max_epochs, OmegaConf.to_container(dm.cfg, resolve=True)


def test_each_stage_reads_its_own_settings_and_data(tmp_path) -> None:
    """``train.*`` set the main stage's batches and epochs and ``pretrain.*`` the pre-training's;
    ``pretrain.data.*`` reach the pre-training's data module as ``data.*`` reach the main one's."""
    assert set(STAGE_CHANGES) == {f.name for f in dataclasses.fields(StageCfg)}, "a new stage key needs a case"
    base = ["experiment=system1"]
    ref = {s: _stage_state(_compose(CONF_DIR, *base), s, tmp_path) for s in (PRETRAIN_STAGE, MAIN_STAGE)}
    for group, stage, other in (("train", MAIN_STAGE, PRETRAIN_STAGE), ("pretrain", PRETRAIN_STAGE, MAIN_STAGE)):
        for key, value in STAGE_CHANGES.items():
            cfg = _compose(CONF_DIR, *base, f"{group}.{key}={value}")
            assert _stage_state(cfg, stage, tmp_path) != ref[stage], f"{group}.{key} changed nothing"
            assert _stage_state(cfg, other, tmp_path) == ref[other], f"{group}.{key} changed the other stage"
    for key in (k for k in schema_keys() if k.startswith(PRETRAIN_DATA)):
        leaf = key.removeprefix(PRETRAIN_DATA)
        current = OmegaConf.select(_compose(CONF_DIR, *base), key)
        if OmegaConf.is_list(current):
            value = "[5.0]"
        elif isinstance(current, bool):
            value = str(not current).lower()
        else:
            value = f"{current}_x" if isinstance(current, str) else str(current * 2 + 1)
        cfg = _compose(CONF_DIR, *base, f"{key}={value}")
        got = OmegaConf.select(OmegaConf.create(_stage_state(cfg, PRETRAIN_STAGE, tmp_path)[3]), leaf)
        assert got != OmegaConf.select(OmegaConf.create(ref[PRETRAIN_STAGE][3]), leaf), f"{key} is not read"


@pytest.mark.parametrize("key", sorted(FEEDS))
def test_keys_that_feed_another(key: str) -> None:
    target, value, choice = FEEDS[key]
    before = OmegaConf.select(_compose(CONF_DIR, choice), target)
    after = OmegaConf.select(_compose(CONF_DIR, choice, f"{key}={value}"), target)
    assert before != after and str(value) in str(after), f"{key} does not reach {target}"


# --- tested elsewhere, or presentation -----------------------------------------------------------

REPACK = "test_failures.py::test_a_feature_file_rewritten_with_its_old_size_and_mtime_is_repacked_and_verify_finds_nan"
SEARCH = "test_workflows.py::test_cli_errors_are_one_line_and_a_search_over_an_inactive_setting_is_refused"
RESYNTH = "test_resynth.py::test_resynthesis_is_deterministic_resumable_and_reports_bad_clips"
HOP_FILL = "test_resynth_castella.py::test_hop_fill_and_window_folding_settings_are_read"
CONVERTED = "test_model_parity.py::test_converted_official_checkpoint_gives_the_same_outputs"
REFUSED = "test_workflows.py::test_settings_that_would_be_ignored_or_fail_late_are_refused_up_front"
# pattern (fnmatch) -> "file::test" whose assertions show the option's effect; the test must exist
# and its text must name the option
ELSEWHERE: dict[str, str] = {
    # training schema
    "experiment_name": "test_train.py::test_seed_systems_differ_only_in_augmentation",
    "seed": "test_train.py::test_seed_systems_differ_only_in_augmentation",
    "data.name": "test_annotations.py::test_official_annotation_files_load",
    "features.name": "test_encoders.py::test_a_wrong_width_file_and_other_features_are_one_line",
    "features.audio": "test_encoders.py::test_synth_writes_a_second_feature_set_of_other_widths",
    "features.text": "test_encoders.py::test_synth_writes_a_second_feature_set_of_other_widths",
    "features.*_dim": "test_encoders.py::test_features_custom_trains_on_a_synthetic_set_of_its_widths",
    "features=custom": "test_encoders.py::test_features_custom_trains_on_a_synthetic_set_of_its_widths",
    "features=msclap2023": "test_encoders.py::test_a_sweep_over_encoders_is_two_systems_in_the_report",
    "features=laion_clap": "test_laion.py::test_the_laion_option_names_its_folders_and_widths",
    "amr extract-* --encoder": "test_laion.py::test_laion_extraction_and_prediction_on_raw_audio",
    "data.feat_dir": "test_data_store.py::test_dropped_version_is_served_by_the_original_caption",
    "data.root": "test_failures.py::test_a_mistyped_data_root_is_an_error_not_a_new_synthetic_set",
    "data.splits.*": "test_annotations.py::test_official_annotation_files_load",
    "data.max_a_l": "test_device_batches.py::test_device_batches_equal_the_dataloaders",
    "data.max_windows": "test_device_batches.py::test_device_batches_equal_the_dataloaders",
    "data.clip_len": "test_failures.py::test_zero_sizes_are_refused_before_data",
    "data.dtype": "test_data_store.py::test_official_item_semantics",
    "data.overlong": "test_annotations.py::test_windows_past_the_end",
    "data.verify": REPACK,
    "data.length_buckets": "test_metrics.py::test_length_buckets_follow_the_range_method",
    "data.synthetic.preset": REFUSED,
    "data.synthetic.scale": "test_effects.py::test_synthetic_settings_change_the_generated_set",
    "data.synthetic.seed": "test_effects.py::test_synthetic_settings_change_the_generated_set",
    "data.synthetic.root": "test_failures.py::test_a_mistyped_data_root_is_an_error_not_a_new_synthetic_set",
    "pretrain.enabled": "test_effects.py::test_a_run_without_logger_or_pretraining_writes_neither",
    "loss.matcher": "test_matcher_enumerate.py::test_losses_are_the_same_with_either_solver",
    "augment.*": "test_effects.py::test_augment_settings_reach_the_stages_they_name",
    "trainer": "test_train.py::test_mixed_precision_trains_with_gradient_clipping",
    "logger": "test_workflows.py::test_loggers_are_built_from_their_target",
    "callbacks": "test_workflows.py::test_callbacks_group_is_instantiated",
    "paths.root": "test_effects.py::test_hydra_and_paths_groups_place_the_run",
    "paths.output_dir": "test_effects.py::test_paths_place_what_they_name",
    "paths.cache_dir": "test_effects.py::test_paths_place_what_they_name",
    "paths.pretrain_cache": "test_effects.py::test_paths_place_what_they_name",
    "num_workers": "test_effects.py::test_augment_settings_reach_the_stages_they_name",
    "batches_on_device": "test_device_batches.py::test_a_run_with_batches_on_device_trains_the_same",
    "fixed_shapes": "test_stacked.py::test_padding_beyond_the_batch_leaves_outputs_and_losses_unchanged",
    "stacked_runs": "test_stacked.py::test_stacked_runs_match_runs_alone",
    "compile": "test_stacked.py::test_a_compiled_run_trains_and_keeps_parameter_names",
    "ckpt_path": "test_train.py::test_resume_reaches_the_same_result",
    "init_from": "test_train.py::test_best_checkpoint_is_weights_only_and_the_cache_keeps_one_copy",
    "fit": "test_workflows.py::test_evaluating_a_checkpoint_reproduces_the_run",
    "calibrator": "test_workflows.py::test_evaluating_a_checkpoint_uses_its_calibrator_and_names_its_features",
    "test": "test_workflows.py::test_evaluating_a_checkpoint_reproduces_the_run",
    "reuse_pretrain": "test_train.py::test_wandb_offline_one_run_per_stage",
    "tags": "test_workflows.py::test_parallel_sweep_with_wandb_and_csv",
    "print_config": "test_train.py::test_run_start_says_its_folder_and_config",
    "monitor": "test_train.py::test_monitor_picks_the_best_checkpoint",
    # config groups whose options set free-form entries (trainer, logger, callbacks) or Hydra's own
    "callbacks=early_stopping": "test_workflows.py::test_callbacks_group_is_instantiated",
    "callbacks=ema": "test_workflows.py::test_callbacks_group_is_instantiated",
    "callbacks=none": "test_effects.py::test_a_run_without_logger_or_pretraining_writes_neither",
    "logger=csv": "test_report.py::test_curves_skip_the_post_fit_row_and_mark_the_first_best",
    "logger=none": "test_effects.py::test_a_run_without_logger_or_pretraining_writes_neither",
    "logger=tensorboard": "test_train.py::test_tensorboard_logger_writes_events",
    "logger=wandb": "test_train.py::test_wandb_offline_one_run_per_stage",
    "trainer=cpu": "test_device_batches.py::test_device_batches_equal_the_dataloaders",
    "trainer=ddp": "test_train.py::test_ddp_on_cpu_metric_matches_single_process",
    "trainer=gpu": REFUSED,
    "debug=*": "test_effects.py::test_debug_presets_shrink_the_run",
    "hparams_search=optuna": SEARCH,
    "hydra=default": "test_effects.py::test_hydra_and_paths_groups_place_the_run",
    "paths=default": "test_effects.py::test_hydra_and_paths_groups_place_the_run",
    "model=qd_detr": "test_effects.py::test_model_group_is_the_official_network",
    "model.name": "test_models.py::test_each_model_trains_a_two_stage_system1_and_its_checkpoint_serves",
    "resynth=castella_like": "test_resynth_castella.py::test_castella_like_run_labels_mixture_and_settings",
    # amr commands
    "amr synth --[ps]*": "test_effects.py::test_synthetic_settings_change_the_generated_set",
    "amr synth --out": "test_effects.py::test_synthetic_settings_change_the_generated_set",
    "amr synth --overwrite": "test_outputs.py::test_synth_replaces_a_dataset_only_with_overwrite",
    "amr synth --*-dim": "test_encoders.py::test_synth_writes_a_second_feature_set_of_other_widths",
    "amr backtranslate --pivots": "test_backtranslate.py::test_killed_run_resumes_without_loss_or_duplicates",
    "amr backtranslate --model-template": "test_backtranslate.py::test_killed_run_resumes_without_loss_or_duplicates",
    "amr backtranslate --backend": "test_backtranslate.py::test_backends_agree_on_most_outputs",
    "amr backtranslate --out": "test_backtranslate.py::test_killed_run_resumes_without_loss_or_duplicates",
    "amr backtranslate --overwrite": "test_failures.py::test_an_output_never_replaces_an_input_or_an_existing_file",
    "amr backtranslate --cache-dir": "test_backtranslate.py::test_killed_run_resumes_without_loss_or_duplicates",
    "amr backtranslate --batch-size": "test_backtranslate.py::test_both_backends_write_one_line_per_query",
    "amr backtranslate --num-beams": "test_effects.py::test_beam_search_changes_the_paraphrases",
    "amr backtranslate --max-new-tokens": "test_effects.py::test_beam_search_changes_the_paraphrases",
    "amr extract-audio --audio-dir": "test_clap.py::test_extract_audio_frames_names_failures_and_resume",
    "amr extract-audio --out": "test_clap.py::test_extract_audio_frames_names_failures_and_resume",
    "amr extract-audio --max-seconds": "test_clap.py::test_extract_audio_frames_names_failures_and_resume",
    "amr extract-audio --centered": "test_clap.py::test_frame_counts_follow_the_official_windowing",
    "amr extract-audio --channel": "test_effects.py::test_channel_choice_changes_stereo_features",
    "amr * --clap-weights": "test_predict.py::test_predict_cli_and_python_api_agree",
    "amr extract-text --annotations": "test_clap.py::test_extract_text_with_versions_feeds_the_data_layer",
    "amr extract-text --paraphrases": "test_clap.py::test_extract_text_with_versions_feeds_the_data_layer",
    "amr extract-text --out": "test_clap.py::test_extract_text_with_versions_feeds_the_data_layer",
    "amr resynth * --clotho": RESYNTH,
    "amr resynth * --walking-tours": RESYNTH,
    "amr resynth * --out": RESYNTH,
    "amr resynth * --workers": RESYNTH,
    "amr resynth * --features": "test_resynth.py::test_features_straight_from_the_mixtures_train",
    "amr resynth * --keep-audio": "test_resynth.py::test_features_straight_from_the_mixtures_train",
    "amr resynth * --split": "test_resynth.py::test_qids_stay_unique_across_a_roots_splits",
    "amr resynth * --seed": RESYNTH,
    "amr resynth * --limit": "test_resynth.py::test_features_straight_from_the_mixtures_train",
    "amr resynth castella-like --config": "test_resynth_castella.py::test_castella_like_config_errors_are_one_line",
    "amr resynth castella-like --set": HOP_FILL,
    "amr resynth fit-castella --max-windows": HOP_FILL,
    "amr evaluate --out": "test_metrics.py::test_ground_truth_without_windows_is_an_error",
    "amr evaluate --overwrite": "test_failures.py::test_an_output_never_replaces_an_input_or_an_existing_file",
    "amr evaluate --allow-partial": "test_metrics.py::test_missing_queries_need_allow_partial",
    "amr evaluate --allow-reversed": "test_metrics.py::test_official_fixtures_match_exactly",
    "amr evaluate --buckets": "test_metrics.py::test_length_buckets_follow_the_range_method",
    "amr submission --out": "test_submit.py::test_submit_writes_one_line_per_query_without_scores",
    "amr submission --overwrite": "test_failures.py::test_an_output_never_replaces_an_input_or_an_existing_file",
    "amr report --by": "test_report.py::test_report_writes_one_readable_document",
    "amr report --out": "test_report.py::test_report_writes_one_readable_document",
    "amr report --buckets": "test_report.py::test_report_writes_one_readable_document",
    "amr report --reference": "test_report.py::test_report_writes_one_readable_document",
    "amr report --metrics": "test_report.py::test_report_of_a_real_sweep_and_the_notebook",
    "amr ensemble --out": "test_rescore.py::test_decode_choose_calibrate_and_predict_on_a_trained_run",
    "amr ensemble --method": "test_ensemble.py::test_bad_ensembles_fail_before_any_work",
    "amr ensemble --weights": "test_ensemble.py::test_bad_ensembles_fail_before_any_work",
    "amr ensemble --iou": "test_rescore.py::test_decode_choose_calibrate_and_predict_on_a_trained_run",
    "amr ensemble --overwrite": "test_failures.py::test_an_output_never_replaces_an_input_or_an_existing_file",
    "amr decode --*": "test_rescore.py::test_decode_choose_calibrate_and_predict_on_a_trained_run",
    "amr calibrate --*": "test_rescore.py::test_decode_choose_calibrate_and_predict_on_a_trained_run",
    "amr submit --*": "test_submit.py::test_submit_writes_one_line_per_query_without_scores",
    "amr predict --no-calibrator": "test_effects.py::test_predict_flags_reach_the_predictor",
    "amr predict --max-frames": "test_effects.py::test_predict_flags_reach_the_predictor",
    "amr predict --ckpt": "test_predict.py::test_predict_cli_and_python_api_agree",
    "amr predict --audio": "test_predict.py::test_predict_cli_and_python_api_agree",
    "amr predict --query": "test_predict.py::test_predict_cli_and_python_api_agree",
    "amr predict --top-k": "test_predict.py::test_predict_cli_and_python_api_agree",
    "amr predict --query-features": "test_encoders.py::test_a_custom_checkpoint_predicts_submits_and_reports",
    "amr predict --centered": "test_effects.py::test_predict_centered_pads_the_recording",
    "amr predict --decode": "test_predict.py::test_predict_cli_and_python_api_agree",
    "amr predict --set": "test_predict.py::test_a_zero_length_window_is_never_a_moment",
    "amr predict --calibrator": "test_rescore.py::test_decode_choose_calibrate_and_predict_on_a_trained_run",
    "amr convert-official --t2v-mask": CONVERTED,
    "amr demo --ckpt": "test_demo.py::test_ask_tab_in_a_browser",
    "amr demo --runs": "test_demo.py::test_ask_tab_in_a_browser",
    "amr demo --data-root": "test_demo.py::test_ask_tab_in_a_browser",
    "amr demo --host": "test_demo.py::test_host_and_port_are_where_the_page_is_served",
    "amr demo --port": "test_demo.py::test_host_and_port_are_where_the_page_is_served",
}

# pattern -> why the option changes no result
PRESENTATION: dict[str, str] = {
    "callbacks=rich_progress": "a progress bar in a terminal; the epoch lines and results are the same",
    "amr predict --json": "the same moments printed as JSON instead of a table",
    "amr * --device": "where the encoder runs (CUDA when present); features agree across devices to float tolerance",
    "amr * --batch-size": "windows or captions per forward pass of the encoder; rows are independent of it",
}


# --- the account ---------------------------------------------------------------------------------


def _accounted_keys() -> set[str]:
    keys = set(schema_keys())
    listed = {k for k in keys if any(fnmatch.fnmatchcase(k, p) for p in (*ELSEWHERE, *PRESENTATION))}
    return (exercised_here() & keys) | listed


def _values(cfg: DictConfig) -> dict[str, Any]:
    out = {}
    for key in schema_keys():
        node = OmegaConf.select(cfg, key, default=None)
        out[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return out


def options_set_by_their_keys(conf: Path) -> dict[str, set[str]]:
    """Each group option whose composed values differ from a sibling's, mapped to the schema keys
    in which they differ. Options of one-option groups, options that fail to compose alone and
    options whose file sets nothing are left out."""
    by_group: dict[str, list[str]] = {}
    for opt in group_options(conf):
        group, name = opt.split("=")
        by_group.setdefault(group, []).append(name)
    out: dict[str, set[str]] = {}
    for group, names in by_group.items():
        values = {}
        for name in names:
            if not yaml.safe_load((conf / group / f"{name}.yaml").read_text()):
                continue  # a file that sets nothing
            try:
                values[name] = _values(_compose(str(conf), f"{group}={name}"))
            except Exception:  # noqa: BLE001 - an option that needs others (or a plugin) composes elsewhere
                continue
        for name, mine in values.items():
            differ = {k for other, theirs in values.items() if other != name for k in mine if mine[k] != theirs[k]}
            if differ:
                out[f"{group}={name}"] = differ
    return out


def unaccounted(options: list[str], by_keys: dict[str, set[str]]) -> list[str]:
    """The options that are neither exercised here, nor set only accounted-for keys, nor listed."""
    keys = _accounted_keys()
    missing = []
    for opt in options:
        if opt in keys or any(fnmatch.fnmatchcase(opt, p) for p in (*ELSEWHERE, *PRESENTATION)):
            continue
        sets = by_keys.get(opt)
        if sets and not sets & set(FREE_FORM) and sets <= keys:
            continue
        missing.append(opt)
    return missing


def all_options(conf: Path = Path(CONF_DIR), parser: argparse.ArgumentParser | None = None) -> list[str]:
    return schema_keys() + group_options(conf) + cli_flags(parser or build_parser())


def test_every_option_is_accounted_for() -> None:
    missing = unaccounted(all_options(), options_set_by_their_keys(Path(CONF_DIR)))
    assert not missing, f"options with no effect test and no entry in ELSEWHERE or PRESENTATION: {missing}"


def test_the_tables_name_real_options_and_real_tests() -> None:
    options = all_options()
    problems = [f"{p} matches no option" for p in (*ELSEWHERE, *PRESENTATION) if not fnmatch.filter(options, p)]
    for pattern, where in ELSEWHERE.items():
        text = _test_text(where)
        for opt in fnmatch.filter(options, pattern):
            if not any(n in text for n in _spellings(opt)):
                problems.append(f"{where} does not mention {opt}")
    assert not problems, "\n".join(problems)


def _spellings(option: str) -> list[str]:
    if option.startswith("amr "):
        flag = option.split()[-1]
        return [flag, flag[2:].replace("-", "_")]
    if "=" in option:
        return [option, option.split("=")[1]]
    return [option, option.rsplit(".", 1)[-1]]


def _test_text(where: str) -> str:
    """The source of a test function (its decorators included)."""
    file, name = where.split("::")
    path = TESTS / file
    assert path.is_file(), f"{where}: no such test file"
    src = path.read_text()
    for node in ast.parse(src).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            parts = [ast.get_source_segment(src, d) or "" for d in node.decorator_list]
            return "\n".join([*parts, ast.get_source_segment(src, node) or ""])
    raise AssertionError(f"{where}: no such test")


# --- the account fails on a new option (the test of the test) ------------------------------------


def test_a_new_schema_key_without_a_test_is_found() -> None:
    @dataclasses.dataclass
    class Grown(TrainConfig):
        shiny_new_setting: int = 3

    keys = schema_keys(Grown)
    assert "shiny_new_setting" in keys
    assert unaccounted(keys, {}) == ["shiny_new_setting"]


def test_a_new_flag_without_a_test_is_found() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.choices["predict"].add_argument("--sparkle", action="store_true")
    assert unaccounted(cli_flags(parser), {}) == ["amr predict --sparkle"]


def test_a_new_group_option_that_sets_nothing_or_a_free_form_entry_is_found(tmp_path) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "decode" / "inert.yaml").write_text("# sets nothing\n")
    (conf / "callbacks" / "swa.yaml").write_text(
        "swa:\n  _target_: pytorch_lightning.callbacks.StochasticWeightAveraging\n  swa_lrs: 0.01\n"
    )
    (conf / "decode" / "sharper.yaml").write_text("name: segmental\npenalty: -2.0\n")  # known keys: accounted
    missing = unaccounted(group_options(conf), options_set_by_their_keys(conf))
    assert missing == ["callbacks=swa", "decode=inert"]


# --- effects no other test asserted --------------------------------------------------------------


def test_a_run_without_logger_or_pretraining_writes_neither(tmp_path) -> None:
    """``logger=none``: no logs; ``pretrain=none`` (``pretrain.enabled=false``): no pre-training."""
    from amr.training.run import train

    overrides = ["debug=fast", "experiment=castella_only", "logger=none", "callbacks=none", "+trainer.fast_dev_run=1"]
    cfg = _compose(CONF_DIR, *overrides, f"paths.root={tmp_path}", f"paths.output_dir={tmp_path / 'run'}")
    assert cfg.pretrain.enabled is False and not cfg.callbacks  # callbacks=none: no callback beyond the run's own
    train(cfg)
    assert (tmp_path / "run" / "test_metrics.json").is_file()
    assert not (tmp_path / "run" / "logs").exists() and not (tmp_path / "run" / "wandb").exists()
    assert not (tmp_path / "run" / "pretrain.json").exists() and not (tmp_path / "outputs" / "pretrain_cache").exists()


def test_debug_presets_shrink_the_run() -> None:
    plain = _compose(CONF_DIR)
    for preset, key in (("fast", "synthetic_scale"), ("overfit", "trainer"), ("profile", "trainer")):
        cfg = _compose(CONF_DIR, f"debug={preset}")
        assert _values(cfg)[key] != _values(plain)[key], f"debug={preset} does not set {key}"
    assert _compose(CONF_DIR, "debug=overfit").trainer.overfit_batches > 0
    assert _compose(CONF_DIR, "debug=profile").trainer.profiler


def test_synthetic_settings_change_the_generated_set(tmp_path) -> None:
    """``amr synth --preset/--seed/--scale`` and ``data.synthetic.{seed,scale}`` (through the data
    module) each change what is generated (``data.synthetic.preset`` must name ``data.name``'s set)."""
    from amr.cli import main
    from amr.data.datamodule import ensure_dataset

    def synth(out: str, *flags: str) -> str:
        main(["synth", "--out", str(tmp_path / out), "--preset", "castella", "--scale", "0.02", *flags])
        return "".join(sorted(p.read_text() for p in (tmp_path / out / "data").glob("*.jsonl")))

    base = synth("base")
    assert synth("again") == base
    for flag, value in (("--preset", "clotho_moment"), ("--seed", "3"), ("--scale", "0.04")):
        assert synth(flag[2:], flag, value) != base, f"amr synth {flag} changed nothing"
    root = tmp_path / "cfg"
    texts = {}
    for change in ("", "data.synthetic.seed=3", "data.synthetic.scale=0.04"):
        cfg = _compose(CONF_DIR, f"paths.root={root}", "synthetic_scale=0.02", *([change] if change else []))
        layout = ensure_dataset(cfg.data)
        texts[change] = layout.annotations("train").read_text()
    assert len(set(texts.values())) == len(texts), "a data.synthetic setting changed nothing"


def test_beam_search_changes_the_paraphrases(tmp_path, monkeypatch) -> None:
    """``amr backtranslate --num-beams`` and ``--max-new-tokens`` reach the translation, also with a
    translation cache filled by another run (the cache is keyed by the settings that change one)."""
    pytest.importorskip("sentencepiece")
    from amr.cli import main
    from amr.data.synth import CONCEPTS, TEMPLATES, _World
    from amr.testing.tiny_marian import build_tiny_marian

    world, rng = _World(0), np.random.default_rng(0)
    captions = [world.caption(CONCEPTS[i % len(CONCEPTS)], rng, i % 4) + f" {i}" for i in range(120)]
    corpus = captions + [t.format(s="dog", a="barks", m="loudly") for t in TEMPLATES]
    build_tiny_marian(tmp_path / "opus-mt-en-de", "en", "de", corpus, seed=1)
    build_tiny_marian(tmp_path / "opus-mt-de-en", "de", "en", corpus, seed=2)
    ann = tmp_path / "ann.jsonl"
    ann.write_text(
        "".join(f'{{"qid": "q{i}", "query": "{c}", "vid": "v", "duration": 60}}\n' for i, c in enumerate(captions[:16]))
    )

    def run(out: str, *flags: str) -> str:
        models = str(tmp_path / "opus-mt-{src}-{tgt}")
        common = ["--pivots", "de", "--backend", "transformers", "--model-template", models]
        main(
            [
                "backtranslate",
                str(ann),
                *common,
                "--out",
                str(tmp_path / out),
                "--cache-dir",
                str(tmp_path / "c"),
                *flags,
            ]
        )
        return (tmp_path / out).read_text()

    from transformers import MarianMTModel

    calls: list[dict] = []
    generate = MarianMTModel.generate

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(MarianMTModel, "generate", spy)
    greedy = run("greedy.jsonl", "--max-new-tokens", "12")
    assert calls and all(c["num_beams"] == 1 and c["max_new_tokens"] == 12 for c in calls)
    assert run("short.jsonl", "--max-new-tokens", "3") != greedy
    calls.clear()
    run("beams.jsonl", "--max-new-tokens", "12", "--num-beams", "4")
    assert calls and all(c["num_beams"] == 4 for c in calls)  # translated anew, not served from the cache
    calls.clear()
    assert run("greedy_again.jsonl", "--max-new-tokens", "12") == greedy and not calls


def test_channel_choice_changes_stereo_features(tmp_path) -> None:
    """``amr extract-audio --channel``: the first channel (official) or the mean of all."""
    import soundfile as sf

    from amr.clap.audio import audio_windows

    t = np.arange(44_100 * 2) / 44_100
    sf.write(tmp_path / "st.wav", np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 97 * t)], 1), 44_100)
    first = audio_windows(tmp_path / "st.wav", None, channel="first")
    mean = audio_windows(tmp_path / "st.wav", None, channel="mean")
    assert first.shape == mean.shape and not np.allclose(first, mean)


def test_predict_centered_pads_the_recording(tmp_path) -> None:
    """``amr predict --centered`` reads audio as Clotho-Moment's features are made: one more frame,
    the first centred at 0 s."""
    import soundfile as sf

    from amr.inference.predictor import read_recording

    sf.write(tmp_path / "a.wav", np.random.default_rng(0).uniform(-0.5, 0.5, 44_100 * 3), 44_100)
    plain, centered = read_recording(tmp_path / "a.wav"), read_recording(tmp_path / "a.wav", centered=True)
    assert len(centered.windows) == len(plain.windows) + 1
    assert centered.windows[0][: 44_100 // 2].sum() == 0


def test_predict_flags_reach_the_predictor(tmp_path, monkeypatch) -> None:
    """``amr predict``: ``--max-frames`` sets the window of a long recording (more forward passes
    for a shorter one), ``--no-calibrator`` ignores a calibrator beside the checkpoint."""
    from amr.cli import main
    from amr.inference.calibration import FEATURES, beside, fit
    from amr.inference.predictor import Predictor
    from tests.helpers import random_checkpoint

    ckpt = random_checkpoint(tmp_path / "m.ckpt")
    x = np.random.default_rng(0).normal(size=(200, len(FEATURES)))
    fit(x, x[:, 0] > 0.5, "logistic", DecodeConfig()).save(beside(ckpt))
    np.savez(tmp_path / "a.npz", features=np.random.default_rng(1).standard_normal((200, 768)).astype(np.float32))
    seen: list[tuple] = []
    monkeypatch.setattr(Predictor, "text_features", lambda self, q: np.ones((5, 768), dtype=np.float32))
    windows = Predictor._windows

    def spy(self, frames, txt):
        seen.append((self.max_frames, self.calibrator is not None))
        return windows(self, frames, txt)

    monkeypatch.setattr(Predictor, "_windows", spy)
    argv = ["predict", "--ckpt", str(ckpt), "--audio", str(tmp_path / "a.npz"), "--query", "a dog", "--device", "cpu"]
    for flags in ([], ["--max-frames", "64"], ["--no-calibrator"]):
        main([*argv, *flags])
    assert seen == [(300, True), (64, True), (300, False)]


def test_augment_settings_reach_the_stages_they_name(tmp_path) -> None:
    """Each ``augment.*`` setting changes what the data module of the stage(s) it names receives
    (time mask, caption pivots); ``num_workers`` reaches both stages' loaders. What the data layer
    does with them is tested in test_augment.py and test_data_store.py."""

    def received(*overrides: str) -> dict[str, tuple]:
        cfg = _compose(CONF_DIR, "experiment=system1", "augment.time_mask.stages=[finetune]", *overrides)
        out = {}
        for stage in (PRETRAIN_STAGE, MAIN_STAGE):
            dm = build_datamodule(cfg, stage)
            mask = None if dm.time_mask is None else (dm.time_mask.p, dm.time_mask.max_ratio)
            out[stage] = (mask, tuple(dm.pivots), dm.num_workers)
        return out

    base = received()
    assert base[MAIN_STAGE][0] is not None and base[MAIN_STAGE][1] and base[PRETRAIN_STAGE][0] is None
    cases = {
        "augment.time_mask.p=0.5": [MAIN_STAGE],
        "augment.time_mask.max_ratio=0.3": [MAIN_STAGE],
        "augment.time_mask.stages=[pretrain,finetune]": [PRETRAIN_STAGE],
        "augment.backtranslation.pivots=[fr]": [PRETRAIN_STAGE, MAIN_STAGE],
        "augment.backtranslation.stages=[pretrain]": [MAIN_STAGE],
        "num_workers=2": [PRETRAIN_STAGE, MAIN_STAGE],
    }
    assert {c.split("=")[0] for c in cases} >= {k for k in schema_keys() if k.startswith("augment.")}
    for change, stages in cases.items():
        got = received(change)
        assert [s for s in got if got[s] != base[s]] == stages, change


def test_paths_place_what_they_name(tmp_path) -> None:
    """``paths.output_dir`` holds the run, ``paths.cache_dir`` the feature packs and
    ``paths.pretrain_cache`` the cached pre-training; nothing goes to their defaults."""
    from amr.training.run import train

    where = {"output_dir": tmp_path / "run", "cache_dir": tmp_path / "packs", "pretrain_cache": tmp_path / "pc"}
    overrides = ["debug=fast", "experiment=system1", "logger=none", "pretrain.max_epochs=1", "train.max_epochs=1"]
    train(_compose(CONF_DIR, *overrides, f"paths.root={tmp_path}", *[f"paths.{k}={v}" for k, v in where.items()]))
    assert (where["output_dir"] / "test_metrics.json").is_file()
    assert list(where["cache_dir"].rglob("*")) and len(list(where["pretrain_cache"].glob("*/best.ckpt"))) == 1
    defaults = (tmp_path / "outputs" / "pretrain_cache", tmp_path / "outputs" / ".cache" / "packs")
    assert not any(d.exists() for d in defaults)


def test_hydra_and_paths_groups_place_the_run() -> None:
    """``hydra=default`` names each job's folder (under ``paths.root``) and log, and adds the sweep
    summary; ``paths=default`` puts data, caches and outputs under ``paths.root``."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["paths.root=/r", "experiment=system1"], return_hydra_config=True)
    assert cfg.hydra.job.name == "train"  # the job log: <run>/train.log
    assert str(cfg.hydra.run.dir).startswith("/r/outputs/runs/system1/")
    assert cfg.hydra.callbacks.sweep_summary._target_.endswith("SweepSummary")
    paths = OmegaConf.to_container(cfg.paths)
    assert all(str(v).startswith("${paths.root}") for k, v in paths.items() if k not in ("root", "output_dir"))
    assert _compose(CONF_DIR, "paths.root=/elsewhere").paths.cache_dir.startswith("/elsewhere/")


def test_model_group_is_the_official_network() -> None:
    """``model=qd_detr`` composes the official network's settings (the schema defaults, which the
    parity tests check against the official model), its widths those of the default features."""
    cfg = _compose(CONF_DIR, "model=qd_detr")
    settings = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(settings, dict) and settings.pop("name") == "qd_detr"
    assert QDDETRConfig(**settings) == QDDETRConfig()  # type: ignore[arg-type]

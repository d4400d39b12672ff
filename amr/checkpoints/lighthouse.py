"""lighthouse's checkpoints as amr checkpoints (``amr convert-lighthouse``).

lighthouse saves ``{"model", "optimizer", "lr_scheduler", "epoch", "opt"}``: the network's state
dict, the training state and ``opt``, an ``easydict.EasyDict`` of its merged YAML options. The file
is read by torch's weights-only unpickler with one class more allowed: the name
``easydict.EasyDict``, built as an ``OrderedDict`` (the one dict type whose pickled attribute
copy torch's unpickler accepts; nothing of easydict is imported or run). Any other class in the
file is refused in one line, as for every checkpoint amr reads.

The network is the one ``opt.model_name`` names; its widths, depths and counts are read from the
weights, its heads, dropouts and loss settings from ``opt``. Every weight must fit: the missing,
unexpected and mis-shaped keys are named.
"""

from __future__ import annotations

import importlib.metadata
from collections import OrderedDict
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from amr.checkpoints import load_strict, read, write_weights
from amr.data.features import Encoder
from amr.errors import InputError
from amr.model import LossConfig, build, criterion, retriever

OPTIONS_CLASS = "easydict.EasyDict"
CONVERTIBLE = ("moment_detr", "cg_detr")  # lighthouse's model_name -> amr's model.name, the same words


def read_lighthouse(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict and the options of a lighthouse checkpoint."""
    obj = read(path, allow=[(OrderedDict, OPTIONS_CLASS)])
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict) or not isinstance(obj.get("opt"), dict):
        raise InputError(
            "not a lighthouse checkpoint: expected a dict with 'model' (weights) and 'opt' (options)", path
        )
    state = obj["model"]
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError("not a lighthouse checkpoint: its 'model' is not a state dict of tensors", path)
    return {str(k).removeprefix("module."): v for k, v in state.items()}, dict(obj["opt"])


def _count(state: dict[str, torch.Tensor], prefix: str) -> int:
    """How many numbered layers the keys under ``prefix`` hold."""
    return len({k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)})


def _shape(state: dict[str, torch.Tensor], key: str, dim: int, path: str | Path) -> int:
    if key not in state:
        raise InputError(f"weights do not fit a lighthouse network: no {key}", path)
    return int(state[key].shape[dim])


def model_settings(state: dict[str, torch.Tensor], opt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """amr's ``model`` settings of a lighthouse network: sizes from the weights, the rest from
    ``opt`` (a setting it lacks keeps amr's default for that network)."""
    name = opt.get("model_name")
    if name not in CONVERTIBLE:
        why = " (lighthouse's QD-DETR reads another input layout than the official one)" if name == "qd_detr" else ""
        raise InputError(f"model_name {name!r}: amr converts {', '.join(CONVERTIBLE)} only{why}", path)
    sizes = {
        "hidden_dim": _shape(state, "class_embed.weight", 1, path),
        "num_queries": _shape(state, "query_embed.weight", 0, path),
        "txt_dim": _shape(state, "input_txt_proj.0.LayerNorm.weight", 0, path),
        "aud_dim": _shape(state, "input_vid_proj.0.LayerNorm.weight", 0, path) - 2,  # the 2 time features
        "n_input_proj": _count(state, "input_txt_proj."),
        "max_q_l": _shape(state, "txt_position_embed.position_embeddings.weight", 0, path),
        "dim_feedforward": _shape(state, "transformer.encoder.layers.0.linear1.weight", 0, path),
        "enc_layers": _count(state, "transformer.encoder.layers."),
        "dec_layers": _count(state, "transformer.decoder.layers."),
    }
    if name == "cg_detr":  # CG-DETR's own modules
        sizes |= {
            "t2v_layers": _count(state, "transformer.t2v_encoder.layers."),
            "moment_layers": _count(state, "transformer.mcls_encoder.layers."),
            "dummy_layers": _count(state, "txtproj_encoder.layers."),
            "sent_layers": _count(state, "scls_encoder.layers."),
            "num_dummies": _shape(state, "dummy_rep_token", 0, path),
            "total_prompts": _shape(state, "global_rep_token", 0, path),
        }
    settings: dict[str, Any] = {"name": name, **sizes}
    config = retriever({"name": name}).settings(sizes)  # the config alone: its defaults fill what opt lacks
    for f in fields(config):
        if f.name not in settings:
            settings[f.name] = type(getattr(config, f.name))(opt.get(f.name, getattr(config, f.name)))
    return settings


def loss_settings(opt: dict[str, Any]) -> dict[str, Any]:
    """amr's ``loss`` settings from lighthouse's options (the ones it has; amr's defaults else)."""
    default = LossConfig()
    names = ["set_cost_class", "set_cost_span", "set_cost_giou", "span_loss_coef", "giou_loss_coef"]
    names += ["label_loss_coef", "lw_saliency", "eos_coef", "saliency_margin"]
    return {**asdict(default), **{k: float(opt[k]) for k in names if k in opt}}


def convert_lighthouse(src: str | Path, out: str | Path) -> tuple[Path, str]:
    """Write ``src`` (a lighthouse checkpoint) as an amr checkpoint at ``out`` (never over a file).
    Returns the path and the network's name."""
    state, opt = read_lighthouse(src)
    settings = model_settings(state, opt, src)
    net = build(settings)[0]
    load_strict(net, state, src, f"lighthouse's {settings['name']} at the sizes its weights give")
    optim = {"lr": float(opt.get("lr", 1e-4)), "weight_decay": float(opt.get("wd", 1e-4))}
    optim |= {"lr_drop": int(opt.get("lr_drop", 400)), "lr_gamma": 0.1}
    loss = loss_settings(opt)
    hparams = {
        "model": settings,
        "loss": loss,
        "optim": optim,
        # lighthouse's CLAP features are MS-CLAP 2023's (its clap encoders load msclap's 2023 weights)
        "features": {"name": opt.get("dset_name"), "feat_dir": opt.get("dset_name"), "encoder": Encoder().record()},
        "converted_from": {
            "lighthouse": str(src),
            "pytorch-lightning": importlib.metadata.version("pytorch-lightning"),
        },
    }
    # the training module's keys: the network's, and the criterion's buffers (init_from loads both)
    state_out = {f"model.{k}": v for k, v in net.state_dict().items()}
    state_out |= {f"criterion.{k}": v for k, v in criterion(settings, loss).state_dict().items()}
    return write_weights(out, state_out, hparams), str(settings["name"])

"""The ``model`` group: every network trains the seed report's two-stage System 1 and serves its
checkpoints (evaluation, ``amr submit``, ``amr report``); lighthouse's checkpoints convert and
predict lighthouse's outputs; what a network cannot do is one line."""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from amr.checkpoints import Checkpoint
from amr.checkpoints.lighthouse import convert_lighthouse
from amr.cli import main
from amr.errors import InputError
from amr.inference.batch import predict_batch
from amr.model import MODELS
from amr.training.naming import system_name
from amr.training.run import train
from tests.conftest import PARITY, need_shared
from tests.helpers import debug_config, run_amr

NETWORKS = tuple(MODELS)  # qd_detr, moment_detr, cg_detr
LIGHTHOUSE = Path(os.environ.get("AMR_LIGHTHOUSE_FIXTURES", PARITY / "lighthouse"))


@pytest.fixture(scope="module")
def system1_runs(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """``amr-train debug=fast experiment=system1 model=M`` for every network (M is ``model.name``)."""
    root = tmp_path_factory.mktemp("models")
    for name in NETWORKS:
        train(debug_config(root, name, "experiment=system1", f"model={name}"))
    return root, {name: root / name for name in NETWORKS}


def test_each_model_trains_a_two_stage_system1_and_its_checkpoint_serves(system1_runs, tmp_path) -> None:
    """Both stages run with back-translation and the time mask for every ``model.name``; the
    pre-training cache keeps one entry per network; the best checkpoint builds its own network,
    and evaluating it (``fit=false``, composed with the default network) gives the run's
    predictions."""
    root, runs = system1_runs
    keys = set()
    for name, run in runs.items():
        record = json.loads((run / "run.json").read_text())
        keys.add(record["pretrain_key"])
        ckpt = Checkpoint.read(run / "checkpoints" / "best.ckpt")
        assert ckpt.model_settings["name"] == name
        assert type(ckpt.model()) is MODELS[name].network
        header = (run / "logs" / "finetune" / "metrics.csv").read_text().splitlines()[0].split(",")
        assert {"train/loss_span", "train/loss_saliency"} <= set(header)
        assert ("train/loss_ms_align" in header) == (name == "cg_detr")  # CG-DETR's own terms are logged

        train(debug_config(tmp_path, f"{name}_eval", "experiment=system1", "fit=false", f"ckpt_path={ckpt.path}"))
        preds = "predictions/test_preds.jsonl"
        assert (tmp_path / f"{name}_eval" / preds).read_text() == (run / preds).read_text(), name
    assert len(keys) == len(NETWORKS)  # the network is part of the pre-training's key

    # launched with model=M, a run is a system of its own (W&B group, sweep folder, report row)
    assert system_name("system1", ["model=cg_detr", "seed=2"]) == "system1,model=cg_detr"


def test_a_cg_detr_checkpoint_submits_a_split(system1_runs, tmp_path) -> None:
    """``amr submit`` runs a CG-DETR checkpoint over an evaluation root (inference path: no
    negatives, no targets)."""
    root, runs = system1_runs
    feats = next((root / "outputs" / ".cache").glob("synthetic_tiny/*/features/castella"))
    lines = [
        json.loads(x) for x in (feats.parent.parent / "data" / "castella_test_release.jsonl").read_text().splitlines()
    ]
    evaluation = tmp_path / "eval"
    (evaluation / "data").mkdir(parents=True)
    for x in lines:
        x.pop("relevant_windows")
    (evaluation / "data" / "dcase2026_evaluation.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    shutil.copytree(feats, evaluation / "features" / "dcase2026_evaluation")
    out = tmp_path / "submission.jsonl"
    ckpt = runs["cg_detr"] / "checkpoints" / "best.ckpt"
    main(
        ["submit", "--ckpt", str(ckpt), "--data-root", str(evaluation), "--out", str(out), "--cache-dir", str(tmp_path)]
    )
    sub = [json.loads(x) for x in out.read_text().splitlines()]
    assert [s["qid"] for s in sub] == [x["qid"] for x in lines]
    assert all(len(s["pred_relevant_windows"]) == 10 for s in sub)


def test_what_a_network_cannot_take_is_one_line(system1_runs, tmp_path) -> None:
    """Stacking CG-DETR or Moment-DETR, another network's setting, and a checkpoint of another
    network given to ``init_from`` or ``ckpt_path`` are refused before any data is read."""
    _, runs = system1_runs
    stacked = ("stacked_runs=2", "fixed_shapes=true")
    with pytest.raises(
        ValueError, match="stacked_runs: model=cg_detr cannot be stacked .*train its seeds as runs alone"
    ):
        train(debug_config(tmp_path, "s", "model=cg_detr", *stacked))
    with pytest.raises(ValueError, match="stacked_runs: model=moment_detr cannot be stacked"):
        train(debug_config(tmp_path, "s", "model=moment_detr", *stacked))
    with pytest.raises(ValueError, match=r"model\.t2v_mask: not a setting of model=cg_detr"):
        train(debug_config(tmp_path, "s", "model=cg_detr", "+model.t2v_mask=official"))
    with pytest.raises(ValueError, match="model.name='detr' is not a network amr has; choose one of qd_detr"):
        train(debug_config(tmp_path, "s", "model.name=detr"))
    best = runs["cg_detr"] / "checkpoints" / "best.ckpt"
    with pytest.raises(InputError, match="init_from: a cg_detr checkpoint, and this run trains qd_detr"):
        train(debug_config(tmp_path, "s", "experiment=castella_only", f"init_from={best}"))
    assert not (tmp_path / "s").exists()


# --- lighthouse checkpoints ------------------------------------------------------------------------


class _EasyDict(dict):
    """easydict's EasyDict as lighthouse pickles it: a dict whose items are also attributes."""

    def __init__(self, d: dict | None = None) -> None:
        super().__init__()
        for k, v in (d or {}).items():
            setattr(self, k, v)

    def __setattr__(self, name: str, value: object) -> None:
        value = _EasyDict(value) if isinstance(value, dict) and not isinstance(value, _EasyDict) else value
        super().__setattr__(name, value)
        super().__setitem__(name, value)


def _lighthouse_checkpoint(path: Path, name: str, monkeypatch, opt_value: object = None) -> Path:
    """A checkpoint as lighthouse's ``save_checkpoint`` writes it, from the fixture weights; its
    ``opt`` pickled as ``easydict.EasyDict`` (or ``opt_value`` when given)."""
    module = types.ModuleType("easydict")
    _EasyDict.__module__, _EasyDict.__qualname__ = "easydict", "EasyDict"
    module.EasyDict = _EasyDict  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "easydict", module)
    state = torch.load(need_shared(LIGHTHOUSE / f"{name}_state_dict.pt"), weights_only=True)
    d = state["class_embed.weight"].shape[1]
    opt = _EasyDict(
        {"model_name": name, "nheads": 4 if d == 32 else 8, "dropout": 0.1, "input_dropout": 0.5, "lr": 1e-4,
         "wd": 1e-4, "lr_drop": 400, "dset_name": "clotho-moment", "device": "cuda", "a_feat_types": None,
         "v_feat_dirs": None, "t_feat_dir": "features/clotho-moment/clap_text", "eos_coef": 0.1, "num_prompts": 2}
    )  # fmt: skip
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-4, "weight_decay": 1e-4, "params": list(range(3))}]}
    sched = {"step_size": 400, "gamma": 0.1, "base_lrs": [1e-4], "last_epoch": 7, "_last_lr": [1e-4]}
    obj = {"model": state, "optimizer": optimizer, "lr_scheduler": sched, "epoch": 7, "opt": opt_value or opt}
    torch.save(obj, path)
    return path


FIXTURE_KEYS = [("moment_detr", "out.", "post."), ("cg_detr", "infer_out.", "infer_post.")]  # outputs, windows


@pytest.mark.parametrize(("name", "out", "post"), FIXTURE_KEYS)
def test_a_lighthouse_checkpoint_converts_and_predicts_its_outputs(tmp_path, monkeypatch, capsys, name, out, post):
    """``amr convert-lighthouse``: the network ``opt.model_name`` names, at the sizes of its weights;
    the converted checkpoint, fed the official batch layout through amr's inference path, gives
    lighthouse's outputs and post-processed windows."""
    src = _lighthouse_checkpoint(tmp_path / "best.ckpt", name, monkeypatch)
    converted = tmp_path / "amr.ckpt"
    main(["convert-lighthouse", str(src), str(converted)])
    assert f"lighthouse's {name} written to {converted}" in capsys.readouterr().out
    ckpt = Checkpoint.read(converted)
    assert ckpt.model_settings["name"] == name and ckpt.model_settings["hidden_dim"] == 32
    model = ckpt.model(ckpt.encoder)
    io = torch.load(need_shared(LIGHTHOUSE / f"{name}_io.pt"), weights_only=True)
    lengths = io["input.src_vid_mask"].sum(1).long().tolist()
    batch = {
        "inputs": {
            "src_txt": io["input.src_txt"],
            "src_txt_mask": io["input.src_txt_mask"],
            "src_aud": torch.cat([io["input.src_aud"], io["input.src_vid"]], -1),  # official: time features last
            "src_aud_mask": io["input.src_vid_mask"],
        },
        "duration": torch.tensor(lengths, dtype=torch.float64),
        "meta": [{"qid": str(i), "query": "q", "vid": f"v{i}"} for i in range(len(lengths))],
    }
    with torch.no_grad():
        pred = predict_batch(model, batch, max_ts=150.0)  # lighthouse's Clotho-Moment clamp
    for key in ("pred_logits", "pred_spans", "saliency_scores"):
        torch.testing.assert_close(pred.outputs[key], io[out + key], atol=1e-5, rtol=0, msg=key)
    for b in range(len(lengths)):
        assert pred.lines[b]["pred_relevant_windows"] == io[f"{post}windows.{b}"].tolist()
    # and it starts a run of its network: the weights fit the module init_from loads
    assert ckpt.model_settings["aud_dim"] == 768 and ckpt.state.keys() >= {"criterion.empty_weight"}


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_lighthouse_checkpoint_with_a_payload_or_another_network_is_refused(tmp_path, monkeypatch, capsys) -> None:
    """Nothing but tensors, plain containers and easydict's options is built: a payload is one line
    and never runs; lighthouse's QD-DETR (another input layout than the official one) is refused."""
    monkeypatch.chdir(tmp_path)
    src = _lighthouse_checkpoint(tmp_path / "evil.ckpt", "cg_detr", monkeypatch, opt_value=_Payload())
    with pytest.raises(SystemExit):
        main(["convert-lighthouse", str(src), str(tmp_path / "out.ckpt")])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused to load: it names posix.system" in err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out.ckpt").exists()

    src = _lighthouse_checkpoint(tmp_path / "qd.ckpt", "cg_detr", monkeypatch)
    obj = torch.load(src, weights_only=False)
    obj["opt"]["model_name"] = "qd_detr"
    torch.save(obj, src)
    with pytest.raises(InputError, match="model_name 'qd_detr': amr converts moment_detr, cg_detr only"):
        convert_lighthouse(src, tmp_path / "out.ckpt")
    obj["opt"]["model_name"] = "moment_detr"  # CG-DETR's weights named as Moment-DETR's
    torch.save(obj, src)
    with pytest.raises(InputError, match="weights do not fit lighthouse's moment_detr"):
        convert_lighthouse(src, tmp_path / "out.ckpt")


def test_a_converted_cg_detr_checkpoint_predicts_on_a_recording(clap, audio_dir, tmp_path, monkeypatch) -> None:
    """``amr predict`` on raw audio (MS-CLAP features, windowed path) with a converted lighthouse
    CG-DETR: ranked moments inside the recording."""
    src = _lighthouse_checkpoint(tmp_path / "best.ckpt", "cg_detr", monkeypatch)
    converted = convert_lighthouse(src, tmp_path / "amr.ckpt")[0]
    argv = ["predict", "--ckpt", str(converted), "--audio", str(audio_dir / "long.wav"), "--query", "a dog barks"]
    proc = run_amr([*argv, "--clap-weights", str(clap / "clap_weights.pth"), "--top-k", "3", "--json"], clap)
    moments = json.loads(proc.stdout)["moments"]
    scores = [m["score"] for m in moments]
    assert len(moments) == 3 and scores == sorted(scores, reverse=True)
    assert all(0 <= m["start"] < m["end"] <= 7 for m in moments)

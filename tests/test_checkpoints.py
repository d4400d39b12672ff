"""amr.checkpoints: the one room that reads and writes checkpoints: strict, weights only, never
executing a file's code."""

from __future__ import annotations

import os
import pathlib

import pytest
import torch

from amr import checkpoints
from amr.cli import main
from amr.errors import InputError
from tests.helpers import random_checkpoint


def test_checkpoint_of_another_model_config_is_refused(tmp_path) -> None:
    ckpt = random_checkpoint(tmp_path / "a.ckpt")
    obj = torch.load(ckpt, weights_only=True)
    obj["hyper_parameters"]["model"]["hidden_dim"] = 128
    torch.save(obj, tmp_path / "b.ckpt")
    with pytest.raises(
        InputError, match=r"b\.ckpt: weights do not fit the checkpoint's model config: .*shape mismatch"
    ):
        checkpoints.load_model(tmp_path / "b.ckpt")
    official = {k.removeprefix("model."): v for k, v in obj["state_dict"].items() if k.startswith("model.")}
    torch.save({"model": official}, tmp_path / "c.pth")  # the official .pth layout
    with pytest.raises(InputError, match="convert-official"):
        checkpoints.load_model(tmp_path / "c.pth")


class _Payload:
    """Unpickling this creates ``marker``: a stand-in for any code a checkpoint could carry."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _composed(root: pathlib.Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from amr.training.run import CONF_DIR

    common = ["debug=fast", "logger=none", f"paths.root={root}", f"paths.output_dir={root / 'run'}"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[*common, *overrides])


def _run_with(path: pathlib.Path, *overrides: str) -> None:
    """amr-train (composed as Hydra composes it) in a folder beside ``path``."""
    from amr.training.run import train

    train(_composed(path.parent, *overrides))


def _pretrain_partial(path: pathlib.Path) -> None:
    """A poisoned ``<key>.partial`` of the pre-training cache, which a later job would resume."""
    from amr.training.pretrain_cache import pretrain_key
    from amr.training.run import train

    cfg = _composed(path.parent, "experiment=system1")
    partial = pathlib.Path(cfg.paths.pretrain_cache) / f"{pretrain_key(cfg)}.partial" / "checkpoints"
    partial.mkdir(parents=True)
    os.replace(path, partial / "last.ckpt")
    train(cfg)


@pytest.mark.parametrize(
    "load",
    [
        lambda p: _run_with(p, "experiment=castella_only", f"ckpt_path={p}"),  # amr-train ckpt_path= (resume)
        lambda p: _run_with(p, "experiment=castella_only", "fit=false", f"ckpt_path={p}"),  # amr-train fit=false
        _pretrain_partial,  # a pre-training stage resumed from the cache
        checkpoints.load_model,  # amr predict, amr submit, Predictor
        lambda p: checkpoints.load_weights(torch.nn.Linear(1, 1), p),  # init_from
        checkpoints.load_official,  # amr convert-official
        checkpoints.read_clap_state,  # MS-CLAP weights
        lambda p: checkpoints.export(p, p.with_suffix(".out")),  # amr export
    ],
)
def test_a_checkpoint_carrying_code_is_refused_not_run(tmp_path, load) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {}, "model": _Payload(marker)}, path)
    with pytest.raises(InputError, match=r"(evil|last)\.ckpt: refused to load: it names (posix|os|nt)\.mkdir"):
        load(path)
    assert not marker.exists()


def test_strict_load_names_missing_unexpected_and_misshaped_keys(tmp_path) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    state = {"0.weight": torch.zeros(3, 2), "0.bias": torch.zeros(4), "1.weight": torch.zeros(1, 3), "x": torch.ones(1)}
    with pytest.raises(InputError) as err:
        checkpoints.load_strict(net, state, "f.pth", "the net")
    msg = str(err.value)
    assert msg.startswith("f.pth: weights do not fit the net: ")
    assert "1 missing (first: 1.bias)" in msg and "1 unexpected (first: x)" in msg
    assert "1 shape mismatch (first: 0.bias (4,) vs (3,))" in msg
    state["0.bias"] = torch.full((3,), 2.0)
    state["1.bias"] = torch.ones(1)
    import re

    assert checkpoints.load_strict(net, state, "f.pth", "the net", ignore=re.compile("^x$")) == ["x"]
    assert torch.equal(net[0].bias, torch.full((3,), 2.0))


def test_export_keeps_weights_and_config_only(tmp_path) -> None:
    src = random_checkpoint(tmp_path / "last.ckpt")
    obj = torch.load(src, weights_only=True)
    moments = {
        i: {"exp_avg": torch.ones_like(v), "exp_avg_sq": torch.ones_like(v)}
        for i, v in enumerate(obj["state_dict"].values())
    }
    obj["optimizer_states"] = [{"state": moments}]  # AdamW's two moments per weight, as training saves them
    obj["loops"] = {"fit_loop": {"epoch": 3}}
    torch.save(obj, src)
    out = tmp_path / "shared.ckpt"
    main(["export", str(src), str(out)])
    got = torch.load(out, weights_only=True)
    assert set(got) == {"state_dict", "hyper_parameters", "pytorch-lightning_version"}
    assert got["hyper_parameters"] == obj["hyper_parameters"]
    for k, v in obj["state_dict"].items():
        assert torch.equal(got["state_dict"][k], v)
    assert out.stat().st_size < src.stat().st_size / 2
    a, b = checkpoints.load_model(src), checkpoints.load_model(out)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    with pytest.raises(SystemExit):  # never overwrites
        main(["export", str(src), str(out)])


FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "checkpoint_2026_12"


def test_a_checkpoint_written_before_the_reorganisation_loads_and_predicts_as_it_did() -> None:
    """``best.ckpt`` of a ``debug=fast`` run (hidden 16) written by the code before the package was
    laid out in rooms, with the network's outputs and the Predictor's moments it gave then."""
    import numpy as np

    from amr.inference.predictor import Predictor

    expected = torch.load(FIXTURE / "expected.pt", weights_only=True)
    ckpt = checkpoints.Checkpoint.read(FIXTURE / "best.ckpt")
    assert ckpt.decode is not None and ckpt.decode["name"] == "detr"
    from amr.training.module import MomentRetrievalModule

    hp = ckpt.hyper_parameters
    module = MomentRetrievalModule(model=hp["model"], loss=hp["loss"], optim=hp["optim"], decode=hp["decode"])
    checkpoints.load_weights(module, FIXTURE / "best.ckpt")  # as init_from and fit=false read it
    from amr.data.features import Encoder

    assert ckpt.encoder == Encoder()  # it predates the encoder record: MS-CLAP 2023, the only features then
    model = ckpt.model(Encoder())
    loaded, built = module.model.state_dict(), model.state_dict()
    assert loaded.keys() == built.keys() and all(torch.equal(loaded[k], built[k]) for k in built)
    torch.manual_seed(0)
    x = {
        "src_txt": torch.randn(2, 7, 768),
        "src_txt_mask": torch.ones(2, 7),
        "src_aud": torch.randn(2, 30, 770),
        "src_aud_mask": torch.ones(2, 30),
    }
    x["src_aud_mask"][1, 20:] = 0
    with torch.no_grad():
        out = model(**x)
    for key in ("pred_logits", "pred_spans", "saliency_scores"):
        torch.testing.assert_close(out[key], expected[key], rtol=0, atol=1e-6)
    rng = np.random.default_rng(7)
    frames = rng.standard_normal((40, 768)).astype(np.float32)
    long = rng.standard_normal((650, 768)).astype(np.float32)
    txt = rng.standard_normal((9, 768)).astype(np.float32)
    p = Predictor(FIXTURE / "best.ckpt", device="cpu")
    for audio, key in ((frames, "short"), (long, "long_moments")):
        got = torch.tensor([[m.start, m.end, m.score] for m in p.predict(audio, txt, top_k=10)], dtype=torch.float64)
        torch.testing.assert_close(got, expected[key], rtol=0, atol=1e-4)


@pytest.mark.parametrize("payload", [False, True])
def test_a_plain_pickle_is_named_for_what_it_is_in_one_line(tmp_path, payload) -> None:
    """A pickle that torch.save did not write (no zip, no legacy magic number) is never unpickled;
    the line says what it would import, and nothing (no torch warning) comes before it."""
    import pickle
    import subprocess
    import sys

    import numpy as np

    marker = tmp_path / "executed"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0], "x": _Payload(marker) if payload else None}, protocol=4))
    feats = tmp_path / "f.npz"
    np.savez(feats, features=np.ones((4, 768), dtype=np.float32))
    cmd = [sys.executable, "-m", "amr.cli", "predict", "--ckpt", str(path), "--audio", str(feats), "--query", "x"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and not marker.exists()
    what = "names posix.mkdir" if payload and os.name == "posix" else "holds plain data only"
    assert proc.stderr.splitlines() == [
        f"error: {path}: not a checkpoint: a plain pickle that {what}; amr never unpickles one"
    ]
    legacy = tmp_path / "legacy.pt"  # torch.save's pre-zip format still reads
    torch.save({"w": torch.ones(1)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(checkpoints.read(legacy)["w"], torch.ones(1))

"""LAION-CLAP extraction (``--encoder laion_clap``, ``features=laion_clap``) against the laion_clap
package's own module on the same random weights, offline; and a checkpoint trained on LAION-CLAP
features predicting on raw audio through it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from amr.data.features import Encoder, encoder_conf
from tests.helpers import CAPTIONS, random_checkpoint, run_amr, run_python

# our extraction and the package's own forward on the same windows and captions, in one process
# (HF_HOME must be set before transformers is imported)
SAME = """
import json, sys
import numpy as np, torch
from amr.clap.laion import LaionEncoder
from amr.clap.audio import audio_windows

weights, wav = sys.argv[1], sys.argv[2]
ours = LaionEncoder(weights, "cpu")
win = audio_windows(wav, None, False, "first", 48_000)
captions = ["A dog barks loudly", "someone hears a car that passes in the distance", "a bell"]
audio, text = ours.audio(win), ours.text(captions)

import laion_clap  # the package's own path: CLAP_Module, its loader, its audio pre-processing
from laion_clap.training.data import float32_to_int16, get_audio_features, int16_to_float32

pkg = laion_clap.CLAP_Module(enable_fusion=False, amodel=ours.amodel, device="cpu")
pkg.load_ckpt(weights, verbose=False)
pkg.model.eval()
items = []
for w in win:
    a = torch.from_numpy(int16_to_float32(float32_to_int16(w))).float()
    items.append(get_audio_features({}, a, 480000, "rand_trunc", "repeatpad", pkg.model_cfg["audio_cfg"]))
batch = {k: torch.cat([x[k].unsqueeze(0) for x in items]) for k in items[0]}
with torch.no_grad():
    ref = pkg.model.encode_audio(batch, device="cpu")["embedding"].numpy()
    tok = pkg.tokenizer(captions)
    hidden = pkg.model.text_branch(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
hidden = hidden["last_hidden_state"].numpy()
ref_text = [h[: int(n)] for h, n in zip(hidden, tok["attention_mask"].sum(1))]
print(json.dumps({
    "frames": len(win), "audio_shape": list(audio.shape), "audio_diff": float(np.abs(audio - ref).max()),
    "scale": float(np.abs(ref).max()), "lengths": [len(t) for t in text], "ref_lengths": [len(t) for t in ref_text],
    "text_diff": max(float(np.abs(a - b).max()) for a, b in zip(text, ref_text)),
}))
"""


@pytest.fixture(scope="module")
def laion(tmp_path_factory) -> Path:
    """A random-weight LAION-CLAP (HTSAT-tiny, 1-layer RoBERTa) and its offline hub cache."""
    import importlib.util

    if importlib.util.find_spec("laion_clap") is None:
        pytest.skip("laion_clap is not installed (pip install -e '.[laion]')")
    root = tmp_path_factory.mktemp("tiny_laion")
    run_python(["-m", "amr.testing.tiny_laion", str(root)], root)
    return root


def test_laion_features_equal_the_packages_own_forward(laion, audio_dir) -> None:
    proc = run_python(["-c", SAME, str(laion / "laion_weights.pt"), str(audio_dir / "a.wav")], laion)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["frames"] == 3 and got["audio_shape"] == [3, 768]  # 3.4 s: 3 windows of 1 s, HTSAT-tiny's width
    assert got["scale"] > 0.1 and got["audio_diff"] <= 1e-4
    assert got["lengths"] == got["ref_lengths"] and got["text_diff"] <= 1e-4


def test_laion_extraction_and_prediction_on_raw_audio(laion, audio_dir, tmp_path) -> None:
    weights = str(laion / "laion_weights.pt")
    out = tmp_path / "features" / "castella"
    common = ["--encoder", "laion_clap", "--clap-weights", weights, "--device", "cpu"]
    proc = run_amr(["extract-audio", "--audio-dir", str(audio_dir), "--out", str(out), *common], laion, check=False)
    assert proc.returncode == 1  # the bad files of the folder are listed; the good ones written
    assert "LAION-CLAP HTSAT-tiny weights:" in proc.stderr
    assert (
        sorted(p.stem for p in (out / "laion_clap").glob("*.npz")) == sorted(["a", "b", "c", "long"])
        and not (out / "clap").exists()
    )
    with np.load(out / "laion_clap" / "long.npz") as z:
        assert z["features"].shape == (7, 768)  # 7.5 s: 7 frames, as MS-CLAP's windowing
    ann = tmp_path / "ann.jsonl"
    ann.write_text(
        "".join(json.dumps({"qid": q, "query": c, "vid": "a", "duration": 3}) + "\n" for q, c in CAPTIONS.items())
    )
    run_amr(["extract-text", "--annotations", str(ann), "--out", str(out), *common], laion)
    with np.load(out / "laion_clap_text" / "qidq1.npz") as z:
        assert z["last_hidden_state"].shape[1] == 768

    # a checkpoint of LAION-CLAP features predicts on a recording through LAION-CLAP
    ckpt = random_checkpoint(tmp_path / "m.ckpt")
    obj = torch.load(ckpt, weights_only=True)
    obj["hyper_parameters"]["features"] = {
        "name": "castella",
        "feat_dir": "castella",
        "encoder": encoder_conf("laion_clap").record(),
    }
    torch.save(obj, ckpt)
    proc = run_amr(
        [
            "predict",
            "--ckpt",
            str(ckpt),
            "--audio",
            str(audio_dir / "long.wav"),
            "--query",
            "a dog",
            "--json",
            *common[2:],
        ],
        laion,
    )
    assert "features: laion_clap (the checkpoint's)" in proc.stderr
    moments = json.loads(proc.stdout)["moments"]
    assert moments and all(0 <= m["start"] < m["end"] <= 7 for m in moments)


def test_the_laion_option_names_its_folders_and_widths() -> None:
    """``features=laion_clap``: folders laion_clap/, laion_clap_text/; HTSAT-tiny's widths."""
    assert encoder_conf("laion_clap") == Encoder("laion_clap", "laion_clap", "laion_clap_text", 768, 768)
    assert encoder_conf("laion_clap").extracted and not encoder_conf("custom", audio_dim=4, text_dim=4).extracted
    from amr.clap.encoders import ENCODERS
    from amr.data.features import EXTRACTED

    assert tuple(ENCODERS) == EXTRACTED  # the names amr extracts are the ones it can build


def test_a_missing_extra_is_one_line(tmp_path) -> None:
    """``--encoder laion_clap`` without the laion extra: one line naming the pip install, no traceback."""
    import subprocess
    import sys

    import soundfile as sf

    (tmp_path / "wavs").mkdir()
    sf.write(tmp_path / "wavs" / "a.wav", np.full(48_000 * 2, 0.1, dtype=np.float32), 48_000)
    code = (
        "import sys; sys.modules['laion_clap'] = None; sys.modules['laion_clap.hook'] = None; "
        "from amr.cli import main; main(sys.argv[1:])"
    )
    argv = [
        "extract-audio",
        "--encoder",
        "laion_clap",
        "--audio-dir",
        str(tmp_path / "wavs"),
        "--out",
        str(tmp_path / "f"),
    ]
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(
        "error: LAION-CLAP feature extraction needs the optional extra: pip install -e '.[laion]'"
    )
    assert "Traceback" not in proc.stderr

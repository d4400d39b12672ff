"""Translation speed per backend on an OPUS-MT-sized random Marian model (74 M parameters):
steady-state captions/s of one direction (a back-translation is two such passes), model loading
and the one-time CTranslate2 conversion excluded. Random weights never emit EOS early, so every
caption decodes the full length: a worst case."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from amr.augment.backtranslate import DecodeOptions, make_translator
from amr.data.synth import CONCEPTS, _World
from amr.testing.tiny_marian import build_tiny_marian
from benchmarks.common import peak_rss_mb, table, update_report

OPUS_SIZE = {"d_model": 512, "layers": 6, "ffn": 2048, "heads": 8, "vocab_size": 200, "pad_vocab_to": 58101}


def main(n: int = 96, max_new_tokens: int = 32) -> dict:
    world = _World(0)
    rng = np.random.default_rng(0)
    captions = sorted({world.caption(CONCEPTS[i % len(CONCEPTS)], rng, i % 4) + f" {i}" for i in range(n)}, key=len)
    res: dict = {"captions": len(captions), "max_new_tokens": max_new_tokens}
    outputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_marian(Path(tmp) / "opus-mt-en-de", "en", "de", captions * 3, seed=1, **OPUS_SIZE)
        opts = DecodeOptions(max_new_tokens=max_new_tokens, batch_size=32)
        for backend in ("transformers", "ctranslate2"):
            t = time.perf_counter()
            tr = make_translator(backend, str(model), opts, Path(tmp) / "cache")
            setup = time.perf_counter() - t
            tr.translate(captions[:8])  # warm-up
            t = time.perf_counter()
            out = []
            for i in range(0, len(captions), opts.batch_size):
                out += tr.translate(captions[i : i + opts.batch_size])
            dt = time.perf_counter() - t
            outputs[backend] = out
            res[backend] = {"captions_per_s": len(captions) / dt, "setup_s": setup}
    res["speedup"] = res["ctranslate2"]["captions_per_s"] / res["transformers"]["captions_per_s"]
    res["outputs_differing"] = sum(a != b for a, b in zip(outputs["transformers"], outputs["ctranslate2"], strict=True))
    res["peak_rss_mb"] = peak_rss_mb()
    rows = [[b, f"{res[b]['captions_per_s']:.1f}", f"{res[b]['setup_s']:.1f}"] for b in ("transformers", "ctranslate2")]
    print(table(rows, ["backend (en->de, greedy, 32 tokens)", "captions/s", "load/convert s"]))
    print(
        f"ctranslate2 (int8) / transformers: {res['speedup']:.2f}x; "
        f"{res['outputs_differing']}/{len(captions)} outputs differ between backends"
    )
    update_report("backtranslate", res)
    return res


if __name__ == "__main__":
    main()

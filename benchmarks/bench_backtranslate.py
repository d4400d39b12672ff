"""Back-translation captions/s per backend on an OPUS-MT-sized random Marian model (74 M
parameters; random weights never stop early, so every caption decodes the full length)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from amr.augment.backtranslate import DecodeOptions, backtranslate
from amr.augment.tiny_marian import build_tiny_marian
from amr.data.synth import CONCEPTS, _World
from benchmarks.common import peak_rss_mb, table, update_report


def main(n: int = 96, max_new_tokens: int = 32) -> dict:
    world = _World(0)
    rng = np.random.default_rng(0)
    captions = [world.caption(CONCEPTS[i % len(CONCEPTS)], rng, i % 4) + f" {i}" for i in range(n)]
    queries = [{"qid": str(i), "query": c} for i, c in enumerate(captions)]
    res, rows, outputs = {}, [], {}
    with tempfile.TemporaryDirectory() as tmp:
        size = {"d_model": 512, "layers": 6, "ffn": 2048, "heads": 8, "vocab_size": 200, "pad_vocab_to": 58101}
        for src, tgt, seed in (("en", "de", 1), ("de", "en", 2)):
            build_tiny_marian(Path(tmp) / f"opus-mt-{src}-{tgt}", src, tgt, captions * 3, seed=seed, **size)
        opts = DecodeOptions(max_new_tokens=max_new_tokens, batch_size=32)
        for backend in ("transformers", "ctranslate2"):
            t = time.perf_counter()
            out, _ = backtranslate(
                queries, ["de"], backend, str(Path(tmp) / "opus-mt-{src}-{tgt}"), Path(tmp) / f"cache-{backend}", opts
            )
            dt = time.perf_counter() - t
            outputs[backend] = out
            res[backend] = {"captions_per_s": n / dt, "captions": n}
        differ = sum(
            a["versions"] != b["versions"] for a, b in zip(outputs["transformers"], outputs["ctranslate2"], strict=True)
        )
    res["speedup"] = res["ctranslate2"]["captions_per_s"] / res["transformers"]["captions_per_s"]
    res["outputs_differing"] = differ
    res["peak_rss_mb"] = peak_rss_mb()
    for b in ("transformers", "ctranslate2"):
        rows.append([b, f"{res[b]['captions_per_s']:.1f}"])
    print(table(rows, ["backend", "captions/s (en->de->en, incl. model load)"]))
    print(f"ctranslate2 / transformers: {res['speedup']:.2f}x; {differ}/{n} outputs differ between backends")
    update_report("backtranslate", res)
    return res


if __name__ == "__main__":
    main()

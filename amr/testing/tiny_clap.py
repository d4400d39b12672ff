"""A random-weight MS-CLAP 2023 that runs without hub access, for tests and benchmarks.

The audio encoder is the real HTSAT (its size is fixed by msclap); the text encoder is a 1-layer,
768-wide GPT-2 with a byte-level BPE tokenizer trained here, served under the hub name ``gpt2``
from a local cache folder, because msclap's packaged config names ``gpt2`` even when the weights
are a local file. Use :func:`offline_env` for the processes that load it: ``HF_HOME`` must be set
before transformers is imported.

    python -m amr.testing.tiny_clap OUT        # OUT/hf_home (the fake 'gpt2'), OUT/clap_weights.pth
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

COMMIT = "0" * 39 + "1"  # the cache's snapshot name for the local 'gpt2'


def offline_env(root: str | Path) -> dict[str, str]:
    """Environment for a process that loads the tiny model from ``root``."""
    return {"HF_HOME": str(Path(root) / "hf_home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def corpus(n: int = 400) -> list[str]:
    from amr.data.synth import CONCEPTS, MODIFIERS, TEMPLATES

    out = []
    for i in range(n):
        s, a = CONCEPTS[i % len(CONCEPTS)]
        t = TEMPLATES[(i // len(CONCEPTS)) % len(TEMPLATES)]
        out.append(t.format(s=s, a=a, m=MODIFIERS[i % len(MODIFIERS)]).capitalize() + "!?.,"[i % 4])
    return out


def build_text_model(hf_home: Path, sentences: Sequence[str], vocab_size: int = 600, seed: int = 0) -> Path:
    """Tokenizer + 1-layer GPT-2 (768 wide, as msclap needs) in a hub-cache snapshot for ``gpt2``."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2Model, GPT2TokenizerFast

    repo = Path(hf_home) / "hub" / "models--gpt2"
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(list(sentences), vocab_size=vocab_size, special_tokens=["<|endoftext|>"])
        bpe.save_model(tmp)
        vocab = json.loads((Path(tmp) / "vocab.json").read_text())
        # msclap pools at the last token whose id is not 0 and pads with '!': '!' must be id 0
        other = next(k for k, v in vocab.items() if v == 0)
        vocab[other], vocab["!"] = vocab["!"], 0
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        tok = GPT2TokenizerFast(
            vocab_file=str(Path(tmp) / "vocab.json"),
            merges_file=str(Path(tmp) / "merges.txt"),
            unk_token="<|endoftext|>",
            bos_token="<|endoftext|>",
            eos_token="<|endoftext|>",
        )
        tok.save_pretrained(snap)
    eos = vocab["<|endoftext|>"]
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(vocab), n_positions=128, n_embd=768, n_layer=1, n_head=4, bos_token_id=eos, eos_token_id=eos
    )
    GPT2Model(cfg).save_pretrained(snap)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snap


def build_weights(path: Path, seed: int = 0) -> Path:
    """Random MS-CLAP 2023 weights in msclap's checkpoint format (``{"model": state_dict}``).
    Needs the process environment of :func:`offline_env` (set before transformers is imported)."""
    import torch

    from amr.clap.model import clap_config, new_clap

    torch.manual_seed(seed)
    clap = new_clap(clap_config())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": clap.state_dict()}, path)
    return path


def main(argv: Sequence[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python -m amr.testing.tiny_clap OUT")
    root = Path(argv[0])
    os.environ.update(offline_env(root))  # before transformers / huggingface_hub are imported
    build_text_model(root / "hf_home", corpus())
    print(build_weights(root / "clap_weights.pth"))


if __name__ == "__main__":
    main(sys.argv[1:])

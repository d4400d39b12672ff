"""A random-weight LAION-CLAP that runs without hub access, for tests and benchmarks.

The audio encoder is the package's real HTSAT (tiny, its size fixed by the package's config); the
text encoder is a 1-layer, 768-wide RoBERTa with a byte-level BPE tokenizer trained here, served
under the hub name ``roberta-base``. The package also loads the ``bert-base-uncased`` and
``facebook/bart-base`` tokenizers when it is imported; small ones are served under those names.
Use :func:`amr.testing.tiny_clap.offline_env` for the processes that load it (``HF_HOME`` must be
set before transformers is imported); the MS-CLAP and LAION-CLAP fixtures share one cache.

    python -m amr.testing.tiny_laion OUT        # OUT/hf_home (the fake hub names), OUT/laion_weights.pt
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from amr.testing.tiny_clap import COMMIT, corpus, offline_env

SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0..4


def snapshot(hf_home: Path, repo_id: str) -> Path:
    """The snapshot folder of ``repo_id`` in a hub cache (``refs/main`` pointing at it)."""
    repo = Path(hf_home) / "hub" / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snap


def build_text_models(hf_home: Path, sentences: Sequence[str], vocab_size: int = 600, seed: int = 0) -> Path:
    """Tokenizers for ``roberta-base``, ``facebook/bart-base`` and ``bert-base-uncased``, and a
    1-layer RoBERTa (768 wide, as the package's text projection needs) under ``roberta-base``."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import BartTokenizer, BertTokenizer, RobertaConfig, RobertaModel, RobertaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(list(sentences), vocab_size=vocab_size, special_tokens=SPECIAL)
        bpe.save_model(tmp)
        vocab_file, merges_file = str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt")
        vocab = json.loads(Path(vocab_file).read_text())
        RobertaTokenizer(vocab_file, merges_file).save_pretrained(snapshot(hf_home, "roberta-base"))
        BartTokenizer(vocab_file, merges_file).save_pretrained(snapshot(hf_home, "facebook/bart-base"))
        words = sorted({w.strip("!?.,").lower() for s in sentences for w in s.split()})
        (Path(tmp) / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
        BertTokenizer(str(Path(tmp) / "vocab.txt")).save_pretrained(snapshot(hf_home, "bert-base-uncased"))
    torch.manual_seed(seed)
    cfg = RobertaConfig(
        vocab_size=len(vocab),
        hidden_size=768,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=80,  # 77 tokens after RoBERTa's padding offset of 2
        type_vocab_size=1,
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
    )
    snap = snapshot(hf_home, "roberta-base")
    RobertaModel(cfg).save_pretrained(snap)
    return snap


def build_weights(path: Path, amodel: str = "HTSAT-tiny", seed: int = 0) -> Path:
    """Random LAION-CLAP weights in the released checkpoints' format (``{"epoch", "state_dict"}``,
    keys prefixed ``module.``, RoBERTa's ``position_ids`` included). Needs the process environment
    of ``offline_env``."""
    import torch

    from amr.clap.laion import new_laion

    torch.manual_seed(seed)
    model = new_laion(amodel)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    # the released checkpoints carry RoBERTa's position_ids buffer (the package's loader deletes it)
    positions = model.text_branch.config.max_position_embeddings
    state["module.text_branch.embeddings.position_ids"] = torch.arange(positions)[None]
    torch.save({"epoch": 1, "state_dict": state}, path)
    return path


def main(argv: Sequence[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python -m amr.testing.tiny_laion OUT")
    root = Path(argv[0])
    os.environ.update(offline_env(root))  # before transformers / huggingface_hub are imported
    build_text_models(root / "hf_home", corpus())
    print(build_weights(root / "laion_weights.pt"))


if __name__ == "__main__":
    main(sys.argv[1:])

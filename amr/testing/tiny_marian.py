"""Build a tiny random-weight Marian translation model with real sentencepiece tokenizers, for
tests and benchmarks on machines without hub access. Its translations are junk; the code paths
(tokenizer, generate, CTranslate2 conversion) are the real ones."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path


def _sentencepiece(tmp: Path, lang: str, lines: Sequence[str], vocab_size: int) -> Path:
    """A unigram sentencepiece model of ``lines``."""
    import sentencepiece as spm

    text = tmp / f"{lang}.txt"
    text.write_text("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(tmp / lang),
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        unk_id=0,
        eos_id=1,
        bos_id=-1,
        pad_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return tmp / f"{lang}.model"


def _tokenizer_files(out: Path, src: str, tgt: str, corpus: Sequence[str], vocab_size: int, pad_to: int) -> dict:
    """source.spm, target.spm and the joint vocab.json of a Marian folder; returns the vocab."""
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        # a different "language" per side: the same corpus, words reversed on the target side
        models = {
            src: _sentencepiece(Path(tmp), src, list(corpus), vocab_size),
            tgt: _sentencepiece(Path(tmp), tgt, [" ".join(w[::-1] for w in s.split()) for s in corpus], vocab_size),
        }
        vocab = {"</s>": 0, "<unk>": 1}
        for lang in (src, tgt):
            sp = spm.SentencePieceProcessor(model_file=str(models[lang]))
            for i in range(sp.get_piece_size()):
                if not (sp.is_control(i) or sp.is_unknown(i)):
                    vocab.setdefault(sp.id_to_piece(i), len(vocab))
        while len(vocab) < pad_to - 1:  # filler entries: OPUS-MT-sized embedding and output layers
            vocab[f"<filler{len(vocab)}>"] = len(vocab)
        vocab["<pad>"] = len(vocab)
        (out / "vocab.json").write_text(json.dumps(vocab))
        shutil.copy(models[src], out / "source.spm")
        shutil.copy(models[tgt], out / "target.spm")
    return vocab


def build_tiny_marian(
    out: str | Path,
    src: str,
    tgt: str,
    corpus: Sequence[str],
    d_model: int = 64,
    layers: int = 2,
    ffn: int = 128,
    vocab_size: int = 120,
    seed: int = 0,
    heads: int = 4,
    pad_vocab_to: int = 0,
) -> Path:
    """Write a MarianMTModel + MarianTokenizer folder translating ``src`` -> ``tgt``.

    ``d_model=512, layers=6, ffn=2048, heads=8, pad_vocab_to=58101`` gives an OPUS-MT-sized model
    (74 M parameters) for speed measurements.
    """
    import torch
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = _tokenizer_files(out, src, tgt, corpus, vocab_size, pad_vocab_to)
    tok = MarianTokenizer(
        source_spm=str(out / "source.spm"),
        target_spm=str(out / "target.spm"),
        vocab=str(out / "vocab.json"),
        source_lang=src,
        target_lang=tgt,
    )
    tok.save_pretrained(out)
    pad = vocab["<pad>"]
    cfg = MarianConfig(  # type: ignore[call-arg]
        vocab_size=len(vocab),
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn,
        max_position_embeddings=512,
        pad_token_id=pad,
        eos_token_id=0,
        decoder_start_token_id=pad,
        forced_eos_token_id=0,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        activation_function="swish",
        static_position_embeddings=True,
    )
    torch.manual_seed(seed)
    model = MarianMTModel(cfg)
    model.generation_config = GenerationConfig(
        bad_words_ids=[[pad]], num_beams=1, max_length=64, pad_token_id=pad, eos_token_id=0, decoder_start_token_id=pad
    )
    model.save_pretrained(out)
    return out

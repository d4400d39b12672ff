"""Back-translation of captions with OPUS-MT Marian models: English -> pivot -> English.

Two backends run the same greedy (or beam) search: ``transformers`` (MarianMTModel, the reference)
and ``ctranslate2`` (the Marian folder converted once and cached; int8 on CPU, float16 on GPU).
Only unique captions are translated, in batches sorted by length. Every finished batch is
appended to a JSONL cache keyed by (model, caption), so an interrupted run loses at most the batch
in flight and a rerun translates only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from amr.errors import InputError

log = logging.getLogger(__name__)
DEFAULT_TEMPLATE = "Helsinki-NLP/opus-mt-{src}-{tgt}"


@dataclass
class DecodeOptions:
    num_beams: int = 1
    max_new_tokens: int = 64
    batch_size: int = 32  # sentences per call: speed only

    def cache_key(self, model: str) -> str:
        """The translation cache's key for ``model`` under these options: the settings that change a
        translation are part of it (the defaults' key is the model alone, as caches have it)."""
        if (self.num_beams, self.max_new_tokens) == (1, 64):
            return model
        return f"{model}|num_beams={self.num_beams}|max_new_tokens={self.max_new_tokens}"


class Translator(Protocol):
    name: str
    options: DecodeOptions

    def translate(self, sentences: Sequence[str]) -> list[str]: ...


def _resolve(model: str) -> str:
    """A local model folder, or a hub name (needs network or a filled hub cache)."""
    if Path(model).is_dir():
        return str(Path(model).resolve())
    if os.environ.get("HF_HUB_OFFLINE") == "1" or model.startswith((".", "/", "~")):
        raise InputError(
            f"translation model '{model}' is not a local folder (without network only local model folders "
            "work: point --model-template at folders, e.g. DIR/opus-mt-{src}-{tgt})"
        )
    return model


def check_models(template: str, pivots: Sequence[str]) -> None:
    """Before any work: every model of the template is a local folder, in the hub cache, or on a hub
    that answers (one short request each, no retries); else one line naming it."""
    from huggingface_hub import HfApi, try_to_load_from_cache

    for pivot in pivots:
        for src, tgt in (("en", pivot), (pivot, "en")):
            model = _resolve(template.format(src=src, tgt=tgt))
            if Path(model).is_dir() or isinstance(try_to_load_from_cache(model, "config.json"), str):
                continue
            try:
                HfApi().model_info(model, timeout=10)
            except Exception as e:  # not found, unreachable hub, malformed name
                reason = type(e).__name__
                raise InputError(
                    f"translation model '{model}' is not a local folder, not in the hub cache, and the hub "
                    f"does not serve it ({reason}); point --model-template at local folders",
                    "--model-template",
                ) from None


class MarianTranslator:
    """The reference backend: ``MarianMTModel.generate``."""

    def __init__(self, model: str, options: DecodeOptions, device: str | None = None) -> None:
        import torch
        from transformers import MarianMTModel, MarianTokenizer

        self.name = _resolve(model)
        self.options = options
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.tokenizer = MarianTokenizer.from_pretrained(self.name)
            self.model = MarianMTModel.from_pretrained(self.name).to(self.device).eval()  # type: ignore[arg-type]
        except OSError as e:
            raise InputError(f"cannot load Marian model '{model}': {str(e).splitlines()[0]}") from None

    def translate(self, sentences: Sequence[str]) -> list[str]:
        import torch

        batch = self.tokenizer(list(sentences), return_tensors="pt", padding=True, truncation=True).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(
                **batch, num_beams=self.options.num_beams, do_sample=False, max_new_tokens=self.options.max_new_tokens
            )
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)


class CT2Translator:
    """CTranslate2 backend over a converted copy of the Marian folder (converted once, cached)."""

    def __init__(
        self,
        model: str,
        options: DecodeOptions,
        cache_dir: str | Path,
        device: str | None = None,
        compute_type: str | None = None,
    ) -> None:
        import ctranslate2
        from transformers import MarianTokenizer

        self.name = _resolve(model)
        self.options = options
        if device is None:
            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        compute_type = compute_type or ("float16" if device == "cuda" else "int8")
        key = hashlib.sha256(f"{self.name}|{_folder_signature(self.name)}".encode()).hexdigest()[:16]
        converted = Path(cache_dir) / f"ct2-{key}"
        if not (converted / "model.bin").is_file():
            from ctranslate2.converters import TransformersConverter

            tmp = converted.with_name(converted.name + f".tmp{os.getpid()}")
            TransformersConverter(self.name).convert(str(tmp), force=True)
            if converted.exists():  # another process converted it meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.replace(tmp, converted)
        self.tokenizer = MarianTokenizer.from_pretrained(self.name)
        self.translator = ctranslate2.Translator(
            str(converted), device=device, compute_type=compute_type, intra_threads=os.cpu_count() or 1
        )

    def translate(self, sentences: Sequence[str]) -> list[str]:
        tokens = [self.tokenizer.convert_ids_to_tokens(self.tokenizer(s)["input_ids"]) for s in sentences]
        results = self.translator.translate_batch(
            tokens,
            beam_size=self.options.num_beams,
            max_batch_size=self.options.batch_size,
            max_decoding_length=self.options.max_new_tokens,
        )
        return [
            self.tokenizer.decode(self.tokenizer.convert_tokens_to_ids(r.hypotheses[0]), skip_special_tokens=True)
            for r in results
        ]


def _folder_signature(path: str) -> str:
    p = Path(path)
    if not p.is_dir():
        return path
    return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(p.iterdir()) if f.is_file())


def make_translator(backend: str, model: str, options: DecodeOptions, cache_dir: str | Path) -> Translator:
    if backend == "transformers":
        return MarianTranslator(model, options)
    if backend == "ctranslate2":
        return CT2Translator(model, options, cache_dir)
    raise ValueError(f"unknown backend {backend!r} (transformers or ctranslate2)")


class TranslationCache:
    """Append-only JSONL of ``{"model", "src", "out"}``; a truncated last line is ignored."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries: dict[tuple[str, str], str] = {}
        if self.path.is_file():
            lines = self.path.read_text().split("\n")
            for i, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    self.entries[(row["model"], row["src"])] = row["out"]
                except (json.JSONDecodeError, KeyError):
                    log.warning("%s:%d: ignoring a truncated or malformed cache line", self.path, i)
            if lines and lines[-1].strip():  # last line without newline: a write was cut off
                with self.path.open("a") as f:
                    f.write("\n")

    def get(self, model: str, src: str) -> str | None:
        return self.entries.get((model, src))

    def add(self, model: str, pairs: Iterable[tuple[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = [json.dumps({"model": model, "src": s, "out": o}) + "\n" for s, o in pairs]
        with self.path.open("a") as f:
            f.write("".join(rows))
            f.flush()
            os.fsync(f.fileno())
        for s, o in pairs:
            self.entries[(model, s)] = o


def translate_all(
    translator: Translator, sentences: Sequence[str], cache: TranslationCache, batch_size: int, desc: str
) -> dict[str, str]:
    """Translate unique sentences not yet cached, in length-sorted batches; returns src -> out."""
    key = translator.options.cache_key(translator.name)
    todo = sorted({s for s in sentences if cache.get(key, s) is None}, key=len)
    t0 = time.perf_counter()
    with tqdm(total=len(todo), desc=desc, unit="cap", disable=not todo) as bar:
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            out = translator.translate(chunk)
            cache.add(key, list(zip(chunk, out, strict=True)))
            bar.update(len(chunk))
            bar.set_postfix(cap_per_s=f"{(i + len(chunk)) / (time.perf_counter() - t0):.1f}")
    return {s: cache.get(key, s) or "" for s in set(sentences)}


def normalize_text(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s]", "", text.lower()).split())


@dataclass
class BacktranslationReport:
    queries: int = 0
    unique_captions: int = 0
    versions: int = 0
    dropped_identical: int = 0


def backtranslate(
    queries: Sequence[dict[str, Any]],
    pivots: Sequence[str],
    backend: str,
    template: str = DEFAULT_TEMPLATE,
    cache_dir: str | Path = "outputs/.cache/backtranslate",
    options: DecodeOptions | None = None,
) -> tuple[list[dict[str, Any]], BacktranslationReport]:
    """Paraphrase every query through each pivot language.

    Returns:
        one row per query: ``{"qid", "query", "versions": [{"pivot", "text"}], "dropped": [pivot]}``
        (versions equal to the original up to case and punctuation are dropped and listed), and counts.
    """
    options = options or DecodeOptions()
    check_models(template, pivots)
    cache_dir = Path(cache_dir)
    captions = [q["query"] for q in queries]
    report = BacktranslationReport(queries=len(queries), unique_captions=len(set(captions)))
    back: dict[str, dict[str, str]] = {}
    for pivot in pivots:
        fwd = make_translator(backend, template.format(src="en", tgt=pivot), options, cache_dir)
        cache = TranslationCache(cache_dir / f"{backend}-cache.jsonl")
        there = translate_all(fwd, captions, cache, options.batch_size, f"en->{pivot}")
        bwd = make_translator(backend, template.format(src=pivot, tgt="en"), options, cache_dir)
        again = translate_all(bwd, list(there.values()), cache, options.batch_size, f"{pivot}->en")
        back[pivot] = {c: again[there[c]] for c in set(captions)}
    rows = []
    for q in queries:
        versions, dropped = [], []
        for pivot in pivots:
            text = back[pivot][q["query"]].strip()
            if normalize_text(text) == normalize_text(q["query"]) or not text:
                dropped.append(pivot)
                report.dropped_identical += 1
            else:
                versions.append({"pivot": pivot, "text": text})
                report.versions += 1
        rows.append({"qid": q["qid"], "query": q["query"], "versions": versions, "dropped": dropped})
    return rows, report

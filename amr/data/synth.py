"""Synthetic datasets in the official on-disk layout (the embedded default for ``make run``).

The features are learnable but not trivial:

* Every word has a latent meaning vector. Text token features and audio frames are two different
  fixed random projections of latent space (the hidden mapping a model has to learn), plus each
  token's own identity vector, a little sentence context and noise.
* Sound events are (source, action) concepts; sources and actions are shared between concepts
  ("a man speaks" / "a woman speaks" / "a woman laughs"), so events are confusable.
* Recordings have one of several backgrounds with per-recording level, frame noise, and
  unannotated distractor events.
* Each caption has three paraphrases (synonyms, other word order), each with its own text features,
  stored as caption versions under the pivots ``de``, ``fr`` and ``es`` so that the back-translation
  machinery can be exercised with no translation model. They are paraphrases, not translations.

Presets: ``clotho_moment`` (60 s recordings, 61 centred frames, one window per query, ``fg_dB``)
and ``castella`` (1-5 min recordings, one frame per second, up to five moments per recording,
queries with one to three windows). Generation is deterministic for a seed.

Another encoder's feature set (the ``features`` group: other folders, other widths) is derived from
the MS-CLAP-shaped one by fixed random projections (:func:`derive_features`), so the same
recordings and queries can be trained on with features of any width.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from amr.augment.caption_versions import PIVOTS
from amr.data.features import AUDIO_KEY, FEAT_DIM, TEXT_KEY, Encoder, FeatureLayout, Layout, encoder_conf
from amr.io import atomic_open, write_jsonl

SOURCES = {
    "dog": ["dog", "puppy", "hound"],
    "man": ["man", "guy", "gentleman"],
    "woman": ["woman", "lady", "female"],
    "car": ["car", "vehicle", "automobile"],
    "bird": ["bird", "songbird", "sparrow"],
    "crowd": ["crowd", "audience", "group"],
    "engine": ["engine", "motor", "machine"],
    "water": ["water", "stream", "liquid"],
    "door": ["door", "gate", "hatch"],
    "bell": ["bell", "chime", "gong"],
    "train": ["train", "locomotive", "railcar"],
    "baby": ["baby", "infant", "toddler"],
}
ACTIONS = {
    "barks": ["barks", "yaps", "woofs"],
    "speaks": ["speaks", "talks", "chats"],
    "laughs": ["laughs", "giggles", "chuckles"],
    "passes": ["passes", "drives by", "goes by"],
    "sings": ["sings", "chirps", "tweets"],
    "cheers": ["cheers", "applauds", "claps"],
    "runs": ["runs", "idles", "hums"],
    "flows": ["flows", "trickles", "splashes"],
    "slams": ["slams", "bangs", "shuts"],
    "rings": ["rings", "tolls", "dings"],
    "cries": ["cries", "wails", "sobs"],
    "rumbles": ["rumbles", "roars", "thunders"],
}
CONCEPTS = [
    ("dog", "barks"),
    ("man", "speaks"),
    ("woman", "speaks"),
    ("woman", "laughs"),
    ("man", "laughs"),
    ("car", "passes"),
    ("bird", "sings"),
    ("woman", "sings"),
    ("crowd", "cheers"),
    ("engine", "runs"),
    ("water", "flows"),
    ("door", "slams"),
    ("bell", "rings"),
    ("train", "passes"),
    ("baby", "cries"),
    ("train", "rumbles"),
    ("engine", "rumbles"),
    ("baby", "laughs"),
    ("crowd", "speaks"),
    ("dog", "cries"),
]
MODIFIERS = ["loudly", "softly", "nearby", "in the distance", "repeatedly", "briefly", "outside", "indoors"]
TEMPLATES = ["a {s} {a} {m}", "the {s} {a} {m}", "{m} a {s} {a}", "a {s} {a}", "someone hears a {s} that {a} {m}"]
BACKGROUNDS = 6
LATENT = 48


@dataclass(frozen=True)
class Preset:
    name: str  # annotation prefix
    feat_dir: str
    recordings: dict[str, int]  # split -> number of recordings
    min_s: int
    max_s: int
    centered: bool  # Clotho-Moment frames are centred (T = duration + 1)
    events_per_recording: tuple[int, int]
    windows_per_query: tuple[int, int]
    distractors: tuple[int, int]
    fg_db: bool


PRESETS = {
    "clotho_moment": Preset(
        "clotho_moment",
        "clotho-moment",
        {"train": 1000, "val": 150, "test": 150},
        60,
        60,
        True,
        (1, 2),
        (1, 1),
        (0, 2),
        True,
    ),
    "castella": Preset(
        "castella", "castella", {"train": 120, "val": 30, "test": 40}, 60, 300, False, (1, 5), (1, 3), (1, 4), False
    ),
}


class _World:
    """The fixed hidden structure shared by all splits of a seed: latent meanings and projections."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.text_proj = rng.standard_normal((LATENT, FEAT_DIM)) / np.sqrt(LATENT)
        self.audio_proj = rng.standard_normal((LATENT, FEAT_DIM)) / np.sqrt(LATENT)
        self.meaning: dict[str, np.ndarray] = {}
        self.identity: dict[str, np.ndarray] = {}
        for group in list(SOURCES.values()) + list(ACTIONS.values()):
            base = rng.standard_normal(LATENT)
            for word in group:  # synonyms share a meaning, up to a little noise
                self.meaning[word] = base + 0.15 * rng.standard_normal(LATENT)
        words = {w for t in TEMPLATES for w in t.replace("{s}", "").replace("{a}", "").replace("{m}", "").split()}
        words |= {w for m in MODIFIERS for w in m.split()} | {"<eos>"}
        for group in list(SOURCES.values()) + list(ACTIONS.values()):
            words |= {w for phrase in group for w in phrase.split()}
        for w in sorted(words):
            self.meaning.setdefault(w, 0.3 * rng.standard_normal(LATENT))
            self.identity[w] = rng.standard_normal(FEAT_DIM) * 0.35
        self.background = rng.standard_normal((BACKGROUNDS, LATENT))

    def concept_audio(self, concept: tuple[str, str]) -> np.ndarray:
        s, a = concept
        return (self.meaning[SOURCES[s][0]] + self.meaning[ACTIONS[a][0]]) @ self.audio_proj

    def caption(self, concept: tuple[str, str], rng: np.random.Generator, version: int) -> str:
        s, a = concept
        tpl = TEMPLATES[(version + int(rng.integers(len(TEMPLATES)))) % len(TEMPLATES)]
        si, ai = (0, 0) if version == 0 else (version % 3, (version + 1) % 3)  # paraphrases swap synonyms
        return (
            tpl.format(s=SOURCES[s][si], a=ACTIONS[a][ai], m=MODIFIERS[int(rng.integers(len(MODIFIERS)))])
            .strip()
            .capitalize()
        )

    def text_features(self, caption: str, rng: np.random.Generator) -> np.ndarray:
        words = caption.lower().split() + ["<eos>"]
        lat = np.stack([self.meaning[w] for w in words])
        context = lat.mean(0, keepdims=True)
        feats = (lat + 0.3 * context) @ self.text_proj + np.stack([self.identity[w] for w in words])
        return (feats + 0.05 * rng.standard_normal(feats.shape)).astype(np.float32)


def _place(
    rng: np.random.Generator, duration: int, n: int, min_len: float, max_len: float, decimals: int = 1
) -> list[list[float]]:
    """Up to n non-overlapping windows inside [0, duration], rounded to ``decimals``."""
    out: list[list[float]] = []
    for _ in range(n * 8):
        if len(out) == n:
            break
        length = float(rng.uniform(min_len, max_len))
        st = float(rng.uniform(0, max(0.0, duration - length)))
        w = [round(st, decimals), round(min(duration, st + length), decimals)]
        if decimals == 0:
            w = [int(w[0]), int(w[1])]
        if all(w[1] <= o[0] or w[0] >= o[1] for o in out) and w[1] > w[0]:
            out.append(w)
    return sorted(out)


def _activation(windows: list[list[float]], frames: int, centered: bool) -> np.ndarray:
    """(frames,) in [0, 1]: how much of each frame's second each window covers."""
    starts = np.arange(frames) - (0.5 if centered else 0.0)
    act = np.zeros(frames)
    for st, ed in windows:
        act += np.clip(np.minimum(starts + 1, ed) - np.maximum(starts, st), 0, 1)
    return np.clip(act, 0, 1)


def generate(
    out: str | Path, preset: str = "clotho_moment", seed: int = 0, scale: float = 1.0, dtype: str = "float16"
) -> Layout:
    """Write a synthetic dataset in the official layout under ``out`` and return its layout.

    Args:
        preset: ``clotho_moment`` or ``castella``.
        scale: multiplies the number of recordings per split (tests use small values).
        dtype: of the npz arrays; float16 halves the disk use, float32 is what the official archives hold.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    p = PRESETS[preset]
    p = replace(p, recordings={k: max(2, round(v * scale)) for k, v in p.recordings.items()})
    layout = Layout(Path(out), p.name, p.feat_dir)
    world = _World(seed)
    layout.features.audio_dir.mkdir(parents=True, exist_ok=True)
    for pivot in (None, *PIVOTS):
        layout.features.text_dir(pivot).mkdir(parents=True, exist_ok=True)
    qcount = 0
    for split_i, (split, n_rec) in enumerate(p.recordings.items()):
        rng = np.random.default_rng([seed, split_i, 7])
        rows: list[dict[str, Any]] = []
        versions: list[dict[str, Any]] = []
        for r in range(n_rec):
            vid = f"synth_{p.name}_{split}_{r:05d}"
            qcount = _recording(p, world, rng, layout.features, vid, rows, versions, qcount, dtype)
        write_jsonl(layout.versions_file(split), versions)
        write_jsonl(layout.annotations(split), rows)
    with atomic_open(Path(out) / "data" / f"{p.name}_SYNTHETIC.json") as f:
        json.dump({"preset": preset, "seed": seed, "scale": scale, "note": "synthetic features, not real audio"}, f)
    return layout


def _recording(
    p: Preset,
    world: _World,
    rng: np.random.Generator,
    feats: FeatureLayout,
    vid: str,
    rows: list[dict[str, Any]],
    versions: list[dict[str, Any]],
    qcount: int,
    dtype: str,
) -> int:
    """Write one recording's features, its captions and their versions; append its annotation and
    paraphrase lines. Returns the running query count."""
    duration = int(rng.integers(p.min_s, p.max_s + 1))
    frames = duration + 1 if p.centered else duration
    bg = int(rng.integers(BACKGROUNDS))
    audio = (world.background[bg] @ world.audio_proj) * rng.uniform(0.3, 0.8)
    audio = np.repeat(audio[None], frames, 0) + 0.35 * rng.standard_normal((frames, FEAT_DIM))
    n_events = int(rng.integers(p.events_per_recording[0], p.events_per_recording[1] + 1))
    concepts = rng.choice(len(CONCEPTS), size=n_events, replace=False)
    n_win = [int(rng.integers(p.windows_per_query[0], p.windows_per_query[1] + 1)) for _ in concepts]
    max_len = 25.0 if p.centered else min(40.0, duration / 4)
    spots = _place(rng, duration, sum(n_win), 1.0 if not p.centered else 4.0, max_len, decimals=1 if p.centered else 0)
    n_distract = int(rng.integers(p.distractors[0], p.distractors[1] + 1))
    for _ in range(n_distract):  # unannotated events of concepts not queried here
        c = int(rng.integers(len(CONCEPTS)))
        if c in concepts:
            continue
        w = _place(rng, duration, 1, 2.0, 12.0)
        audio += np.outer(_activation(w, frames, p.centered), world.concept_audio(CONCEPTS[c])) * 0.8
    pos = 0
    for c, n in zip(concepts, n_win, strict=True):
        windows = spots[pos : pos + n]
        pos += n
        if not windows:
            continue
        level = float(rng.uniform(-5, 5))
        gain = 10 ** (level / 20)
        audio += np.outer(_activation(windows, frames, p.centered), world.concept_audio(CONCEPTS[c])) * gain
        qid = f"{qcount:05d}" if p.centered else f"{vid}_{len(rows) + 1}"
        qcount += 1
        caption = world.caption(CONCEPTS[c], rng, 0)
        row = {"qid": qid, "query": caption, "duration": duration, "vid": vid, "relevant_windows": windows}
        if p.fg_db:
            row["fg_dB"] = level
        rows.append(row)
        _save(feats.text_file(qid), TEXT_KEY, world.text_features(caption, rng), dtype)
        vers = []
        for v, pivot in enumerate(PIVOTS, start=1):
            text = world.caption(CONCEPTS[c], rng, v)
            vers.append({"pivot": pivot, "text": text})
            _save(feats.text_file(qid, pivot), TEXT_KEY, world.text_features(text, rng), dtype)
        versions.append({"qid": qid, "query": caption, "versions": vers, "dropped": []})
    _save(feats.audio_file(vid), AUDIO_KEY, audio, dtype)
    return qcount


def _save(path: Path, key: str, arr: np.ndarray, dtype: str = "float16") -> None:
    with atomic_open(path, "wb") as f:
        np.savez(f, **{key: arr.astype(dtype)})  # type: ignore[arg-type]


def custom_encoder(audio_dim: int, text_dim: int) -> Encoder:
    """The ``features=custom`` encoder (its folders as ``conf/features/custom.yaml`` names them)."""
    return encoder_conf("custom", audio_dim=audio_dim, text_dim=text_dim)


def _marker(layout: Layout) -> Path:
    return layout.root / "data" / f"{layout.name}_SYNTHETIC.{layout.encoder.audio}.json"


def has_features(layout: Layout) -> bool:
    """Whether the synthetic set at ``layout`` holds its encoder's feature set (with its widths)."""
    if layout.encoder.audio == Encoder().audio:
        return True  # the MS-CLAP-shaped set is written with the annotations
    marker = _marker(layout)
    return marker.is_file() and json.loads(marker.read_text()).get("encoder") == layout.encoder.record()


def derive_features(layout: Layout, seed: int = 0, dtype: str = "float16") -> None:
    """Write ``layout.encoder``'s feature set of a synthetic dataset: every 768-d MS-CLAP-shaped
    array (audio frames, captions and their versions) through a fixed random projection to the
    encoder's width (``seed`` draws the two projections). A killed run is redone file by file."""
    enc = layout.encoder
    base = Layout(layout.root, layout.name, layout.feat_dir).features
    rng = np.random.default_rng([seed, 11])
    proj = {
        AUDIO_KEY: rng.standard_normal((FEAT_DIM, enc.audio_dim)) / np.sqrt(FEAT_DIM),
        TEXT_KEY: rng.standard_normal((FEAT_DIM, enc.text_dim)) / np.sqrt(FEAT_DIM),
    }
    pairs = [(base.audio_dir, layout.features.audio_dir, AUDIO_KEY)]
    pairs += [(base.text_dir(pv), layout.features.text_dir(pv), TEXT_KEY) for pv in (None, *PIVOTS)]
    for src, dst, key in pairs:
        dst.mkdir(parents=True, exist_ok=True)
        for npz in sorted(src.glob("*.npz")):
            with np.load(npz) as z:
                arr = z[key].astype(np.float32)
            _save(dst / npz.name, key, arr @ proj[key], dtype)
    with atomic_open(_marker(layout)) as f:
        json.dump({"encoder": enc.record(), "seed": seed, "note": "projected synthetic features"}, f)

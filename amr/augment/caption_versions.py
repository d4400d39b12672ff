"""Caption versions: besides its original caption, a training item may have one paraphrase per
pivot language (back-translation through that language). Each epoch, each item draws one of them.

A version is named by its pivot everywhere: the config (``augment.backtranslation.pivots``), the
paraphrase file (``{"pivot", "text"}``, ``"dropped": [pivot, ...]``), the feature folder
(``clap_text_versions/<pivot>/``), the packed store (key ``<pivot>/<qid>``) and the CLI
(``--pivots``). The original caption is the version ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from amr.errors import InputError
from amr.io import read_jsonl

PIVOTS = ("de", "fr", "es")  # the OPUS-MT pivot languages the seed report uses


def version_choices(pivots: Sequence[str]) -> tuple[str | None, ...]:
    """What an item draws from each epoch: the original caption (None), then each pivot."""
    return (None, *pivots)


def choose_version(choices: Sequence[str | None], u: float) -> str | None:
    """One item's caption version for one epoch, uniform over :func:`version_choices`; ``u`` is a
    uniform draw in [0, 1)."""
    return choices[int(u * len(choices))]


def text_key(qid: str, pivot: str | None, alias: dict[str, str]) -> str:
    """Packed-store key of a caption version; a version dropped as identical to the original is
    served by the original."""
    if pivot is None:
        return qid
    key = f"{pivot}/{qid}"
    return alias.get(key, key)


def _read_paraphrases(path: Path) -> tuple[dict[str, set[str]], dict[str, int]]:
    """Per pivot: the qids whose paraphrase equalled the original (dropped), and the texts listed."""
    dropped: dict[str, set[str]] = {}
    listed: dict[str, int] = {}
    if path.is_file():
        for _, row in read_jsonl(path):
            for pivot in row.get("dropped", []):
                dropped.setdefault(pivot, set()).add(str(row["qid"]))
            for v in row.get("versions", []):
                listed[v.get("pivot")] = listed.get(v.get("pivot"), 0) + 1
    return dropped, listed


def resolve_versions(
    qids: Sequence[str],
    pivots: Sequence[str],
    paraphrases: Path,
    text_file: Callable[[str, str], Path],
) -> dict[str, str]:
    """Check that every query has a feature file for every pivot, unless the paraphrase file records
    that pivot's paraphrase as identical to the original (then the original serves); no silent
    fallback otherwise. Returns those aliases, ``"<pivot>/<qid>" -> qid``.

    Raises:
        InputError: the pivot, how many queries lack it, the first qids, and the feature folder.
    """
    dropped, listed = _read_paraphrases(paraphrases)
    alias: dict[str, str] = {}
    for pivot in pivots:
        missing = []
        for qid in qids:
            if qid in dropped.get(pivot, ()):
                alias[f"{pivot}/{qid}"] = qid
            elif not text_file(qid, pivot).is_file():
                missing.append(qid)
        if missing:
            hint = ""
            if paraphrases.is_file():
                n = listed.get(pivot, 0)
                hint = f" ({paraphrases.name} lists {n} texts for '{pivot}'; extract their text features)"
            raise InputError(
                f"caption version '{pivot}' missing for {len(missing)} of {len(qids)} queries "
                f"(first: {', '.join(missing[:3])}){hint}",
                text_file(missing[0], pivot).parent,
            )
    return alias

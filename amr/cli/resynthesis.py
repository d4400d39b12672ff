"""``amr resynth``: re-synthesise Clotho-Moment from Clotho v2.1 and Walking Tours audio."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from amr.cli.common import clap_options, encoder_factory
from amr.errors import InputError

if TYPE_CHECKING:
    from amr.resynth.run import Output


def _output(args: argparse.Namespace, split: str) -> Output:
    from amr.resynth.run import Output

    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}", "--workers")
    if not args.features:
        given = [f for f, v in (("--keep-audio", args.keep_audio), ("--clap-weights", args.clap_weights),
                                ("--device", args.device)) if v]  # fmt: skip
        if given:
            raise InputError("only read with --features", given[0])
    writer = None
    if args.features:
        from amr.resynth.features import FeatureWriter

        writer = FeatureWriter(args.out, encoder_factory(args), args.batch_size)
    return Output(args.out, split, args.workers, writer, args.keep_audio)


def _official(args: argparse.Namespace) -> None:
    from amr.resynth.run import resynth_split

    splits = [args.split]
    if args.split == "all":  # a split no video falls in is skipped (with few videos 7:1:2 leaves val empty)
        from amr.resynth.recipe import RecipeConfig
        from amr.resynth.sources import list_videos, split_videos

        videos = split_videos(list_videos(args.walking_tours, lambda line: None), RecipeConfig().split_ratio)
        splits = [s for s in ("train", "val", "test") if videos[s]]
        for empty in sorted(set(videos) - set(splits)):
            print(f"{empty}: no recording falls in this split (7:1:2 of {sum(map(len, videos.values()))}); skipped")
    for split in splits:
        s = resynth_split(args.clotho, args.walking_tours, _output(args, split), args.seed, args.limit)
        print(
            f"{split}: {s['recordings']} recordings ({s['hours']:.1f} h), {s['events']} events "
            f"from {s['clips']} clips; {s['dropped_clips']} clips dropped, {s['problems']} input problem(s) above"
        )
    print(f"written under {args.out} (data/clotho_moment_<split>_release.jsonl, audio/ or features/)")


def _replay(args: argparse.Namespace) -> None:
    from amr.resynth.replay import replay, split_of

    split = args.split or split_of(args.recipe)
    s = replay(args.recipe, args.clotho, args.walking_tours, _output(args, split))
    print(f"{split}: {s['recordings']} recordings, {s['events']} events; {s['problems']} input problem(s) above")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clotho", required=True, type=Path, help="Clotho v2.1: clotho_captions_*.csv, development/, ...")
    p.add_argument("--walking-tours", required=True, type=Path, help="folder of the long recordings (.wav/.flac)")
    p.add_argument("--out", required=True, type=Path, help="dataset root (data/, audio/); a killed run resumes")
    p.add_argument("--workers", type=int, default=1, help="processes (the result does not depend on it)")
    p.add_argument("--features", action="store_true", help="MS-CLAP features of mixtures and captions, no WAVs")
    p.add_argument("--keep-audio", action="store_true", help="with --features: write the WAVs too")
    p.add_argument("--batch-size", type=int, default=64, help="CLAP windows per forward pass")
    clap_options(p)


def resynth_commands(sub: argparse._SubParsersAction) -> None:
    rs = sub.add_parser("resynth", help="re-synthesise Clotho-Moment from Clotho v2.1 and Walking Tours audio")
    rs_sub = rs.add_subparsers(dest="recipe_kind", required=True)
    ro = rs_sub.add_parser("official", help="the public generator's recipe, streamed (no background clips written)")
    _common(ro)
    ro.add_argument("--split", choices=["train", "val", "test", "all"], default="all")
    ro.add_argument("--seed", type=int, default=0)
    ro.add_argument("--limit", type=int, help="only the first N recordings of each split (a trial)")
    ro.set_defaults(fn=_official)
    rp = rs_sub.add_parser("replay", help="re-create a released recipe (recipe_valid.json, recipe_test.json)")
    rp.add_argument("recipe", type=Path)
    _common(rp)
    rp.add_argument("--split", choices=["train", "val", "test"], help="default: from the recipe's file name")
    rp.set_defaults(fn=_replay)

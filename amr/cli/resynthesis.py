"""``amr resynth``: re-synthesise Clotho-Moment (or CASTELLA-like sets) from Clotho v2.1 and Walking
Tours audio."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from amr.cli.common import clap_options, encoder_factory
from amr.errors import InputError
from amr.io import at_least_one, check_output

if TYPE_CHECKING:
    from amr.resynth.design import Design
    from amr.resynth.run import Output


def _output(args: argparse.Namespace, split: str, design: Design) -> Output:
    from amr.resynth.run import Output

    at_least_one(args.workers, "--workers")
    if not args.features:
        given = [f for f, v in (("--keep-audio", args.keep_audio), ("--clap-weights", args.clap_weights),
                                ("--device", args.device)) if v]  # fmt: skip
        if given:
            raise InputError("only read with --features", given[0])
    writer = None
    if args.features:
        from amr.resynth.features import FeatureWriter

        writer = FeatureWriter(
            args.out, encoder_factory(args), args.batch_size, design.name, design.feat_dir, design.centered
        )
    return Output(args.out, split, args.workers, writer, args.keep_audio)


def _splits(args: argparse.Namespace, design: Design) -> list[str]:
    """The splits asked for; with ``all``, a split no video falls in is skipped (with one line)."""
    if args.split != "all":
        return [args.split]
    from amr.resynth.sources import list_videos, split_videos

    videos = split_videos(list_videos(args.walking_tours, lambda line: None), design.cfg.split_ratio)
    splits = [s for s in ("train", "val", "test") if videos[s]]
    ratio = ":".join(map(str, design.cfg.split_ratio))
    for empty in sorted(set(videos) - set(splits)):
        print(f"{empty}: no recording falls in this split ({ratio} of {sum(map(len, videos.values()))}); skipped")
    return splits


def _check_out(args: argparse.Namespace) -> None:
    """The dataset root written (a killed run resumes there) lies apart from every input."""
    if getattr(args, "limit", None) is not None:
        at_least_one(args.limit, "--limit")
    at_least_one(args.batch_size, "--batch-size")
    inputs = [args.clotho, args.walking_tours, getattr(args, "recipe", None), getattr(args, "config", None)]
    check_output(args.out, [*inputs, args.clap_weights], resumes=True)


def _generate(args: argparse.Namespace, design: Design) -> None:
    from amr.resynth.run import resynth_split

    _check_out(args)
    for split in _splits(args, design):
        s = resynth_split(args.clotho, args.walking_tours, _output(args, split, design), args.seed, args.limit, design)
        print(
            f"{split}: {s['recordings']} recordings ({s['hours']:.1f} h), {s['queries']} queries, "
            f"{s['events']} events from {s['clips']} clips; {s['dropped_clips']} clips dropped, "
            f"{s['problems']} input problem(s) above"
        )
    print(f"written under {args.out} (data/{design.name}_<split>_release.jsonl, audio/ or features/{design.feat_dir}/)")


def _official(args: argparse.Namespace) -> None:
    from amr.resynth.design import Official

    _generate(args, Official())


def _castella_like(args: argparse.Namespace) -> None:
    from amr.resynth.castella import CONFIG, load

    _generate(args, load(args.config or CONFIG, args.set))


def _fit(args: argparse.Namespace) -> None:
    import yaml

    from amr.resynth.castella import fit, length_summary

    fitted = fit(args.annotations, args.max_windows)
    print(yaml.safe_dump(fitted, sort_keys=False, default_flow_style=None), end="")
    print(length_summary(args.annotations, fitted["length_log_mean"], fitted["length_log_std"]))


def _replay(args: argparse.Namespace) -> None:
    from amr.resynth.replay import replay, split_of

    _check_out(args)
    split = args.split or split_of(args.recipe)
    from amr.resynth.design import Official

    s = replay(args.recipe, args.clotho, args.walking_tours, _output(args, split, Official()))
    print(f"{split}: {s['recordings']} recordings, {s['events']} events; {s['problems']} input problem(s) above")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clotho", required=True, type=Path, help="Clotho v2.1: clotho_captions_*.csv, development/, ...")
    p.add_argument("--walking-tours", required=True, type=Path, help="folder of the long recordings (.wav/.flac/.mp4)")
    p.add_argument("--out", required=True, type=Path, help="dataset root (data/, audio/); a killed run resumes")
    p.add_argument("--workers", type=int, default=1, help="processes (the result does not depend on it)")
    p.add_argument("--features", action="store_true", help="MS-CLAP features of mixtures and captions, no WAVs")
    p.add_argument("--keep-audio", action="store_true", help="with --features: write the WAVs too")
    p.add_argument("--batch-size", type=int, default=64, help="CLAP windows per forward pass")
    clap_options(p)


def _drawn(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="only the first N recordings of each split (a trial)")


def resynth_commands(sub: argparse._SubParsersAction) -> None:
    rs = sub.add_parser("resynth", help="re-synthesise Clotho-Moment (or CASTELLA-like sets) from raw audio")
    rs_sub = rs.add_subparsers(dest="recipe_kind", required=True)
    ro = rs_sub.add_parser("official", help="the public generator's recipe, streamed (no background clips written)")
    _drawn(ro)
    ro.set_defaults(fn=_official)
    rc = rs_sub.add_parser("castella-like", help="CASTELLA-shaped recordings (lengths, queries, recurring windows)")
    _drawn(rc)
    rc.add_argument("--config", type=Path, help="distributions (default: conf/resynth/castella_like.yaml)")
    rc.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config value")
    rc.set_defaults(fn=_castella_like)
    rf = rs_sub.add_parser("fit-castella", help="print castella-like distributions fit to annotation files (YAML)")
    rf.add_argument("annotations", type=Path, nargs="+", help="e.g. data/castella_train_release.jsonl")
    rf.add_argument("--max-windows", type=int, default=10, help="queries with more windows count as this many")
    rf.set_defaults(fn=_fit)
    rp = rs_sub.add_parser("replay", help="re-create a released recipe (recipe_valid.json, recipe_test.json)")
    rp.add_argument("recipe", type=Path)
    _common(rp)
    rp.add_argument("--split", choices=["train", "val", "test"], help="default: from the recipe's file name")
    rp.set_defaults(fn=_replay)

"""``amr``: data, evaluation and checkpoint commands (training is ``amr-train``)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amr.cli.common import add_decode_options, calibrator_option, clap_options, encoder_factory
from amr.cli.demo import demo_commands
from amr.cli.rescoring import rescore_commands
from amr.cli.results import result_commands
from amr.cli.resynthesis import resynth_commands
from amr.errors import InputError, MissingExtra, os_error_behind, os_error_line
from amr.io import at_least_one, check_output, file_name

if TYPE_CHECKING:
    from amr.clap.extract import ExtractReport


def _synth(args: argparse.Namespace) -> None:
    from amr.data.annotations import load_annotations, split_stats
    from amr.data.features import Layout
    from amr.data.synth import PRESETS, custom_encoder, derive_features, generate

    if not (args.scale > 0 and math.isfinite(args.scale)):
        raise InputError(f"--scale must be a positive number, got {args.scale}", "--scale")
    widths = [args.audio_dim, args.text_dim]
    if (None in widths) != (widths == [None, None]):
        raise InputError("give both --audio-dim and --text-dim (a second feature set's widths), or neither", args.out)
    for flag, width in zip(("--audio-dim", "--text-dim"), widths, strict=True):
        if width is not None:
            at_least_one(width, flag)
    there = Layout(args.out, PRESETS[args.preset].name, PRESETS[args.preset].feat_dir)
    taken = [
        p for p in (*(there.annotations(s) for s in ("train", "val", "test")), there.features.folder) if p.exists()
    ]
    if taken and not args.overwrite:
        raise InputError(f"holds a {there.name} dataset ({taken[0].name}); pass --overwrite to replace it", args.out)
    layout = generate(args.out, preset=args.preset, seed=args.seed, scale=args.scale)
    if args.audio_dim is not None:
        custom = custom_encoder(args.audio_dim, args.text_dim)
        derive_features(Layout(layout.root, layout.name, layout.feat_dir, custom), args.seed)
        said = f"{custom.audio_dim}-d audio, {custom.text_dim}-d text"
        print(f"{custom.name} features ({said}) in {custom.audio}/, {custom.text}/")
    for split in ("train", "val", "test"):
        s = split_stats(load_annotations(layout.annotations(split)))
        print(
            f"{layout.name} {split}: {s['queries']} queries, {s['recordings']} recordings, {s['windows']} windows, "
            f"mean duration {s['mean_duration_s']:.0f} s, mean window {s['mean_window_s']:.1f} s"
        )
    print(f"written under {layout.root}")


def _convert(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from amr.checkpoints import load_official, write_weights
    from amr.model import QDDETRConfig
    from amr.training.config import LossCfg, OptimCfg
    from amr.training.module import MomentRetrievalModule

    check_output(args.out, [args.checkpoint])
    model = load_official(args.checkpoint, t2v_mask=args.t2v_mask)
    settings = {"name": "qd_detr", **asdict(QDDETRConfig(t2v_mask=args.t2v_mask))}
    module = MomentRetrievalModule(model=settings, loss=asdict(LossCfg()), optim=asdict(OptimCfg()))
    module.model.load_state_dict(model.state_dict())
    write_weights(args.out, module.state_dict(), dict(module.hparams))
    print(f"amr checkpoint written to {args.out}")


def _convert_lighthouse(args: argparse.Namespace) -> None:
    from amr.checkpoints.lighthouse import convert_lighthouse

    check_output(args.out, [args.checkpoint])
    out, name = convert_lighthouse(args.checkpoint, args.out)
    print(f"amr checkpoint of lighthouse's {name} written to {out} (model={name})")


def _export(args: argparse.Namespace) -> None:
    from amr.checkpoints import export

    check_output(args.out, [args.checkpoint])
    out = export(args.checkpoint, args.out)
    mb = out.stat().st_size / 2**20
    print(f"weights and config of {args.checkpoint} written to {out} ({mb:.1f} MB)")


def _backtranslate(args: argparse.Namespace) -> None:
    from amr.augment.backtranslate import DecodeOptions, backtranslate
    from amr.data.annotations import load_annotations
    from amr.io import write_jsonl

    check_output(args.out, args.annotations, args.overwrite)
    for pivot in args.pivots:
        file_name(pivot, "pivot", "--pivots")
    queries = []
    seen: set[str] = set()
    for path in args.annotations:
        for q in load_annotations(path, require_windows=False):
            if q.qid not in seen:
                seen.add(q.qid)
                queries.append({"qid": q.qid, "query": q.query})
    options = DecodeOptions(num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    rows, report = backtranslate(queries, args.pivots, args.backend, args.model_template, args.cache_dir, options)
    write_jsonl(args.out, rows)
    print(
        f"{report.queries} queries ({report.unique_captions} unique captions), {report.versions} versions written "
        f"to {args.out}; {report.dropped_identical} dropped as identical to the original"
    )


def _submit(args: argparse.Namespace) -> None:
    from amr.inference.decoders import parse_decode
    from amr.inference.predictor import evaluation_lines
    from amr.metrics.predictions import write_predictions, write_submission

    scores = args.out.with_suffix(".scores.jsonl")
    for out in (args.out, scores):
        check_output(out, [args.ckpt, args.data_root, args.annotations, args.calibrator])
    lines, how = evaluation_lines(
        args.ckpt,
        args.data_root,
        args.feat_dir,
        args.annotations,
        args.cache_dir,
        parse_decode(args.decode, args.set),
        calibrator_option(args),
    )
    write_predictions(scores, lines)
    write_submission(args.out, lines)
    print(f"{len(lines)} queries ({how}): submission {args.out}, with scores {scores}")


def _finish(report: ExtractReport, what: str) -> None:
    print(report.summary(what))
    if report.failures:
        print(f"{len(report.failures)} file(s) failed:", file=sys.stderr)
        for line in report.failures:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(1)


def _extract_audio(args: argparse.Namespace) -> None:
    from amr.clap.encoders import sample_rate
    from amr.clap.extract import extract_audio_dir
    from amr.data.features import encoder_conf

    at_least_one(args.batch_size, "--batch-size")
    max_s = args.max_seconds if args.max_seconds > 0 else None
    check_output(args.out, [args.audio_dir, args.clap_weights], resumes=True)
    report = extract_audio_dir(
        args.audio_dir,
        args.out,
        encoder_factory(args),
        max_s,
        args.centered,
        args.channel,
        args.batch_size,
        encoder_conf(args.encoder),
        sample_rate(args.encoder),
    )
    _finish(report, "audio feature")


def _extract_text(args: argparse.Namespace) -> None:
    from amr.clap.extract import extract_text
    from amr.data.features import encoder_conf

    at_least_one(args.batch_size, "--batch-size")
    check_output(args.out, [*args.annotations, args.paraphrases, args.clap_weights], resumes=True)
    folders = encoder_conf(args.encoder)
    report = extract_text(args.annotations, args.paraphrases, args.out, encoder_factory(args), args.batch_size, folders)
    _finish(report, "text feature")


def _predict(args: argparse.Namespace) -> None:
    import json

    from amr.checkpoints import Checkpoint
    from amr.data.features import TEXT_KEY, load_npz_array
    from amr.inference.decoders import parse_decode
    from amr.inference.predictor import MIN_WINDOW, WINDOW_WHY, Predictor, check_query, read_recording

    at_least_one(args.top_k, "--top-k")
    at_least_one(args.max_frames, "--max-frames", MIN_WINDOW, WINDOW_WHY)
    for q in args.query or []:
        check_query(q, "--query")
    decode = parse_decode(args.decode, args.set)
    checkpoint = Checkpoint.read(args.ckpt)  # read once, here and by the Predictor
    encoder = checkpoint.encoder  # the features it reads: its own encoder's
    if args.query and not encoder.extracted:
        raise InputError(
            f"the checkpoint reads {encoder.name} features, which amr does not compute from text: "
            f"give each query's token features ({encoder.text_dim}-d) with --query-features",
            "--query",
        )
    queries: list[tuple[str, Any]] = [(q, q) for q in args.query or []]
    queries += [(str(f), load_npz_array(f, TEXT_KEY, encoder.text_dim)) for f in args.query_features or []]
    recording = read_recording(args.audio, args.centered, encoder)  # bad audio fails before any model loads
    predictor = Predictor(
        checkpoint,
        args.clap_weights,
        args.device,
        args.centered,
        args.max_frames,
        decode=decode,
        calibrator=calibrator_option(args),
    )
    print(predictor.decoding, file=sys.stderr)  # which decoder and calibrator formed the moments
    print(f"features: {encoder.name} (the checkpoint's)", file=sys.stderr)
    frames = predictor.audio_features(recording)
    results = [(q, predictor.predict(frames, value, args.top_k)) for q, value in queries]
    if args.json:
        doc = [{"audio": str(args.audio), "query": q, "moments": [m.to_json() for m in ms]} for q, ms in results]
        print(json.dumps(doc[0] if len(doc) == 1 else doc, indent=2))
        return
    for q, moments in results:
        print(f'{args.audio} ({len(frames)} frames of 1 s): "{q}"')
        print(f"{'rank':>4}  {'start':>8}  {'end':>8}  {'score':>6}")
        for i, m in enumerate(moments, 1):
            print(f"{i:>4}  {m.start:>8.1f}  {m.end:>8.1f}  {m.score:>6.4f}")


def _data_commands(sub: argparse._SubParsersAction) -> None:
    """Commands for synthetic data, caption versions and CLAP features."""
    s = sub.add_parser("synth", help="write a synthetic dataset in the official layout")
    s.add_argument("--preset", choices=["clotho_moment", "castella"], required=True)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--scale", type=float, default=1.0, help="multiplies the number of recordings")
    s.add_argument("--overwrite", action="store_true", help="replace a dataset of this preset already at --out")
    for flag in ("--audio-dim", "--text-dim"):
        s.add_argument(flag, type=int, help="also write a feature set of these widths, as features=custom reads it")
    s.set_defaults(fn=_synth)

    b = sub.add_parser("backtranslate", help="paraphrase captions through pivot languages (OPUS-MT)")
    b.add_argument("annotations", nargs="+", type=Path, help="annotation JSONL file(s)")
    b.add_argument("--pivots", nargs="+", default=["de"])
    b.add_argument(
        "--model-template",
        default="Helsinki-NLP/opus-mt-{src}-{tgt}",
        help="hub name or local folder with {src} and {tgt}",
    )
    b.add_argument("--backend", choices=["transformers", "ctranslate2"], default="ctranslate2")
    b.add_argument("--out", type=Path, required=True, help="paraphrases JSONL, one line per query")
    b.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    b.add_argument("--cache-dir", type=Path, default=Path("outputs/.cache/backtranslate"))
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--num-beams", type=int, default=1)
    b.add_argument("--max-new-tokens", type=int, default=64)
    b.set_defaults(fn=_backtranslate)

    xa = sub.add_parser("extract-audio", help="audio features (1 frame/s) of a folder of audio files")
    xa.add_argument("--audio-dir", required=True, type=Path)
    xa.add_argument(
        "--out",
        required=True,
        type=Path,
        help="FEATURES_DIR, e.g. features/castella: writes clap/{vid}.npz (laion_clap/ with --encoder laion_clap)",
    )
    xa.add_argument("--max-seconds", type=float, default=300.0, help="cut longer audio (0: keep all)")
    xa.add_argument("--centered", action="store_true", help="pad 0.5 s on both sides (Clotho-Moment's frames)")
    xa.add_argument("--channel", choices=["first", "mean"], default="first", help="official: the first channel")
    xa.add_argument("--batch-size", type=int, default=64, help="windows per forward pass")
    clap_options(xa, encoders=True)
    xa.set_defaults(fn=_extract_audio)

    xt = sub.add_parser("extract-text", help="token-level text features of captions (MS-CLAP's GPT-2, or RoBERTa)")
    xt.add_argument("--annotations", required=True, nargs="+", type=Path, help="annotation JSONL file(s)")
    xt.add_argument("--paraphrases", type=Path, help="paraphrase JSONL (amr backtranslate): caption versions too")
    xt.add_argument(
        "--out",
        required=True,
        type=Path,
        help="FEATURES_DIR: writes clap_text/ and clap_text_versions/ (or laion_clap_...)",
    )
    xt.add_argument("--batch-size", type=int, default=64, help="captions per forward pass")
    clap_options(xt, encoders=True)
    xt.set_defaults(fn=_extract_text)


def _model_commands(sub: argparse._SubParsersAction) -> None:
    """Commands for checkpoints and inference."""
    u = sub.add_parser("submit", help="DCASE evaluation-set submission from a checkpoint and the distributed features")
    u.add_argument("--ckpt", required=True, type=Path, help="amr checkpoint (a run's best, or a converted one)")
    u.add_argument(
        "--data-root",
        required=True,
        type=Path,
        help="holds features/dcase2026_evaluation/ in the checkpoint's encoder's folders",
    )
    u.add_argument("--out", required=True, type=Path)
    u.add_argument("--feat-dir", default="dcase2026_evaluation")
    u.add_argument("--annotations", type=Path, help="default: DATA_ROOT/data/dcase2026_evaluation.jsonl")
    u.add_argument("--cache-dir", type=Path, default=Path("outputs/.cache/packs"))
    add_decode_options(u)
    u.set_defaults(fn=_submit)

    pr = sub.add_parser("predict", help="moments of a text query in an audio file (or a features .npz)")
    pr.add_argument("--ckpt", required=True, type=Path)
    pr.add_argument("--audio", required=True, type=Path)
    asked = pr.add_mutually_exclusive_group(required=True)
    asked.add_argument("--query", action="append", help="repeat for several queries")
    asked.add_argument(
        "--query-features",
        action="append",
        type=Path,
        help="a query's token features (.npz, key last_hidden_state), for features amr does not extract; repeatable",
    )
    pr.add_argument("--top-k", type=int, default=5)
    pr.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pr.add_argument("--centered", action="store_true", help="features as Clotho-Moment's (0.5 s padding)")
    pr.add_argument("--max-frames", type=int, default=300, help="longer audio is windowed with half overlap")
    add_decode_options(pr)
    clap_options(pr)
    pr.set_defaults(fn=_predict)

    c = sub.add_parser("convert-official", help="official baseline .pth -> amr Lightning checkpoint")
    c.add_argument("checkpoint", type=Path)
    c.add_argument("out", type=Path)
    c.add_argument("--t2v-mask", choices=["official", "per_sample"], default="official")
    c.set_defaults(fn=_convert)

    lh = sub.add_parser("convert-lighthouse", help="lighthouse checkpoint (Moment-DETR, CG-DETR) -> amr checkpoint")
    lh.add_argument("checkpoint", type=Path, help="lighthouse's {model, optimizer, lr_scheduler, epoch, opt} file")
    lh.add_argument("out", type=Path)
    lh.set_defaults(fn=_convert_lighthouse)

    x = sub.add_parser("export", help="weights and config of a checkpoint, without optimizer state, for sharing")
    x.add_argument("checkpoint", type=Path, help="a run's best or last checkpoint")
    x.add_argument("out", type=Path)
    x.set_defaults(fn=_export)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="amr", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_data_commands, resynth_commands, result_commands, rescore_commands, _model_commands, demo_commands):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (InputError, MissingExtra) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as e:  # read-only or full output folder, ... (perhaps wrapped by torch)
        if (cause := os_error_behind(e)) is None:
            raise
        print(f"error: {os_error_line(cause)}", file=sys.stderr)
        raise SystemExit(2) from None

"""Outputs never replace, lie inside or contain what a command reads: every ``amr`` command with an
output is enumerated from the parser and tried with its output inside (or equal to, or around) one
of its inputs; each is one line before any work, and nothing on disk changes."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from amr.cli import build_parser, main
from amr.training.run import CONF_DIR, train


def _commands_with_an_output(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _commands_with_an_output(sub, f"{prefix} {name}".strip())
        elif action.dest == "out":
            out.append(prefix)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("outputs")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "experiment=castella_only", "debug=fast", "logger=none", "train.max_epochs=1",
                f"paths.root={root}", f"paths.output_dir={root / 'run'}",
            ],
        )  # fmt: skip
    train(cfg)
    (root / "run" / ".hydra").mkdir()
    OmegaConf.save(cfg, root / "run" / ".hydra" / "config.yaml")  # as Hydra keeps it
    data = Path(cfg.data.root)
    audio = root / "audio"
    audio.mkdir()
    import soundfile as sf

    sf.write(audio / "a.wav", np.zeros(44_100 * 2), 44_100)
    (root / "clotho").mkdir()
    (root / "tours").mkdir()
    (root / "recipe_valid.json").write_text(json.dumps({"recordings": []}))
    (root / "official.pth").write_bytes(b"not read")
    return {"root": root, "run": root / "run", "data": data, "audio": audio}


def _tree(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _cases(w: dict[str, Path]) -> dict[str, tuple[list[str], str]]:
    run, data, root = w["run"], w["data"], w["root"]
    ann = data / "data" / "castella_test_release.jsonl"
    preds = run / "predictions" / "test_preds.jsonl"
    best = run / "checkpoints" / "best.ckpt"
    tours = ["--clotho", str(root / "clotho"), "--walking-tours", str(root / "tours")]
    inside, around, same = "lie inside the input", "contain the input", "replace an input"
    return {
        "synth": (["synth", "--preset", "castella", "--out", str(data)], "holds a castella dataset"),
        "backtranslate": (["backtranslate", str(ann), "--out", str(ann), "--overwrite"], same),
        "extract-audio": (["extract-audio", "--audio-dir", str(w["audio"]), "--out", str(w["audio"] / "f")], inside),
        "extract-text": (["extract-text", "--annotations", str(ann), "--out", str(data)], around),
        "resynth official": (["resynth", "official", *tours, "--out", str(root / "clotho" / "x")], inside),
        "resynth castella-like": (["resynth", "castella-like", *tours, "--out", str(root / "tours" / "x")], inside),
        "resynth replay": (["resynth", "replay", str(root / "recipe_valid.json"), *tours, "--out", str(root)], around),
        "evaluate": (["evaluate", str(preds), str(ann), "--out", str(preds), "--overwrite"], same),
        "submission": (["submission", str(preds), "--out", str(preds), "--overwrite"], same),
        "report": (["report", str(run), "--out", str(run / "report")], inside),
        "ensemble": (["ensemble", str(run), str(run), "--out", str(run / "predictions"), "--overwrite"], inside),
        "decode": (["decode", str(run), "--out", str(run / "again")], inside),
        "calibrate": (["calibrate", str(run), "--out", str(root)], around),
        "submit": (["submit", "--ckpt", str(best), "--data-root", str(data), "--out", str(data / "s.jsonl")], inside),
        "convert-official": (
            ["convert-official", str(root / "official.pth"), str(root / "official.pth")],
            same,
        ),
        "convert-lighthouse": (
            ["convert-lighthouse", str(root / "official.pth"), str(root / "official.pth")],
            same,
        ),
        "export": (["export", str(best), str(best)], same),
    }


def test_every_command_with_an_output_has_a_case(world) -> None:
    assert sorted(_commands_with_an_output(build_parser())) == sorted(_cases(world))


@pytest.mark.parametrize("command", sorted(_commands_with_an_output(build_parser())))
def test_an_output_inside_or_around_an_input_is_one_line_and_writes_nothing(world, command, capsys) -> None:
    argv, message = _cases(world)[command]
    before = _tree(world["root"])
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and message in err[0], err
    assert _tree(world["root"]) == before
    assert not (world["run"] / "report").exists() and not (world["run"] / "again").exists()


def test_synth_replaces_a_dataset_only_with_overwrite(tmp_path) -> None:
    """``amr synth --out ROOT`` never replaces a dataset's files (synthetic files carry the official
    names: pointed at the official root, they would replace its annotations) unless ``--overwrite``."""
    root = tmp_path / "root"
    main(["synth", "--preset", "castella", "--out", str(root), "--scale", "0.02"])
    ann = root / "data" / "castella_train_release.jsonl"
    ann.write_text("precious\n")
    with pytest.raises(SystemExit):
        main(["synth", "--preset", "castella", "--out", str(root), "--scale", "0.02", "--seed", "3"])
    assert ann.read_text() == "precious\n"
    main(["synth", "--preset", "clotho_moment", "--out", str(root), "--scale", "0.02"])  # another set beside it
    assert ann.read_text() == "precious\n"
    main(["synth", "--preset", "castella", "--out", str(root), "--scale", "0.02", "--overwrite"])
    assert ann.read_text() != "precious\n"


def _line(**row) -> str:
    return json.dumps({"qid": "q1", "query": "a dog barks", "vid": "v1", "duration": 10, **row}) + "\n"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("qid", r"ann\.jsonl:1: qid 'x/\.\./\.\./\.\./ESCAPED' cannot name a file"),
        ("vid", r"ann\.jsonl:1: qid q1: vid '\.\./\.\./\.\./\.\./ESCAPED' cannot name a file"),
        ("pivot", r"para\.jsonl:1: qid q1: pivot '\.\./ESCAPED' cannot name a file"),
        ("recipe", r"recipe_valid\.json: entry 0: name '\.\./\.\./\.\./ESCAPED' cannot name a file"),
        ("--pivots", r"--pivots: pivot '\.\./ESCAPED' cannot name a file"),
    ],
)
def test_names_read_from_files_cannot_reach_outside_the_output(tmp_path, source, message, capsys) -> None:
    """Every id that becomes part of a path (qid, vid, pivot, recipe entry name) is checked in one
    place (``amr.io.file_name``) when it is read: one line naming the file and line."""
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    ann, para = work / "ann.jsonl", work / "para.jsonl"
    ann.write_text(_line(**{"qid": "x/../../../ESCAPED"} if source == "qid" else {}))
    if source == "vid":
        ann.write_text(_line(vid="../../../../ESCAPED"))
    para.write_text(json.dumps({"qid": "q1", "versions": [{"pivot": "../ESCAPED", "text": "a dog"}]}) + "\n")
    recipe = work / "recipe_valid.json"
    recipe.write_text(json.dumps([{"name": "../../../ESCAPED", "bg": {"dB": 0}, "fg": []}]))
    (work / "clotho").mkdir()
    (work / "tours").mkdir()
    argv = {
        "qid": ["extract-text", "--annotations", str(ann), "--out", str(work / "feats")],
        "vid": ["extract-text", "--annotations", str(ann), "--out", str(work / "feats")],
        "pivot": ["extract-text", "--annotations", str(ann), "--paraphrases", str(para), "--out", str(work / "f")],
        "recipe": ["resynth", "replay", str(recipe), "--clotho", str(work / "clotho"), "--walking-tours",
                   str(work / "tours"), "--out", str(work / "root")],
        "--pivots": ["backtranslate", str(ann), "--pivots", "../ESCAPED", "--out", str(work / "p.jsonl")],
    }[source]  # fmt: skip
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err
    assert not [p for p in tmp_path.rglob("*ESCAPED*")]

from __future__ import annotations

import json

import pytest

from amr.data.annotations import load_annotations
from amr.errors import InputError
from tests.conftest import ANNOTATIONS, need_shared

GOOD = {"qid": "a_1", "query": "a dog barks", "duration": 60, "vid": "a", "relevant_windows": [[1, 5]]}


def _file(tmp_path, lines):
    p = tmp_path / "ann.jsonl"
    p.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return p


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"qid": "b", "query": ', "ann.jsonl:2: malformed JSON"),
        ({k: v for k, v in GOOD.items() if k != "vid"} | {"qid": "b"}, "ann.jsonl:2: missing field 'vid'"),
        (GOOD, "ann.jsonl:2: qid a_1 duplicated \\(first on line 1\\)"),
        (GOOD | {"qid": "b", "relevant_windows": [[5, 1]]}, "ann.jsonl:2: window \\[5, 1\\] of qid b ends before"),
        (GOOD | {"qid": "b", "relevant_windows": [[70, 80]]}, "ann.jsonl:2: window \\[70, 80\\] of qid b lies outside"),
        (GOOD | {"qid": "b", "relevant_windows": [[-1, 3]]}, "lies outside"),
        (GOOD | {"qid": "b", "query": "  "}, "ann.jsonl:2: empty query for qid b"),
        (GOOD | {"qid": "b", "relevant_windows": []}, "must be a non-empty list"),
        (GOOD | {"qid": "b", "duration": "long"}, "duration must be a positive number"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, bad, message) -> None:
    with pytest.raises(InputError, match=message):
        load_annotations(_file(tmp_path, [GOOD, bad]))


def test_windows_past_the_end(tmp_path, caplog) -> None:
    lines = [GOOD | {"relevant_windows": [[50, 61.5]]}, GOOD | {"qid": "b", "relevant_windows": [[59, 4800]]}]
    kept = load_annotations(_file(tmp_path, lines))
    assert kept[0].windows == [[50, 61.5]] and kept[1].windows == [[59, 4800]]
    assert "1 window(s) end more than 2 s after the duration (kept" in caplog.text
    clipped = load_annotations(_file(tmp_path, lines), overlong="clip")
    assert clipped[1].windows == [[59, 60]]
    with pytest.raises(InputError, match="ann.jsonl:2: .* ends after duration 60 \\+ 2"):
        load_annotations(_file(tmp_path, lines), overlong="error")


def test_evaluation_file_needs_no_windows(tmp_path) -> None:
    p = _file(tmp_path, [{k: v for k, v in GOOD.items() if k != "relevant_windows"}])
    assert load_annotations(p, require_windows=False)[0].windows is None
    with pytest.raises(InputError, match="missing field 'relevant_windows'"):
        load_annotations(p)


@pytest.mark.parametrize(
    ("split", "n", "require"),
    [
        ("castella_train", 2182, True),
        ("castella_val", 352, True),
        ("castella_test", 1347, True),
        ("clotho_moment_val", 4918, True),
        ("clotho_moment_test", 6649, True),
        ("dcase2026_evaluation", 177, False),
    ],
)
def test_official_annotation_files_load(split, n, require) -> None:
    name = f"{split}.jsonl" if split.startswith("dcase") else f"{split}_release.jsonl"
    queries = load_annotations(need_shared(ANNOTATIONS / name), require_windows=require)
    assert len(queries) == n
    if split == "castella_train":
        outlier = next(q for q in queries if q.qid == "67AE9ZKvECs_1")
        assert [299, 4800] in outlier.windows  # kept as the official code keeps it
        assert max(len(q.windows) for q in queries) == 32
    if split.startswith("clotho"):
        assert "fg_dB" in queries[0].extra

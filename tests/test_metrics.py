from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amr.errors import InputError
from amr.metrics.predictions import evaluate_files, load_predictions, submission_rows
from amr.metrics.retrieval import evaluate
from benchmarks.reference_eval import evaluate_loop
from tests.conftest import ANNOTATIONS, PARITY, need_shared

FIXTURES = [
    ("official_best_castella_val_preds", "castella_val"),
    ("official_latest_castella_val_preds", "castella_val"),
    ("castella_test_random1", "castella_test"),
    ("castella_test_random2", "castella_test"),
    ("clotho_moment_val_random3", "clotho_moment_val"),
]


@pytest.mark.parametrize(("name", "split"), FIXTURES)
def test_official_fixtures_match_exactly(name: str, split: str) -> None:
    pred = need_shared(PARITY / "metrics" / f"{name}.jsonl")
    expected = json.loads((PARITY / "metrics" / f"{name}_metrics.json").read_text())
    got = evaluate_files(pred, ANNOTATIONS / f"{split}_release.jsonl", allow_reversed=True)
    assert got == expected


def test_reversed_windows_are_an_error_by_default() -> None:
    pred = need_shared(PARITY / "metrics" / "castella_test_random1.jsonl")
    with pytest.raises(InputError, match=r"random1.jsonl:\d+: qid .* ends before it starts"):
        evaluate_files(pred, ANNOTATIONS / "castella_test_release.jsonl")


def _write(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


GT = [
    {"qid": "a", "query": "x", "vid": "v", "duration": 60, "relevant_windows": [[1, 5]]},
    {"qid": "b", "query": "y", "vid": "v", "duration": 60, "relevant_windows": [[10, 20], [30, 40]]},
]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"qid": "a"}, "missing field 'pred_relevant_windows'"),
        ({"qid": "a", "pred_relevant_windows": [[1, "x", 0.5]]}, "non-numeric"),
        ({"qid": "a", "pred_relevant_windows": [[5, 1, 0.5]]}, "ends before it starts"),
        ({"qid": "zz", "pred_relevant_windows": [[1, 5, 0.5]]}, "qid zz is not in the ground truth"),
        ({"qid": "a", "pred_relevant_windows": [[1, 5]]}, "is not \\[start, end, score\\]"),
    ],
)
def test_bad_prediction_lines_name_the_line(tmp_path, line, message) -> None:
    gt = _write(tmp_path, "gt.jsonl", GT)
    pred = _write(tmp_path, "pred.jsonl", [{"qid": "b", "pred_relevant_windows": [[10, 20, 0.9]]}, line])
    with pytest.raises(InputError, match=rf"pred.jsonl:2: .*{message}"):
        evaluate_files(pred, gt)


def test_missing_queries_need_allow_partial(tmp_path) -> None:
    gt = _write(tmp_path, "gt.jsonl", GT)
    pred = _write(tmp_path, "pred.jsonl", [{"qid": "b", "pred_relevant_windows": [[10, 20, 0.9]]}])
    with pytest.raises(InputError, match="1 GT queries have no prediction"):
        evaluate_files(pred, gt)
    m = evaluate_files(pred, gt, allow_partial=True)
    assert m["brief"]["MR-full-R1@0.7"] == 100.0
    assert m["full"]["MR-mAP"]["0.5"] == 50.0  # one of two GT windows found


def test_ground_truth_without_windows_is_an_error(tmp_path) -> None:
    gt = _write(tmp_path, "gt.jsonl", [{"qid": "a", "query": "x", "vid": "v", "duration": 60}])
    pred = _write(tmp_path, "pred.jsonl", [{"qid": "a", "pred_relevant_windows": [[1, 5, 0.9]]}])
    with pytest.raises(InputError, match="gt.jsonl:1: missing field 'relevant_windows'"):
        evaluate_files(pred, gt)


def test_submission_sorts_by_score_and_drops_scores() -> None:
    rows = [[float(i), float(i + 1), s] for i, s in enumerate([0.1, 0.9, 0.5, 0.9] + [0.0] * 9)]
    sub = submission_rows([{"qid": "a", "query": "q", "vid": "v", "pred_relevant_windows": rows}])[0]
    assert sub["pred_relevant_windows"][:3] == [[1.0, 2.0], [3.0, 4.0], [2.0, 3.0]]
    assert len(sub["pred_relevant_windows"]) == 10
    assert set(sub) == {"qid", "query", "vid", "pred_relevant_windows"}


# --- property tests against the plain loop implementation --------------------------------------

times = st.integers(min_value=0, max_value=40).map(float)
window = st.tuples(times, st.integers(0, 12).map(float)).map(lambda t: [t[0], t[0] + t[1]])
score = st.sampled_from([0.1, 0.25, 0.5, 0.5, 0.9, 1.0])
pred_row = st.tuples(window, score).map(lambda t: [*t[0], t[1]])
query = st.tuples(st.lists(pred_row, min_size=1, max_size=12), st.lists(window, min_size=1, max_size=6))


@settings(max_examples=150, deadline=None)
@given(st.lists(query, min_size=1, max_size=25))
def test_vectorised_equals_loop(queries) -> None:
    preds = {f"q{i}": p for i, (p, _) in enumerate(queries)}
    gts = {f"q{i}": g for i, (_, g) in enumerate(queries)}
    if not any(w[1] - w[0] > 0 for g in gts.values() for w in g):
        return
    got = evaluate({k: np.array(v) for k, v in preds.items()}, {k: np.array(v) for k, v in gts.items()})
    assert got["full"] == evaluate_loop(preds, gts)


def test_perfect_and_useless_predictions() -> None:
    gts = {"a": np.array([[0.0, 10.0], [20.0, 30.0]])}
    perfect = evaluate({"a": np.array([[0, 10, 0.9], [20, 30, 0.8]])}, gts)
    assert perfect["brief"] == {
        "MR-full-R1@0.5": 100.0,
        "MR-full-R1@0.7": 100.0,
        "MR-full-mAP": 100.0,
        "MR-full-mAP@0.5": 100.0,
        "MR-full-mAP@0.75": 100.0,
    }
    dup = evaluate({"a": np.array([[0, 10, 0.9], [0, 10, 0.8]])}, gts)  # a duplicate is a false positive
    assert dup["full"]["MR-mAP"]["0.5"] == 50.0
    miss = evaluate({"a": np.array([[40, 50, 0.9]])}, gts)
    assert miss["brief"]["MR-full-mAP"] == 0.0 and miss["brief"]["MR-full-R1@0.5"] == 0.0


def test_load_predictions_rejects_duplicates(tmp_path) -> None:
    pred = _write(tmp_path, "p.jsonl", [{"qid": "a", "pred_relevant_windows": [[1, 2, 0.5]]}] * 2)
    with pytest.raises(InputError, match="p.jsonl:2: qid a duplicated"):
        load_predictions(pred)


def _by_range(preds: dict, gts: dict, lo: float, hi: float) -> tuple[dict, dict]:
    """Moment-DETR's ``get_data_by_range``, restated: keep a query's GT windows with lo < length <= hi,
    drop queries left with none, and the predictions of dropped queries."""
    kept = {}
    for qid, windows in gts.items():
        inside = [w for w in windows if lo < w[1] - w[0] <= hi]
        if inside:
            kept[qid] = inside
    return {q: preds[q] for q in kept}, kept


# the default CASTELLA buckets, plus a bucket no GT window of any fixture falls in
BUCKET_EDGES = [(0.0, 3.0, 10.0, 30.0, 1500.0), (1500.0, 2000.0)]


@pytest.mark.parametrize(("name", "split"), FIXTURES)
def test_length_buckets_follow_the_range_method(name: str, split: str) -> None:
    from amr.metrics.retrieval import length_buckets

    pred = need_shared(PARITY / "metrics" / f"{name}.jsonl")
    expected_full = json.loads((PARITY / "metrics" / f"{name}_metrics.json").read_text())
    gt_path = ANNOTATIONS / f"{split}_release.jsonl"
    preds = {q: p["pred_relevant_windows"].tolist() for q, p in load_predictions(pred, allow_reversed=True).items()}
    gts = {json.loads(ln)["qid"]: json.loads(ln)["relevant_windows"] for ln in gt_path.read_text().splitlines()}
    gts = {q: w for q, w in gts.items() if q in preds}
    for edges in BUCKET_EDGES:
        buckets = length_buckets(edges)
        got = evaluate_files(pred, gt_path, allow_reversed=True, buckets=buckets)
        assert got["full"] == expected_full["full"]  # the official figures are untouched
        assert {k: got["brief"][k] for k in expected_full["brief"]} == expected_full["brief"]
        for bname, (lo, hi) in buckets.items():
            p_in, g_in = _by_range(preds, gts, lo, hi)
            assert got[bname]["n_queries"] == len(g_in)
            if not g_in:  # an empty bucket has no figures (the official code would divide by zero)
                assert got[bname]["MR-mAP"] is None and got["brief"][f"MR-{bname}-R1@0.7"] is None
                continue
            ref = evaluate_loop(p_in, g_in)
            assert got[bname]["MR-mAP"] == ref["MR-mAP"], bname
            assert got[bname]["MR-R1"] == ref["MR-R1"], bname
            assert got["brief"][f"MR-{bname}-mAP"] == ref["MR-mAP"]["average"]
        if edges == BUCKET_EDGES[0]:  # every query is in at least one default bucket, a few in several
            assert sum(got[b]["n_queries"] for b in buckets) >= len(gts) > got["0-3s"]["n_queries"] > 0


def test_bucket_edges_are_checked_and_named() -> None:
    from amr.metrics.retrieval import length_buckets

    assert list(length_buckets([0, 3, 10, 30, 1500])) == ["0-3s", "3-10s", "10-30s", "30s+"]
    assert length_buckets([0.5, 2])["0.5-2s"] == (0.5, 2.0)
    for bad in ([3], [0, 3, 3], [-1, 3], [5, 1]):
        with pytest.raises(ValueError, match="strictly increasing"):
            length_buckets(bad)


def test_window_iou_has_one_edge_rule_in_both_forms() -> None:
    """Empty-union pairs: the same zero-length window overlaps fully, any other pair not at all;
    touching windows do not overlap. The plain-Python pair form agrees value for value."""
    from amr.metrics.iou import official_cross_iou, pair_iou, window_iou

    rng = np.random.default_rng(0)
    starts = rng.integers(0, 20, size=(200, 1)).astype(float)
    windows = np.concatenate([starts, starts + rng.integers(0, 6, size=(200, 1))], 1)  # a third of length 0
    windows = np.concatenate([windows, [[5.0, 5.0], [5.0, 5.0], [2.0, 5.0], [5.0, 9.0], [0.5, 3.25]]])
    grid = window_iou(windows, windows)
    assert grid.shape == (205, 205) and np.all((grid >= 0) & (grid <= 1))
    assert all(pair_iou(a, b) == grid[i, j] for i, a in enumerate(windows) for j, b in enumerate(windows))
    assert grid[200, 201] == 1.0 and pair_iou([5.0, 5.0], [6.0, 6.0]) == 0.0  # same empty window / another
    assert pair_iou([2.0, 5.0], [5.0, 9.0]) == 0.0  # touching
    assert pair_iou([0.5, 3.25, 0.9], [1.0, 3.25]) == 2.25 / 2.75  # extra columns (scores) are ignored
    assert window_iou(np.zeros((0, 3)), windows).shape == (0, 205)
    # the official evaluator's IoU differs only where the union is empty (NaN there, counted as a match)
    official = official_cross_iou(windows, windows)
    empty = np.isnan(official)
    assert empty.any() and np.array_equal(official[~empty], grid[~empty])

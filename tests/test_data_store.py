from __future__ import annotations

import json
import time

import numpy as np
import pytest

from amr.augment.caption_versions import text_key
from amr.augment.time_mask import TimeMaskConfig
from amr.data.dataset import MomentDataset, SplitData, collate
from amr.data.features import l2_normalize, load_npz_array
from amr.data.packed_store import open_or_build
from amr.data.synth import generate
from amr.errors import InputError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return generate(root, "clotho_moment", seed=3, scale=0.03), generate(root, "castella", seed=3, scale=0.03)


def _files(tmp_path, arrays):
    paths = []
    for i, a in enumerate(arrays):
        p = tmp_path / f"v{i}.npz"
        np.savez(p, features=a)
        paths.append(p)
    return paths


def test_pack_matches_npz_and_reopens_without_reading_npz(tmp_path) -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((n, 768)).astype(np.float32) for n in (3, 61, 7)]
    paths = _files(tmp_path, arrays)
    pack = open_or_build(tmp_path / "cache", ["a", "b", "c"], paths, "features", normalize=True, kind="audio")
    for k, a in zip("abc", arrays, strict=True):
        np.testing.assert_array_equal(pack[k], l2_normalize(a))
    for p in paths:  # the second open must not need the npz contents
        p.write_bytes(p.read_bytes())  # same bytes, but a new mtime invalidates...
    t = time.perf_counter()
    again = open_or_build(tmp_path / "cache", ["a", "b", "c"], paths, "features", normalize=True, kind="audio")
    assert again.folder != pack.folder  # ...so the key changed and a new pack was made
    t = time.perf_counter()
    third = open_or_build(tmp_path / "cache", ["a", "b", "c"], paths, "features", normalize=True, kind="audio")
    assert third.folder == again.folder and time.perf_counter() - t < 0.5


def test_interrupted_pack_leaves_nothing_trusted(tmp_path) -> None:
    arrays = [np.ones((4, 768), np.float32), np.full((4, 768), np.nan, np.float32)]
    paths = _files(tmp_path, arrays)
    with pytest.raises(InputError, match="v1.npz: NaN or inf in features"):
        open_or_build(tmp_path / "cache", ["a", "b"], paths, "features", kind="audio")
    assert not any((tmp_path / "cache").iterdir())


def test_bad_feature_files(tmp_path) -> None:
    paths = _files(tmp_path, [np.ones((4, 512), np.float32)])
    with pytest.raises(InputError, match="v0.npz: wrong feature shape \\(4, 512\\)"):
        load_npz_array(paths[0], "features")
    with pytest.raises(InputError, match="no key 'last_hidden_state'"):
        load_npz_array(paths[0], "last_hidden_state")
    missing = [tmp_path / f"m{i}.npz" for i in range(7)]
    with pytest.raises(InputError, match="7 audio feature file\\(s\\) missing, first: m0, m1, m2, m3, m4"):
        open_or_build(tmp_path / "cache", [f"m{i}" for i in range(7)], missing, "features", kind="audio")


def test_synthetic_layout_reads_back_through_the_real_loader(tiny, tmp_path) -> None:
    clotho, castella = tiny
    assert clotho.annotations("train").is_file() and clotho.features.audio_dir.name == "clap"
    assert castella.features.text_dir().parts[-2:] == ("castella", "clap_text")
    data = SplitData.load(castella, "train", tmp_path / "cache", pivots=["de", "fr", "es"])
    ds = MomentDataset(data, train=True)
    item = ds[0]
    q = data.queries[0]
    assert item["aud"].shape == (q.duration, 770)  # CASTELLA-like: one frame per second
    raw = load_npz_array(castella.features.audio_file(q.vid), "features")
    np.testing.assert_allclose(item["aud"][:, :768], l2_normalize(raw), rtol=1e-6)
    assert max(len(x.windows) for x in data.queries) > 1  # multi-window queries exist
    c_item = MomentDataset(SplitData.load(clotho, "val", tmp_path / "cache"), train=False)[0]
    assert c_item["aud"].shape[0] == 61  # 60 s with centred frames


def test_synthetic_is_deterministic(tmp_path) -> None:
    a = generate(tmp_path / "a", "castella", seed=5, scale=0.02)
    b = generate(tmp_path / "b", "castella", seed=5, scale=0.02)
    assert a.annotations("train").read_text() == b.annotations("train").read_text()
    vid = next(a.features.audio_dir.iterdir()).name
    np.testing.assert_array_equal(
        np.load(a.features.audio_dir / vid)["features"], np.load(b.features.audio_dir / vid)["features"]
    )


def test_official_item_semantics(tiny, tmp_path) -> None:
    _, castella = tiny
    data = SplitData.load(castella, "train", tmp_path / "cache")
    q = data.queries[0]
    q.windows = [[10, 20], [0, 3], [30, 31], [40, 45], [50, 52], [55, 56], [57, 58]]  # 7 windows
    ds = MomentDataset(data, train=True, seed=1)
    n = q.duration
    item = ds[0]
    tef = np.arange(n, dtype=np.float32) / n
    np.testing.assert_allclose(item["aud"][:, 768], tef)
    np.testing.assert_allclose(item["aud"][:, 769], tef + 1 / n)
    assert len(item["spans"]) == 5  # at most 5 windows per query
    firsts = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        it = ds[0]
        spans = it["spans"]
        assert np.all(spans[:, 1] * n > 0)
        center, width = spans[0] * n  # normalised by the frame count
        st, ed = center - width / 2, center + width / 2
        firsts.add((round(float(st)), round(float(ed))))
        gs, ge = round(float(st)), min(round(float(ed)), n) - 1
        sal = it["sal_all"]
        assert sal[gs : ge + 1].all() and sal.sum() == ge - gs + 1  # saliency from the first window
        assert all(gs <= p <= ge for p in it["sal_pos"])
        assert len(set(it["sal_pos"])) == (2 if ge > gs else 1)
        assert all(not gs <= p <= ge for p in it["sal_neg"])
    assert len(firsts) > 1  # the first window changes with the per-epoch draw


def test_time_mask_frequency_length_and_padding(tiny, tmp_path) -> None:
    clotho, _ = tiny
    data = SplitData.load(clotho, "train", tmp_path / "cache")
    ds = MomentDataset(data, train=True, seed=0, time_mask=TimeMaskConfig(p=0.15, max_ratio=0.1))
    masked, lengths = 0, []
    total = 0
    for epoch in range(60):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            it = ds[i]
            total += 1
            if it["masked"] is None:
                assert (np.abs(it["aud"][:, :768]).sum(1) > 0).all()
                continue
            masked += 1
            st, ln = it["masked"]
            lengths.append(ln)
            n = len(it["aud"])
            assert st >= 0 and st + ln <= n  # inside the valid frames
            assert (it["aud"][st : st + ln, :768] == 0).all()
            np.testing.assert_allclose(it["aud"][:, 768], np.arange(n) / n, rtol=1e-6)  # time features untouched
            assert (np.abs(it["aud"][:st, :768]).sum(1) > 0).all()
    assert abs(masked / total - 0.15) < 0.03
    assert set(lengths) == set(range(1, 7))  # 1..floor(0.1 * 61) = 6 frames
    assert max(np.bincount(lengths)[1:]) / min(np.bincount(lengths)[1:]) < 2.0
    val = MomentDataset(data, train=False, time_mask=TimeMaskConfig(p=1.0))
    assert all(val[i]["masked"] is None for i in range(len(val)))  # never at evaluation


def test_caption_versions_are_drawn_per_epoch(tiny, tmp_path) -> None:
    clotho, _ = tiny
    data = SplitData.load(clotho, "train", tmp_path / "cache", pivots=["de"])
    ds = MomentDataset(data, train=True, seed=0, pivots=["de"])
    draws = []
    for epoch in range(40):
        ds.set_epoch(epoch)
        draws.append([ds[i]["pivot"] for i in range(len(ds))])
    flat = [v for d in draws for v in d]
    assert abs(flat.count("de") / len(flat) - 0.5) < 0.05
    assert len(ds) == len(data.queries)  # the dataset size does not change
    it = ds[0]
    expected = data.text[text_key(data.queries[0].qid, it["pivot"], data.alias)]
    np.testing.assert_array_equal(it["txt"], expected)
    ds2 = MomentDataset(data, train=True, seed=0, pivots=["de"])
    ds2.set_epoch(39)
    assert [ds2[i]["pivot"] for i in range(len(ds2))] == draws[39]  # deterministic for a seed


def test_missing_pivot_is_an_error_not_a_fallback(tiny, tmp_path) -> None:
    clotho, _ = tiny
    victim = next(clotho.features.text_dir("fr").iterdir())
    victim.rename(victim.with_suffix(".bak"))
    try:
        with pytest.raises(InputError, match="caption version 'fr' missing for 1 of"):
            SplitData.load(clotho, "train", tmp_path / "cache", pivots=["fr"])
    finally:
        victim.with_suffix(".bak").rename(victim)


def test_dropped_version_is_served_by_the_original_caption(tiny, tmp_path) -> None:
    """A back-translation identical to the original is listed as dropped and has no file: drawing it
    gives the original caption's features."""
    import shutil

    clotho, _ = tiny
    root = tmp_path / "copy"
    shutil.copytree(clotho.root, root)
    layout = type(clotho)(root, clotho.name, clotho.feat_dir)
    rows = [json.loads(x) for x in layout.versions_file("train").read_text().splitlines()]
    victim = rows[0]["qid"]
    rows[0]["versions"] = [v for v in rows[0]["versions"] if v["pivot"] != "de"]
    rows[0]["dropped"] = ["de"]
    layout.versions_file("train").write_text("".join(json.dumps(r) + "\n" for r in rows))
    layout.features.text_file(victim, "de").unlink()
    data = SplitData.load(layout, "train", tmp_path / "cache", pivots=["de"])
    ds = MomentDataset(data, train=True, seed=0, pivots=["de"])
    index = next(i for i, q in enumerate(data.queries) if q.qid == victim)
    seen = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        item = ds[index]
        seen.add(item["pivot"])
        np.testing.assert_array_equal(item["txt"], np.asarray(data.text[victim], dtype=np.float32))
    assert seen == {None, "de"}


def test_collate_pads_and_keeps_official_targets(tiny, tmp_path) -> None:
    _, castella = tiny
    ds = MomentDataset(SplitData.load(castella, "train", tmp_path / "cache"), train=True)
    batch = collate([ds[i] for i in range(3)])
    inp = batch["inputs"]
    lens = [len(ds[i]["aud"]) for i in range(3)]
    assert inp["src_aud"].shape == (3, max(lens), 770)
    assert inp["src_aud_mask"].sum(1).tolist() == lens
    assert (inp["src_aud"][inp["src_aud_mask"] == 0] == 0).all()
    assert batch["targets"]["saliency_pos_labels"].shape == (3, 2)
    assert isinstance(batch["targets"]["span_labels"], list)

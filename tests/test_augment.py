"""amr.augment: the time mask and the caption versions on their own (the data layer's use of them
is tested in test_data_store.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from amr.augment.caption_versions import PIVOTS, choose_version, resolve_versions, text_key, version_choices
from amr.augment.time_mask import TimeMaskConfig, apply_time_mask, time_mask_span
from amr.errors import InputError


@pytest.mark.parametrize(("key", "value"), [("p", 1.5), ("p", -0.1), ("max_ratio", 2.0)])
def test_time_mask_config_names_the_key_out_of_range(key, value) -> None:
    with pytest.raises(ValueError, match=rf"augment\.time_mask\.{key} must be in \[0, 1\], got {value}"):
        TimeMaskConfig(**{key: value})


def test_time_mask_is_used_only_in_its_stages_and_with_a_positive_p() -> None:
    cfg = TimeMaskConfig(p=0.15, stages=["pretrain"])
    assert cfg.used_in("pretrain") and not cfg.used_in("finetune")
    assert not TimeMaskConfig(p=0.0, stages=["pretrain"]).used_in("pretrain")


def test_time_mask_span_lengths_and_positions() -> None:
    cfg = TimeMaskConfig(p=0.5, max_ratio=0.1)
    assert time_mask_span(61, cfg, [0.5, 0.0, 0.0]) is None  # the coin: u >= p means no mask
    rng = np.random.default_rng(0)
    spans = [time_mask_span(61, cfg, [0.0, *rng.random(2)]) for _ in range(5000)]
    assert all(s is not None and s[0] >= 0 and s[0] + s[1] <= 61 for s in spans)
    assert {s[1] for s in spans if s} == set(range(1, 7))  # 1..floor(0.1 * 61)
    assert {s[0] for s in spans if s and s[1] == 6} == set(range(0, 56))  # every start that fits
    assert time_mask_span(3, cfg, [0.0, 0.99, 0.99]) == (2, 1)  # at least one frame


def test_apply_time_mask_keeps_the_time_features() -> None:
    aud = np.ones((10, 5), dtype=np.float32)
    apply_time_mask(aud, (2, 3))
    assert (aud[2:5, :3] == 0).all() and (aud[2:5, 3:] == 1).all()
    assert aud[:2].all() and aud[5:].all()


def test_caption_version_choice_is_uniform_over_the_original_and_the_pivots() -> None:
    choices = version_choices(["de", "fr"])
    assert [choose_version(choices, u) for u in (0.0, 0.34, 0.67, 0.999)] == [None, "de", "fr", "fr"]
    assert choose_version(version_choices([]), 0.99) is None
    assert PIVOTS == ("de", "fr", "es")


def test_dropped_versions_are_aliased_and_missing_ones_named(tmp_path) -> None:
    para = tmp_path / "x_train_paraphrases.jsonl"
    rows = [
        {"qid": "1", "query": "a", "versions": [{"pivot": "de", "text": "b"}], "dropped": []},
        {"qid": "2", "query": "c", "versions": [], "dropped": ["de"]},
    ]
    para.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def text_file(qid, pivot):
        return tmp_path / "clap_text_versions" / pivot / f"qid{qid}.npz"

    text_file("1", "de").parent.mkdir(parents=True)
    text_file("1", "de").write_bytes(b"")
    alias = resolve_versions(["1", "2"], ["de"], para, text_file)
    assert alias == {"de/2": "2"}
    assert (
        text_key("2", "de", alias) == "2" and text_key("1", "de", alias) == "de/1" and text_key("1", None, alias) == "1"
    )
    with pytest.raises(InputError, match=r"caption version 'fr' missing for 2 of 2 queries \(first: 1, 2\)"):
        resolve_versions(["1", "2"], ["fr"], para, text_file)

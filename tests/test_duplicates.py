"""Near-duplicate search: planted copies of demo images (the known answer), the hash cache, grouping
for the split, and the leak warning of `dermlow data check`."""

from __future__ import annotations

import itertools
import os

import pandas as pd
import pytest

from dermlow.data import duplicates
from dermlow.data.demo import make_demo, plant_duplicates
from dermlow.data.isic import load_manifest


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A 300-image demo set (seed 2: not one the thresholds were chosen on) plus re-encoded, resized,
    mirrored and 5 %-cropped copies of 20 of its images under new ids and lesion ids."""
    root = make_demo(tmp_path_factory.mktemp("dup") / "isic2018", year=2018, n_images=300, seed=2)
    truth = plant_duplicates(root, n_originals=20, seed=2)
    return root, truth


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One hash cache for the module: the first test hashes, the others read."""
    return tmp_path_factory.mktemp("hash-cache")


def test_every_planted_pair_is_found_and_no_other(planted, cache):
    root, truth = planted
    manifest, _, _ = load_manifest(root, dataset="isic2018", seed=0)
    found = duplicates.find_duplicates(manifest, cache_dir=cache, progress=False)
    # a group is an original and its four copies: all 10 pairs in it are near-duplicates (copy-copy too)
    expected = {tuple(sorted(p)) for original, g in truth.groupby("original")
                for p in itertools.combinations([original, *g["copy"]], 2)}
    got = set(zip(found["image_id_a"], found["image_id_b"], strict=True))
    assert len(expected) == 200
    assert got == expected
    kinds = truth.set_index("copy")["kind"]
    mirrored = found[found["image_id_b"].map(kinds).eq("flipped") & ~found["image_id_a"].str.startswith("ISIC_9")]
    assert (mirrored["transform"] == "mirrored").all() and len(mirrored) == 20
    assert (found["phash_bits"] <= duplicates.PHASH_MAX).all() and (found["dhash_bits"] <= duplicates.DHASH_MAX).all()


def test_hashes_are_cached_beside_the_image_cache(planted, tmp_path, monkeypatch):
    root, _ = planted
    paths = sorted(str(p) for p in (root / "ISIC2018_Task3_Training_Input").glob("*.jpg"))[:30]
    first = duplicates.hash_images(paths, cache_dir=tmp_path, progress=False)
    assert duplicates.cache_file(tmp_path).is_file()
    monkeypatch.setattr(duplicates, "hash_image", lambda p: pytest.fail(f"recomputed {p}"))
    again = duplicates.hash_images(paths, cache_dir=tmp_path, progress=False)
    assert (again.phash == first.phash).all() and (again.coarse == first.coarse).all()
    os.utime(paths[0], ns=(0, os.stat(paths[0]).st_mtime_ns + 10**9))  # a changed file is hashed again
    with pytest.raises(pytest.fail.Exception, match="recomputed"):
        duplicates.hash_images(paths, cache_dir=tmp_path, progress=False)


def test_union_find_joins_lesions_and_duplicate_pairs():
    ids = pd.Series(["a", "b", "c", "d", "e", "f"], index=[10, 11, 12, 13, 14, 15])
    lesions = pd.Series(["L1", "L1", "", "K2", "", ""], index=ids.index)
    pairs = pd.DataFrame({"image_id_a": ["b", "e"], "image_id_b": ["d", "f"]})
    groups = duplicates.duplicate_groups(ids, pairs, lesions)
    assert groups.index.equals(ids.index)
    # lesion L1 (a, b) joins lesion K2 (d) through b ~ d, so a goes with d too; e ~ f; c alone
    assert groups.tolist() == ["K2", "K2", "c", "K2", "e", "e"]
    assert duplicates.duplicate_groups(ids, pairs.iloc[:0], lesions).tolist() == ["L1", "L1", "c", "K2", "e", "f"]


def test_group_duplicates_keeps_each_cluster_in_one_split(planted, cache):
    root, truth = planted
    plain, _, _ = load_manifest(root, dataset="isic2018", seed=0)
    grouped, _, _ = load_manifest(root, dataset="isic2018", seed=0, group_duplicates=True, cache_dir=cache)
    for manifest, leaks in ((plain, True), (grouped, False)):
        split = manifest.set_index("image_id")["split"]
        crossing = sum(split[o] != split[c] for o, c in zip(truth["original"], truth["copy"], strict=True))
        assert (crossing > 0) == leaks
    rest = ~grouped["image_id"].isin(set(truth["original"]) | set(truth["copy"]))
    assert grouped["split"].value_counts().to_dict().keys() == {"train", "val", "test"}
    assert rest.sum() == 280


def test_data_check_warns_about_leaks_with_both_ids(planted, cache, tmp_path, capsys):
    from dermlow.cli.main import main

    root, truth = planted
    out = tmp_path / "pairs.csv"
    assert main(["data", "check", "--year", "2018", "--data-dir", str(root), "--cache-dir", str(cache),
                 "--save-duplicates", str(out)]) == 0
    text = capsys.readouterr().out
    assert "near-duplicates (perceptual hashes): 200 pairs in 20 groups" in text
    assert "WARNING:" in text and "cross splits" in text
    pairs = pd.read_csv(out)
    leak = pairs[pairs["cross_split"]].iloc[0]
    assert f"{leak['split_a']} {leak['image_id_a']} ~ {leak['split_b']} {leak['image_id_b']}" in text
    assert main(["data", "check", "--year", "2018", "--data-dir", str(root), "--cache-dir", str(cache),
                 "--group-duplicates"]) == 0
    assert "no near-duplicate pair crosses splits" in capsys.readouterr().out

"""Dataset loaders: real counts and checksums, splits, synthetic, CSV, and every bad-input path."""

from __future__ import annotations

import io
import shutil
import zipfile

import numpy as np
import pytest

from recdata import DatasetError, load_ratings, split_users
from recdata.files import md5_of
from recdata.movielens import SHIPPED_SMALL


def test_shipped_ml_latest_small_counts_and_checksum():
    assert md5_of(SHIPPED_SMALL / "ratings.csv") == "325a6f09399d1c45671f187505e1a100"
    assert (SHIPPED_SMALL / "README.txt").exists()
    r = load_ratings("ml_latest_small")
    assert (r.n_users, r.n_items, len(r.rating)) == (610, 9742, 100836)
    assert len(np.unique(r.item)) == 9724 and r.item_features.shape == (9742, 19)


def test_ml_100k_from_the_shared_folder(ml100k_path):
    r = load_ratings("ml_100k", path=str(ml100k_path))
    assert (r.n_users, r.n_items, len(r.rating)) == (943, 1682, 100000)
    assert r.user_features.shape == (943, 30) and r.item_features.shape == (1682, 19)
    assert np.all(r.user_features.sum(1) == 3)  # one age bucket, one gender, one occupation
    raw = load_ratings("ml_100k", path=str(ml100k_path), age_encoding="raw")
    assert raw.user_features.shape == (943, 84)  # SecEmb Table 7's 84 user features


@pytest.mark.parametrize("method", ["random", "last_k"])
def test_split_is_deterministic_and_per_user(method):
    r = load_ratings("ml_latest_small")
    a, b = split_users(r, method, seed=3), split_users(r, method, seed=3)
    assert np.array_equal(a.train_item, b.train_item) and np.array_equal(a.test_item, b.test_item)
    assert a.train_ptr[-1] + a.test_ptr[-1] == len(r.rating)
    assert np.all(np.diff(a.train_ptr) >= 1)
    if method == "last_k":
        assert np.all(np.diff(a.test_ptr) == 3)
        u = 5
        ts = dict(zip(zip(r.user, r.item), r.timestamp))
        train_last = max(ts[(u, i)] for i in a.user(u).train_items)
        assert all(ts[(u, i)] >= train_last for i in a.user(u).test_items)
    else:
        frac = a.test_ptr[-1] / len(r.rating)
        assert 0.18 < frac < 0.2


def test_synthetic_is_long_tailed_and_sized():
    r = load_ratings("synthetic", n_users=6040, n_items=3883, mean_ratings=165, seed=1)
    counts = np.bincount(r.user)
    assert r.n_users == 6040 and r.n_items == 3883 and counts.min() >= 1
    assert np.median(counts) < counts.mean() and counts.max() > 5 * np.median(counts)


def test_max_items_keeps_the_most_rated():
    r = load_ratings("ml_latest_small", max_items=40)
    assert r.n_items == 40 and r.item.max() == 39 and r.n_users > 0


def test_csv_loader_and_its_errors(tmp_path):
    good = tmp_path / "r.csv"
    good.write_text("userId,movieId,rating,timestamp\n1,10,4.0,5\n1,20,3.0,6\n2,10,5.0,7\n")
    r = load_ratings("csv", path=str(good))
    assert (r.n_users, r.n_items, len(r.rating)) == (2, 2, 3)
    bad = tmp_path / "bad.csv"
    bad.write_text("userId,movieId,rating,timestamp\n1,10,4.0,5\n1,xx,3.0,6\n")
    with pytest.raises(DatasetError, match="malformed"):
        load_ratings("csv", path=str(bad))
    nohead = tmp_path / "nohead.csv"
    nohead.write_text("1,10,4.0,5\n")
    with pytest.raises(DatasetError, match="header"):
        load_ratings("csv", path=str(nohead))


@pytest.mark.parametrize("kwargs,needle", [
    ({"name": "ml_5m"}, "unknown dataset"),
    ({"name": "synthetic", "n_users": 0}, "n_users"),
    ({"name": "synthetic", "n_items": -4}, "n_items"),
    ({"name": "ml_latest_small", "max_items": 0}, "max_items"),
])
def test_bad_names_and_sizes(kwargs, needle):
    with pytest.raises(DatasetError, match=needle):
        load_ratings(**kwargs)


def _copy_100k(src, tmp_path):
    dst = tmp_path / "ml-100k"
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


def test_missing_file_wrong_md5_and_malformed_line(ml100k_path, tmp_path):
    folder = _copy_100k(ml100k_path, tmp_path)
    (folder / "u.user").unlink()
    with pytest.raises(DatasetError, match="lacks u.user"):
        load_ratings("ml_100k", path=str(folder))
    folder2 = _copy_100k(ml100k_path, tmp_path / "b")
    data = bytearray((folder2 / "u.data").read_bytes())
    data[10] = ord("7") if data[10] != ord("7") else ord("8")
    (folder2 / "u.data").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="md5"):
        load_ratings("ml_100k", path=str(folder2))
    folder3 = _copy_100k(ml100k_path, tmp_path / "c")
    lines = (folder3 / "u.user").read_text().splitlines()
    lines[3] = "4|not-an-age|M|technician|43537"
    (folder3 / "u.user").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="malformed line 4"):
        load_ratings("ml_100k", path=str(folder3))


def test_offline_without_folder_says_both_ways(tmp_path):
    def offline(url, dest):
        raise OSError("network unreachable")

    with pytest.raises(DatasetError) as info:
        load_ratings("ml_100k", cache_dir=str(tmp_path), downloader=offline)
    msg = str(info.value)
    assert "dataset.path" in msg and "files.grouplens.org" in msg


def test_download_is_md5_checked_and_cached(ml100k_path, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in ml100k_path.iterdir():
            zf.write(f, f"ml-100k/{f.name}")
    payload = buf.getvalue()

    def fake_download(url, dest):  # serves a zip that is not GroupLens's original
        dest.write_bytes(payload)

    with pytest.raises(DatasetError, match="md5"):
        load_ratings("ml_100k", cache_dir=str(tmp_path), downloader=fake_download)
    # an extracted cache is used without downloading again
    shutil.copytree(ml100k_path, tmp_path / "ml-100k", dirs_exist_ok=True)
    r = load_ratings("ml_100k", cache_dir=str(tmp_path), downloader=lambda *a: pytest.fail("downloaded again"))
    assert r.n_users == 943


def test_an_unpack_that_fails_midway_leaves_nothing_a_later_run_would_load(ml100k_path, tmp_path, monkeypatch):
    """The archive is unpacked beside the cache and renamed into place only when whole. Here its last member,
    u.data, fails its CRC as it is extracted (one digit changed, stored uncompressed): before, the files
    extracted until then stayed in the cache folder, every required file existed, and the next run loaded the
    altered ratings without a download; now the unpack is refused and nothing stays. The md5 expected is the
    test archive's own (GroupLens's original is not on this machine)."""
    import hashlib

    import recdata.files as files

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for f in sorted(ml100k_path.iterdir(), key=lambda f: f.name == "u.data"):  # u.data last
            zf.write(f, f"ml-100k/{f.name}")
    payload = bytearray(buf.getvalue())
    at = payload.rindex(b"\t3\t")  # a rating inside u.data's stored bytes
    payload[at + 1:at + 2] = b"4"
    zip_name, _md5, inner = files.ARCHIVES["ml_100k"]
    monkeypatch.setitem(files.ARCHIVES, "ml_100k", (zip_name, hashlib.md5(payload).hexdigest(), inner))
    with pytest.raises(DatasetError, match="unpacking"):
        load_ratings("ml_100k", cache_dir=str(tmp_path), downloader=lambda url, dest: dest.write_bytes(payload))
    assert not (tmp_path / inner).exists() and [p.name for p in tmp_path.iterdir()] == [zip_name]

    def offline(url, dest):
        raise OSError("network unreachable")

    with pytest.raises(DatasetError, match="could not be downloaded"):
        load_ratings("ml_100k", cache_dir=str(tmp_path), downloader=offline)

"""Loaders of the MovieLens datasets (latest-small shipped; 100K, 1M, 10M, 25M by folder or download)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from recdata.files import check_md5, locate
from recdata.ratings import DatasetError, Ratings, from_raw, multi_hot

SHIPPED_SMALL = Path(__file__).resolve().parent / "ml-latest-small"
SMALL_RATINGS_MD5 = "325a6f09399d1c45671f187505e1a100"
ML100K_DATA_MD5 = "6e47046882bad158b0efbb84cd5cb987"
AGE_BUCKETS = np.array([18, 25, 35, 45, 50, 56])  # ML-1M buckets: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+


def _numeric_table(path: Path, sep: str, ncols: int, skip_header: bool = False) -> np.ndarray:
    """Parse a numeric delimited file; a malformed line raises naming file and line."""
    text = path.read_text(encoding="latin-1")
    lines = text.splitlines()[1 if skip_header else 0:]
    lines = [ln for ln in lines if ln.strip()]
    try:
        table = np.loadtxt(io.StringIO("\n".join(ln.replace(sep, ",") for ln in lines) if sep != "," else
                                       "\n".join(lines)), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DatasetError(f"{path}: malformed line ({exc}); expected {ncols} numeric fields") from exc
    if table.shape[1] != ncols:
        raise DatasetError(f"{path}: expected {ncols} fields per line, found {table.shape[1]}")
    return table


def _genres_from_movies_csv(path: Path, sep: str = ",") -> tuple[np.ndarray, np.ndarray]:
    """Movie ids and multi-hot genres from a movies file (CSV with quoted titles, or '::' separated)."""
    ids, genre_lists = [], []
    with open(path, encoding="latin-1", newline="") as fh:
        rows = csv.reader(fh) if sep == "," else (ln.rstrip("\n").split("::") for ln in fh)
        for lineno, row in enumerate(rows, start=1):
            if sep == "," and lineno == 1:
                continue
            if len(row) < 3:
                raise DatasetError(f"{path}: malformed line {lineno}")
            try:
                ids.append(int(row[0]))
            except ValueError as exc:
                raise DatasetError(f"{path}: malformed movie id on line {lineno}") from exc
            genre_lists.append([g for g in row[-1].split("|") if g and g != "(no genres listed)"])
    names = sorted({g for gl in genre_lists for g in gl})
    index = {g: i for i, g in enumerate(names)}
    feats = np.zeros((len(ids), len(names)), dtype=np.float32)
    for row, gl in enumerate(genre_lists):
        feats[row, [index[g] for g in gl]] = 1.0
    return np.array(ids, dtype=np.int64), feats


def load_ml_latest_small(path: str | None = None, **_: object) -> Ratings:
    """MovieLens latest-small (610 users, 9,742 movies, 100,836 ratings): the bundled default."""
    folder = Path(path) if path else SHIPPED_SMALL
    ratings_file = folder / "ratings.csv"
    if not ratings_file.is_file():
        raise DatasetError(f"ml_latest_small: {ratings_file} is missing. A Flower app bundle (flwr run) cannot carry "
                           "CSV files: set dataset.path to the ml-latest-small folder on that machine (the project's "
                           "copy is recdata/ml-latest-small)")
    check_md5(ratings_file, SMALL_RATINGS_MD5)
    t = _numeric_table(ratings_file, ",", 4, skip_header=True)
    movie_ids, genres = _genres_from_movies_csv(folder / "movies.csv")
    return from_raw("ml_latest_small", t[:, 0].astype(np.int64), t[:, 1].astype(np.int64), t[:, 2],
                    t[:, 3].astype(np.int64), item_feature_table=(movie_ids, genres), all_item_ids=movie_ids)


def _ml100k_user_features(folder: Path, age_encoding: str) -> tuple[np.ndarray, np.ndarray]:
    occupations = [ln.strip() for ln in (folder / "u.occupation").read_text(encoding="latin-1").splitlines() if ln.strip()]
    occ_index = {o: i for i, o in enumerate(occupations)}
    ids, ages, genders, occs = [], [], [], []
    for lineno, line in enumerate((folder / "u.user").read_text(encoding="latin-1").splitlines(), start=1):
        parts = line.split("|")
        if len(parts) != 5 or parts[2] not in ("M", "F") or parts[3] not in occ_index:
            raise DatasetError(f"{folder / 'u.user'}: malformed line {lineno}")
        try:
            ids.append(int(parts[0]))
            ages.append(int(parts[1]))
        except ValueError as exc:
            raise DatasetError(f"{folder / 'u.user'}: malformed line {lineno}") from exc
        genders.append(0 if parts[2] == "M" else 1)
        occs.append(occ_index[parts[3]])
    ages_a = np.array(ages)
    if age_encoding == "raw":  # one column per distinct age, as the SecEmb paper's 84 user features
        _, age_codes = np.unique(ages_a, return_inverse=True)
        age_feats = multi_hot(age_codes, int(age_codes.max()) + 1)
    elif age_encoding == "bucket":
        age_feats = multi_hot(np.searchsorted(AGE_BUCKETS, ages_a, side="right"), len(AGE_BUCKETS) + 1)
    else:
        raise DatasetError(f"age_encoding must be 'bucket' or 'raw', got {age_encoding!r}")
    feats = np.hstack([age_feats, multi_hot(np.array(genders), 2), multi_hot(np.array(occs), len(occupations))])
    return np.array(ids, dtype=np.int64), feats


def load_ml_100k(path: str | None = None, cache_dir: str | None = None, allow_download: bool = True,
                 age_encoding: str = "bucket", downloader=None, **_: object) -> Ratings:
    """MovieLens 100K with user features (age, gender, occupation) and item genres (SecEmb's ML100K)."""
    folder = locate("ml_100k", path, ("u.data", "u.item", "u.user", "u.occupation"), cache_dir, allow_download,
                    downloader)
    check_md5(folder / "u.data", ML100K_DATA_MD5)
    t = _numeric_table(folder / "u.data", "\t", 4)
    item_ids, genres = [], []
    for lineno, line in enumerate((folder / "u.item").read_text(encoding="latin-1").splitlines(), start=1):
        parts = line.split("|")
        if len(parts) != 24:
            raise DatasetError(f"{folder / 'u.item'}: malformed line {lineno}")
        item_ids.append(int(parts[0]))
        genres.append([float(x) for x in parts[5:]])
    return from_raw("ml_100k", t[:, 0].astype(np.int64), t[:, 1].astype(np.int64), t[:, 2], t[:, 3].astype(np.int64),
                    user_feature_table=_ml100k_user_features(folder, age_encoding),
                    item_feature_table=(np.array(item_ids), np.array(genres, dtype=np.float32)),
                    all_item_ids=np.array(item_ids))


def _ml1m_users(path: Path) -> tuple[np.ndarray, np.ndarray]:
    t = _numeric_table_dat(path, 5, text_cols={1, 4})
    ids = t[:, 0].astype(np.int64)
    gender = np.array([0 if g == "M" else 1 for g in t[:, 1]])
    age = np.searchsorted(AGE_BUCKETS, t[:, 2].astype(np.int64), side="right")
    occ = t[:, 3].astype(np.int64)
    return ids, np.hstack([multi_hot(gender, 2), multi_hot(age, 7), multi_hot(occ, 21)])


def _numeric_table_dat(path: Path, ncols: int, text_cols: set[int] = frozenset()) -> np.ndarray:
    rows = [ln.split("::") for ln in path.read_text(encoding="latin-1").splitlines() if ln.strip()]
    bad = next((i for i, r in enumerate(rows, start=1) if len(r) != ncols), None)
    if bad is not None:
        raise DatasetError(f"{path}: malformed line {bad}")
    arr = np.array(rows, dtype=object)
    for c in range(ncols):
        if c not in text_cols:
            try:
                arr[:, c] = arr[:, c].astype(np.float64)
            except ValueError as exc:
                raise DatasetError(f"{path}: non-numeric field in column {c + 1}") from exc
    return arr


def load_ml_1m(path: str | None = None, cache_dir: str | None = None, allow_download: bool = True,
               downloader=None, **_: object) -> Ratings:
    """MovieLens 1M (ratings.dat / movies.dat / users.dat, '::'-separated) with user features and genres."""
    folder = locate("ml_1m", path, ("ratings.dat", "movies.dat", "users.dat"), cache_dir, allow_download, downloader)
    t = _numeric_table(folder / "ratings.dat", "::", 4)
    movie_ids, genres = _genres_from_movies_csv(folder / "movies.dat", sep="::")
    return from_raw("ml_1m", t[:, 0].astype(np.int64), t[:, 1].astype(np.int64), t[:, 2], t[:, 3].astype(np.int64),
                    user_feature_table=_ml1m_users(folder / "users.dat"), item_feature_table=(movie_ids, genres),
                    all_item_ids=movie_ids)


def load_ml_10m(path: str | None = None, cache_dir: str | None = None, allow_download: bool = True,
                downloader=None, **_: object) -> Ratings:
    folder = locate("ml_10m", path, ("ratings.dat", "movies.dat"), cache_dir, allow_download, downloader)
    t = _numeric_table(folder / "ratings.dat", "::", 4)
    movie_ids, genres = _genres_from_movies_csv(folder / "movies.dat", sep="::")
    return from_raw("ml_10m", t[:, 0].astype(np.int64), t[:, 1].astype(np.int64), t[:, 2], t[:, 3].astype(np.int64),
                    item_feature_table=(movie_ids, genres), all_item_ids=movie_ids)


def load_ml_25m(path: str | None = None, cache_dir: str | None = None, allow_download: bool = True,
                downloader=None, **_: object) -> Ratings:
    folder = locate("ml_25m", path, ("ratings.csv", "movies.csv"), cache_dir, allow_download, downloader)
    t = _numeric_table(folder / "ratings.csv", ",", 4, skip_header=True)
    movie_ids, genres = _genres_from_movies_csv(folder / "movies.csv")
    return from_raw("ml_25m", t[:, 0].astype(np.int64), t[:, 1].astype(np.int64), t[:, 2], t[:, 3].astype(np.int64),
                    item_feature_table=(movie_ids, genres), all_item_ids=movie_ids)


def load_csv(path: str | None = None, **_: object) -> Ratings:
    """Your own ratings: ``userId,movieId,rating,timestamp`` with a header line."""
    if not path:
        raise DatasetError("dataset csv needs dataset.path pointing to a userId,movieId,rating,timestamp file")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DatasetError(f"csv dataset: {file} does not exist")
    header = file.read_text(encoding="utf-8").splitlines()[0].strip().lower().replace(" ", "")
    if header != "userid,movieid,rating,timestamp":
        raise DatasetError(f"{file}: the first line must be the header userId,movieId,rating,timestamp")
    t = _numeric_table(file, ",", 4, skip_header=True)
    return from_raw("csv", t[:, 0].astype(np.int64), t[:, 1].astype(np.int64), t[:, 2], t[:, 3].astype(np.int64))

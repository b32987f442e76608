"""Finding dataset files: a user-given folder, or a GroupLens download into a cache, md5-checked.

MovieLens 100K/1M/10M/25M may not be redistributed, so the project never
ships them. A loader first looks in ``path``; otherwise it downloads the
official zip into ``cache_dir`` and checks its md5 before extracting. When
neither works the error says both ways out.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from recdata.ratings import DatasetError

GROUPLENS = "https://files.grouplens.org/datasets/movielens/"

# name -> (zip file, md5 of the zip as published by GroupLens next to each zip, folder inside the zip)
ARCHIVES = {
    "ml_100k": ("ml-100k.zip", "0e33842e24a9c977be4e0107933c0723", "ml-100k"),
    "ml_1m": ("ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906", "ml-1m"),
    "ml_10m": ("ml-10m.zip", "ce571fd55effeba0271552578f2648bd", "ml-10M100K"),
    "ml_25m": ("ml-25m.zip", "6b51fb2759a8657d3bfcbfc42b592ada", "ml-25m"),
}

Downloader = Callable[[str, Path], None]


def md5_of(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_md5(path: Path, expected: str) -> None:
    got = md5_of(path)
    if got != expected:
        raise DatasetError(f"{path} has md5 {got}, expected {expected}: the file is corrupt or not the original")


def urllib_download(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as resp, open(dest, "wb") as out:  # noqa: S310 (fixed https URL)
        shutil.copyfileobj(resp, out)


def default_cache_dir() -> Path:
    return Path(os.environ.get("SECREC_CACHE", Path.home() / ".cache" / "secrec"))


def locate(name: str, path: str | None, required: tuple[str, ...], cache_dir: str | None = None,
           allow_download: bool = True, downloader: Downloader | None = None) -> Path:
    """Folder holding ``required`` files for dataset ``name`` (given, cached, or freshly downloaded)."""
    if path is not None:
        folder = Path(path).expanduser()
        missing = [f for f in required if not (folder / f).is_file()]
        if missing:
            raise DatasetError(f"{name}: {folder} lacks {', '.join(missing)} (dataset.path must hold the "
                               f"original {name} files)")
        return folder
    zip_name, md5, inner = ARCHIVES[name]
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    folder = cache / inner
    if all((folder / f).is_file() for f in required):
        return folder
    how = (f"either set dataset.path to a folder holding {', '.join(required)}, or allow the download of "
           f"{GROUPLENS}{zip_name} into {cache} (dataset.download=true, network access)")
    if not allow_download:
        raise DatasetError(f"{name} is not available: {how}")
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / zip_name
    try:
        (downloader or urllib_download)(GROUPLENS + zip_name, archive)
    except Exception as exc:  # offline, refused, DNS...
        raise DatasetError(f"{name} could not be downloaded ({exc}); {how}") from exc
    check_md5(archive, md5)
    # Unpacked into a temporary folder and renamed into place: a run killed mid-unpack leaves no folder that
    # holds every required file but some cut short (the next run would load a fraction of the ratings).
    staging = Path(tempfile.mkdtemp(prefix=f".{inner}.", dir=cache))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(staging)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DatasetError(f"{name}: unpacking {archive} failed ({exc}); nothing was kept") from exc
        if (staging / inner).is_dir():
            shutil.rmtree(folder, ignore_errors=True)  # an earlier, incomplete folder
            os.replace(staging / inner, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    missing = [f for f in required if not (folder / f).is_file()]
    if missing:
        raise DatasetError(f"{name}: the downloaded archive lacks {', '.join(missing)}")
    return folder

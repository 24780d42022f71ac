"""The MovieLens benchmarks: download once into a cache folder, load by name
with the paper's protocol (docs/model.md §11)."""
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from .data import DataError, Index, ml1m_split, read_ratings


class DownloadError(DataError):
    """Fetching or storing a dataset failed at run time (network, disk, a
    corrupt download): the command exits with status 1, not 2."""

# GroupLens' published zips and their sha256, as recorded for these files by
# other projects (GroupLens itself publishes MD5s); a mismatch aborts the download.
SOURCES = {
    "ml-100k": ("https://files.grouplens.org/datasets/movielens/ml-100k.zip",
                "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"),
    "ml-1m": ("https://files.grouplens.org/datasets/movielens/ml-1m.zip",
              "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"),
}
# The files each protocol reads, inside the zip's top folder (named as the dataset).
REQUIRED = {"ml-100k": ("u1.base", "u1.test"), "ml-1m": ("ratings.dat",)}
_CHUNK = 1 << 20


def cache_dir(directory=None):
    """``directory``, else $GLOCALK_NP_DATA, else ~/.cache/glocalk-np."""
    if directory is not None:
        return Path(directory)
    return Path(os.environ.get("GLOCALK_NP_DATA") or Path.home() / ".cache" / "glocalk-np")


def _check_name(name):
    if name not in SOURCES:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(SOURCES)}")


def locate(name, directory=None):
    """The dataset's folder if it has been downloaded, else None."""
    _check_name(name)
    folder = cache_dir(directory) / name
    return folder if all((folder / f).is_file() for f in REQUIRED[name]) else None


def check_free(name, directory=None):
    """DataError unless ``name`` is downloaded or its folder is free: what
    is there otherwise is never ours (a download is renamed into place
    whole), so it is the user's and is not replaced."""
    target = cache_dir(directory) / name
    if locate(name, directory) is None and os.path.lexists(target):
        raise DataError(f"{target}: exists but is not a complete {name} download "
                        f"(needs {', '.join(REQUIRED[name])}); move it away or choose "
                        "another --dir")


def download(name, directory=None):
    """Fetch, verify and unpack ``name`` into the cache folder; return its folder.

    Nothing appears in the cache unless the sha256 matches and the zip holds
    the expected files: the zip is downloaded to a temporary file, unpacked
    into a temporary folder next to the target, and renamed into place.
    An existing download is kept as it is; anything else already there
    under the dataset's name (the user's own folder) is refused, never
    replaced.
    """
    found = locate(name, directory)
    if found is not None:
        return found
    url, sha256 = SOURCES[name]
    root = cache_dir(directory)
    check_free(name, directory)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-") as tmp:
            archive = Path(tmp) / "download.zip"
            digest = _fetch(url, archive)
            if digest != sha256:
                raise DownloadError(f"{url}: sha256 mismatch (got {digest}, expected {sha256}); "
                                "the download was discarded")
            _unpack(url, archive, name, Path(tmp) / "unpacked")
            target = root / name
            os.replace(Path(tmp) / "unpacked" / name, target)
    except OSError as e:
        raise DownloadError(f"{root}: cannot write the dataset: {e.strerror or e}") from None
    return target


def _fetch(url, path):
    """Stream ``url`` into ``path``; return the sha256 of what was received."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url}: download failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        raise DownloadError(f"{url}: download failed: {getattr(e, 'reason', None) or e}") from None
    return digest.hexdigest()


def _unpack(url, archive, name, dest):
    """Extract the zip's ``name/`` folder into ``dest`` and check its files."""
    try:
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest, members=[m for m in z.namelist() if m.startswith(f"{name}/")])
    except zipfile.BadZipFile:
        raise DownloadError(f"{url}: not a valid zip file") from None
    missing = [f for f in REQUIRED[name] if not (dest / name / f).is_file()]
    if missing:
        raise DownloadError(f"{url}: the zip lacks {name}/{', '.join(missing)}")


def files(name, directory=None):
    """The files ``name``'s protocol reads, where it has been downloaded
    (else none): what no output may replace."""
    folder = locate(name, directory)
    return [folder / f for f in REQUIRED[name]] if folder is not None else []


def load(name, directory=None):
    """(train, test, index) of a downloaded dataset, by the paper's protocol.

    ml-100k: u1.base / u1.test, the index over both files (1682 items x
    943 users, as in the official code). ml-1m: ratings.dat split 90/10 by
    data.ml1m_split; index None (built from the training set).
    """
    folder = locate(name, directory)
    if folder is None:
        raise DataError(f"{name} has not been downloaded to {cache_dir(directory)}: "
                        f"run `glocalk-np datasets download {name}` first")
    if name == "ml-100k":
        train, test = read_ratings(folder / "u1.base"), read_ratings(folder / "u1.test")
        return train, test, Index.from_ratings(train, test)
    return (*ml1m_split(read_ratings(folder / "ratings.dat")), None)

"""Fetch, identify and unpack a third-party source tree for tools/install_detectron2.sh (standard library only).

    python tools/source_archive.py fetch SOURCE DOWNLOAD_DIR   # prints a local archive or folder
    python tools/source_archive.py describe PATH               # prints "<key> <commit or ->"
    python tools/source_archive.py unpack ARCHIVE DEST         # DEST becomes the archive's top folder

SOURCE is a local archive (``.tar.gz``, ``.tgz``, ``.tar``, ``.zip``), a local folder, or an http(s) /
file URL of an archive; a URL is downloaded once into DOWNLOAD_DIR and reused afterwards (delete the file
to fetch it again). ``key`` identifies the content (sha256 of an archive, or of a folder's files without
build outputs), so wheels built from it can be cached under it. ``commit`` is what ``git archive`` (and
GitHub's archive download) records in the archive, or a folder's ``git rev-parse HEAD``.
Errors go to stderr as one sentence naming the source, with exit status 1.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# Not part of a source tree's content: what building or using it leaves behind.
SKIPPED_DIRS = {".git", "build", "dist", "__pycache__", ".eggs"}
SKIPPED_SUFFIXES = (".so", ".pyc", ".pyd", ".o")


class SourceError(Exception):
    """A source that cannot be fetched, read or unpacked; the message says which and why."""


def is_url(source: str) -> bool:
    return urllib.parse.urlparse(source).scheme in ("http", "https", "file")


def fetch(source: str, download_dir: str) -> str:
    """A local path for ``source``: the path itself, or the downloaded archive of a URL (downloaded once)."""
    if not is_url(source):
        path = os.path.abspath(os.path.expanduser(source))
        if os.path.isdir(path) or (os.path.isfile(path) and path.endswith(ARCHIVE_SUFFIXES)):
            return path
        if os.path.isfile(path):
            raise SourceError(f"{path} is not a source archive (expected one of {', '.join(ARCHIVE_SUFFIXES)}) "
                              "or a folder")
        raise SourceError(f"{path} does not exist")
    name = os.path.basename(urllib.parse.urlparse(source).path) or "source"
    suffix = next((s for s in ARCHIVE_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        raise SourceError(f"{source} does not name an archive (expected one of {', '.join(ARCHIVE_SUFFIXES)})")
    url_id = hashlib.sha256(source.encode()).hexdigest()[:12]
    path = os.path.join(download_dir, f"{name[:-len(suffix)]}-{url_id}{suffix}")
    if os.path.isfile(path):
        return path
    os.makedirs(download_dir, exist_ok=True)
    part = f"{path}.part{os.getpid()}"
    try:
        with urllib.request.urlopen(source, timeout=120) as response, open(part, "wb") as f:
            shutil.copyfileobj(response, f)
        os.replace(part, path)  # a complete file or none: an interrupted download is not reused
    except OSError as error:
        raise SourceError(f"could not download {source}: {error}") from error
    finally:
        if os.path.exists(part):
            os.remove(part)
    return path


def _tree_files(folder: str):
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            if not name.endswith(SKIPPED_SUFFIXES):
                yield os.path.join(root, name)


def content_key(path: str) -> str:
    """16 hex digits of sha256: of an archive's bytes, or of a folder's relative paths and file contents."""
    digest = hashlib.sha256()
    if os.path.isfile(path):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    else:
        for file in _tree_files(path):
            digest.update(os.path.relpath(file, path).encode() + b"\0")
            if os.path.islink(file):
                digest.update(b"link:" + os.readlink(file).encode())
            else:
                with open(file, "rb") as f:
                    digest.update(f.read())
            digest.update(b"\0")
    return digest.hexdigest()[:16]


def recorded_commit(path: str) -> str:
    """The commit ``git archive`` wrote into the archive, a folder's HEAD, or ``-`` when none is recorded."""
    try:
        if os.path.isdir(path):
            if not os.path.exists(os.path.join(path, ".git")):
                return "-"
            done = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True)
            return done.stdout.strip() if done.returncode == 0 else "-"
        if path.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                comment = archive.comment.decode(errors="replace").strip()
        else:
            with tarfile.open(path) as archive:
                comment = archive.pax_headers.get("comment", "").strip()
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as error:
        raise SourceError(f"cannot read {path}: {error}") from error
    is_commit = len(comment) == 40 and all(c in "0123456789abcdef" for c in comment)
    return comment if is_commit else "-"


def unpack(archive: str, dest: str) -> None:
    """Make ``dest`` the content of the archive's single top folder (atomically; a no-op when it exists)."""
    if os.path.isdir(dest):
        return
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".unpack-", dir=parent)
    try:
        if archive.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                z.extractall(staging)
        else:
            with tarfile.open(archive) as t:
                t.extractall(staging, filter="data")  # no absolute paths, links out of the tree, devices
        tops = os.listdir(staging)
        if len(tops) != 1 or not os.path.isdir(os.path.join(staging, tops[0])):
            raise SourceError(f"{archive} does not hold one top-level folder (it holds {sorted(tops)[:5]})")
        try:
            os.rename(os.path.join(staging, tops[0]), dest)
        except OSError:
            if not os.path.isdir(dest):  # otherwise a concurrent run unpacked the same archive first
                raise
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as error:
        raise SourceError(f"cannot unpack {archive} into {dest}: {error}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv) -> int:
    commands = {"fetch": 2, "describe": 1, "unpack": 2}
    if not argv or argv[0] not in commands or len(argv) != commands[argv[0]] + 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        if argv[0] == "fetch":
            print(fetch(argv[1], argv[2]))
        elif argv[0] == "describe":
            print(content_key(argv[1]), recorded_commit(argv[1]))
        else:
            unpack(argv[1], argv[2])
    except SourceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Safe extraction of uploaded .zip archives (zip-slip, symlinks and zip bombs are refused)."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path, PurePosixPath

from rayrt.domain.errors import InputError

#: default limit on the total uncompressed size of an archive (bytes); env RAYRT_ZIP_MAX_BYTES overrides
DEFAULT_MAX_BYTES = 4 * 2**30
#: default limit on the number of members; env RAYRT_ZIP_MAX_FILES overrides
DEFAULT_MAX_FILES = 100_000
#: a member whose compression ratio exceeds this is treated as a bomb
MAX_RATIO = 1000.0

__all__ = ["safe_extract_zip", "DEFAULT_MAX_BYTES"]


def _limit(env: str, default: int) -> int:
    try:
        return int(os.environ.get(env, default))
    except ValueError:
        return default


def _check_member(info: zipfile.ZipInfo, zip_name: str) -> PurePosixPath | None:
    name = info.filename.replace("\\", "/")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise InputError(
            f"{zip_name}: member '{info.filename}' is a symbolic link; links are refused in uploads", kind="zip"
        )
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise InputError(
            f"{zip_name}: member '{info.filename}' has an absolute path; refusing to extract outside the target folder",
            kind="zip",
        )
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise InputError(
            f"{zip_name}: member '{info.filename}' escapes the target folder ('..' in its path); refusing the archive",
            kind="zip",
        )
    if info.is_dir() or not parts:
        return None
    return PurePosixPath(*parts)


def safe_extract_zip(
    zip_path: str | Path, dest_dir: str | Path, *, max_bytes: int | None = None, max_files: int | None = None
) -> list[Path]:
    """Extract ``zip_path`` into ``dest_dir`` and return the extracted file paths.

    Every member is checked *before* anything is written: absolute paths, ``..`` components,
    symbolic links, more than ``max_files`` members, a declared total size above ``max_bytes``
    or a compression ratio above 1000:1 raise :class:`InputError`. While writing, the bytes
    actually decompressed are counted too (declared sizes can lie).
    """
    zip_path = Path(zip_path)
    dest = Path(dest_dir).resolve()
    max_bytes = _limit("RAYRT_ZIP_MAX_BYTES", DEFAULT_MAX_BYTES) if max_bytes is None else max_bytes
    max_files = _limit("RAYRT_ZIP_MAX_FILES", DEFAULT_MAX_FILES) if max_files is None else max_files
    if not zip_path.is_file():
        raise InputError(f"archive not found: {zip_path}", kind="zip", status=404)
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise InputError(f"{zip_path.name} is not a valid .zip archive", kind="zip") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > max_files:
            raise InputError(
                f"{zip_path.name} holds {len(infos)} members, more than the limit of {max_files}",
                kind="zip",
                status=413,
            )
        plan: list[tuple[zipfile.ZipInfo, Path]] = []
        total = 0
        for info in infos:
            rel = _check_member(info, zip_path.name)
            if rel is None:
                continue
            target = (dest / Path(*rel.parts)).resolve()
            if dest != target and dest not in target.parents:
                raise InputError(
                    f"{zip_path.name}: member '{info.filename}' escapes the target folder; refusing the archive",
                    kind="zip",
                )
            total += info.file_size
            if info.compress_size > 0 and info.file_size / info.compress_size > MAX_RATIO and info.file_size > 2**20:
                raise InputError(
                    f"{zip_path.name}: member '{info.filename}' expands {info.file_size / info.compress_size:.0f}-fold "
                    "(a zip bomb?); refusing the archive",
                    kind="zip",
                )
            plan.append((info, target))
        if total > max_bytes:
            raise InputError(
                f"{zip_path.name} expands to {total / 2**20:.0f} MiB, "
                f"more than the limit of {max_bytes / 2**20:.0f} MiB (RAYRT_ZIP_MAX_BYTES)",
                kind="zip",
                status=413,
            )
        written = 0
        out: list[Path] = []
        for info, target in plan:
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    written += len(chunk)
                    if written > max_bytes:
                        raise InputError(
                            f"{zip_path.name} expands beyond the limit of {max_bytes / 2**20:.0f} MiB; "
                            "refusing the archive",
                            kind="zip",
                            status=413,
                        )
                    dst.write(chunk)
            out.append(target)
    return out

"""Where plot images live: ``PLOTDIR/<stem>_dqm/<stem>_<Plot><ext>`` plus ``PLOTDIR/latest/``.

Images are written atomically (a hidden temporary file in the same folder, then a rename),
so a reader, ``/plots/`` or a browser, never sees half an image. ``resolve`` turns a URL
path into a file inside PLOTDIR or refuses it.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

log = logging.getLogger(__name__)

LATEST = "latest"
RUN_SUFFIX = "_dqm"
#: Names served under /plots/: no leading dot (hidden and temporary files), no separators.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\Z")
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|00)", re.IGNORECASE)
#: A temporary file's name (``temporary``): the image's name, the writing process (group 1) and thread.
_TEMPORARY = re.compile(r"\..+\.(\d+)\.\d+\.tmp")
MEDIA_TYPES = {
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".pdf": "application/pdf",
    ".eps": "application/postscript",
    ".ps": "application/postscript",
}
#: Formats a browser shows in an <img> tag (the landing page gallery).
BROWSER_IMAGES = (".png", ".svg", ".jpg", ".jpeg", ".webp")
#: The ``reason`` label of ``larpix_exporter_plot_errors_total``: ``draw``, the plugin raised (building,
#: feeding, drawing or rendering its figure); the others, the image could not be written, by errno.
ERROR_REASONS = ("draw", "write_nospace", "write_permission", "write_other")
_WRITE_REASONS = {
    errno.ENOSPC: "write_nospace",
    errno.EDQUOT: "write_nospace",
    errno.EACCES: "write_permission",
    errno.EPERM: "write_permission",
    errno.EROFS: "write_permission",
}


def write_reason(err: OSError) -> str:
    """The ``reason`` label for an image that could not be written (see ``ERROR_REASONS``)."""
    return _WRITE_REASONS.get(err.errno or 0, "write_other")


@dataclass(frozen=True)
class PlotFile:
    """One image in a folder of the store."""

    name: str  # file name
    path: Path
    size: int
    mtime: float

    @property
    def plot(self) -> str:
        return Path(self.name).stem


def temporary(path: Path) -> Path:
    """The hidden file an image for ``path`` is written to before its rename: named by process and thread, so
    no two writers share one, and a dead process's can be told apart (``remove_temporaries``)."""
    return path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"


def remove_temporaries(root: str | os.PathLike[str], pid: int) -> int:
    """Remove the temporary files process ``pid`` left in the folders of the store at ``root`` (it was killed
    while writing an image; a live writer removes its own on any error); how many. Called once ``pid`` is
    reaped, so no live writer of this machine has that number (writers in other process namespaces sharing
    the folder could: theirs would fail to rename, counted as a write error). A folder or file that cannot
    be listed or removed is logged and left: this is tidying, never a reason to stop drawing."""
    removed = 0
    try:
        found = [tmp for tmp in Path(root).glob("*/.*.tmp") if _pid_of(tmp.name) == pid]
    except OSError as err:
        log.warning("plots: cannot look for temporary files of process %d in %s: %s", pid, root, err)
        return 0
    for tmp in found:
        try:
            tmp.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("plots: cannot remove %s: %s", tmp, err)
    return removed


def _pid_of(name: str) -> int | None:
    """The writing process of a temporary file's name (``temporary``), None for any other name."""
    match = _TEMPORARY.fullmatch(name)
    return int(match[1]) if match else None


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class PlotStore:
    """The plot folder: writes images, lists them, resolves URL paths safely."""

    def __init__(self, root: str | os.PathLike, ext: str = ".png", latest: bool = True) -> None:
        self.root = Path(root)
        self.ext = ext
        self.keep_latest = latest
        self.root.mkdir(parents=True, exist_ok=True)
        #: Images older than this (whole seconds: file systems round times) are a previous run's.
        self.opened = math.floor(time.time())

    def run_path(self, stem: str, plot: str) -> Path:
        """``PLOTDIR/<stem>_dqm/<stem>_<plot><ext>``, as the predecessor named them."""
        return self.root / f"{stem}{RUN_SUFFIX}" / f"{stem}_{plot}{self.ext}"

    def write(self, plot: str, data: bytes, stems: Iterable[str]) -> list[Path]:
        """Store one image for each input file stem, and as the newest under ``latest/``."""
        paths = [self.run_path(stem, plot) for stem in stems]
        if self.keep_latest:
            paths.append(self.root / LATEST / f"{plot}{self.ext}")
        for path in paths:
            atomic_write(path, data)
        return paths

    def _files(self, folder: Path) -> list[PlotFile]:
        out = []
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return []
        for entry in entries:
            if not _SAFE_NAME.match(entry.name):
                continue
            try:
                if entry.is_file(follow_symlinks=False):  # the store writes no links; list none
                    st = entry.stat()
                    out.append(PlotFile(entry.name, Path(entry.path), st.st_size, st.st_mtime))
            except OSError:
                continue
        return sorted(out, key=lambda f: f.name)

    def latest(self) -> list[PlotFile]:
        """Images in ``latest/``, by name."""
        return self._files(self.root / LATEST)

    def drawn(self) -> list[PlotFile]:
        """Images in ``latest/`` written since this store was opened: never a previous run's, by name."""
        return [f for f in self.latest() if f.mtime >= self.opened]

    def runs(self, limit: int = 50) -> list[PlotFile]:
        """The newest per-file folders (``<stem>_dqm``), newest first."""
        folders = []
        try:
            for entry in os.scandir(self.root):
                if (
                    entry.name.endswith(RUN_SUFFIX)
                    and _SAFE_NAME.match(entry.name)
                    and entry.is_dir(follow_symlinks=False)
                ):
                    st = entry.stat()
                    folders.append(PlotFile(entry.name, Path(entry.path), 0, st.st_mtime))
        except OSError:
            return []
        return sorted(folders, key=lambda f: -f.mtime)[:limit]

    def files(self, folder: Path) -> list[PlotFile]:
        """Images of one folder of the store (see ``resolve_folder``)."""
        return self._files(folder)

    def _inside(self, names: list[str]) -> Path | None:
        """The real path of ``root/names...`` if it stays inside the root, else None."""
        root = os.path.realpath(self.root)
        real = os.path.realpath(os.path.join(root, *names))
        return Path(real) if real.startswith(root + os.sep) else None

    @staticmethod
    def _names(url_path: str) -> list[str]:
        """Decoded segments of a still percent-encoded URL path; [] if any is unsafe.

        Refused: empty or dot segments (``..``, absolute paths, hidden and temporary files),
        encoded slashes, backslashes or NULs.
        """
        if not url_path or _ENCODED_SEPARATOR.search(url_path):
            return []
        names = [unquote(segment) for segment in url_path.split("/")]
        return names if all(_SAFE_NAME.match(n) for n in names) else []

    def resolve(self, url_path: str) -> Path | None:
        """The image for the path after ``/plots/``: ``NAME`` in ``latest/``, ``FOLDER/NAME``; else None.

        Unsafe paths (see ``_names``) and anything a symlink leads out of the plot folder are refused.
        """
        names = self._names(url_path)
        if not 1 <= len(names) <= 2:
            return None
        path = self._inside([LATEST, *names] if len(names) == 1 else names)
        return path if path is not None and path.is_file() else None

    def resolve_folder(self, url_path: str) -> Path | None:
        """The folder for ``/plots/FOLDER/`` (``latest`` or a ``<stem>_dqm``), or None."""
        names = self._names(url_path)
        if len(names) != 1 or not (names[0] == LATEST or names[0].endswith(RUN_SUFFIX)):
            return None
        path = self._inside(names)
        return path if path is not None and path.is_dir() else None

"""Listing the image files under a folder safely: no symlink loops, nothing that blocks.

Symlinks to folders are followed once: a link into a folder already being listed (a loop, or a
second way into the same folder) is not entered and is reported once. Entries that are not
regular files (FIFOs, sockets, devices) are listed with the reason they cannot be read, so the
job skips them without ever opening them. Only `lstat`/`stat` are called: nothing here reads a
file or blocks on one.
"""

from __future__ import annotations

import os
import stat

from jaxviz.data.decode import file_kind

Listing = tuple[list[str], dict[int, str]]  # (paths, {position: reason it is unusable})


def image_files(root: str, extensions: set[str]) -> Listing:
    """Files under `root` (recursive, sorted by name at every level) whose extension is in
    `extensions`, and the unusable ones among them (non-regular files, symlink loops)."""
    paths: list[str] = []
    problems: dict[int, str] = {}
    seen: set[tuple[int, int]] = set()

    def visit(folder: str) -> None:
        st = os.stat(folder)
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            problems[len(paths)] = f"folder not readable: {e.strerror}"
            paths.append(folder)
            return
        folders = []
        for entry in entries:
            try:
                st = entry.stat()  # follows symlinks; never opens the file
            except OSError as e:
                if os.path.splitext(entry.name)[1].lower() in extensions or entry.is_symlink():
                    problems[len(paths)] = f"broken link or unreadable entry: {e.strerror}"
                    paths.append(entry.path)
                continue
            if stat.S_ISDIR(st.st_mode):
                folders.append((entry.path, (st.st_dev, st.st_ino)))
                continue
            if os.path.splitext(entry.name)[1].lower() not in extensions:
                continue
            kind = file_kind(st.st_mode)
            if kind is not None:
                problems[len(paths)] = f"not a regular file ({kind})"
            paths.append(entry.path)
        for path, key in folders:  # files of a folder first, then its subfolders (os.walk order)
            if key in seen:
                problems[len(paths)] = (
                    "symlink loop: leads to a folder already listed; not followed"
                )
                paths.append(path)
            else:
                visit(path)

    visit(root)
    return paths, problems

"""The one way msresnet lists a folder tree: every folder reader (training folders, ``evaluate --data-dir``,
``scan``, ``predict DIR``) walks with :func:`walk_files` / :func:`class_folders`.

Directory symlinks are followed only when they lead to a directory inside the tree that has not been walked yet, so
a walk never leaves the tree (``ln -s /`` inside a dataset) and never loops (``ln -s ..``); each real directory is
listed once, so no image is counted twice. Skipped links are named in one :class:`SymlinkWarning`. File symlinks
are listed like files: one that dangles is then an unreadable file, which the readers skip and report like any
other bad file. Order is torchvision's ``make_dataset`` order (directories sorted by path, files sorted by name).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

__all__ = ["SymlinkWarning", "class_folders", "walk_files"]


class SymlinkWarning(UserWarning):
    """Directory symlinks that lead out of a folder tree or back into it were not followed."""


def _inside(real: str, tree: str) -> bool:
    return real == tree or real.startswith(tree.rstrip(os.sep) + os.sep)


class _Walk:
    """One walk of a tree: the real directories seen so far and the symlinks skipped."""

    def __init__(self, tree: Path) -> None:
        self.tree = os.path.realpath(tree)
        self.seen: set[str] = set()
        self.skipped: list[str] = []

    def enter(self, path: str) -> bool:
        """Whether to list the directory at ``path`` (False for a link out of the tree or to a walked directory)."""
        real = os.path.realpath(path)
        if not _inside(real, self.tree) or real in self.seen:
            self.skipped.append(path)
            return False
        self.seen.add(real)
        return True

    def warn(self, root: Path) -> None:
        if self.skipped:
            names = ", ".join(os.path.relpath(p, root) for p in self.skipped[:3])
            more = f" and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
            warnings.warn(
                f"did not follow {len(self.skipped)} directory symlink(s) in {root} that lead out of it or back "
                f"into it: {names}{more}",
                SymlinkWarning,
                stacklevel=3,
            )


def _entries(path: str) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:
        return []  # unreadable directory: nothing in it can be read either


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks: a link to a directory is a directory here
    except OSError:
        return False


def _collect(
    starts: list[tuple[str, str]],
    links: list[tuple[str, str]],
    walk: _Walk,
    keep: Callable[[str], bool],
    skip_hidden: bool,
) -> dict[str, list[tuple[str, list[str]]]]:
    """``{key: [(directory, sorted file names)]}`` for the trees at ``starts`` (``(path, key)``, entered already).

    Real directories are listed first; directory symlinks (``links`` and the ones met on the way) are decided only
    when no real directory is left, so a link can never claim a directory the tree holds anyway.
    """
    out: dict[str, list[tuple[str, list[str]]]] = {}
    pending, deferred = list(starts), list(links)
    while pending or deferred:
        if not pending:
            link, key = deferred.pop(0)
            if walk.enter(link):
                pending.append((link, key))
            continue
        d, key = pending.pop()
        files: list[str] = []
        for e in _entries(d):
            if skip_hidden and e.name.startswith("."):
                continue
            if _is_dir(e):
                if e.is_symlink():
                    deferred.append((e.path, key))
                else:
                    walk.seen.add(os.path.realpath(e.path))
                    pending.append((e.path, key))
            elif keep(e.name):
                files.append(e.name)
        out.setdefault(key, []).append((d, sorted(files)))
    return out


def _flat(listed: list[tuple[str, list[str]]]) -> list[Path]:
    return [Path(d, f) for d, names in sorted(listed) for f in names]


def walk_files(
    root: str | os.PathLike, *, keep: Callable[[str], bool] | None = None, skip_hidden: bool = False
) -> list[Path]:
    """Every non-directory entry under ``root`` (files, file symlinks, dangling ones included) that ``keep``
    accepts by name, without following directory symlinks out of the tree or around a loop.

    Args:
        root: the tree.
        keep: file-name filter (e.g. by extension); default all.
        skip_hidden: leave out names starting with ``.`` (files and directories).

    Returns:
        Paths under ``root`` as spelt through it, directories sorted by path and files by name.
    """
    root = Path(root)
    walk = _Walk(root)
    walk.enter(str(root))
    found = _collect([(str(root), "")], [], walk, keep or (lambda _: True), skip_hidden)
    walk.warn(root)
    return _flat(found.get("", []))


def class_folders(
    root: str | os.PathLike, *, keep: Callable[[str], bool] | None = None
) -> tuple[list[str], dict[str, list[Path]]]:
    """The class folders of an ImageFolder tree ``root/<class>/...`` and the files of each (torchvision's classes:
    every sub-directory, sorted by name; files in ``make_dataset`` order), walked as :func:`walk_files` does (a
    class folder that is a symlink out of the tree is not a class).

    Returns:
        ``(class names, {class name: files})``.
    """
    root = Path(root)
    walk = _Walk(root)
    walk.enter(str(root))
    starts, links = [], []
    for e in _entries(str(root)):
        if _is_dir(e):
            if e.is_symlink():
                links.append((e.path, e.name))
            else:
                walk.seen.add(os.path.realpath(e.path))
                starts.append((e.path, e.name))
    found = _collect(starts, links, walk, keep or (lambda _: True), False)
    walk.warn(root)
    classes = sorted(found)
    return classes, {name: _flat(found[name]) for name in classes}

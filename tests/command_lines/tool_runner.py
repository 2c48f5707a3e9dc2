"""Running tools/*.py as a user does, and checking what they leave behind."""

from __future__ import annotations

import hashlib
import os
import re
import runpy
import shutil
import sys
from typing import Dict, List, Tuple

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "tools", "demo_data")
ERROR_LINE = re.compile(r"(^|: )error: ")


def copy_user_dir(template: str, tmp_path) -> str:
    """A fresh copy of the ``template`` directory (links kept as links, the hard link re-made)."""
    user_dir = str(tmp_path / "user")
    shutil.copytree(template, user_dir, symlinks=True)
    hard = os.path.join(user_dir, "hardlink_to_lvis.json")
    if os.path.exists(hard):  # copytree copies a hard link as a second file
        os.remove(hard)
        os.link(os.path.join(user_dir, "lvis.json"), hard)
    return user_dir


def snapshot(root: str) -> Dict[str, Tuple[str, str]]:
    """relative path -> ("link", target) or ("file", sha256) of everything under ``root``."""
    state = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            key = os.path.relpath(path, root)
            if os.path.islink(path):
                state[key] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                state[key] = ("dir", "")
            else:
                with open(path, "rb") as handle:
                    state[key] = ("file", hashlib.sha256(handle.read()).hexdigest())
    return state


def run_tool(tool: str, args: List[str], monkeypatch, capsys) -> Tuple[int, str, str]:
    """``python tools/<tool> <args>`` in this process: (exit status, stdout, stderr). An exception that
    escapes the tool (a traceback for the user) fails the test here."""
    monkeypatch.setattr(sys, "argv", [tool, *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(os.path.join(REPO, "tools", tool), run_name="__main__")
    captured = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else code), captured.out, captured.err


def assert_refused(code: int, err: str, named: str) -> None:
    """Exit status 2, no traceback, exactly one ``error:`` line, and ``named`` in it or in the indented
    detail lines right after it (a list of bad records or images)."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    starts = [i for i, line in enumerate(lines) if ERROR_LINE.search(line)]
    assert len(starts) == 1, err
    block = [lines[starts[0]]]
    for line in lines[starts[0] + 1:]:
        if not line.startswith((" ", "\t")):
            break
        block.append(line)
    assert named in "\n".join(block), f"the error does not name {named!r}: {block}"
    assert code == 2, err

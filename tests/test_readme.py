"""The README's quick tour runs as it stands, from the repository root, and leaves nothing there."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_quick_tour_runs(monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    tour = readme[readme.index("## Quick tour"):]
    code = re.search(r"```python\n(.*?)```", tour, re.S).group(1)
    monkeypatch.chdir(ROOT)
    before = set(os.listdir(ROOT))
    exec(compile(code, "README.md: quick tour", "exec"), {})
    printed = capsys.readouterr().out
    assert "input_ids       uint16" in printed and "torch.int64" in printed
    assert set(os.listdir(ROOT)) == before  # no folder left in the repository

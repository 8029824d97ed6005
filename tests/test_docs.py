"""Every code block of the README and of the documentation site (``docs/``) runs as written, offline.

The fences of these pages say what a test does with a block:

- ```` ```python ````: run. A page's Python blocks run in order, in one namespace (a later block may use what an
  earlier one made), in a fresh temporary folder that holds the repository's ``tests/`` and ``scripts/``
  (the paths the pages name, as from the repository root).
- ```` ```bash ````: every command is checked. ``hf-dtype ...`` and the file commands (``mkdir``, ``cp``, ``touch``,
  ``rm``, ``ls``) run in that folder; ``python scripts/NAME.py ARGS`` (also after ``accelerate launch ...`` or
  ``torchrun ...``) has ARGS parsed by the script's own ``parse_args``, and the launcher's options by the launcher's
  parser (a full run takes minutes: each script's own tests run it); set-up commands (``python3 -m venv``, ``pip
  install``, ``python -m pytest``, ``mkdocs``) are checked against ``pyproject.toml``. Any other command fails the
  test, so every command a page shows is one of these.
- ```` ```console ````: a transcript. Each ``$ hf-dtype ...`` line runs, and what it prints must equal the lines
  that follow it.
- ```` ```text ```` (or no language): printed output and error messages, shown, not run. Python that is only an
  illustration is fenced ```` ```{.python .notest} ```` (the site highlights it as Python; none is, today).

A page that calls ``load_dataset("NAME")`` for a Hub dataset runs against a local folder ``NAME`` laid out as the
Hub's (``HUB_STAND_INS``), which ``load_dataset`` reads first: the call is the one users make.

``--8<-- "FILE:section"`` lines (the snippets extension of the site) are replaced by that section of ``FILE``
before the blocks are read, as the site does. ``tests/test_readme.py`` runs the README's quick tour on its own.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", *sorted(str(path.relative_to(ROOT)) for path in (ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.S | re.M)
SNIPPET = re.compile(r'^--8<-- "([^":]+)(?::([\w-]+))?"\s*$', re.M)
FILE_COMMANDS = {"mkdir", "cp", "touch", "rm", "ls"}
SET_UP = ("python3 -m venv", "python -m venv", ". .venv/bin/activate", "source .venv/bin/activate", "pip install", "python -m pytest",
          "mkdocs serve", "mkdocs build")


def expand_snippets(text: str) -> str:
    """``--8<-- "FILE:name"`` replaced by the lines between ``--8<-- [start:name]`` and ``--8<-- [end:name]`` of FILE."""

    def section(match: re.Match) -> str:
        source = (ROOT / match.group(1)).read_text(encoding="utf-8")
        if match.group(2) is None:
            return source
        start, end = f"--8<-- [start:{match.group(2)}]", f"--8<-- [end:{match.group(2)}]"
        lines = source.splitlines()
        marks = [i for i, line in enumerate(lines) if start in line] + [i for i, line in enumerate(lines) if end in line]
        assert len(marks) == 2, f"{match.group(1)} needs one '{start}' line and one '{end}' line"
        return "\n".join(lines[marks[0] + 1:marks[1]])

    return SNIPPET.sub(section, text)


def blocks(page: str) -> list[tuple[str, str, int]]:
    """The fenced blocks of ``page`` (snippets expanded): (info string, code, number)."""
    text = expand_snippets((ROOT / page).read_text(encoding="utf-8"))
    return [(match.group(1).strip(), match.group(2), number) for number, match in enumerate(FENCE.finditer(text), 1)]


def commands(code: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments dropped, ``&&`` chains split."""
    joined = re.sub(r"\\\n\s*", " ", code)
    found = []
    for line in joined.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        found += [part.strip() for part in line.split("&&") if part.strip()]
    return found


def load_script(name: str):
    """``scripts/NAME`` imported as a module (its own folder on the path, as ``python scripts/NAME`` has it)."""
    path = ROOT / "scripts" / name
    assert path.is_file(), f"scripts/{name} does not exist"
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    name = f"docs_script_{path.stem}"
    if name not in sys.modules:  # once per session: a module is imported once (dataclasses look it up in sys.modules)
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def check_script(words: list[str], where: str) -> None:
    """``[launcher...] scripts/NAME.py ARGS``: the launcher's options and the script's ARGS parse."""
    at = next(i for i, word in enumerate(words) if word.startswith("scripts/"))
    launcher, script, args = words[:at], words[at], words[at + 1:]
    if launcher[:2] == ["accelerate", "launch"]:
        from accelerate.commands.launch import launch_command_parser

        launch_command_parser().parse_args([*launcher[2:], script])
    elif launcher[:1] == ["torchrun"]:
        from torch.distributed.run import get_args_parser

        get_args_parser().parse_args([*launcher[1:], script])
    else:
        assert launcher == ["python"], f"{where}: unknown launcher {launcher}"
    try:
        load_script(script.removeprefix("scripts/")).parse_args(args)
    except SystemExit as exit_:
        raise AssertionError(f"{where}: {shlex.join(words)} does not parse (exit {exit_.code})") from None


def check_set_up(command: str, where: str) -> None:
    """A set-up command: the extras it installs exist, the versions it pins are the CI's."""
    assert command.startswith(SET_UP), f"{where}: {command!r} is not a command the docs tests know; see this file's docstring"
    extras = re.findall(r'-e "\.\[([\w,]+)\]"', command)
    declared = importlib.metadata.metadata("hf-dtype").get_all("Provides-Extra") or []
    for group in ",".join(extras).split(",") if extras else []:
        assert group in declared, f"{where}: pip install of extra {group!r}, which pyproject.toml does not declare"
    if "torch==" in command:
        assert re.search(r"torch==[\d.]+", command).group(0) in (ROOT / ".ci/run").read_text(), f"{where}: not CI's torch pin"


def run_cli(command: str) -> tuple[int, str]:
    """``hf-dtype ARGS`` run in this process, as its console script runs it: the exit status and what it prints
    (stdout, then stderr)."""
    from hf_dtype import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(shlex.split(command)[1:]) or 0
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
    return status, out.getvalue() + err.getvalue()


def run_bash(code: str, where: str) -> None:
    for command in commands(code):
        words = shlex.split(command)
        if words[0] == "hf-dtype":
            status, printed = run_cli(command)
            assert status == 0, f"{where}: {command} exited with {status}: {printed}"
        elif words[0] in FILE_COMMANDS:
            subprocess.run(words, check=True)
        elif any(word.startswith("scripts/") for word in words):
            check_script(words, where)
        else:
            check_set_up(command, where)


def run_console(code: str, where: str) -> None:
    """``$ command`` lines run; each prints exactly the lines that follow it."""
    parts = re.split(r"^\$ (.*)$", code, flags=re.M)
    assert parts[0].strip() == "", f"{where}: a console block starts with a '$ ' line"
    for command, expected in zip(parts[1::2], parts[2::2], strict=True):
        assert command.startswith("hf-dtype "), f"{where}: only hf-dtype commands run in a console block; got {command!r}"
        assert run_cli(command)[1].strip() == expected.strip(), f"{where}: $ {command}"


def conll2003_as_on_the_hub(folder: Path) -> None:
    """The committed CoNLL-2003 sample laid out as the Hub's ``conll2003``: a Parquet file a split under data/, tags as ClassLabel."""
    import datasets

    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    features = datasets.Features({"id": datasets.Value("string"), "tokens": datasets.List(datasets.Value("string")),
                                  "ner_tags": datasets.List(datasets.ClassLabel(names=names))})
    sample = ROOT / "tests/data/conll2003_sample"
    splits = datasets.load_dataset("json", data_files={split: str(sample / f"{split}.jsonl") for split in ("train", "validation", "test")})
    for split, rows in splits.items():
        rows = rows.map(lambda row: {"ner_tags": [names.index(tag) for tag in row["ner_tags"]]}, features=features)
        rows.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))


HUB_STAND_INS = {"conll2003": conll2003_as_on_the_hub}  # a block that reads the Hub reads a local folder laid out as the Hub's


@pytest.fixture
def workdir(tmp_path, monkeypatch, fresh_accelerate_state):
    """A fresh folder, as the repository root looks to the pages: tests/ and scripts/ linked in."""
    for name in ("tests", "scripts"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return tmp_path


@pytest.mark.parametrize("page", PAGES)
def test_every_block_of_the_page_runs_as_written(page, workdir):
    text = (ROOT / page).read_text(encoding="utf-8")
    for name, make in HUB_STAND_INS.items():
        if f'load_dataset("{name}"' in text:
            make(workdir / name)
    namespace = {"__name__": "__docs__"}
    for info, code, number in blocks(page):
        where = f"{page}, block {number}"
        classes = re.findall(r"\.([\w-]+)", info) if info.startswith("{") else info.split()
        language = classes[0] if classes else ""
        if language == "python" and "notest" not in classes:
            exec(compile(code, where, "exec"), namespace)
        elif language == "bash":
            run_bash(code, where)
        elif language == "console":
            run_console(code, where)
        else:
            assert language in ("text", "python", ""), f"{where}: unknown fence {info!r}; see this file's docstring"


def test_the_pages_use_no_old_keyword_and_no_private_path():
    old = re.compile(r'packing="|(?<!return_)flash_attn_kwargs=|\bseparator=|\.\./shared|shared/data')
    for page in PAGES:
        if page.startswith("docs/bench/"):  # the benchmarks' record names the data folder they measured
            continue
        text = (ROOT / page).read_text(encoding="utf-8")
        assert not old.search(text), f"{page}: {old.search(text).group(0)!r}"


def heading_anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, as the site's ``toc`` extension makes them."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text(encoding="utf-8")), re.M)
    return {re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower()) for heading in headings}


def test_the_readme_is_short_and_its_links_resolve():
    """The README is not on the site, so its links are checked here (the site's by ``mkdocs build --strict``)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 220
    for target, anchor in re.findall(r"\]\(([^)#\s]+)(?:#([^)]*))?\)", readme):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"
            assert not anchor or anchor in heading_anchors(ROOT / target), f"README.md links to {target}#{anchor}: no such heading"


def test_one_version():
    """``hf_dtype.__version__`` is the one source (pyproject reads it); the changelog's latest entry is that version."""
    import hf_dtype

    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in pyproject and 'version = { attr = "hf_dtype.__version__" }' in pyproject
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(r"^## \[?(\d+\.\d+\.\d+)", changelog, re.M).group(1) == hf_dtype.__version__
    assert (ROOT / "hf_dtype" / "py.typed").is_file()


def test_the_api_page_lists_every_public_name_with_a_docstring():
    """The check ``mkdocs build --strict`` runs (docs/hooks.py), here too, without building the site."""
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    assert hooks.api_gaps() == []
    assert "| `loader.py` |" in hooks.module_table()

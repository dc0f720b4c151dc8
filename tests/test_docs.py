"""The documentation: README.md stays the newcomer's path (short, its two commands run verbatim by CI, every docs/ page
linked), docs/ holds the rest (every flag documented), every pipe table renders as a table, and every relative link
leads to a file."""
import glob
import os
import re

import pytest
from markdown_it import MarkdownIt

from conftest import tag

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
PAGES = [README] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
README_MAX_LINES = 260


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_configuration_page_documents_every_flag():
    page = read(os.path.join(REPO, "docs", "configuration.md"))
    missing = [name for name in tag.Config.__dataclass_fields__ if f"`--{name}`" not in page]
    assert not missing, f"docs/configuration.md's flag table lacks {missing}"


def test_ci_runs_the_readmes_two_commands_verbatim_in_order():
    readme, ci = read(README), read(os.path.join(REPO, ".ci", "run"))
    commands = [block.split("```")[0].strip() for block in readme.split("```bash\n")[1:3]]  # the quick start's two
    assert commands[0].endswith("python train_audio_gan.py") and commands[1].endswith("python -m pytest -q tests")
    lines = ci.splitlines()
    assert lines.index(commands[0]) < lines.index(commands[1])  # the demo first, as a newcomer runs them


def markdown():
    """CommonMark with GitHub's pipe tables: a table that GitHub would show as text renders here as a paragraph."""
    return MarkdownIt("commonmark").enable("table")


def cells(line):
    """The cells of a pipe-table row as GFM splits it: on each '|' not escaped by a backslash, the outer pipes dropped."""
    row = line.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    return re.split(r"(?<!\\)\|", row)


def pipe_blocks(lines, fenced):
    """(first, last) line indexes of each run of consecutive lines that start with '|' (after indentation), outside
    fenced code."""
    blocks, start = [], None
    for i, line in enumerate(lines + [""]):
        if line.lstrip().startswith("|") and i not in fenced:
            start = i if start is None else start
        elif start is not None:
            blocks.append((start, i - 1))
            start = None
    return blocks


def table_problems(text):
    """What is wrong with text's pipe tables: a block of '|' lines that does not render as one <table>, or a row whose
    cell count differs from its header's. Empty when every table is sound."""
    tokens = markdown().parse(text)
    lines = text.splitlines()
    fenced = {i for t in tokens if t.type in ("fence", "code_block") and t.map for i in range(*t.map)}
    tables = {(t.map[0], t.map[1] - 1) for t in tokens if t.type == "table_open"}
    problems = []
    for first, last in pipe_blocks(lines, fenced):
        if (first, last) not in tables:
            problems.append(f"line {first + 1}: {last - first + 1} '|' line(s) that do not render as one table: "
                            f"{lines[first].strip()[:60]!r}")
            continue
        width = len(cells(lines[first]))
        problems += [f"line {i + 1}: {len(cells(lines[i]))} cells where the header has {width}"
                     for i in range(first + 2, last + 1) if len(cells(lines[i])) != width]
    return problems


@pytest.mark.parametrize("path", PAGES, ids=lambda p: os.path.relpath(p, REPO))
def test_every_pipe_table_renders_as_a_table_with_its_headers_cells(path):
    problems = table_problems(read(path))
    assert not problems, f"{os.path.relpath(path, REPO)}: " + "; ".join(problems)


def test_a_malformed_table_is_caught():
    header_of_three_under_a_two_column_rule = "| a | b | c |\n|---|---|\n| 1 | 2 |\n"
    row_too_long = "| a | b |\n|---|---|\n| 1 | 2 | 3 |\n"
    sound = "text\n\n| a | b |\n|---|---|\n| 1 | `x \\| y` |\n\n```\n| not a table |\n```\n"
    assert table_problems(header_of_three_under_a_two_column_rule)
    assert table_problems(row_too_long)
    assert not table_problems(sound)


def test_readme_is_short():
    n = len(read(README).splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; the newcomer's path is at most {README_MAX_LINES}"


def relative_targets(tokens):
    """Every link and image target in a token stream (inline, and <img src> / <a href> in raw HTML)."""
    for t in tokens:
        if t.type == "inline":
            yield from relative_targets(t.children or [])
        elif t.type in ("link_open", "image"):
            yield t.attrs.get("href") or t.attrs.get("src")
        if t.type in ("html_block", "html_inline"):
            yield from re.findall(r'(?:src|href)="([^"]+)"', t.content)


def relative_links(text):
    """The targets of text's links and images that are files relative to it (not http:, mailto: or #anchor)."""
    return [t for t in relative_targets(markdown().parse(text))
            if t and not re.match(r"[a-z][a-z0-9+.-]*:|#", t, re.I)]


def missing_files(text, folder):
    return [t for t in relative_links(text) if not os.path.exists(os.path.join(folder, t.split("#")[0]))]


@pytest.mark.parametrize("path", PAGES, ids=lambda p: os.path.relpath(p, REPO))
def test_every_relative_link_leads_to_a_file(path):
    missing = missing_files(read(path), os.path.dirname(path))
    assert not missing, f"{os.path.relpath(path, REPO)} links to files that do not exist: {missing}"
    if path == README:
        linked = {os.path.normpath(t.split("#")[0]) for t in relative_links(read(path))}
        unlinked = [os.path.relpath(p, REPO) for p in PAGES[1:] if os.path.relpath(p, REPO) not in linked]
        assert not unlinked, f"README.md does not link {unlinked}"


def test_a_broken_link_is_caught(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("")
    text = ('[ok](docs/a.md#part) [gone](docs/b.md) ![img](missing.png) <img src="also_missing.png"> '
            '[web](https://example.org/x.md) [here](#anchor)\n')
    assert missing_files(text, str(tmp_path)) == ["docs/b.md", "missing.png", "also_missing.png"]

"""The book's LaTeX output: what the PDF gets where the HTML book has something it cannot print.

``make pdf`` needs a TeX installation and is not part of ``make test``; the
LaTeX builder needs none, so this test builds the ``.tex`` file (Jupyter Book's
``--builder latex``, into a temporary folder) and searches it.

* Chapter 7's explorable figure is HTML and JavaScript, dropped from the LaTeX
  output; its static fallback -- a figure and a table of the same closed forms --
  must be there, and none of the figure's HTML.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JUPYTER_BOOK = Path(sys.executable).parent / "jupyter-book"


@pytest.fixture(scope="module")
def tex(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("latex")
    done = subprocess.run([str(JUPYTER_BOOK), "build", str(ROOT), "--builder", "latex", "--path-output", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return (out / "_build" / "latex" / "book.tex").read_text(encoding="utf-8")


def explorer_section(tex: str) -> str:
    start = tex.index(r"\subsection{Explore the closed forms}")
    return tex[start:tex.index(r"\section{", start)]


def test_the_explorer_section_keeps_its_static_figure_and_table(tex: str):
    section = explorer_section(tex)
    fallback = section[section.index(r"\begin{sphinxuseclass}{tag_ema-explorer-fallback}"):]
    assert r"\sphinxincludegraphics" in fallback                     # the figure
    assert r"\begin{tabulary}" in fallback or r"\begin{longtable}" in fallback   # the table, as a table
    rows = re.findall(r"\\sphinxAtStartPar\s*(trust|do not trust)\s", fallback)
    assert len(rows) == 3, rows                                       # one verdict per alpha


def test_none_of_the_explorer_html_reaches_the_tex_file(tex: str):
    section = explorer_section(tex)
    for html in ("ema_explorer.js", "<div", "<script", "needs JavaScript"):
        assert html not in section, html

"""The book's notebooks are stored executed, in order, and nbval really checks them.

nbval passes a cell that was never executed (it has no stored output to compare), so
these tests make sure every code cell of every notebook in the table of contents was
executed, top to bottom, in one kernel session.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from book_toc import toc_names as toc_files, toc_notebooks

ROOT = Path(__file__).resolve().parents[1]


def test_every_toc_entry_exists():
    missing = [f for f in toc_files() if not any((ROOT / f"{f}{ext}").exists() for ext in (".ipynb", ".md"))]
    assert not missing, f"_toc.yml names files that do not exist: {missing}"


def test_every_notebook_is_in_the_toc():
    in_toc = set(toc_notebooks())
    orphans = [p.relative_to(ROOT) for p in (ROOT / "book").rglob("*.ipynb")
               if p not in in_toc and ".ipynb_checkpoints" not in p.parts]
    assert not orphans, f"notebooks not in _toc.yml (never built or tested): {orphans}"


@pytest.mark.parametrize("path", toc_notebooks(), ids=lambda p: p.name)
def test_notebook_is_stored_fully_executed_in_order(path: Path):
    nb = nbformat.read(path, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert code_cells, f"{path.name} has no code cells"
    counts = [c.execution_count for c in code_cells]
    assert None not in counts, f"{path.name}: unexecuted code cells at {[i for i, c in enumerate(counts) if c is None]}"
    assert counts == list(range(1, len(counts) + 1)), (
        f"{path.name}: execution counts {counts} are not 1..{len(counts)}; "
        "re-execute the notebook top to bottom (make execute)"
    )


@pytest.mark.parametrize("path", toc_notebooks(), ids=lambda p: p.name)
def test_notebook_has_no_errors_and_clean_metadata(path: Path):
    nb = nbformat.read(path, as_version=4)
    errors = [o.get("ename") for c in nb.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, f"{path.name} stores error outputs: {errors}"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    volatile = [i for i, c in enumerate(nb.cells) if "execution" in c.metadata]
    assert not volatile, f"{path.name}: per-cell timing metadata in cells {volatile}"


def test_nbval_catches_a_stale_output(tmp_path: Path):
    """Change one stored number in a chapter: nbval must fail on it."""
    source = ROOT / "book" / "ch01_training.ipynb"
    nb = nbformat.read(source, as_version=4)
    for cell in nb.cells:
        outs = [o for o in cell.get("outputs", []) if o.output_type == "stream"]
        if outs and "True" in outs[0].text:
            outs[0].text = outs[0].text.replace("True", "False", 1)
            break
    else:
        pytest.fail("no printed output to tamper with")
    stale = tmp_path / source.name
    nbformat.write(nb, stale)
    shutil.copy(ROOT / "tests" / "nbval_sanitize.cfg", tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-o", "testpaths=",
         "--nbval", "--nbval-current-env", "--nbval-sanitize-with", str(tmp_path / "nbval_sanitize.cfg"),
         str(stale)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0, result.stdout[-2000:]
    assert "mismatch" in result.stdout.lower(), result.stdout[-2000:]


def run_nbval(notebook: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-o", "testpaths=",
         "--nbval", "--nbval-current-env", str(notebook)],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )


def test_nbval_checks_measurement_cells_by_tolerance_only(tmp_path: Path):
    """A tagged cell's text may change; its glued numbers may move within their tolerance only."""
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook

    measured = new_code_cell(
        'from myst_nb import glue\nfrom bnlib.notebook import glue_measurement\n'
        'print("a training run printed this")\nglue_measurement("gap", 0.25, ".2f", abs=0.1)\n'
        'glue("n_seeds", 5, display=False)', metadata={"tags": ["measurement"]})
    figure = ('import matplotlib\nmatplotlib.use("Agg")\nimport matplotlib.pyplot as plt\n'
              'fig = plt.figure(figsize=(1, 1))\nglue("fig", fig, display=False)\nplt.close(fig)')
    nb = new_notebook(cells=[measured, new_code_cell('print("exact")'), new_code_cell(figure)],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                               "language": "python"}})
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    shutil.copy(ROOT / "conftest.py", tmp_path)

    def outcome(tamper) -> subprocess.CompletedProcess:
        copy = nbformat.from_dict(nb)
        tamper(copy.cells[0].outputs, copy.cells[1].outputs + copy.cells[2].outputs)
        nbformat.write(copy, tmp_path / "case.ipynb")
        return run_nbval(tmp_path / "case.ipynb", tmp_path)

    def glued(outputs, name):
        return next(o for o in outputs if o.get("metadata", {}).get("scrapbook", {}).get("name") == name)

    def set_value(value):
        return lambda m, e: glued(m, "gap").metadata["measurement"].update(value=value)

    def text(m, e):
        m[0].text = "a training run on another CPU printed this\n"

    def exact(m, e):
        e[0].text = "changed\n"

    def figure_bytes(m, e):
        glued(e, "fig").data["application/papermill.record/image/png"] = "iVBORw0KGgo="

    def plain_glue(m, e):
        glued(m, "n_seeds").data["application/papermill.record/text/plain"] = "6"

    for tamper in (text, set_value(0.3), figure_bytes):          # 0.3 is within 0.1 of 0.25
        result = outcome(tamper)
        assert result.returncode == 0, result.stdout[-2000:]
    for tamper, message in [(set_value(0.4), "outside their tolerance"), (plain_glue, "must be exact"),
                            (exact, "mismatch")]:
        result = outcome(tamper)
        assert result.returncode != 0 and message in result.stdout.lower(), result.stdout[-2000:]

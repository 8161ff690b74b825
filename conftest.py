"""How nbval checks the notebooks: exact outputs strictly, measurements within their tolerance.

pytest loads this file for every run from the repository root, so it applies to
the main nbval run of ``make test`` and to the second execution in
``tests/test_determinism.py`` alike (README, "Execution model").

* Every code cell's text outputs are *exact*: nbval compares them with the
  stored ones after the sanitising patterns of ``tests/nbval_sanitize.cfg``.
* A cell tagged ``measurement`` (a training run, a random experiment) is
  executed but its text and figure outputs are not compared, because they
  depend on the CPU's kernels. The cell asserts its own claims; after it runs,
  each number it glued with :func:`bnlib.notebook.glue_measurement` must lie
  within the tolerance stored next to it, and any other glue of the cell must be
  equal (:func:`bnlib.notebook.measurement_mismatch`).
* Glued figures (myst-nb's ``application/papermill.record/image/png``) are never
  compared byte for byte, like nbval's own ``image/png``.
"""

from __future__ import annotations

MEASUREMENT_TAG = "measurement"
GLUED_FIGURES = tuple(f"application/papermill.record/{mime}"
                      for mime in ("image/png", "image/jpeg", "image/svg+xml", "application/pdf"))


def _check_measurements(item, run):
    from bnlib.notebook import glued_measurements, measurement_mismatch

    def runtest():
        run()
        problems = measurement_mismatch(glued_measurements(item.cell.outputs),
                                        glued_measurements(item.test_outputs or []))
        if problems:
            item.raise_cell_error("Glued measurements outside their tolerance", "\n".join(problems))

    return runtest


def pytest_collection_modifyitems(items):
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:
        return
    for item in items:
        if not isinstance(item, IPyNbCell):
            continue
        notebook = item.parent
        notebook.skip_compare = tuple(dict.fromkeys(notebook.skip_compare + GLUED_FIGURES))
        if MEASUREMENT_TAG in item.cell.metadata.get("tags", []):
            item.options["check"] = False
            item.runtest = _check_measurements(item, item.runtest)

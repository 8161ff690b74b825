"""bnlib.notebook: measured numbers are glued with a tolerance, and compared within it."""

from __future__ import annotations

import IPython.display
import numpy as np
import pytest

from bnlib.notebook import GLUE_PREFIX, glue_measurement, glued_measurements, measurement_mismatch


@pytest.fixture
def displayed(monkeypatch) -> list[dict]:
    """What glue_measurement displays, as nbformat display_data outputs."""
    outputs: list[dict] = []

    def display(data, raw=False, metadata=None):
        assert raw
        outputs.append({"output_type": "display_data", "data": data, "metadata": metadata})

    monkeypatch.setattr(IPython.display, "display", display)
    return outputs


def glued(displayed, name, value, fmt, **tol):
    displayed.clear()
    glue_measurement(name, value, fmt, **tol)
    return glued_measurements(displayed)


def test_glue_shows_the_formatted_text_like_myst_nb(displayed):
    glue_measurement("gap", np.float64(0.2468), ".2f", abs=0.1)
    (out,) = displayed
    assert out["data"] == {GLUE_PREFIX + "text/plain": "'0.25'"}
    assert out["metadata"]["scrapbook"] == {"name": "gap", "mime_prefix": GLUE_PREFIX}
    assert out["metadata"]["measurement"] == {"value": 0.2468, "abs": 0.1, "rel": None}
    assert glued(displayed, "share", 0.5, ".0%", rel=0.2)["share"]["text"] == "'50%'"
    assert glued(displayed, "steps", np.int64(300), "d", abs=20)["steps"]["text"] == "'300'"


@pytest.mark.parametrize("tol, message", [({}, "give a tolerance"), ({"abs": -1}, "abs must be"),
                                          ({"rel": float("nan")}, "rel must be"),
                                          ({"abs": "0.1"}, "abs must be")])
def test_glue_requires_a_valid_tolerance(displayed, tol, message):
    with pytest.raises(ValueError, match=message):
        glue_measurement("gap", 0.2, ".2f", **tol)
    assert not displayed


def test_glue_rejects_a_value_that_is_not_finite(displayed):
    with pytest.raises(ValueError, match="value must be finite"):
        glue_measurement("gap", float("inf"), ".2f", abs=1)


def test_a_measurement_within_its_tolerance_agrees(displayed):
    stored = glued(displayed, "acc", 91.04, ".1f", abs=0.5, rel=0.01)    # tolerance 0.5 + 0.9104
    assert measurement_mismatch(stored, glued(displayed, "acc", 92.45, ".1f", abs=0.5, rel=0.01)) == []
    far = measurement_mismatch(stored, glued(displayed, "acc", 92.46, ".1f", abs=9, rel=0.01))
    assert len(far) == 1 and far[0].startswith("acc:") and "tolerance" in far[0]


def test_rounding_does_not_decide(displayed):
    """0.2449 and 0.2451 print differently at .2f but agree within 0.01."""
    stored, fresh = glued(displayed, "g", 0.2449, ".2f", abs=0.01), glued(displayed, "g", 0.2451, ".2f", abs=0.01)
    assert stored["g"]["text"] != fresh["g"]["text"]
    assert measurement_mismatch(stored, fresh) == []


def plain(name, text, figure=False):
    mime = "image/png" if figure else "text/plain"
    return {"output_type": "display_data", "data": {GLUE_PREFIX + mime: text},
            "metadata": {"scrapbook": {"name": name, "mime_prefix": GLUE_PREFIX}}}


def test_a_plain_glue_in_a_measurement_cell_must_be_exact():
    stored = glued_measurements([plain("n_seeds", "5"), {"output_type": "stream", "text": "x"}])
    assert list(stored) == ["n_seeds"]
    assert measurement_mismatch(stored, glued_measurements([plain("n_seeds", "5")])) == []
    (problem,) = measurement_mismatch(stored, glued_measurements([plain("n_seeds", "6")]))
    assert "must be exact" in problem


def test_figures_are_never_compared_but_missing_glues_are_reported():
    stored = glued_measurements([plain("fig", "AAAA", figure=True), plain("a", "1")])
    assert measurement_mismatch(stored, glued_measurements([plain("fig", "BBBB", figure=True),
                                                            plain("a", "1")])) == []
    problems = measurement_mismatch(stored, glued_measurements([plain("b", "1")]))
    assert problems == ["a: stored, but not glued by the new run", "b: glued by the new run, but not stored",
                        "fig: stored, but not glued by the new run"]

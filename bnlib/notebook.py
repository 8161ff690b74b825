"""Measured numbers in the book's notebooks, glued with the tolerance they hold to.

The chapters print two kinds of output. *Exact* outputs (derivations, parity
checks, closed forms) are the same on every CPU at the precision printed, and
the test suite compares them character for character. *Measurements* (training
runs, random experiments) come from thousands of floating-point operations
whose last bits depend on the CPU's instruction set, and training amplifies
those bits; a cell that makes them is tagged ``measurement``. Such a cell
asserts its own claims with a tolerance that holds on any CPU, and each number
it puts into the prose is glued with :func:`glue_measurement`, which records,
next to the value, how far a re-execution on another CPU may move it. The test
suite re-executes the notebook and compares each glued measurement with the
stored one within that tolerance (:func:`measurement_mismatch`).

The glue itself is myst-nb's: the value is displayed under the MIME prefix
``application/papermill.record/`` with ``scrapbook`` metadata, so
``{glue:text}`name``` in the prose shows it; the measurement's value and
tolerance travel in the same output's metadata.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["glue_measurement", "glued_measurements", "measurement_mismatch"]

GLUE_PREFIX = "application/papermill.record/"


def _check_tolerance(name: str, value: float, abs: float | None, rel: float | None) -> None:
    if abs is None and rel is None:
        raise ValueError(f"glue_measurement({name!r}): give a tolerance, abs= or rel= (or both)")
    for arg, tol in (("abs", abs), ("rel", rel)):
        if tol is not None and not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
            raise ValueError(f"glue_measurement({name!r}): {arg} must be a finite number >= 0, got {tol!r}")
    if not math.isfinite(value):
        raise ValueError(f"glue_measurement({name!r}): value must be finite, got {value!r}")


def glue_measurement(name: str, value: float, fmt: str, *, abs: float | None = None,
                     rel: float | None = None) -> None:
    """Glue a measured number into the prose with the tolerance a re-execution must meet.

    Parameters
    ----------
    name : str
        The glue key, as in ``{glue:text}`name``` in the Markdown.
    value : float
        The measured number (a Python or NumPy scalar).
    fmt : str
        Format specification of the printed text, e.g. ``".2f"``, ``"+.1f"``,
        ``".0%"`` or ``"d"``; the prose shows ``format(value, fmt)``.
    abs, rel : float, optional
        Tolerance of a re-execution on another CPU: the fresh value ``v`` may
        differ from the stored one ``s`` by ``abs + rel * |s|``. Choose it from
        how far the value can move on another CPU (in chaotic runs, as far as
        across seeds), not from the last printed digit. At least one is required.

    Raises
    ------
    ValueError
        If no tolerance is given, a tolerance is negative or not finite, or
        ``value`` is not finite.

    Examples
    --------
    In a notebook cell tagged ``measurement``:

    >>> glue_measurement("ch06_gap", gap, ".2f", abs=0.1)  # doctest: +SKIP

    and in its Markdown: ``the gap is {glue:text}`ch06_gap` points``.
    """
    value = float(value) if fmt[-1:] != "d" else value
    _check_tolerance(name, float(value), abs, rel)
    text = format(value, fmt)
    from IPython.core.formatters import format_display_data
    from IPython.display import display

    bundle, metadata = format_display_data(text)
    metadata["scrapbook"] = {"name": name, "mime_prefix": GLUE_PREFIX}
    metadata["measurement"] = {"value": float(value), "abs": abs, "rel": rel}
    display({GLUE_PREFIX + k: v for k, v in bundle.items()}, raw=True, metadata=metadata)


def glued_measurements(outputs: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The glued values among a cell's outputs, by glue name.

    Parameters
    ----------
    outputs : iterable of dict
        A code cell's outputs (nbformat ``display_data`` and other outputs).

    Returns
    -------
    dict
        For each glue name: ``{"text": ..., "measurement": ...}``, where
        ``text`` is the glued ``text/plain`` and ``measurement`` the
        ``{"value", "abs", "rel"}`` recorded by :func:`glue_measurement`, or
        ``None`` for a plain myst-nb glue. Glued figures have ``text`` too (their
        repr) but are never compared.
    """
    found = {}
    for out in outputs:
        meta = out.get("metadata") or {}
        name = (meta.get("scrapbook") or {}).get("name")
        if name is None:
            continue
        data = out.get("data") or {}
        found[name] = {
            "text": data.get(GLUE_PREFIX + "text/plain"),
            "figure": any(k.startswith(GLUE_PREFIX + "image/") for k in data),
            "measurement": meta.get("measurement"),
        }
    return found


def measurement_mismatch(stored: Mapping[str, Any], fresh: Mapping[str, Any]) -> list[str]:
    """Compare the glued outputs of one measurement cell, stored and re-executed.

    Parameters
    ----------
    stored, fresh : dict
        :func:`glued_measurements` of the stored and of the new outputs.

    Returns
    -------
    list of str
        One line per disagreement: a glue missing on either side, a measurement
        outside its stored tolerance, or a plain glue (no tolerance) whose text
        changed. Figures are not compared. Empty when they agree.
    """
    problems = [f"{name}: stored, but not glued by the new run" for name in stored if name not in fresh]
    problems += [f"{name}: glued by the new run, but not stored" for name in fresh if name not in stored]
    for name in stored.keys() & fresh.keys():
        old, new = stored[name], fresh[name]
        if old["figure"] or new["figure"]:
            continue
        if old["measurement"] is None or new["measurement"] is None:
            if old["text"] != new["text"]:
                problems.append(f"{name}: {new['text']} instead of {old['text']} (glued without a "
                                "tolerance, so it must be exact; use glue_measurement)")
            continue
        s, v = old["measurement"]["value"], new["measurement"]["value"]
        tol = (old["measurement"]["abs"] or 0.0) + (old["measurement"]["rel"] or 0.0) * math.fabs(s)
        if not math.fabs(v - s) <= tol:
            problems.append(f"{name}: {v!r} is {math.fabs(v - s):.3g} from the stored {s!r}, "
                            f"more than its tolerance {tol:.3g}")
    return sorted(problems)

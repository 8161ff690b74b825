"""Write the data file of chapter 7's explorable figure: book/_explorer/ema_explorer_data.js.

Usage: python scripts/explorer_data.py [--check]

The figure (book/_explorer/ema_explorer.js) computes every number it shows from
closed forms, the same as bnlib.running_mean_band and bnlib.trusts_ema_tracking.
What it cannot compute is the threshold s* of the book's rule (eq-misleads-rule),
which chapter 7 calibrates on its training runs: this script reads it, with its
spread over resampled seeds, from the chapter's stored outputs, and writes it
together with the sliders' values. The file is a script that sets
``window.emaExplorerData``, not a .json file, so that the page also works when
opened from disk (browsers refuse to fetch local files).

With --check it writes nothing and exits with status 1 if the file is out of
date (the test suite runs this check). Run it after re-executing chapter 7.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "book" / "ch07_when_ema_misleads.ipynb"
OUTPUT = ROOT / "book" / "_explorer" / "ema_explorer_data.js"
CALIBRATION_BATCH_SIZE = 32     # chapter 7 trains, and calibrates s*, with batches of m = 32
RENARD = [1.0, 1.25, 1.6, 2.0, 2.5, 3.15, 4.0, 5.0, 6.3, 8.0]   # R10: ten log-spaced steps per decade


def log_grid(first_exponent: int, last_exponent: int) -> list[float]:
    """R10 values from 10**first_exponent to 10**last_exponent inclusive, exact in decimal."""
    values = [round(r * 10.0 ** e, 12) for e in range(first_exponent, last_exponent) for r in RENARD]
    return values + [10.0 ** last_exponent]


def stored_measurement(notebook: Path, name: str) -> float:
    """The value of a glued measurement, as stored in the executed notebook."""
    for cell in nbformat.read(notebook, as_version=4).cells:
        for output in cell.get("outputs", []):
            meta = output.get("metadata", {})
            if meta.get("scrapbook", {}).get("name") == name:
                return float(meta["measurement"]["value"])
    raise KeyError(f"{notebook.name} has no stored glued measurement {name!r}; execute it first")


def data() -> dict:
    return {
        "source": f"book/{CHAPTER.name}, glued values ch07_s_star, ch07_s_star_lo, ch07_s_star_hi",
        "s_star": stored_measurement(CHAPTER, "ch07_s_star"),
        "s_star_lo": stored_measurement(CHAPTER, "ch07_s_star_lo"),
        "s_star_hi": stored_measurement(CHAPTER, "ch07_s_star_hi"),
        "s_star_batch_size": CALIBRATION_BATCH_SIZE,
        "start_distance": 1.0,
        "alpha": log_grid(-3, 0),
        "drift": [0.0] + log_grid(-5, -1),
        "batch_size": [2 ** k for k in range(1, 11)],
        "defaults": {"alpha": 0.1, "drift": 0.002, "batch_size": 128},
    }


def render(values: dict) -> str:
    return ("// Written by scripts/explorer_data.py from chapter 7's stored outputs; do not edit.\n"
            "window.emaExplorerData = {\n"
            + ",\n".join(f" {json.dumps(key)}: {json.dumps(value)}" for key, value in values.items())
            + "\n};\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = parser.parse_args()
    text = render(data())
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date: run python scripts/explorer_data.py")
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

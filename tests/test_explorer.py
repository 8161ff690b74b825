"""The data file of chapter 7's explorable figure is current and describes sliders that make sense.

The figure's numbers are checked against bnlib in the browser (tests/test_site.py);
its LaTeX fallback in tests/test_latex.py.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import explorer_data  # noqa: E402
import nbformat  # noqa: E402


def test_the_data_file_is_written_from_chapter_7s_stored_outputs():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "explorer_data.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_threshold_is_chapter_7s_and_the_sliders_are_log_spaced():
    data = explorer_data.data()
    chapter = explorer_data.CHAPTER
    assert data["s_star"] == explorer_data.stored_measurement(chapter, "ch07_s_star") > 0
    assert data["s_star_lo"] <= data["s_star"] <= data["s_star_hi"]
    for key in ("alpha", "drift"):
        values = [v for v in data[key] if v > 0]
        ratios = [b / a for a, b in zip(values, values[1:])]
        assert all(1.2 < r < 1.3 for r in ratios), key              # ten steps per decade
    assert data["alpha"][0] == 0.001 and data["alpha"][-1] == 1.0 and data["drift"][0] == 0.0
    assert all(math.log2(m).is_integer() for m in data["batch_size"])
    for key, value in data["defaults"].items():
        assert value in data[key], key
    chapter_text = "".join(c.source for c in nbformat.read(chapter, as_version=4).cells)
    assert f"$m = {data['s_star_batch_size']}$" in chapter_text           # the calibration's batch size


def test_the_static_version_uses_the_explorers_defaults():
    data = explorer_data.data()
    cells = [c.source for c in nbformat.read(explorer_data.CHAPTER, as_version=4).cells
             if "ema-explorer-fallback" in c.metadata.get("tags", [])]
    d = data["defaults"]
    assert len(cells) == 1 and (f"EXPLORER_START, EXPLORER_M, EXPLORER_DRIFT = {data['start_distance']}, "
                                f"{d['batch_size']}, {d['drift']}") in cells[0]

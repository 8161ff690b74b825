"""The whole environment is locked: constraints.txt pins every package that requirements.txt brings.

requirements.txt names the top-level packages; constraints.txt (written by ``make lock``)
pins each of them and everything they depend on, so that a fresh install next year
resolves the same Sphinx, docutils and theme. make and Binder install with both files.
"""

from __future__ import annotations

import re
from importlib.metadata import distribution, distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.!+_-]*)$")


def pins(path: Path) -> dict[str, str]:
    lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("-")]
    bad = [ln for ln in lines if not PIN.match(ln)]
    assert not bad, f"{path.name}: lines that are not name==version: {bad}"
    return {canonicalize_name(PIN.match(ln)[1]): PIN.match(ln)[2] for ln in lines}


def test_constraints_pin_every_requirement_at_its_version():
    locked, wanted = pins(ROOT / "constraints.txt"), pins(ROOT / "requirements.txt")
    assert {name: locked.get(name) for name in wanted} == wanted
    assert locked["torch"] == "2.13.0", "torch is pinned to 2.13.0, without a local tag such as +cpu"


def dependency_closure(names) -> set[str]:
    """The installed packages that ``names`` need, themselves included (no optional extras)."""
    seen, todo = set(), list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for line in distribution(name).requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_the_environment_under_test_is_the_locked_one():
    locked = pins(ROOT / "constraints.txt")
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
    needed = dependency_closure(pins(ROOT / "requirements.txt"))
    unpinned = sorted(needed - set(locked) - {"pip", "setuptools", "wheel"})
    assert not unpinned, f"requirements.txt needs packages that constraints.txt does not pin (make lock): {unpinned}"
    differ = {name: (installed[name], version) for name, version in locked.items()
              if installed.get(name, "").split("+")[0] != version}
    assert not differ, f"installed versions differ from constraints.txt (installed, locked): {differ}"


def test_make_and_binder_install_with_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    assert "-m pip install --quiet -r requirements.txt -c constraints.txt -e ." in makefile
    assert "-c ../constraints.txt" in (ROOT / "binder" / "requirements.txt").read_text().splitlines()

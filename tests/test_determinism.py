"""The book's results do not depend on luck: thread counts, hash seeds, a second run.

* bnlib's NumPy functions give bitwise-identical results whatever the number
  of torch threads or BLAS threads (they use neither);
* ``bnlib.recalibrate`` gives the same population statistics with 1, 2 or 4
  torch threads up to float32 reordering: relative 1e-5, absolute 1e-6 (the
  differences seen are about 3e-7; the book prints 3 significant digits);
* every notebook of the table of contents, executed a second time with another
  hash seed, one thread for OpenMP/BLAS and *other kernels* (below), prints
  exactly its stored exact outputs, passes every assertion of its measurement
  cells and glues every measured number within its tolerance (nbval, sanitised
  as in tests/nbval_sanitize.cfg, with the measurement rules of the root
  conftest.py). The main nbval run is the first execution, with the machine's
  own kernels; so every run of the suite checks that two instruction sets agree.

The other kernels are those no AVX2 or AVX-512 machine runs by default: torch's
ATen, oneDNN and MKL, OpenBLAS and NumPy's own loops each limited to SSE4-era
instructions (OTHER_KERNELS; `test_other_kernels_change_what_runs` checks that
each setting takes effect). On a CPU that is not x86-64, only torch's generic
kernels are chosen.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

import bnlib
from bnlib.models import batch_norm_layers, mlp, small_cnn

from book_toc import toc_notebooks

ROOT = Path(__file__).resolve().parents[1]
THREADS = (1, 2, 4)


def other_kernels() -> dict[str, str]:
    """Environment under which torch, oneDNN, MKL, OpenBLAS and NumPy use pre-AVX2 kernels.

    To emulate an AVX2-only CPU on an AVX-512 machine instead (README, "Execution model"):
    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
    OPENBLAS_CORETYPE=Haswell NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR".
    """
    env = {"ATEN_CPU_CAPABILITY": "default"}
    if platform.machine().lower() in ("x86_64", "amd64"):
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

        env |= {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41",
                "OPENBLAS_CORETYPE": "Sandybridge"}
        # NumPy warns about features it does not dispatch to or the CPU lacks: name only the others.
        disable = [f for f in ("X86_V3", "X86_V4", "AVX512_ICL", "AVX512_SPR")
                   if f in __cpu_dispatch__ and __cpu_features__.get(f)]
        if disable:
            env["NPY_DISABLE_CPU_FEATURES"] = " ".join(disable)
    return env


OTHER_KERNELS = other_kernels()


@pytest.fixture
def restore_torch_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def numpy_results() -> list[np.ndarray]:
    """Everything the NumPy API computes on seeded float32 batches, flattened to a list."""
    rng = np.random.default_rng(0)
    out: list[np.ndarray] = []
    for shape in [(256, 64), (16, 8, 6, 6)]:
        C = shape[1]
        x = rng.standard_normal(shape, dtype=np.float32) * 3 + 1
        dy = rng.standard_normal(shape, dtype=np.float32)
        gamma, beta = rng.uniform(0.5, 1.5, C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
        y, cache = bnlib.batch_norm_forward(x, gamma, beta)
        out += [y, *bnlib.batch_norm_backward(dy, cache), *bnlib.batch_statistics(x)]
        out.append(bnlib.batch_norm_inference(x, cache["mean"], cache["var"], gamma, beta))
        layer = bnlib.BatchNorm(C)
        for _ in range(3):
            out += [layer(x), layer.backward(dy), layer.running_mean, layer.running_var]
        out.append(layer.eval()(x))
    return out


@pytest.mark.usefixtures("restore_torch_threads")
def test_numpy_functions_do_not_depend_on_torch_or_blas_threads():
    with threadpool_limits(limits=1):
        torch.set_num_threads(1)
        reference = numpy_results()
    for threads in THREADS:
        with threadpool_limits(limits=threads):
            torch.set_num_threads(threads)
            results = numpy_results()
        assert all(np.array_equal(a, b) for a, b in zip(results, reference)), f"{threads} threads"


def population_statistics(make_model, threads: int) -> list[torch.Tensor]:
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    batches = [2 * torch.randn(64, 64, generator=generator) + 0.5 for _ in range(20)]
    model = make_model(seed=0)
    assert bnlib.recalibrate(model, batches) == 20
    return [s for bn in batch_norm_layers(model) for s in (bn.running_mean, bn.running_var)]


@pytest.mark.usefixtures("restore_torch_threads")
@pytest.mark.parametrize("make_model", [mlp, small_cnn], ids=["mlp", "small_cnn"])
def test_recalibrate_does_not_depend_on_torch_threads(make_model):
    reference = population_statistics(make_model, 1)
    for threads in THREADS[1:]:
        for ours, ref in zip(population_statistics(make_model, threads), reference):
            torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6, msg=f"{threads} threads")


def test_other_kernels_change_what_runs():
    """Each setting of OTHER_KERNELS takes effect in a fresh Python (not just set and ignored)."""
    probe = ("import json, torch, numpy\n"
             "from numpy._core._multiarray_umath import __cpu_features__ as f\n"
             "from threadpoolctl import threadpool_info\n"
             "print(json.dumps({'aten': torch.backends.cpu.get_cpu_capability(),\n"
             "  'numpy': {k: f[k] for k in ('X86_V3', 'X86_V4') if k in f},\n"
             "  'openblas': [i.get('architecture') for i in threadpool_info()\n"
             "               if i['internal_api'] == 'openblas']}))")
    result = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ, **OTHER_KERNELS),
                            capture_output=True, text=True, timeout=120, check=True)
    seen = json.loads(result.stdout)
    assert seen["aten"] == "DEFAULT"
    assert not any(seen["numpy"].values()), seen["numpy"]
    if "OPENBLAS_CORETYPE" in OTHER_KERNELS:
        assert set(seen["openblas"]) <= {"Sandybridge"}, seen["openblas"]


@pytest.mark.parametrize("path", toc_notebooks(), ids=lambda p: p.name)
def test_second_execution_reproduces_the_stored_outputs(path: Path):
    """Run nbval once more: another hash seed, single-threaded OpenMP/BLAS, other kernels."""
    env = dict(os.environ, PYTHONHASHSEED="12345", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", **OTHER_KERNELS)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-o", "addopts=",
         "--nbval", "--nbval-current-env", "--nbval-cell-timeout", "300",
         "--nbval-sanitize-with", str(ROOT / "tests" / "nbval_sanitize.cfg"), str(path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, (
        f"{path.name} printed something else on a second execution "
        f"(PYTHONHASHSEED=12345, one OpenMP/BLAS thread, {OTHER_KERNELS}):\n{result.stdout[-4000:]}"
    )

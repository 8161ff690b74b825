"""How fast is bnlib next to PyTorch on the same machine?

Usage: python bench/bench_bn.py [--runs R] [--repeat N] [--threads T ...] [--output FILE]

Prints a markdown table of timings and ratios bnlib / torch, float32 on CPU:

* ``bnlib.batch_norm_forward`` / ``batch_norm_backward`` against
  ``torch.nn.functional.batch_norm`` in training mode (forward with autograd
  recording, as in training; backward through ``torch.autograd.grad``), on
  shapes (256, 64), (4096, 1024) and (64, 64, 32, 32);
* ``bnlib.recalibrate`` against ``torch.optim.swa_utils.update_bn`` on the
  same model and batches.

and a second table of what folding saves (chapter 3): inference through the
MLP and the small CNN of ``bnlib.models`` (statistics recalibrated on random
batches), in eval mode with their BatchNorm layers against the same models
with each BatchNorm folded into the layer before it by
``bnlib.fold_batch_norm``, for one input and for a batch of 256, with each
thread count of ``--threads``.

torch is timed with each thread count of ``--threads`` (default: 1 and
torch's own default here): one thread is the like-for-like comparison with
NumPy, whose element-wise operations are single-threaded; the default is what
a user gets. Each side is called ``--repeat`` times, in blocks that alternate
between the two sides (see ``seconds``); the table reports medians. bnlib's
NumPy functions are timed once per run, next to torch with the first thread
count (1 by default): torch's idle worker threads spin for a while after each
call and, on a machine with few cores, slow down whatever runs next.
Recalibration runs a torch model on both sides, so both use each thread
count. Timings of the large shapes vary from run to run on a shared machine,
torch's by up to a factor of two (memory freed by one call may go back to the
OS and be page-faulted in by the next), so the first table is measured
``--runs`` times (default 3) and gives, per row, the run whose ratio
bnlib / torch is the median and the range of the ratio over the runs. This is
a benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn

import bnlib
from bnlib.models import mlp, small_cnn

SHAPES = [(256, 64), (4096, 1024), (64, 64, 32, 32)]
Call = Callable[[], object]


def cpu_name() -> str:
    """The processor's model name, as Linux reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def seconds(calls: list[Call], repeat: int, rounds: int = 3) -> list[list[float]]:
    """Seconds of ``repeat`` calls of each function: ``rounds`` rounds of one block per function.

    Blocks rather than single alternating calls, so that one side's memory use
    (freeing large arrays can hand memory back to the OS, which the next
    allocation then pays for in page faults) is not billed to the other; several
    rounds, so that slow changes in the machine's load hit both sides alike.
    """
    times: list[list[float]] = [[] for _ in calls]
    per_block = max(1, repeat // rounds)
    for _ in range(rounds):
        for call, record in zip(calls, times):
            call()                                           # warm-up, not recorded
            for _ in range(per_block):
                start = time.perf_counter()
                call()
                record.append(time.perf_counter() - start)
    return times


def batch_norm_cases(shape: tuple[int, ...]) -> dict[str, tuple[Call, Call]]:
    """bnlib's and torch's forward and backward on one input shape, checked to agree."""
    rng = np.random.default_rng(0)
    C = shape[1]
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    gamma = rng.uniform(0.5, 1.5, C).astype(np.float32)
    beta = rng.standard_normal(C, dtype=np.float32)

    x_t = torch.from_numpy(x).requires_grad_()
    gamma_t = torch.from_numpy(gamma).requires_grad_()
    beta_t = torch.from_numpy(beta).requires_grad_()
    dy_t = torch.from_numpy(dy)

    def torch_forward() -> torch.Tensor:
        return F.batch_norm(x_t, None, None, gamma_t, beta_t, training=True, eps=1e-5)

    y_t = torch_forward()
    y, cache = bnlib.batch_norm_forward(x, gamma, beta, 1e-5)
    dx, dgamma, dbeta = bnlib.batch_norm_backward(dy, cache)
    dx_t, dgamma_t, dbeta_t = torch.autograd.grad(y_t, (x_t, gamma_t, beta_t), dy_t, retain_graph=True)
    for ours, theirs, what in ((y, y_t, "y"), (dx, dx_t, "dx"), (dgamma, dgamma_t, "dgamma"),
                               (dbeta, dbeta_t, "dbeta")):
        theirs = theirs.detach().numpy()
        if not np.allclose(ours, theirs, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(theirs).max()))):
            raise AssertionError(f"bnlib and torch disagree on {what} for shape {shape}")

    label = "×".join(map(str, shape))
    return {
        f"forward {label}": (lambda: bnlib.batch_norm_forward(x, gamma, beta, 1e-5), torch_forward),
        f"backward {label}": (
            lambda: bnlib.batch_norm_backward(dy, cache),
            lambda: torch.autograd.grad(y_t, (x_t, gamma_t, beta_t), dy_t, retain_graph=True),
        ),
    }


def recalibration_case() -> tuple[str, Call, Call]:
    """bnlib.recalibrate against torch's update_bn: same model, same 32 batches of 64."""
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(64, 64, generator=generator) for _ in range(32)]
    model = small_cnn(seed=0)
    return ("recalibrate, small CNN, 32 batches of 64",
            lambda: bnlib.recalibrate(model, batches), lambda: update_bn(batches, model))


def fold_sequential(model: nn.Sequential) -> nn.Sequential:
    """``model`` in eval mode with every (Linear or Conv, BatchNorm) pair folded into one layer."""
    layers: list[nn.Module] = []
    for layer in model:
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layers[-1] = bnlib.fold_batch_norm(layers[-1], layer)
        else:
            layers.append(layer)
    return nn.Sequential(*layers).eval()


def inference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One forward pass without autograd, as a deployed model runs."""
    with torch.no_grad():
        return model(x)


def folding_cases() -> list[tuple[str, Call, Call]]:
    """Eval-mode models with BatchNorm and folded, on 1 and 256 inputs, checked to agree."""
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(64, 64, generator=generator) for _ in range(32)]
    x = torch.randn(256, 64, generator=generator)
    cases = []
    for name, model in [("MLP", mlp(seed=0)), ("small CNN", small_cnn(seed=0))]:
        bnlib.recalibrate(model, batches)
        model.eval()
        folded = fold_sequential(model)
        expected = inference(model, x)
        if (inference(folded, x) - expected).abs().max() > 1e-5 * expected.abs().max():
            raise AssertionError(f"the folded {name} does not compute what the {name} computes")
        for n in (1, 256):
            cases.append((f"{name}, {n} image{'s' * (n > 1)}",
                          partial(inference, model, x[:n]), partial(inference, folded, x[:n])))
    return cases


Row = tuple[str, int, float, float]


def measure(thread_counts: list[int], repeat: int) -> list[Row]:
    """(operation, torch threads, bnlib median, torch median) for every operation."""
    cases = {name: pair for shape in SHAPES for name, pair in batch_norm_cases(shape).items()}
    recal_name, recal_ours, recal_theirs = recalibration_case()
    rows: dict[tuple[str, int], Row] = {}
    ours: dict[str, float] = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for name, (bnlib_call, torch_call) in cases.items():
            if name not in ours:
                ours_times, theirs_times = seconds([bnlib_call, torch_call], repeat)
                ours[name] = statistics.median(ours_times)
            else:
                (theirs_times,) = seconds([torch_call], repeat)
            rows[name, threads] = (name, threads, ours[name], statistics.median(theirs_times))
        ours_times, theirs_times = seconds([recal_ours, recal_theirs], max(3, repeat // 4))
        rows[recal_name, threads] = (recal_name, threads, statistics.median(ours_times),
                                     statistics.median(theirs_times))
    return [rows[name, threads] for name in [*cases, recal_name] for threads in thread_counts]


def measure_folding(thread_counts: list[int], repeat: int) -> list[Row]:
    """(model and inputs, torch threads, median with BatchNorm, median folded) for every case."""
    cases = folding_cases()
    rows: dict[tuple[str, int], Row] = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for name, with_bn, folded in cases:
            bn_times, folded_times = seconds([with_bn, folded], repeat)
            rows[name, threads] = (name, threads, statistics.median(bn_times), statistics.median(folded_times))
    return [rows[name, threads] for name, _, _ in cases for threads in thread_counts]


def over_runs(runs: list[list[Row]]) -> list[tuple[Row, float, float]]:
    """Each row from the run whose ratio is the median (the lower one for an even count),
    with the smallest and largest ratio over the runs."""
    combined = []
    for same_row in zip(*runs):
        ratios = [a / b for _, _, a, b in same_row]
        median_run = ratios.index(statistics.median_low(ratios))
        combined.append((same_row[median_run], min(ratios), max(ratios)))
    return combined


def _table(caption: str, columns: str, rows: list[Row], scale: float, digits: int) -> str:
    """A markdown table: a caption, then one line per (name, threads, a, b) row with a, b and a / b."""
    lines = [caption, "", f"| {columns} |", "|---|---:|---:|---:|---:|"]
    for name, threads, a, b in rows:
        lines.append(f"| {name} | {threads} | {a * scale:.{digits}f} | {b * scale:.{digits}f} | {a / b:.2f}× |")
    return "\n".join(lines) + "\n"


def markdown_table(runs: list[list[Row]]) -> str:
    """The first table: one line per operation and thread count, medians over ``runs``."""
    first_threads = runs[0][0][1]
    caption = (
        f"bnlib {bnlib.__version__} (NumPy {np.__version__}) against torch {torch.__version__}, "
        f"float32, CPU: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        "medians of blocks of calls (bnlib's NumPy functions timed next to torch on "
        f"{first_threads} thread{'s' * (first_threads > 1)}); each row from the run with the "
        f"median ratio of {len(runs)} run{'s' * (len(runs) > 1)}, and the range of the ratio over them.")
    lines = [caption, "",
             "| operation | torch threads | bnlib (ms) | torch (ms) | bnlib / torch | range over runs |",
             "|---|---:|---:|---:|---:|---:|"]
    for (name, threads, a, b), low, high in over_runs(runs):
        lines.append(f"| {name} | {threads} | {a * 1e3:.2f} | {b * 1e3:.2f} | {a / b:.2f}× "
                     f"| {low:.2f}–{high:.2f}× |")
    return "\n".join(lines) + "\n"


def folding_table(rows: list[Row]) -> str:
    caption = ("Inference (eval mode, no autograd, float32) through the models of `bnlib.models`, with their "
               "BatchNorm layers and folded into the layers before them (`bnlib.fold_batch_norm`); "
               "medians of blocks of calls.")
    return _table(caption, "model, inputs | torch threads | with BN (µs) | folded (µs) | with BN / folded",
                  rows, 1e6, 0)


def emit(table: str, output: Path | None) -> None:
    """Print a markdown table and, if asked, write it to ``output`` too."""
    print(table, end="")
    if output:
        output.write_text(table)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3,
                        help="runs of the first table; each row shows the run with the median ratio (default 3)")
    parser.add_argument("--repeat", type=int, default=45, help="timed calls per side and row (default 45)")
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, torch.get_num_threads()}),
                        help="torch thread counts to compare with (default: 1 and torch's default)")
    parser.add_argument("--output", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.runs < 1 or args.repeat < 1:
        parser.error("--runs and --repeat must be positive")
    tables = [markdown_table([measure(args.threads, args.repeat) for _ in range(args.runs)]),
              folding_table(measure_folding(args.threads, args.repeat))]
    emit("\n".join(tables), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

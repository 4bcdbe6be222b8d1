"""Benchmarks that print ratios measured side by side in one run (never asserted in timed tests).

Developer tooling, outside the runtime path: one module per benchmark, each measuring the library's own code
(the prepare path, the Trainer, the Predictor) against a plain yardstick.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from petseg.data.download import ARCHIVES, file_digests
from petseg.data.extract import extract_archive
from petseg.errors import PetsegError
from petseg.fileio import write_json
from petseg.runtime import describe_machine, machine

BENCH_DIR = Path("reports/bench")


def report(name: str, rows: list[tuple[str, float, str]], result: dict) -> dict:
    """Print a table and one JSON line, both naming the machine (a figure holds for the machine it was measured on);
    save the JSON under reports/bench/."""
    width = max(len(label) for label, _, _ in rows)
    where = machine()
    print(f"petseg bench {name} on {describe_machine(where)}")
    for label, value, unit in rows:
        shown = f"{value:>10}" if isinstance(value, int) else f"{value:>10.3f}"  # counts (epochs) without decimals
        print(f"  {label:<{width}}  {shown} {unit}")
    result = {"bench": name, "machine": where, **result}
    print(json.dumps(result, sort_keys=True))
    write_json(BENCH_DIR / f"{name}.json", result)
    return result


def significant(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits for the JSON: a fixed number of decimals would leave a 0.03 ratio
    with one digit, and ratios recomputed from the saved figures would drift by more than the figures' noise."""
    return float(f"{value:.{digits}g}")


def report_ratio(
    name: str, ours: tuple[str, str, float], theirs: tuple[str, str, float], target: str, details: dict
) -> dict:
    """Two throughputs measured in one run and their ratio (ours / theirs)."""
    (our_label, our_key, our_rate), (their_label, their_key, their_rate) = ours, theirs
    ratio = our_rate / their_rate
    result = details | {our_key: significant(our_rate), their_key: significant(their_rate), "ratio": significant(ratio)}
    rows = [(their_label, their_rate, "img/s"), (our_label, our_rate, "img/s"), (f"ratio{target}", ratio, "x")]
    return report(name, rows, result)


def timed(fn: Callable[[], int]) -> float:
    """Items per second of ``fn`` (which returns how many items it processed)."""
    start = time.perf_counter()
    items = fn()
    return items / (time.perf_counter() - start)


def best_interleaved(*workloads: Callable[[], int], rounds: int) -> list[float]:
    """Items/s of each workload, the best of ``rounds`` runs each, in the order ABC CBA ABC...: on a noisy machine one
    run each can differ by 20 %, and alternating keeps slow drift from favouring any side."""
    rates: list[list[float]] = [[] for _ in workloads]
    for round_ in range(rounds):
        order = range(len(workloads)) if round_ % 2 == 0 else reversed(range(len(workloads)))
        for which in order:
            rates[which].append(timed(workloads[which]))
    return [max(runs) for runs in rates]


def extracted_archives(source: Path, work: Path) -> tuple[Path, Path]:
    trees = {}
    for archive in ARCHIVES:
        path = source / archive
        if not path.is_file():
            raise PetsegError(f"--source: {path} not found (a directory holding {' and '.join(ARCHIVES)})")
        trees[archive] = extract_archive(path, work / archive.removesuffix(".tar.gz"), file_digests(path)["sha256"])
    return trees["images.tar.gz"] / "images", trees["annotations.tar.gz"] / "annotations"

"""Each notebook's key results, recorded in the run folder and checked with tolerances.

Training is chaotic: another CPU, thread count or kernel set changes the last bits of a step,
and a few hundred Adam steps turn that into a different trajectory. So the regression check
of this project compares *numbers*, each with a tolerance measured across such variants and
seeds, never one machine's printed digits:

    results.record(paths.root, "02", swap_order=1.01, checkpoints=21)   # in a notebook
    python -m lie_helpers.results runs/default                          # after a run: check

`record` merges values into `<run>/results/<notebook>.json` (written atomically). The checks
live in `tests/result_checks.toml`, one table per result, `"NN.name"`, with one of

    value = 1.0, abs = 0.1      |x − value| ≤ abs        (or rel = 0.05: ≤ 0.05·|value|)
    log10 = 2e-6, factor = 10   value/factor ≤ x ≤ value·factor  (heavy-tailed magnitudes)
    min = 0.9, max = 1.1        bounds (either may be left out)
    equals = true               exact: booleans, counts, shapes, names

and a `measured` line saying what variation the tolerance was chosen from. A list value is
checked element by element. A check whose result was not recorded fails: a notebook that
stops recording a result must not pass silently.
"""
from __future__ import annotations

import argparse
import math
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .. import REPO_DIR
from .run_folder import RunPaths
from ..data.storage import atomic_write_json, read_json

CHECKS_FILE = REPO_DIR / "tests" / "result_checks.toml"
KINDS = ("equals", "value", "log10", "min", "max")


def results_dir(run_root) -> Path:
    return RunPaths(Path(run_root)).results


def _plain(value):
    """JSON-ready Python values from numpy/torch scalars and arrays, tuples and dicts."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def record(run_root, notebook: str, **values) -> None:
    """Merge `values` into the results of `notebook` ("00" … "05") in the run folder (a notebook cell that ends
    with it shows nothing: what it records depends on the run folder, not only on the cell)."""
    path = results_dir(run_root) / f"{notebook}.json"
    current = read_json(path) if path.exists() else {}
    current.update({name: _plain(v) for name, v in values.items()})
    atomic_write_json(path, current)


def load(run_root) -> dict:
    """Every recorded result of a run, keyed "NN.name"."""
    found = {}
    for path in sorted(results_dir(run_root).glob("*.json")):
        found.update({f"{path.stem}.{name}": v for name, v in read_json(path).items()})
    return found


def load_checks(path=CHECKS_FILE) -> dict:
    """The checks of `path`: {"NN.name": {kind: ..., "measured": ...}}; malformed ones raise."""
    checks = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    for name, check in checks.items():
        kinds = [k for k in KINDS if k in check]
        if not kinds or ("equals" in kinds and len(kinds) > 1):
            raise ValueError(f"{path}: check {name!r} needs exactly one of equals, value (+abs/rel), "
                             f"log10 (+factor) or min/max; has {sorted(check)}.")
        if "value" in check and not ({"abs", "rel"} & set(check)):
            raise ValueError(f"{path}: check {name!r} has a value but no abs or rel tolerance.")
        if "log10" in check and "factor" not in check:
            raise ValueError(f"{path}: check {name!r} has log10 but no factor.")
    return checks


def _passes(x, check: dict) -> bool:
    if isinstance(x, list) and "equals" not in check:
        return bool(x) and all(_passes(v, check) for v in x)
    if "equals" in check:
        return x == check["equals"]
    if not isinstance(x, (int, float)) or isinstance(x, bool) or math.isnan(x):
        return False
    if "value" in check:
        tolerance = check.get("abs", 0.0) + check.get("rel", 0.0) * abs(check["value"])
        return abs(x - check["value"]) <= tolerance
    if "log10" in check:
        return x > 0 and abs(math.log10(x / check["log10"])) <= math.log10(check["factor"])
    return check.get("min", -math.inf) <= x <= check.get("max", math.inf)


def expectation(check: dict) -> str:
    """The check in words, for the report."""
    if "equals" in check:
        return f"== {check['equals']}"
    if "value" in check:
        return (f"{check['value']:g} ± {check['abs']:g}" if "abs" in check
                else f"{check['value']:g} ± {check['rel']:.0%}")
    if "log10" in check:
        return f"{check['log10']:g} within ×{check['factor']:g}"
    if "min" in check and "max" in check:
        return f"in [{check['min']:g}, {check['max']:g}]"
    return f"≥ {check['min']:g}" if "min" in check else f"≤ {check['max']:g}"


@dataclass
class Outcome:
    name: str
    value: object        # None when not recorded
    expected: str
    passed: bool


def check_results(found: dict, checks: dict) -> list[Outcome]:
    """Every check against the recorded results (a missing result fails)."""
    return [Outcome(name, found.get(name), expectation(check), name in found and _passes(found[name], check))
            for name, check in checks.items()]


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list) and len(value) > 6:
        return f"[{', '.join(_short(v) for v in value[:3])}, … ({len(value)} values)]"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


def report(outcomes: list[Outcome], unchecked: list[str]) -> str:
    width = max((len(o.name) for o in outcomes), default=10)
    lines = [f"{'result':<{width}}  {'value':<28} {'expected':<26} ok"]
    for o in outcomes:
        value = "NOT RECORDED (did the notebook run?)" if o.value is None else _short(o.value)
        lines.append(f"{o.name:<{width}}  {value:<28} {o.expected:<26} {'yes' if o.passed else 'FAIL'}")
    failed = sum(not o.passed for o in outcomes)
    lines.append(f"{len(outcomes) - failed} passed, {failed} failed")
    if unchecked:
        lines.append(f"recorded, shown but not checked: {', '.join(unchecked)}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lie_helpers.results",
                                     description="Check a run's recorded results against tests/result_checks.toml.")
    parser.add_argument("run_dir", type=Path, help="the run folder, e.g. runs/default")
    parser.add_argument("--checks", type=Path, default=CHECKS_FILE, help="the checks file (TOML)")
    args = parser.parse_args(argv)
    if not results_dir(args.run_dir).is_dir():
        print(f"No results in {results_dir(args.run_dir)}: run the chain into {args.run_dir} first "
              f"(python -m lie_helpers.chain --run-dir {args.run_dir}).", file=sys.stderr)
        return 2
    found, checks = load(args.run_dir), load_checks(args.checks)
    outcomes = check_results(found, checks)
    print(f"Results of {args.run_dir} against {args.checks}:")
    print(report(outcomes, sorted(set(found) - set(checks))))
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())

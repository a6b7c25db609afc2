"""Each notebook's key results, recorded in the run folder and checked with tolerances.

Training is chaotic: another CPU, thread count or kernel set changes the last bits of a step,
and a few hundred Adam steps turn that into a different trajectory. So the regression check
of this project compares *numbers*, each with a tolerance measured across such variants and
seeds, never one machine's printed digits:

    results.record(paths.root, "02", swap_order=1.01, checkpoints=21)   # in a notebook
    python -m lie_helpers.results runs/default                          # after a run: check

`record` merges values into `<run>/results/<notebook>.json` (written atomically). The checks
live in `tests/result_checks.toml`, one table per result, `"NN.name"`, with one of

    value = 1.0, abs = 0.1      |x − value| ≤ abs        (or rel = 0.05: ≤ 0.05·|value|; both: their sum)
    log10 = 2e-6, factor = 10   value/factor ≤ x ≤ value·factor  (heavy-tailed magnitudes)
    min = 0.9, max = 1.1        bounds (either may be left out)
    equals = true               exact: booleans, counts, shapes, names

and a `measured` line saying what variation the tolerance was chosen from. The schema is strict
(`load_checks`): one kind per check, no other key (a misspelled `mxa`, or a `max` beside `value`, is
an error naming the check and the key), finite numbers for every bound and tolerance, and an empty or
unreadable checks file is an error naming the file. A list value is checked element by element. A
non-finite value (inf, -inf, NaN) fails every check unless the check says `allow_nonfinite = true`. A
check whose result was not recorded fails: a notebook that stops recording a result must not pass silently.
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


def results_dir(run_dir) -> Path:
    return RunPaths(Path(run_dir)).results


def _plain(value):
    """JSON-ready Python values from numpy/torch scalars and arrays, tuples and dicts."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def record(run_dir, notebook: str, **values) -> None:
    """Merge `values` into the results of `notebook` ("00" … "05") in the run folder (a notebook cell that ends
    with it shows nothing: what it records depends on the run folder, not only on the cell)."""
    path = results_dir(run_dir) / f"{notebook}.json"
    current = read_json(path) if path.exists() else {}
    current.update({name: _plain(v) for name, v in values.items()})
    atomic_write_json(path, current)


def load(run_dir) -> dict:
    """Every recorded result of a run, keyed "NN.name"."""
    found = {}
    for path in sorted(results_dir(run_dir).glob("*.json")):
        found.update({f"{path.stem}.{name}": v for name, v in read_json(path).items()})
    return found


# The keys of each kind of check (beside `measured` and `allow_nonfinite`, which any check may have).
SCHEMA = {"equals": ({"equals"}, set()), "value": ({"value"}, {"abs", "rel"}), "log10": ({"log10", "factor"}, set()),
          "range": (set(), {"min", "max"})}
COMMON_KEYS = {"measured", "allow_nonfinite"}
NUMBERS = {"value": "a finite number", "abs": "a finite number >= 0", "rel": "a finite number >= 0",
           "log10": "a finite number > 0", "factor": "a finite number >= 1", "min": "a finite number",
           "max": "a finite number"}


def load_checks(path=CHECKS_FILE) -> dict:
    """The checks of `path`: {"NN.name": {kind: ..., "measured": ...}}. An unreadable or empty file, and a check
    that breaks the schema (module docstring), raise ValueError naming the file and the check."""
    path = Path(path)
    try:
        checks = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"The checks file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"The checks file {path} cannot be read: {err}.") from None
    if not checks:
        raise ValueError(f"The checks file {path} holds no checks: a check file that checks nothing passes anything.")
    for name, check in checks.items():
        problem = _schema_problem(check)
        if problem:
            raise ValueError(f"{path}: check {name!r} {problem}.")
    return checks


def _schema_problem(check) -> str | None:
    """What is wrong with one check (a table of SCHEMA's keys), or None."""
    if not isinstance(check, dict):
        return "is not a table: write it as [\"NN.name\"] followed by its keys"
    keys = set(check) - COMMON_KEYS
    unknown = sorted(keys - set().union(*(a | b for a, b in SCHEMA.values())))
    if unknown:
        return f"has unknown key(s) {unknown}; allowed: {sorted(set().union(*(a | b for a, b in SCHEMA.values())) | COMMON_KEYS)}"
    kinds = [kind for kind, (needed, optional) in SCHEMA.items() if keys & (needed | optional)]
    if len(kinds) != 1:
        return (f"needs exactly one kind of check (equals; value with abs and/or rel; log10 with factor; min and/or "
                f"max), has {sorted(keys)}" + (": a bound beside another kind is not applied, so it is refused"
                                              if len(kinds) > 1 else ""))
    needed, optional = SCHEMA[kinds[0]]
    if not needed <= keys or (kinds[0] != "equals" and not keys - needed and optional):
        what = {"value": "abs or rel (its tolerance)", "log10": "factor", "range": "min or max"}[kinds[0]]
        return f"has {sorted(keys)} but needs {what}"
    for key in keys & set(NUMBERS):
        value = check[key]
        fine = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if fine and key in ("abs", "rel"):
            fine = value >= 0
        elif fine and key == "log10":
            fine = value > 0
        elif fine and key == "factor":
            fine = value >= 1
        if not fine:
            return f"has {key} = {value!r}; it must be {NUMBERS[key]}"
    if "min" in check and "max" in check and check["min"] > check["max"]:
        return f"has min {check['min']} above max {check['max']}"
    if "measured" in check and not isinstance(check["measured"], str):
        return "has a `measured` that is not a string"
    if not isinstance(check.get("allow_nonfinite", False), bool):
        return "has an `allow_nonfinite` that is not true or false"
    return None


def _finite(x) -> bool:
    if isinstance(x, float):
        return math.isfinite(x)
    if isinstance(x, list):
        return all(_finite(v) for v in x)
    return True


def _passes(x, check: dict) -> bool:
    if not _finite(x):
        return bool(check.get("allow_nonfinite")) and not (isinstance(x, list) and not x)
    if isinstance(x, list) and "equals" not in check:
        return bool(x) and all(_passes(v, check) for v in x)
    if "equals" in check:
        return x == check["equals"]
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    if "value" in check:
        tolerance = check.get("abs", 0.0) + check.get("rel", 0.0) * abs(check["value"])
        return abs(x - check["value"]) <= tolerance
    if "log10" in check:
        return x > 0 and abs(math.log10(x / check["log10"])) <= math.log10(check["factor"])
    return check.get("min", -math.inf) <= x <= check.get("max", math.inf)


def expectation(check: dict) -> str:
    """The check in words, for the report."""
    if check.get("allow_nonfinite"):
        return _expectation(check) + " or non-finite"
    return _expectation(check)


def _expectation(check: dict) -> str:
    if "equals" in check:
        return f"== {check['equals']}"
    if "value" in check:
        if "abs" in check and "rel" in check:
            return f"{check['value']:g} ± ({check['abs']:g} + {check['rel']:.0%})"
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
    try:
        checks = load_checks(args.checks)
    except (ValueError, FileNotFoundError) as err:
        print(err, file=sys.stderr)
        return 2
    found = load(args.run_dir)
    outcomes = check_results(found, checks)
    print(f"Results of {args.run_dir} against {args.checks}:")
    print(report(outcomes, sorted(set(found) - set(checks))))
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())

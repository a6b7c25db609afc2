"""The GPU check's report (lie_helpers.pipeline.gpu_check): gpu_check.json, and gpu_check.md, one table a section
with long times also in minutes or hours and sizes in MiB or GiB."""
from __future__ import annotations

from pathlib import Path

from ..data import storage


def fmt(key: str, value) -> str:
    """A value as the report prints it: 3 significant digits, long times and large sizes also in big units."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    text = f"{value:,}" if isinstance(value, int) else f"{value:.3g}"
    if key.endswith("_s") and value >= 3600:
        text += f" ({value / 3600:.1f} h)"
    elif key.endswith("_s") and value >= 120:
        text += f" ({value / 60:.1f} min)"
    elif key.endswith("_bytes") and value >= 2**30:
        text += f" ({value / 2**30:.1f} GiB)"
    elif key.endswith("_bytes") and value >= 2**20:
        text += f" ({value / 2**20:.1f} MiB)"
    return text


def render_markdown(report: dict) -> str:
    """gpu_check.md: a header, then one table of each section's numbers (nested ones by path)."""
    env = report["sections"]["environment"]
    where = env.get("gpu") or f"CPU ({env.get('cpu_threads', '?')} threads)"
    lines = [f"# GPU check ({report['mode']} mode, {report['device']}: {where})", "",
             f"Total {report['total_s']:.1f} s. Units: " + "; ".join(f"`{k}` {v}" for k, v in report["units"].items()),
             ""]
    for name, section in report["sections"].items():
        lines += [f"## {name}: {section['status']} ({section['seconds']:.1f} s)", ""]
        if section["status"] == "skipped":
            lines += [f"Skipped: {section['reason']}", ""]
            continue
        if "error" in section:
            lines += [f"**{section['status']}**: {section['error']}", ""]
        rows = [(key, value) for key, value in flatten(section)
                if key not in ("status", "seconds", "error", "traceback")]
        lines += ["| quantity | value |", "|---|---|"] + [f"| {k} | {fmt(k, v)} |" for k, v in rows] + [""]
    return "\n".join(lines)


def flatten(tree: dict, prefix: str = ""):
    """(dotted key, leaf) pairs of a nested dict."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def write_report(report: dict, out_dir) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "gpu_check.json", out_dir / "gpu_check.md"
    storage.atomic_write_json(json_path, report)
    storage.atomic_write_bytes(md_path, render_markdown(report).encode())
    return json_path, md_path

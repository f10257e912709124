"""Run reports: report.json (everything), report.md (one table, a row per stage), report.png.

Rewritten after every stage, each file atomically, so a stopped run still shows how
far it got and why it stopped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from optimize import cache

JSON, MARKDOWN, PLOT = "report.json", "report.md", "report.png"


def header(recipe, resolved: dict, provider: str, representative: bool, timed: str, speedup_basis: str) -> dict:
    """The run-level part of report.json."""
    return {
        "recipe": recipe.name,
        "model": str(recipe.model),
        "data": None if recipe.data is None else str(recipe.data),
        "provider": provider,
        "target_provider": recipe.provider,
        "rtf_representative": representative,
        "rtf_timed": timed,
        "speedup_basis": speedup_basis,
        "threads": recipe.threads,
        "evaluation": recipe.evaluation.mode,
        "gates": resolved["gates"],
        "resolved_recipe": resolved,
        "versions": cache.tool_versions(),
        "host": cache.host(),
    }


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write(run_dir: Path, head: dict, rows: list[dict], final: Path | None) -> dict:
    """Write the three report files; returns the report."""
    run_dir = Path(run_dir)
    passed = final is not None and all(r["passed"] for r in rows)
    data = head | {"stages": rows, "passed": passed, "final": None if final is None else str(final)}
    _atomic_write(run_dir / JSON, json.dumps(data, indent=2, default=str).encode())
    _atomic_write(run_dir / MARKDOWN, markdown(data).encode())
    plot(data, run_dir / PLOT)
    return data


def _num(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


COLUMNS = ("stage", "error rate %", "Δ points", "agreement", "RTF", "p50", "p90", "CPU RTF", "speedup", "MB", "stage peak MB", "eval peak MB", "fused", "Casts", "MatMulInteger", "passed")


def table_rows(report: dict) -> list[list[str]]:
    """The stage table as strings, one list per stage (report.md and the CLI print it)."""
    out = []
    for r in report["stages"]:
        ops = r.get("op_stats") or {}
        out.append([
            r["name"], _num(r.get("error_rate"), ".2f"), _num(r.get("delta_error_rate"), "+.2f"),
            _num(r.get("token_agreement"), ".3f"), _num(r.get("rtf"), ".4f"), _num(r.get("rtf_p50"), ".4f"),
            _num(r.get("rtf_p90"), ".4f"), _num(r.get("rtf_cpu"), ".4f"), _num(r.get("speedup"), ".2f"), _num(r.get("size_mb"), ".2f"),
            _num(r.get("peak_rss_mb"), ".0f"), _num(r.get("eval_peak_rss_mb"), ".0f"), _num(ops.get("fused"), "d"), _num(ops.get("Cast"), "d"),
            _num(ops.get("MatMulInteger"), "d"), "yes" if r["passed"] else "NO",
        ])  # fmt: skip
    return out


def markdown(report: dict) -> str:
    """report.md: a short header, the stage table, then notes and failures."""
    lines = [
        f"# {report['recipe']}: {'passed' if report['passed'] else 'not passed'}",
        "",
        f"model `{report['model']}`, data `{report['data']}`, provider {report['provider']} "
        f"(recipe targets {report['target_provider']}), {report['threads']} thread(s), evaluation {report['evaluation']}.",
        f"RTF: {report['rtf_timed']}; CPU RTF counts this process's CPU seconds instead of wall-clock; "
        f"speedup compares {'CPU RTF' if report['speedup_basis'] == 'cpu_rtf' else 'RTF'} with the baseline's."
        + ("" if report["rtf_representative"] else " **Not representative: not run on the target provider.**"),
        f"Gates: {', '.join(f'{k} {v}' for k, v in report['gates'].items())}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(report)]
    for r in report["stages"]:
        for note in r.get("notes") or []:
            lines.append(f"- {r['name']}: {note}")
        for failure in r.get("failures") or []:
            lines.append(f"- **{r['name']} failed** {failure}")
    if report["final"]:
        lines.append(f"\nPublished: `{report['final']}`")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Error rate (or, without one, token agreement) and RTF by stage, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["stages"]
    names = [r["name"] for r in rows]
    has_er = any(r.get("error_rate") is not None for r in rows)
    left = [r.get("error_rate") if has_er else r.get("token_agreement") for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.bar(names, [v or 0 for v in left], color="tab:blue")
    ax1.set_title("error rate (%)" if has_er else "token agreement with baseline")
    ax2.bar(names, [r.get("rtf") or 0 for r in rows], color=["tab:green" if r["passed"] else "tab:red" for r in rows])
    ax2.set_title("RTF" + ("" if report["rtf_representative"] else " (not representative)"))
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle(f"{report['recipe']} ({report['provider']})")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)

"""Plain-text and Markdown results tables for one or several runs (``metrics.json`` dicts)."""
from __future__ import annotations

from typing import Mapping

__all__ = ["results_rows", "format_table", "markdown_table", "COLUMNS"]

#: (header, metrics key or callable, format)
COLUMNS = (
    ("rule", lambda m: m["rule"], "{}"),
    ("avg acc", "average_accuracy", "{:.3f}"),
    ("BWT", "backward_transfer", "{:+.3f}"),
    ("forgetting", "forgetting", "{:.3f}"),
    ("learning acc", "learning_accuracy", "{:.3f}"),
    ("last-k avg", "average_accuracy_last_k", "{:.3f}"),
    ("ECE", lambda m: m["uncertainty"]["ece"], "{:.3f}"),
    ("OOD AUROC (H)", lambda m: m["uncertainty"].get("ood", {}).get("auroc_entropy"), "{:.3f}"),
    ("OOD AUROC (MI)", lambda m: m["uncertainty"].get("ood", {}).get("auroc_mutual_information"), "{:.3f}"),
)


def results_rows(results: Mapping[str, Mapping]) -> tuple[list[str], list[list[str]]]:
    """({label: metrics}) -> (headers, rows of formatted cells); the first column is the label."""
    headers = [h for h, _, _ in COLUMNS]
    rows = []
    for label, m in results.items():
        row = []
        for i, (_, key, fmt) in enumerate(COLUMNS):
            try:
                v = label if i == 0 else (key(m) if callable(key) else m.get(key))
            except (KeyError, TypeError):
                v = None
            row.append("-" if v is None else fmt.format(v))
        if m.get("diverged"):
            row[0] += " (diverged)"
        rows.append(row)
    return headers, rows


def format_table(results: Mapping[str, Mapping]) -> str:
    """Fixed-width text table."""
    headers, rows = results_rows(results)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def markdown_table(results: Mapping[str, Mapping]) -> str:
    headers, rows = results_rows(results)
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)

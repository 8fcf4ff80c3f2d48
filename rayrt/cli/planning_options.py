"""What `rayrt plan`, `rayrt demo` and `rayrt submit` share: planning overrides from the command
line (``--options FILE``, ``--set KEY=VALUE``) and the printed summary of an export
(per machine: MU, segments, QA verdict, the order's goals met or missed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rayrt.domain.errors import InputError

__all__ = ["read_options", "format_summary"]


def read_options(options_file: Path | None, settings: list[str] | None) -> dict[str, Any]:
    """Planning overrides (PlanningRequest fields): ``options_file`` (JSON or YAML mapping), then
    each ``KEY=VALUE`` of ``settings`` (the value read as YAML: ``num_beams=7``,
    ``gantry_deg=[0,72,144]``, ``conversion_mode=dao``; a dotted key sets one field of a nested
    section: ``autoplan.rounds=3``). Validation happens where the request is
    built (:func:`rayrt.domain.planning.planning_request`)."""
    import yaml

    out: dict[str, Any] = {}
    if options_file is not None:
        try:
            data = yaml.safe_load(options_file.read_text(encoding="utf-8"))  # JSON is YAML
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise InputError(f"cannot read the planning options {options_file}: {exc}", field="options") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise InputError(
                f"the planning options {options_file} must be a JSON object (or YAML mapping) "
                "of PlanningRequest fields",
                field="options",
            )
        out.update(data)
    for item in settings or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set takes KEY=VALUE, got {item!r}", field="set")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise InputError(f"--set {key.strip()}: cannot read the value {value!r}", field="set") from None
        *parents, leaf = key.strip().split(".")  # autoplan.rounds=3 sets one field of a nested section
        node = out
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = parsed
    return out


def format_summary(summary: Any) -> list[str]:
    """Lines of an export summary (:class:`rayrt.pipeline.export.ExportResult` or its JSON):
    per machine MU, segments and QA verdict, then each goal of the order with its value (and, for
    a clinical goal, its rank and, when missed, what limited it)."""
    data = summary.model_dump(mode="json") if hasattr(summary, "model_dump") else json.loads(json.dumps(summary))
    lines = []
    for m in data.get("machines", []):
        verdict = m.get("verdict") or "-"
        lines.append(
            f"  {m['machine']:<16} {m['total_mu_per_fraction']:7.1f} MU/fx  {m['segments']:3d} segments  "
            f"QA {verdict.upper()}"
        )
        for g in m.get("goals", []):
            v = g.get("value_gy")
            if v is None and g.get("value") is not None:  # a volume goal (V<x>Gy): % or cc
                v_text = f"{g['value']:7.2f} {g.get('unit') or '%'}"
            else:
                v_text = f"{v:7.2f} Gy" if v is not None else ""
            mark = "met " if g["met"] else "MISS"
            if not v_text:
                lines.append(f"      ----  {g['structure']} {g['goal']}")
            elif g.get("rank") is not None:  # a clinical goal: its label names the structure
                lines.append(f"      {mark}  {g['goal']:<34} {v_text}  rank {g['rank']}")
            else:
                lines.append(f"      {mark}  {g['structure']:<8} {g['goal']:<18} {v_text}")
            if not g["met"] and g.get("limited_by"):
                lines.append(f"            limited by: {g['limited_by']}")
        for c in m.get("failed_checks", []):
            lines.append(f"      qa: {c}")
    return lines

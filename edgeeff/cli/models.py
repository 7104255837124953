"""`edgeeff models`: the family table with params and MACs, released or custom φ."""

from __future__ import annotations

import click

from edgeeff.cli.common import print_json, stdout


def parse_phi_range(value: str) -> list[float]:
    """Parse START:STOP:STEP (inclusive) or a comma-separated list of φ values."""
    if ":" in value:
        parts = value.split(":")
        if len(parts) != 3:
            raise ValueError(f"invalid --phi range {value!r}: use START:STOP:STEP, for example 0:7:0.5")
        start, stop, step = (float(p) for p in parts)
        if step <= 0 or stop < start:
            raise ValueError(f"invalid --phi range {value!r}: need STOP >= START and STEP > 0")
        count = int(round((stop - start) / step)) + 1
        return [round(start + i * step, 6) for i in range(count)]
    return [float(v) for v in value.split(",") if v.strip()]


def family_rows(phis: list[float] | None = None, lite: bool = False) -> list[dict]:
    """Describe released variants (no φ list) or the custom variants for each φ."""
    from edgeeff.models import VARIANTS, arch_config, custom_variant
    from edgeeff.models.counting import count_macs, count_params
    from edgeeff.models.efficientnet import EfficientNet
    from edgeeff.models.variants import formula_difference

    import torch

    variants = [custom_variant(phi, lite=lite) for phi in phis] if phis is not None else list(VARIANTS.values())
    rows = []
    for v in variants:
        with torch.device("meta"):
            model = EfficientNet(arch_config(v))
        row = {"name": v.name, "family": v.family, "phi": v.phi, "width": round(v.width, 4),
               "depth": round(v.depth, 4), "resolution": v.resolution, "dropout": v.dropout,
               "params": count_params(model), "macs": count_macs(model, v.resolution),
               "paper_params": v.paper_params, "paper_macs": v.paper_macs}
        if v.released and not v.lite:
            row["differs_from_formula"] = {k: {"table": a, "formula": b} for k, (a, b) in formula_difference(v).items()}
        rows.append(row)
    return rows


@click.command("models")
@click.option("--phi", "phi_range", help="Custom φ values: START:STOP:STEP or a comma list, e.g. 0:7:0.5.")
@click.option("--lite", is_flag=True, help="With --phi: scale the Lite family.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_command(phi_range: str | None, lite: bool, as_json: bool) -> None:
    """List EfficientNet variants with φ, resolution, params and multiply-adds."""
    from rich.table import Table

    rows = family_rows(parse_phi_range(phi_range) if phi_range else None, lite)
    if as_json:
        print_json(rows)
        return
    table = Table(title="EfficientNet family (MACs = multiply-adds at the listed resolution)")
    for column in ("name", "φ", "width", "depth", "res", "dropout", "params", "MACs", "paper", "formula w/d/res"):
        table.add_column(column, justify="left" if column == "name" else "right")
    for r in rows:
        paper = f"{r['paper_params'] / 1e6:.1f}M/{r['paper_macs'] / 1e9:.2f}B" if r["paper_params"] else ""
        # The pure α^φ, β^φ, γ^φ values, shown only where the official table departs from them.
        diffs = r.get("differs_from_formula", {})
        formula = "/".join(str(diffs[k]["formula"]) if k in diffs else "=" for k in ("width", "depth", "resolution"))
        formula = "" if not diffs else formula
        table.add_row(r["name"], f"{r['phi']:g}", f"{r['width']:.3f}", f"{r['depth']:.3f}", str(r["resolution"]),
                      f"{r['dropout']:.2f}", f"{r['params'] / 1e6:.2f}M", f"{r['macs'] / 1e9:.3f}B", paper, formula)
    stdout.print(table)

"""The end-of-run table printed by ``colsim run``."""
from __future__ import annotations

from rich.table import Table

from colsim.cli.app import console


def print_summary(s: dict) -> None:
    """The end-of-run table: one row per evaluation; accuracy matrix columns p0.. = probe sets."""
    names = s["probe_sets"]
    t = Table(title=f"colsim summary — {s['status']}, {s['steps']} steps, {s['wall_s']:.0f} s",
              caption="p<j>: linear-probe accuracy from z_AGG on phase j's probe set ("
                      + ", ".join(f"p{j}={n}" for j, n in enumerate(names))
                      + "); pooled: all probe sets; R²: relative action from encoder pairs (linear probe)",
              caption_justify="left")
    t.add_column("after", no_wrap=True)
    t.add_column("step", justify="right")
    for j in range(len(names)):
        t.add_column(f"p{j}", justify="right")
    t.add_column("pooled z_AGG", justify="right")
    t.add_column("pooled z", justify="right")
    t.add_column("R²", justify="right")

    def f(x):
        return "—" if x is None else f"{x:.2f}"

    for i, e in enumerate(s["evaluations"]):
        t.add_row(e["phase"], str(e["step"]), *[f(v) for v in s["accuracy_matrix"][i]], f(s["probe_acc_agg"][i]),
                  f(s["probe_acc_z"][i]), f(s["equivariance_r2"][i]))
    console.print(t)

    def pm(key):
        v, se = s.get(key), s.get(f"{key}_se")
        return f(v) if se is None or v is None else f"{v:.3f} ± {se:.3f}"

    console.print(f"forgetting (± s.e.) — task probe {pm('forgetting')} · seen-so-far {pm('seen_forgetting')} · "
                  f"frozen read-out {pm('frozen_forgetting')} · prediction loss {pm('prediction_forgetting')}")
    console.print(f"BWT {f(s.get('bwt'))} · FWT {f(s.get('fwt'))} · prediction BWT {f(s.get('prediction_bwt'))}")
    g = s.get("gain") or {}
    if g:
        console.print("gain over step 0 (± s.e.) — " + " · ".join(
            f"{lab} {g[k]:+.3f} ± {g.get(k + '_se') or float('nan'):.3f}" for k, lab in (
                ("probe_acc_agg", "pooled z_AGG"), ("probe_acc_z", "pooled z"), ("equivariance_r2", "R²"),
                ("prediction_loss", "prediction loss (decrease)")) if g.get(k) is not None))
    c = s.get("columns")
    if c and c.get("probe_acc_agg"):  # a circuit: the table above is the vote's
        last, se = c["probe_acc_agg"][-1], c.get("probe_acc_agg_se", [[None] * len(c["names"])])[-1]
        console.print("circuit (table: the vote) — pooled z_AGG at the last evaluation: " + " · ".join(
            f"{n} {f(v)}" + (f" ± {e:.2f}" if e is not None else "") for n, v, e in zip(c["names"], last, se)))



"""Case study: path-length profiles of SmolLM2-135M and of the zoo's text models; lesion curves.

Does the effective depth stay short as models get deeper? For every model (SmolLM2 and each built zoo member trained
on text; members not built are skipped and named in the report), on windows of the bundled Wikipedia text:

- the exact split of the logits by path length (float64 dynamic programme over the frozen run; completeness checked);
- the share of the logit norm carried by each length (the effective path-length distribution) and its mean;
- the next-token loss with only the paths up to each length, and the length from which it stays within 0.1 nats of
  the clean loss;
- per-length ensemble weights fitted on half of the windows, evaluated on the other half;
- one full ``paths`` run per model (top paths, direct attribution, lesion curves with two draws per k, at most 9
  values of k), stored.

Writes ``path_ensembles.md`` next to this script and a ``case-path-ensembles`` run with the tables.
Run: ``.venv/bin/python case_studies/path_ensembles.py [--windows 4] [--tokens 64]``
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from circuits.paths import analyse_paths, decompose, fit_length_weights, freeze, lesion_curve
from circuits.paths.analysis import PATHS, PathsConfig, to_result
from circuits.paths.reweight import mean_loss
from workbench import zoo
from workbench.data import token_batches
from workbench.models import load_model
from workbench.store import Store

FINDINGS = "<!-- findings -->"
TEXT_FAMILIES = ("llama-", "gpt-")  # zoo members trained on the bundled text (induction-2l is trained on random tokens)


def _windows(model, n: int, seq: int) -> torch.Tensor:
    seq = min(seq, int(model.cfg.n_ctx))
    batch = next(iter(token_batches("wiki", model.tokenizer, seq_len=seq, batch_size=n)))
    return batch.tokens


def _settle(losses: list[float], tol: float = 0.1) -> int:
    """The smallest k such that the loss with paths up to every length >= k is within ``tol`` of the clean loss."""
    clean = losses[-1]
    k = len(losses) - 1
    while k > 0 and abs(losses[k - 1] - clean) <= tol:
        k -= 1
    return k


def profile(spec: str, n_windows: int, seq: int, store: Store, progress: bool,
            lesion_ks: int = 8) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Profile one model: (summary row, per-length table, lesion curve)."""
    model = load_model(spec, device="cpu")
    windows = _windows(model, n_windows, seq)
    decs, errors, stats = [], [], []
    for row in windows:
        dec = decompose(freeze(model, row[None]), dtype=torch.float64)
        stats.append(dec.length_stats())
        errors.append(stats[-1]["completeness_error"])
        dec.frozen = replace(dec.frozen, sublayers=[], clean_outputs=[])  # the readout is all that is needed from here
        decs.append(dec)
    n = decs[0].parts.shape[0] - 1
    norms = torch.stack([st["logit_norm"] for st in stats]).mean(0)
    share = norms / norms.sum()
    losses = torch.stack([st["cumulative_loss"] for st in stats]).mean(0)
    half = max(1, len(decs) // 2)
    fit = fit_length_weights(decs[:half], steps=25, l2=1e-3)
    held = decs[half:] or decs
    held_clean = float(mean_loss(held, torch.ones(n + 1, dtype=torch.float64)))
    held_fit = float(mean_loss(held, fit.weights))
    lengths = pd.DataFrame({"model": spec, "length": range(n + 1), "n_paths": decs[0].counts,
                            "norm_share": share.numpy(), "cumulative_loss": losses.numpy(),
                            "weight": fit.weights.numpy()})
    result = analyse_paths(model, windows[0:1], lesion_draws=2, lesion_step=max(1, n // lesion_ks), progress=progress)
    info = PATHS.save(store, to_result(result), spec, PathsConfig(prompt="(first held-out window)",
                                                                    lesion_draws=2, lesion_step=max(1, n // lesion_ks)))
    curve = lesion_curve(result.lesion_random).assign(model=spec, fraction=lambda d: d["k"] / n)
    eff = float((share * torch.arange(n + 1, dtype=share.dtype)).sum())
    mode = int(share.argmax())
    single = result.lesion_single
    row = {"model": spec, "layers": int(model.cfg.n_layers), "sublayers": n, "tokens": int(windows.numel()),
           "completeness_error": max(errors), "effective_length": eff, "effective_fraction": eff / n,
           "mode_length": mode, "settle_length": _settle(losses.tolist()), "clean_loss": float(losses[-1]),
           "loss_length0": float(losses[0]), "loss_upto2": float(losses[min(2, n)]),
           "heldout_clean": held_clean, "heldout_reweighted": held_fit,
           "worst_single": str(single.loc[single["delta"].idxmax(), "name"]),
           "worst_single_delta": float(single["delta"].max()),
           "median_single_delta": float(single["delta"].median()),
           "lesion_half": float(curve.loc[(curve["k"] - n // 2).abs().idxmin(), "mean"]),
           "top_path": result.summary["top_path"], "run": info.run_id}
    return row, lengths, curve


def _md_table(df: pd.DataFrame, floats: str = "{:.3f}") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df.itertuples(index=False):
        lines.append("| " + " | ".join(floats.format(v) if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--models", nargs="*", default=None, help="model specs (default: built zoo text members + SmolLM2)")
    args = parser.parse_args()
    members = [m for m in zoo.names() if m.startswith(TEXT_FAMILIES)]
    built = [m for m in members if zoo.is_built(m)]
    specs = args.models or [f"toy/{m}" for m in built] + ["smollm2-135m"]
    store = Store()
    rows, tables, curves = [], [], []
    for spec in specs:
        print(f"profiling {spec} ...", flush=True)
        row, lengths, curve = profile(spec, args.windows, args.tokens, store, progress=True)
        rows.append(row)
        tables.append(lengths)
        curves.append(curve)
    summary = pd.DataFrame(rows)
    lengths = pd.concat(tables, ignore_index=True)
    curve = pd.concat(curves, ignore_index=True)
    with store.create("case-path-ensembles", model=None, params={"models": specs, "windows": args.windows,
                                                                 "tokens": args.tokens}) as run:
        run.save_table("models", summary)
        run.save_table("lengths", lengths)
        run.save_table("lesion_curves", curve)
        run.summary.update({"models": specs, "skipped_unbuilt": sorted(set(members) - set(built))})
    _report(summary, lengths, curve, sorted(set(members) - set(built)), run.info, args)


def _report(summary: pd.DataFrame, lengths: pd.DataFrame, curve: pd.DataFrame, skipped: list[str], info, args) -> None:
    cols = ["model", "layers", "sublayers", "effective_length", "effective_fraction", "mode_length", "settle_length",
            "clean_loss", "loss_length0", "loss_upto2", "heldout_clean", "heldout_reweighted", "completeness_error"]
    lesion_cols = ["model", "worst_single", "worst_single_delta", "median_single_delta", "lesion_half", "top_path"]
    short = lengths[lengths["length"] <= 8].pivot(index="length", columns="model", values="norm_share")
    out = [
        "# Path ensembles: how long are the paths that matter?",
        "",
        f"Windows of {args.tokens} tokens of the bundled Wikipedia text, {args.windows} per model; float64 dynamic "
        "programme over the frozen run (norm scales, attention patterns and MLP gates of the clean run).",
        f"Models: {', '.join(summary['model'])}. Zoo members not built when this ran (skipped): "
        f"{', '.join(skipped) or 'none'}.",
        "",
        "## Per model",
        "",
        _md_table(summary[cols], "{:.4g}"),
        "",
        "effective_length: mean path length weighted by each length's share of the (centred) logit norm; settle_length:"
        " the loss with the paths up to every length from there on is within 0.1 nats of the clean loss; heldout_*: "
        "loss on the held-out windows with weights 1 and with per-length weights fitted on the other windows.",
        "",
        "## Share of the logit norm by path length (lengths 0-8)",
        "",
        _md_table(short.reset_index(), "{:.3f}"),
        "",
        "## Lesions (one window, two random draws per k)",
        "",
        _md_table(summary[lesion_cols], "{:.4g}"),
        "",
        "```",
        curve.pivot_table(index="fraction", columns="model", values="mean").round(3).to_string(max_rows=20),
        "```",
        "",
        f"Stored as run `{info.kind}/{info.run_id}` (tables models, lengths, lesion_curves) and one `paths` run per "
        "model (runs listed in the table's run column).",
        "",
    ]
    report = Path(__file__).with_suffix(".md")
    old = report.read_text() if report.is_file() else ""
    if FINDINGS in old:  # the written findings below the marker survive a rerun
        out.append(old[old.index(FINDINGS):])
    report.write_text("\n".join(out))


if __name__ == "__main__":
    main()

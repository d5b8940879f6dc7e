"""Plotly figures of a stored ``bigram`` run: where the kept weights sit (layer x sublayer), the bigram correlation,
the ablation against the random control, and the training curve."""

from __future__ import annotations

from typing import Any

__all__ = ["figures"]


def _heatmap(layers: Any) -> Any:
    import plotly.graph_objects as go

    cols = list(dict.fromkeys(f"{k}.{s}" for k, s in zip(layers["kind"], layers["sublayer"], strict=True)))
    rows = sorted(set(int(x) for x in layers["layer"]))
    z = [[None] * len(cols) for _ in rows]
    text = [[""] * len(cols) for _ in rows]
    for r in layers.itertuples():
        i, j = rows.index(int(r.layer)), cols.index(f"{r.kind}.{r.sublayer}")
        z[i][j] = 100.0 * float(r.fraction)
        text[i][j] = f"{100.0 * float(r.fraction):.3g}%<br>{int(r.kept):,} kept"
    fig = go.Figure(go.Heatmap(z=z, x=cols, y=[f"L{r}" for r in rows], text=text, texttemplate="%{text}",
                               colorscale="Viridis", colorbar={"title": "% kept"},
                               hovertemplate="%{y} %{x}: %{z:.4f}% kept<extra></extra>"))
    fig.update_layout(title="Kept fraction of each layer's weight matrices", xaxis_title="sublayer",
                      yaxis_title="layer", yaxis_autorange="reversed")
    return fig


def _correlation(metrics: Any) -> Any:
    import plotly.graph_objects as go

    names = {"full": "full model", "subnetwork": "bigram subnetwork", "empty": "every masked weight zero"}
    rows = [r for r in metrics.itertuples() if r.condition in names]
    fig = go.Figure(go.Bar(x=[names[r.condition] for r in rows], y=[r.corr for r in rows],
                           text=[f"{r.corr:.3f}" if r.corr == r.corr and r.corr is not None else "n/a" for r in rows],
                           textposition="outside"))
    fig.update_layout(title="Correlation of next-token log-probabilities with the bigram log-probabilities "
                      "(held-out text)", yaxis_title="Pearson r", yaxis_range=[min(0.0, *[r.corr or 0 for r in rows]),
                                                                              1.05])
    return fig


def _ablation(metrics: Any, summary: dict) -> Any:
    import plotly.graph_objects as go

    by = {r.condition: r for r in metrics.itertuples()}
    randoms = [r.lm_loss for r in metrics.itertuples() if str(r.condition).startswith("random-")]
    x = ["full model", "bigram subnetwork ablated", "random same-size ablation", "bigram subnetwork alone"]
    y = [by["full"].lm_loss, by["ablated"].lm_loss, summary.get("lm_loss_random"), by["subnetwork"].lm_loss]
    err = [0.0, 0.0, summary.get("lm_loss_random_sd") or 0.0, 0.0]
    fig = go.Figure(go.Bar(x=x, y=y, error_y={"type": "data", "array": err},
                           text=[f"{v:.3f}" if v is not None else "n/a" for v in y], textposition="outside"))
    fig.update_layout(title=f"Held-out next-token loss (random control: {len(randoms)} draws, mean +- sd)",
                      yaxis_title="cross-entropy (nats)")
    return fig


def _training(history: Any) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=history["step"], y=history["loss"], name="bigram cross-entropy"), secondary_y=False)
    fig.add_trace(go.Scatter(x=history["step"], y=history["kept_soft"], name="expected kept fraction"),
                  secondary_y=True)
    fig.update_layout(title="Mask training", xaxis_title="step")
    fig.update_yaxes(title_text="cross-entropy (nats)", secondary_y=False)
    fig.update_yaxes(title_text="expected kept fraction", type="log", secondary_y=True)
    return fig


def figures(run: Any) -> dict[str, Any]:
    """``kept`` (heatmap), ``correlation``, ``ablation`` and ``training`` figures of a stored run."""
    metrics = run.table("metrics")
    return {"kept": _heatmap(run.table("layers")), "correlation": _correlation(metrics),
            "ablation": _ablation(metrics, run.summary), "training": _training(run.table("history"))}

"""Interventions on transcoder features behind the analysis contract: run kind ``intervention`` (verb
``intervene``).

Usage (notebook)::

    from circuits.attribution.intervene_analysis import INTERVENE, InterveneConfig
    cfg = InterveneConfig(prompt="The city was founded in the early years of the", train_tokens=20_480,
                          set=["tc2.f17@5=3.0"], zero=["tc1.f4"], mode="spliced")
    result = INTERVENE.run(model, cfg)
    result.summary["target_change"], result.summary["predicted_change"]
    result.objects["result"]     # the InterventionResult (logits before/after, activations, top tokens)

Command line: ``--set tc2.f17@5=3.0 --scale tc1.f4@2=0.5 --zero tc0.f9`` (each takes several values; a feature id
without ``@P`` means every position). With none of them, the feature the graph predicts to move the first target
most is zeroed. ``--sample N`` also zeroes each of the N most influential features alone and counts how often the
measured change of the first target has the sign the graph predicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from circuits.attribution.analysis import check_prompt, prompt_replacement
from workbench.analysis import Analysis, Config, ConfigError, Result, option

__all__ = ["INTERVENE", "InterveneConfig", "config_for_graph"]

_FLAGS = (("set", "set"), ("scale", "scale"), ("zero", "zero"))


@dataclass
class InterveneConfig(Config):
    """Options of ``workbench intervene``."""

    prompt: str | None = option(None, "the prompt text (BOS is prepended when the tokenizer has one)", lines=True)
    transcoder: list[str] | None = option(None, "transcoder folders in SAELens format (one per layer)", lines=True,
                                          path=True)
    train_tokens: int = option(0, "with no --transcoder: first train TopK-16 transcoders (4x) for every layer on this "
                                  "many wiki tokens (0: --transcoder is required)", minimum=0)
    set: list[str] | None = option(None, "set features: FEATURE=VALUE, e.g. tc1.f12@3=2.5 (tc1.f12=2.5: every "
                                         "position)", lines=True)
    scale: list[str] | None = option(None, "scale features: FEATURE=FACTOR, e.g. tc1.f12@3=0.5", lines=True)
    zero: list[str] | None = option(None, "zero features: FEATURE, e.g. tc1.f12@3", lines=True)
    mode: Literal["spliced", "replacement"] = option(
        "spliced", "spliced: the real model with the transcoders (plus their fixed clean error) in place of the MLPs; "
                   "replacement: the frozen linearised replacement (attention, norms, errors frozen)")
    freeze_attention: bool = option(False, "spliced mode: keep the clean attention patterns")
    propagate: bool = option(True, "let the change flow through every later feature (off: direct effects only)")
    max_n_logits: int = option(5, "targets: the most likely next tokens, at most this many", minimum=1)
    correct: str | None = option(None, "target this token's logit (text, one token) instead of the top ones",
                                 lines=True)
    incorrect: str | None = option(None, "with --correct: target the logit difference correct - incorrect",
                                   lines=True)
    sample: int = option(16, "also zero each of this many features alone and count sign agreement (0: off)",
                         minimum=0)
    top_k: int = option(10, "list the tokens whose probability moved most, this many", minimum=1)
    max_feature_nodes: int = option(0, "at most this many feature nodes in the graph (0: every active one)",
                                    minimum=0)
    precision: Literal["float32", "float64"] = option("float32", "dtype of the replacement model and the graph")

    def validate(self) -> None:
        check_prompt(self)
        if self.incorrect is not None and self.correct is None:
            raise ConfigError("--incorrect needs --correct (the difference correct - incorrect)")
        if self.correct is not None and self.correct == self.incorrect:
            raise ConfigError(f"--correct and --incorrect are the same token {self.correct!r}: the difference is 0")
        self.interventions()

    def interventions(self) -> list[Any]:
        """The parsed --set/--scale/--zero values; ConfigError naming the flag and the value."""
        from circuits.attribution.intervene import InterventionError, parse_intervention

        out = []
        for name, op in _FLAGS:
            for text in getattr(self, name) or []:
                try:
                    out.append(parse_intervention(text, op))
                except InterventionError as err:
                    raise ConfigError(f"--{name}: {err}") from None
        return out


_SHARED = ("prompt", "transcoder", "train_tokens", "max_n_logits", "correct", "incorrect", "max_feature_nodes",
           "precision")


def config_for_graph(params: dict[str, Any], nodes: list[str], op: Literal["zero", "scale", "set"],
                     value: float = 0.0, mode: Literal["spliced", "replacement"] = "spliced", sample: int = 0
                     ) -> InterveneConfig:
    """The intervention on the feature ``nodes`` (node ids ``tcL.fI@P``) of an attribution run whose options are
    ``params`` (a stored ``attribute`` run's ``params``): the same prompt, transcoders, targets and precision, each node
    zeroed, scaled by ``value`` or set to ``value``; ``sample`` single-feature ablations for the sign agreement (0:
    none, the quick default of a page). ConfigError for a node that is not a feature, or for no node."""
    from circuits.attribution.intervene import InterventionError, parse_intervention

    if op not in ("zero", "scale", "set"):
        raise ConfigError(f"op must be zero, scale or set, got {op!r}")
    if not nodes:
        raise ConfigError("give at least one feature node (tcL.fI@P) to intervene on")
    texts = [node if op == "zero" else f"{node}={value:g}" for node in nodes]
    for node, text in zip(nodes, texts, strict=True):
        try:
            parse_intervention(text, op)
        except InterventionError as err:
            raise ConfigError(f"{node}: {err}") from None
    shared = {k: params[k] for k in _SHARED if params.get(k) is not None}
    cfg = InterveneConfig(**shared, **{op: texts}, mode=mode, sample=sample)
    cfg.check()
    return cfg


def _targets(rm: Any, cfg: InterveneConfig, tokenizer: Any) -> Any:
    from circuits.attribution.analysis import _single_token
    from circuits.attribution.attribute import logit_difference, salient_logits, token_logits

    if cfg.correct is None:
        return salient_logits(rm, max_n_logits=cfg.max_n_logits, tokenizer=tokenizer)
    correct = _single_token(tokenizer, cfg.correct, "correct")
    if cfg.incorrect is None:
        return token_logits(rm, [correct], tokenizer)
    incorrect = _single_token(tokenizer, cfg.incorrect, "incorrect")
    if correct == incorrect:
        raise ConfigError(f"--correct and --incorrect are the same token {tokenizer.decode([correct])!r}")
    return logit_difference(rm, correct, incorrect, tokenizer)


def _compute(model: Any, cfg: InterveneConfig, progress: bool) -> Result:
    import pandas as pd

    from circuits.attribution.attribute import attribute
    from circuits.attribution.intervene import (
        InterventionError,
        intervene,
        parse_intervention,
        resolve,
        sign_agreement,
    )

    tokenizer = model.tokenizer
    rm, _, trained_tokens = prompt_replacement(model, cfg, progress)
    ivs = cfg.interventions()
    for iv, (flag, text) in zip(ivs, [(n, t) for n, _ in _FLAGS for t in getattr(cfg, n) or []], strict=True):
        try:
            resolve(rm, [iv])
        except InterventionError as err:
            raise ConfigError(f"--{flag} {text}: {err}") from None
    targets = _targets(rm, cfg, tokenizer)
    graph = attribute(rm, targets, max_feature_nodes=cfg.max_feature_nodes or None, tokenizer=tokenizer,
                      progress=progress)
    kw = {"mode": cfg.mode, "freeze_attention": cfg.freeze_attention, "propagate": cfg.propagate}
    warnings = []
    sample = sign_agreement(rm, graph, targets, n=max(cfg.sample, 0 if ivs else 1), **kw)
    if not ivs:
        if not sample.nodes:
            raise ConfigError("the graph has no feature with an effect on the target: give --set/--scale/--zero")
        ivs = [parse_intervention(sample.nodes[0], "zero")]
        warnings.append(f"no --set/--scale/--zero given: zeroed {sample.nodes[0]}, the feature the graph predicts "
                        f"to move {targets.labels[0]!r} most")
    res = intervene(model, rm, rm.tokens, ivs, targets=targets, graph=graph, top_k=cfg.top_k, tokenizer=tokenizer,
                    **kw)
    if res.prediction_note:
        warnings.append(res.prediction_note)
    if float((res.logits_after - res.logits_before).abs().max()) == 0:
        warnings.append("the intervention changed no logit (every intervened feature is off where it was set)")
    measured, predicted = res.target_change.tolist(), res.predicted_change
    agrees = res.sign_agrees()
    targets_table = pd.DataFrame({"target": res.targets, "before": res.target_before.tolist(),
                                  "after": res.target_after.tolist(), "measured_change": measured,
                                  "predicted_change": None if predicted is None else predicted.tolist(),
                                  "sign_agrees": agrees})
    tokens_table = pd.DataFrame([{"token": t.text, "token_id": t.token_id, "p_before": t.p_before,
                                  "p_after": t.p_after, "change": t.change} for t in res.top_tokens])
    n = cfg.sample
    ablations = pd.DataFrame({"node": sample.nodes[:n], "predicted_change": sample.predicted[:n].tolist(),
                              "measured_change": sample.measured[:n].tolist(),
                              "sign_agrees": sample.agree[:n].tolist()})
    rate = float(ablations.sign_agrees.mean()) if len(ablations) else None
    ratio = float((ablations.measured_change / ablations.predicted_change).median()) if len(ablations) else None
    summary = {"mode": cfg.mode, "interventions": [str(iv) for iv in res.interventions], "targets": res.targets,
               "target_change": measured, "predicted_change": None if predicted is None else predicted.tolist(),
               "sign_agrees": agrees, "sample_size": len(ablations), "sample_sign_agreement": rate,
               "sample_median_measured_over_predicted": ratio,
               "top_token_changes": [{"token": t.text, "change": t.change} for t in res.top_tokens[:5]],
               "graph_feature_nodes": graph.n_features, "active_features": graph.n_active}
    if trained_tokens:
        summary["transcoder_tokens"] = trained_tokens
    out = Result(summary=summary, tables={"targets": targets_table, "top_tokens": tokens_table,
                                          "ablations": ablations},
                 objects={"result": res, "graph": graph, "replacement_model": rm, "sign_agreement": sample},
                 warnings=warnings)
    pred = "no prediction" if predicted is None else ", ".join(f"{p:+.4f}" for p in predicted.tolist())
    out.lines = [f"{cfg.mode} mode, {'; '.join(map(str, res.interventions))}",
                 "targets " + ", ".join(f"{t!r} {m:+.4f}" for t, m in zip(res.targets, measured, strict=True))
                 + f" (graph predicts {pred})",
                 "most moved: " + ", ".join(f"{t.text!r} {t.change:+.4f}" for t in res.top_tokens[:5])]
    if rate is not None:
        out.lines.append(f"sign agreement over {len(ablations)} single-feature ablations of {res.targets[0]!r}: "
                         f"{rate:.2f} (median measured / predicted change {ratio:.3f})")
    return out


def _figures(run: Any) -> dict[str, Any]:
    import plotly.graph_objects as go

    tokens = run.table("top_tokens")
    fig = go.Figure(go.Bar(x=[repr(t) for t in tokens.token], y=tokens.change,
                           marker_color=["#2a7" if c > 0 else "#c33" for c in tokens.change],
                           customdata=tokens[["p_before", "p_after"]].values,
                           hovertemplate="%{x}: %{customdata[0]:.4f} -> %{customdata[1]:.4f}<extra></extra>"))
    fig.update_layout(title=f"probability change at the last position ({run.summary.get('mode')})",
                      xaxis_title="token", yaxis_title="change of probability")
    out = {"top_tokens": fig}
    targets = run.table("targets")
    bars = [go.Bar(name="measured", x=targets.target, y=targets.measured_change)]
    if targets.predicted_change.notna().any():
        bars.append(go.Bar(name="predicted by the graph", x=targets.target, y=targets.predicted_change))
    out["targets"] = go.Figure(bars).update_layout(title="change of each target", barmode="group")
    ablations = run.table("ablations")
    if len(ablations):
        out["ablations"] = go.Figure(go.Scatter(
            x=ablations.predicted_change, y=ablations.measured_change, mode="markers", text=ablations.node,
            hovertemplate="%{text}: predicted %{x:.4f}, measured %{y:.4f}<extra></extra>")).update_layout(
            title=f"single-feature ablations: sign agreement {run.summary.get('sample_sign_agreement') or 0:.2f}",
            xaxis_title="predicted change", yaxis_title="measured change")
    return out


INTERVENE = Analysis(
    kind="intervention", verb="intervene", config=InterveneConfig, compute=_compute, figures=_figures,
    help="set, scale or zero transcoder features on one prompt and compare the change with the attribution graph's "
         "prediction; stores an intervention run",
    describe="Build the prompt's attribution graph over per-layer transcoders, apply the interventions in the real "
             "model with the transcoders spliced in (or in the frozen linearised replacement), report the targets' "
             "measured and predicted change, the tokens whose probability moved most, and how often single-feature "
             "ablations move the target the way the graph predicts.",
    demo=InterveneConfig(prompt="The city was founded in the early years of the", train_tokens=20_480),
    demo_model="toy/llama-d64-l4")

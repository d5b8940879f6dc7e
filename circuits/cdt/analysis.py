"""CD-T behind the analysis contract (:mod:`workbench.analysis`): run kind ``cdt`` (``workbench cdt``).

Usage (notebook)::

    from circuits.cdt.analysis import CDT, CdtConfig
    result = CDT.run(model, CdtConfig(task="induction", half_len=24, discover=True, top_k=5))
    result.summary["faithfulness"], result.summary["bound_met"]
    CDT.figures(Store().load("cdt", CDT.save(Store(), result, model).run_id))["per_head"].show()

Run layout (``runs/cdt/<run_id>/``):

- ``manifest.json``: params (the config's fields, plus ``rules``: the propagation rules used and ``metric``: the
  metric that was decomposed); summary ``clean_metric``, ``metric_name``, ``top_sources`` (list of ``[id, score]``),
  and with discovery ``faithfulness``, ``bound_met``, ``n_nodes``, ``n_candidates``, ``circuit_heads``.
- ``head_scores.safetensors``: ``per_head`` [L, H] (beta part of the metric per whole head) and, unless
  ``whole_heads``, ``per_position`` [L, H, T].
- ``scores.parquet``: one row per source: ``source``, ``metric_beta``, ``relevance`` and ``relevance:<target>`` per
  target component (sources default to every head at every position, or every whole head).
- ``circuit.json`` (with discovery): the circuit in node-link form (``Circuit.to_json``).
- ``words.parquet`` (with texts): ``text_index``, ``text``, ``phrase``, ``first_word``, ``last_word``, ``n_words``,
  ``first_token``, ``last_token``, ``contribution``, ``logit_diff`` (the text's clean logit difference);
  ``explanations.json``: a list of ``{"text", "words", "contributions", "logit_diff", "answers", "html"}``.
- ``task.json``: the first prompt's tokens as text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from workbench.analysis import Analysis, ConfigError, Result, TaskOptions, option

__all__ = ["CDT", "CdtConfig"]


@dataclass
class CdtConfig(TaskOptions):
    """Options of ``workbench cdt``."""

    metric: Literal["task", "logit_diff"] | None = option(
        None, "task: the task's own metric; logit_diff: its single-position logit difference (default: the task's "
              "own for the scores, logit_diff with --discover, where the task's mean over positions is not faithful)")
    sources: list[str] | None = option(None, "sources: L1.H0@5, L1.H0, mlp2@3, emb@2-4 ... (default: every head at "
                                             "every position)")
    targets: list[str] = option(["logit"], "'logit' (the task metric) or later components such as L1.H0@7 mlp1")
    whole_heads: bool = option(False, "score (and discover) whole heads instead of heads at positions")
    top_k: int = option(10, "sources listed; discovery: nodes kept per round", minimum=1)
    discover: bool = option(False, "run the iterative CD-T circuit discovery")
    faithfulness_bound: float = option(0.8, "discovery: pruning keeps F at or above it", minimum=0.0,
                                       exclusive_minimum=True, maximum=1.0)
    max_rounds: int | None = option(None, "discovery: at most this many rounds (default: down to layer 0)", minimum=1)
    prune_batch: int = option(1, "discovery: removals tried per batched pruning pass (same result as one at a time, "
                                 "fewer circuits scored)", minimum=1)
    ablation: Literal["mean", "zero"] = option("mean", "source semantics")
    attention: Literal["own", "total", "ablated"] | None = option(
        None, "attention rule (default: the library's for each use: ablated for the scores and the discovery, total "
              "for --explain; published: own)")
    sign_rule: bool = option(False, "apply the sign rule after MLPs and residual additions (published: on)")
    bias_split: Literal["proportional", "gamma"] = option("proportional", "how biases are shared")
    norm_bias: Literal["output", "input"] = option("output", "a LayerNorm's bias shared by the normed parts (output) "
                                                             "or by the parts of its input (input; published)")
    share_eps: float = option(0.0, "added to every bias share's denominator (published: 1e-8)", minimum=0.0)
    norm_eps: float | None = option(None, "epsilon of the norms (default: the model's; published: 1e-8)", minimum=0.0)
    published: bool = option(False, "the published code's rules (adelaidehsu/CD_Circuit): sign rule, own attention, "
                                    "input bias split, share and norm epsilon 1e-8; overrides the rule options")
    explain: list[str] | None = option(None, "also explain these texts word by word (sentiment prompt, ' positive' vs "
                                             "' negative'); one text per line in the form", lines=True)

    def validate(self) -> None:
        super().validate()
        if self.explain is not None and any(not t.strip() for t in self.explain):
            raise ConfigError("--explain got an empty text: give at least one non-blank character per text")


def _rules(cfg: CdtConfig) -> dict[str, Any]:
    if cfg.published:
        from circuits.cdt.rules import Rules

        return Rules.published().to_dict()
    rules: dict[str, Any] = {"sign_rule": cfg.sign_rule, "bias_split": cfg.bias_split, "norm_bias": cfg.norm_bias,
                             "share_eps": cfg.share_eps, "norm_eps": cfg.norm_eps}
    if cfg.attention is not None:  # else each use keeps the library's default (scores: ablated; explain: total)
        rules["attention"] = cfg.attention
    return rules


def _check_nodes(model: Any, cfg: CdtConfig, seq_len: int) -> None:
    """--sources, --targets and --explain checked against the model and the task before any work."""
    from circuits.cdt.nodes import parse_nodes
    from workbench.data.tokens import encode
    from workbench.limits import check_context

    sizes = {"n_layers": int(model.cfg.n_layers), "n_heads": int(model.cfg.n_heads), "seq_len": int(seq_len)}
    for flag, specs in (("--sources", cfg.sources), ("--targets", cfg.targets)):
        if specs:
            try:
                parse_nodes(specs, what=flag, **sizes)
            except ValueError as exc:
                raise ConfigError(f"{flag}: {exc}") from exc
    for text in cfg.explain or []:
        check_context(model, len(encode(model.tokenizer, text)) + 1, "an --explain text")


def _compute(model: Any, cfg: CdtConfig, progress: bool) -> Result:
    import pandas as pd
    import torch

    from circuits.cdt import discovery, local
    from circuits.cdt.scores import decompose_sources, head_nodes, prepare

    task = cfg.make_task(model)
    _check_nodes(model, cfg, task.seq_len)
    metric = cfg.metric or ("logit_diff" if cfg.discover else "task")
    if metric == "logit_diff":
        task = dataclasses.replace(task, metric_name="logit_diff", score_positions=None)
    rules = _rules(cfg)
    per_position = not cfg.whole_heads
    ctx = prepare(model, task, ablation=cfg.ablation)
    w = ctx.weights
    heads = head_nodes(w.n_layers, w.n_heads, task.seq_len, per_position=per_position)
    scores = decompose_sources(ctx, sources=cfg.sources or heads, targets=cfg.targets, progress=progress, **rules)
    whole = decompose_sources(ctx, sources=head_nodes(w.n_layers, w.n_heads, task.seq_len, per_position=False), **rules)
    tensors = {"per_head": whole.metric.float().view(w.n_layers, w.n_heads).cpu()}
    if per_position:
        per = scores if not cfg.sources and list(cfg.targets) == ["logit"] else decompose_sources(ctx, sources=heads,
                                                                                                  **rules)
        tensors["per_position"] = per.metric.float().view(w.n_layers, w.n_heads, task.seq_len).cpu()
    relevance = scores.relevance()
    rank = torch.argsort(relevance.abs(), descending=True)[:cfg.top_k].tolist()
    tokens = [model.tokenizer.decode([int(t)]) for t in task.clean_tokens[0]]
    out = Result(tensors={"head_scores": tensors}, tables={"scores": scores.to_frame()},
                 json={"task": {"tokens": tokens, "prompts": task.prompts, "metric": task.metric_name}},
                 params={"rules": scores.rules, "metric_used": task.metric_name})
    s = out.summary
    s.update(clean_metric=scores.clean_metric, metric_name=task.metric_name,
             top_sources=[[scores.sources[i], float(relevance[i])] for i in rank])
    out.lines = [f"CD-T on {cfg.task} ({task.metric_name}), clean metric {s['clean_metric']:.4f}",
                 "top sources (beta part of the metric, or relevance to the targets):"]
    out.lines += [f"  {node:<14} {score:+.4f}" for node, score in s["top_sources"]]
    if cfg.discover:
        circuit = discovery.discover(model, task, top_k=cfg.top_k, faithfulness_bound=cfg.faithfulness_bound,
                                     per_position=per_position, ablation=cfg.ablation, max_rounds=cfg.max_rounds,
                                     prune_batch=cfg.prune_batch, progress=progress, **rules)
        circuit.metadata["tokens"] = tokens
        out.graphs["circuit"] = circuit
        s.update({k: circuit.metadata[k] for k in ("faithfulness", "n_nodes", "n_candidates")})
        s["bound_met"] = bool(s["faithfulness"] >= cfg.faithfulness_bound)
        s["circuit_heads"] = [list(h) for h in circuit.heads()]
        out.lines.append(f"circuit: {s['n_nodes']} of {s['n_candidates']} nodes, faithfulness {s['faithfulness']:.3f} "
                         f"(bound {cfg.faithfulness_bound}), heads {s['circuit_heads']}")
        if not s["bound_met"]:
            out.warnings.append(f"the circuit's faithfulness {s['faithfulness']:.3f} is below the bound "
                                f"{cfg.faithfulness_bound}: no circuit the search found keeps the metric")
    if cfg.explain:
        frames, docs = [], []
        for i, text in enumerate(cfg.explain):
            ex = local.explain(model, text, **rules)
            frame = ex.table.copy()
            frame.insert(0, "text", text)
            frame.insert(0, "text_index", i)
            frame["logit_diff"] = ex.logit_diff
            frames.append(frame)
            words = ex.word_table()
            docs.append({"text": text, "words": ex.words, "contributions": words["contribution"].tolist(),
                         "logit_diff": ex.logit_diff, "answers": list(ex.answers), "html": ex.html()})
            pairs = " ".join(f"{w}({c:+.2f})" for w, c in zip(ex.words, words["contribution"], strict=True))
            out.lines.append(f"{text!r}: logit diff {ex.logit_diff:+.3f}; {pairs}")
        out.tables["words"] = pd.concat(frames, ignore_index=True)
        out.json["explanations"] = docs
    return out


def _figures(run: Any) -> dict[str, Any]:
    from circuits.head_figures import head_position_figure, head_scores_figure
    from workbench.circuit import Circuit

    tensors = run.tensors("head_scores")
    metric = run.summary.get("metric_name", "metric")
    figs = {"per_head": head_scores_figure(tensors["per_head"].double().numpy(),
                                           f"CD-T: beta part of the {metric} per head", colorbar=metric)}
    tokens = run.json("task")["tokens"] if "task" in run.names("json") else None
    if "per_position" in tensors:
        figs["per_position"] = head_position_figure(tensors["per_position"].double().numpy(), tokens,
                                                    f"CD-T: beta part of the {metric} per head and position", metric)
    if "circuit" in run.names("json"):
        figs["circuit"] = Circuit.from_json(run.json("circuit")).figure()
    return figs


CDT = Analysis(
    kind="cdt", verb="cdt", config=CdtConfig, compute=_compute, figures=_figures,
    help="contextual decomposition: head/position relevance, CD-T circuit discovery, word contributions",
    demo=CdtConfig(task="induction", n=8, seed=0, half_len=24, top_k=5, discover=True), demo_model="toy/induction-2l",
    default_model="smollm2-135m")

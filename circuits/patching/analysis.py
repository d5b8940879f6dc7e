"""Patching behind the analysis contract (:mod:`workbench.analysis`): run kind ``patching`` (``workbench patch``).

Usage (notebook)::

    from circuits.patching.analysis import PATCH, PatchConfig
    result = PATCH.run(model, PatchConfig(task="induction", half_len=20, mode="discover", top_k=2))
    result.summary["faithfulness"], result.summary["bound_met"]
    result.graphs["circuit"].figure().show()

Layout of one run ``runs/patching/<run_id>/``:

- ``scores.parquet``: one row per scored component: ``layer``, ``head`` (-1 for a whole attention layer or an MLP),
  ``position`` (-1 when the score covers every position), ``component`` (``head``, ``attn``, ``mlp``), ``node``
  (its node id) and ``score`` (m(clean) - m(patched), see :mod:`circuits.patching.activation`).
- ``scores.safetensors``: ``scores`` as computed: [L, H] (heads), [L, H, pos] (heads-positions or path with
  positions), [L, pos] (layers), or [n_nodes] (discover: the found nodes' scores, in the table's order).
- ``circuit.json``: the circuit (node-link JSON, :class:`workbench.circuit.Circuit`): the ``top_k`` components by |score|
  (or the discovered circuit), each node with its score; metadata holds the task's tokens of the first prompt.
- ``task.json``: ``{"prompts", "corrupted_prompts", "tokens" (first clean prompt, as strings), "metric", "description"}``.
- summary: ``mode``, ``metric_clean``, ``metric_empty``, ``faithfulness`` (of circuit.json), ``n_nodes``, ``top``
  (the top components as ``[node, score]`` pairs), and in ``discover`` mode ``bound_met``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from workbench.analysis import Analysis, ConfigError, Result, TaskOptions, option

__all__ = ["MODES", "PATCH", "PatchConfig", "score_table"]

# circuits.patching: ablation.ABLATIONS, path.RECEIVER_INPUTS (mirrored as Literal types; a test checks them)
MODES: tuple[str, ...] = ("heads", "heads-positions", "layers", "path", "discover")


@dataclass
class PatchConfig(TaskOptions):
    """Options of ``workbench patch``."""

    task: Literal["induction", "greater-than", "ioi", "sentiment"] = option("ioi", "task (workbench.data.TASKS)")
    mode: Literal["heads", "heads-positions", "layers", "path", "discover"] = option(
        "heads", "heads, heads-positions, layers (whole attention or MLP per position), path (path patching of every "
                 "head to --receivers), discover (path-patching circuit discovery)")
    ablation: Literal["mean", "zero", "corrupted"] = option("mean", "replacement value")
    receivers: list[str] | None = option(None, "path mode: 'logits' (default) or node ids such as L5.H1 L5.H1@9 mlp6")
    receiver_input: Literal["z", "q", "k", "v"] = option("z", "path mode: what of a head receiver is patched")
    component: Literal["attn", "mlp"] = option("attn", "layers mode: which sublayer")
    top_k: int = option(5, "nodes in the stored circuit (discover: per round)", minimum=1)
    faithfulness_bound: float = option(0.8, "discover: pruning keeps F at or above it", minimum=0.0,
                                       exclusive_minimum=True, maximum=1.0, aliases=("--min-faithfulness",))
    max_rounds: int | None = option(None, "discover: at most this many rounds (default: down to layer 0)", minimum=1)
    prune_batch: int = option(1, "discover: removals tried per batched pruning pass (same result as one at a time, "
                                 "fewer circuits scored)", minimum=1)
    prompt: list[str] | None = option(None, "own clean prompts instead of --task (one per line in the form)", lines=True)
    corrupted: list[str] | None = option(None, "with --prompt: corrupted prompts (same token counts)", lines=True)
    correct: list[str] | None = option(None, "with --prompt: one-token right answer(s)", lines=True)
    incorrect: list[str] | None = option(None, "with --prompt: one-token wrong answer(s)", lines=True)

    def validate(self) -> None:
        super().validate()
        for flag, texts in (("--prompt", self.prompt), ("--corrupted", self.corrupted)):
            if texts is not None and any(not t.strip() for t in texts):
                raise ConfigError(f"{flag} got an empty text: give at least one non-blank character per prompt")
        if self.prompt and not (self.corrupted and self.correct and self.incorrect):
            raise ConfigError("--prompt needs --corrupted, --correct and --incorrect as well")
        if not self.prompt and (self.corrupted or self.correct or self.incorrect):
            raise ConfigError("--corrupted, --correct and --incorrect go with --prompt")
        if self.correct and self.incorrect and list(self.correct) == list(self.incorrect):
            raise ConfigError("--correct and --incorrect are the same answers: the logit difference would be 0")


def score_table(scores: Any, mode: str, component: str = "attn") -> Any:
    """The long table of a score tensor ([L, H], [L, H, pos] or [L, pos] for ``layers``)."""
    import pandas as pd
    import torch

    def items(t):
        for index in torch.cartesian_prod(*[torch.arange(s) for s in t.shape]).reshape(-1, t.ndim).tolist():
            yield tuple(index), float(t[tuple(index)])

    rows = []
    if mode == "layers":
        for (layer, pos), v in items(scores):
            node = f"mlp{layer}@{pos}" if component == "mlp" else f"L{layer}@{pos}"
            rows.append((layer, -1, pos, component, node, v))
    elif scores.ndim == 2:
        rows = [(layer, h, -1, "head", f"L{layer}.H{h}", v) for (layer, h), v in items(scores)]
    else:
        rows = [(layer, h, p, "head", f"L{layer}.H{h}@{p}", v) for (layer, h, p), v in items(scores)]
    return pd.DataFrame(rows, columns=["layer", "head", "position", "component", "node", "score"])


def _task(model: Any, cfg: PatchConfig) -> Any:
    if not cfg.prompt:
        return cfg.make_task(model)
    from circuits.patching.prompts import prompt_task
    from workbench.limits import check_context

    try:
        task = prompt_task(model.tokenizer, cfg.prompt, cfg.corrupted, cfg.correct, cfg.incorrect)
    except ValueError as exc:
        raise ConfigError(f"--prompt/--corrupted/--correct/--incorrect: {exc}") from exc
    check_context(model, int(task.seq_len), "a --prompt or --corrupted text")
    return task.to(next(model.parameters()).device)


def _discovered(model: Any, task: Any, cfg: PatchConfig, progress: bool) -> tuple[Any, Any, Any, float, float]:
    import pandas as pd
    import torch

    from circuits.patching.discovery import discover

    circuit = discover(model, task, top_k=cfg.top_k, ablation=cfg.ablation, faithfulness_bound=cfg.faithfulness_bound,
                       max_rounds=cfg.max_rounds, prune_batch=cfg.prune_batch, progress=progress)
    nodes = circuit.graph.nodes
    found = [n for n in circuit if nodes[n].get("kind") in ("head", "mlp")]

    def num(n, key):
        return nodes[n].get(key) if nodes[n].get(key) is not None else -1

    table = pd.DataFrame([(nodes[n]["layer"], num(n, "head"), num(n, "position"), nodes[n]["kind"], n,
                           nodes[n]["score"]) for n in found],
                         columns=["layer", "head", "position", "component", "node", "score"])
    scores = torch.tensor([nodes[n]["score"] for n in found])
    return circuit, table, scores, circuit.metadata["faithfulness"], circuit.metadata["metric_empty"]


def _scored(model: Any, task: Any, cfg: PatchConfig, refs: Any, progress: bool) -> tuple[Any, Any, Any, float, float]:
    from circuits.patching.activation import head_patching_scores, layer_patching_scores
    from circuits.patching.faithfulness import faithfulness_many
    from circuits.patching.nodes import components
    from circuits.patching.path import path_head_scores, reaches
    from workbench.circuit import Circuit

    receivers = "logits" if cfg.receivers in (None, ["logits"]) else cfg.receivers
    if cfg.mode in ("heads", "heads-positions"):
        scores = head_patching_scores(model, task, per_position=cfg.mode == "heads-positions", ablation=cfg.ablation,
                                      refs=refs, progress=progress)
    elif cfg.mode == "layers":
        scores = layer_patching_scores(model, task, cfg.component, ablation=cfg.ablation, refs=refs, progress=progress)
    else:
        scores = path_head_scores(model, task, receivers, ablation=cfg.ablation, receiver_input=cfg.receiver_input,
                                  refs=refs, progress=progress)
    table = score_table(scores, cfg.mode, cfg.component)
    if cfg.mode == "path" and not isinstance(receivers, str):  # only the heads that reach a receiver were scored
        recv = components(model, task, receivers)
        sent = components(model, task, list(table["node"]))
        table = table[[any(reaches(s, r) for r in recv) for s in sent]].reset_index(drop=True)
    best = table.reindex(table["score"].abs().sort_values(ascending=False).index).head(cfg.top_k)
    circuit = Circuit(f"{cfg.mode} patching: {task.name}", {"method": f"{cfg.mode} patching", "task": task.name})
    for row in best.itertuples():
        if cfg.mode == "layers" and cfg.component == "attn":  # a whole attention layer at one position: its heads
            for h in range(model.cfg.n_heads):
                circuit.add_node(f"L{row.layer}.H{h}@{row.position}", score=row.score)
        else:
            circuit.add_node(row.node, score=row.score)
    if cfg.mode == "path" and not isinstance(receivers, str):
        for r in receivers:
            circuit.add_node(r, role="receiver")
    (f_t,), _, m_empty = faithfulness_many(model, task, [circuit], ablation=cfg.ablation, refs=refs)
    circuit.metadata["faithfulness"] = float(f_t)
    return circuit, table, scores, float(f_t), m_empty


def _compute(model: Any, cfg: PatchConfig, progress: bool) -> Result:
    from circuits.patching.ablation import references

    task = _task(model, cfg)
    if cfg.mode == "path" and cfg.receivers not in (None, ["logits"]):
        from circuits.patching.nodes import components

        try:
            components(model, task, cfg.receivers)
        except ValueError as exc:
            raise ConfigError(f"--receivers: {exc}") from exc
    refs = references(model, task, cfg.ablation)
    tokens = [model.tokenizer.decode([int(t)]) for t in task.clean_tokens[0]]
    if cfg.mode == "discover":
        circuit, table, scores, f, m_empty = _discovered(model, task, cfg, progress)
    else:
        circuit, table, scores, f, m_empty = _scored(model, task, cfg, refs, progress)
    circuit.metadata["tokens"] = tokens
    top = table.reindex(table["score"].abs().sort_values(ascending=False).index).head(cfg.top_k)
    out = Result(tables={"scores": table}, tensors={"scores": {"scores": scores.float().contiguous()}},
                 graphs={"circuit": circuit},
                 json={"task": {"prompts": task.prompts, "corrupted_prompts": task.corrupted_prompts, "tokens": tokens,
                                "metric": task.metric_name, "description": task.description}})
    s = out.summary
    s.update({"mode": cfg.mode, "metric_clean": refs.clean_metric, "metric_empty": float(m_empty),
              "faithfulness": float(f), "n_nodes": sum(1 for n in circuit if not n.startswith("logit")),
              "top": [[r.node, float(r.score)] for r in top.itertuples()]})
    out.lines = [f"patching ({cfg.mode}, {cfg.ablation}) of {task.name}",
                 f"metric clean {s['metric_clean']:.4f}, empty {s['metric_empty']:.4f}; "
                 f"faithfulness of the top {s['n_nodes']} nodes: {s['faithfulness']:.3f}"]
    out.lines += [f"  {node:<16} {score:+.4f}" for node, score in s["top"]]
    if cfg.mode == "discover":
        s["bound_met"] = bool(f >= cfg.faithfulness_bound)
        if not s["bound_met"]:
            out.warnings.append(f"the circuit's faithfulness {f:.3f} is below the bound {cfg.faithfulness_bound}")
    return out


def _figures(run: Any) -> dict[str, Any]:
    from circuits.head_figures import head_position_figure, head_scores_figure
    from workbench.circuit import Circuit

    figs = {}
    scores = run.tensors("scores")["scores"].double().numpy()
    mode = run.summary.get("mode")
    tokens = run.json("task").get("tokens") if "task" in run.names("json") else None
    if mode == "heads" or (mode == "path" and scores.ndim == 2):
        figs["heads"] = head_scores_figure(scores, f"{mode} patching: m(clean) - m(patched)", "effect")
    elif scores.ndim == 3:
        figs["heads_positions"] = head_position_figure(scores, tokens, f"{mode} patching per position", "effect")
    figs["circuit"] = Circuit.from_json(run.json("circuit")).figure()
    return figs


PATCH = Analysis(
    kind="patching", verb="patch", config=PatchConfig, compute=_compute, figures=_figures,
    help="activation / path patching of heads, positions or layers; circuit discovery",
    demo=PatchConfig(task="induction", n=8, seed=0, half_len=20, mode="discover", top_k=2),
    demo_model="toy/induction-2l")

"""Attribution graphs behind the analysis contract (:mod:`workbench.analysis`): run kind ``attribution``
(verb ``attribute``).

Usage (notebook)::

    from circuits.attribution.analysis import ATTRIBUTE, AttributeConfig
    cfg = AttributeConfig(prompt="The city was founded in the early years of the", train_tokens=20_480)
    result = ATTRIBUTE.run(model, cfg)        # no --transcoder: trains TopK-16 transcoders for every layer first
    result.graphs["circuit"].figure().show()  # the pruned graph: tokens along x, layers up, size by influence
    result.json["graph"]                      # the same graph in circuit-tracer's graph JSON (schema version 1)
    result.objects["graph"]                   # the full AttributionGraph (adjacency, inputs, bias shares)

Targets: the most likely next tokens (``desired_logit_prob`` of the mass, at most ``max_n_logits``); with
``correct`` one token's logit; with ``correct`` and ``incorrect`` their logit difference; or ``target`` a feature id
(``tc1.f12@5``) for the graph of one feature's pre-activation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from workbench.analysis import Analysis, Config, ConfigError, Result, model_spec, option

__all__ = ["ATTRIBUTE", "AttributeConfig"]


@dataclass
class AttributeConfig(Config):
    """Options of ``workbench attribute``."""

    prompt: str | None = option(None, "the prompt text (BOS is prepended when the tokenizer has one)", lines=True)
    transcoder: list[str] | None = option(None, "transcoder folders in SAELens format (one per layer), or one folder "
                                          "in circuit-tracer's layout (config.yaml: a cross-layer transcoder or a "
                                          "transcoder set)", lines=True, path=True)
    train_tokens: int = option(0, "with no --transcoder: first train TopK-16 transcoders (4x) for every layer on this "
                                  "many wiki tokens (0: --transcoder is required)", minimum=0)
    target: str = option("logits", "'logits' (the output tokens) or a feature id like tc1.f12@5")
    correct: str | None = option(None, "attribute this token's logit (text, one token) instead of the top ones",
                                 lines=True)
    incorrect: str | None = option(None, "with --correct: attribute the logit difference correct - incorrect",
                                   lines=True)
    max_n_logits: int = option(10, "at most this many output tokens", minimum=1)
    desired_logit_prob: float = option(0.95, "output tokens until their probabilities sum to this", minimum=0,
                                       maximum=1, exclusive_minimum=True)
    node_threshold: float = option(0.8, "pruning: keep the nodes holding this fraction of the influence", minimum=0,
                                   maximum=1)
    edge_threshold: float = option(0.98, "pruning: keep the edges holding this fraction of the edge influence",
                                   minimum=0, maximum=1)
    max_feature_nodes: int = option(0, "at most this many feature nodes, the most influential (0: every active one)",
                                    minimum=0)
    batch_size: int = option(64, "target rows per backward pass", minimum=1)
    precision: Literal["float32", "float64"] = option(
        "float32", "dtype of the replacement model and the graph (the model itself loads with --dtype)")

    def validate(self) -> None:
        if self.prompt is None or not self.prompt.strip():
            raise ConfigError("give --prompt (at least one non-blank character)")
        if not self.transcoder and not self.train_tokens:
            raise ConfigError("give --transcoder FOLDER (one per layer), or --train-tokens N to train them first")
        if self.incorrect is not None and self.correct is None:
            raise ConfigError("--incorrect needs --correct (the difference correct - incorrect)")
        if self.correct is not None and self.correct == self.incorrect:
            raise ConfigError(f"--correct and --incorrect are the same token {self.correct!r}: the difference is 0")
        if self.target != "logits" and self.correct is not None:
            raise ConfigError("--correct/--incorrect choose output tokens; they do not go with a feature --target")
        _feature_id(self.target)


def _feature_id(target: str) -> tuple[int, int, int] | None:
    """(layer, position, feature) of a ``--target`` feature id, None for ``logits``; ConfigError otherwise."""
    if target == "logits":
        return None
    from workbench.nodes import NodeIdError, parse

    try:
        node = parse(target)
    except NodeIdError:
        node = None
    if node is None or node.kind != "feature" or node.dictionary not in ("tc", "clt") or node.position is None:
        raise ConfigError(f"--target {target!r}: use 'logits' or a transcoder feature at a position like 'tc1.f12@5' "
                          "(clt1.f12@5 for a cross-layer transcoder)")
    return int(node.layer), int(node.position), int(node.feature)


def _single_token(tokenizer: Any, text: str, what: str) -> int:
    from workbench.data.tokens import encode

    ids = encode(tokenizer, text)
    if len(ids) != 1:
        raise ConfigError(f"--{what} {text!r} is {len(ids)} tokens for this tokenizer; give a single token")
    return ids[0]


def _compute(model: Any, cfg: AttributeConfig, progress: bool) -> Result:
    import torch

    from circuits.attribution.attribute import (
        TargetError,
        attribute,
        feature_target,
        logit_difference,
        salient_logits,
        token_logits,
    )
    from circuits.attribution.export import to_circuit, to_graph_json
    from circuits.attribution.prune import graph_scores, prune
    from circuits.attribution.replacement import (
        FeatureSetError,
        ReplacementModel,
        feature_sets_from_clt,
        feature_sets_from_transcoders,
    )
    from circuits.dictionaries.clt_io import check_clt_fits, is_circuit_tracer_folder, load_circuit_tracer
    from circuits.dictionaries.saelens_io import check_fits
    from circuits.dictionaries.transcoder_set import transcoders_by_layer
    from circuits.frozen.facts import ModelFacts
    from workbench.data.tokens import bos_id, encode
    from workbench.limits import check_context

    tokenizer = model.tokenizer
    bos = bos_id(tokenizer)
    tokens = torch.tensor(([bos] if bos is not None else []) + encode(tokenizer, cfg.prompt))
    check_context(model, len(tokens), "the --prompt")
    correct = _single_token(tokenizer, cfg.correct, "correct") if cfg.correct is not None else None
    incorrect = _single_token(tokenizer, cfg.incorrect, "incorrect") if cfg.incorrect is not None else None
    if correct is not None and correct == incorrect:
        raise ConfigError(f"--correct and --incorrect are the same token {tokenizer.decode([correct])!r}")
    feature = _feature_id(cfg.target)
    n_layers = int(model.cfg.n_layers)
    if feature is not None and not 0 <= feature[0] < n_layers:
        raise ConfigError(f"--target {cfg.target}: layer {feature[0]} does not exist; the model has layers "
                          f"0..{n_layers - 1}")
    clt, trained_tokens = None, 0
    if cfg.transcoder and len(cfg.transcoder) == 1 and is_circuit_tracer_folder(cfg.transcoder[0]):
        loaded = load_circuit_tracer(cfg.transcoder[0], device=str(model.W_E.device))
        if isinstance(loaded, dict):
            transcoders = loaded
            for tc in transcoders.values():
                check_fits(tc, model)
        else:
            clt = loaded
            check_clt_fits(clt, model)
            transcoders = dict.fromkeys(range(clt.n_layers))
    else:
        transcoders, trained_tokens = transcoders_by_layer(model, cfg.transcoder, cfg.train_tokens, progress=progress)
    try:
        facts = ModelFacts.of(model)
        sets = feature_sets_from_clt(clt, facts) if clt is not None else feature_sets_from_transcoders(transcoders,
                                                                                                       facts)
    except FeatureSetError as err:
        raise ConfigError(f"--transcoder: {err}") from None
    dtype = getattr(torch, cfg.precision)
    rm = ReplacementModel(model, tokens, sets, dtype=dtype)
    try:
        if feature is not None:
            targets = feature_target(rm, *feature)
        elif correct is not None and incorrect is not None:
            targets = logit_difference(rm, correct, incorrect, tokenizer)
        elif correct is not None:
            targets = token_logits(rm, [correct], tokenizer)
        else:
            targets = salient_logits(rm, max_n_logits=cfg.max_n_logits, desired_logit_prob=cfg.desired_logit_prob,
                                     tokenizer=tokenizer)
    except TargetError as err:
        raise ConfigError(f"--target {cfg.target}: {err}") from None
    graph = attribute(rm, targets, batch_size=cfg.batch_size, max_feature_nodes=cfg.max_feature_nodes or None,
                      tokenizer=tokenizer, progress=progress)
    pruned = prune(graph, cfg.node_threshold, cfg.edge_threshold)
    replacement, completeness = graph_scores(graph)
    spec = model_spec(model) or "model"
    graph.metadata.update({"model": spec, "prompt": cfg.prompt})
    circuit = to_circuit(graph, pruned, name=f"attribution: {cfg.prompt[:40]}")
    graph_json = to_graph_json(graph, pruned, slug="attribution", scan=spec, d_vocab=int(model.cfg.d_vocab),
                               node_threshold=cfg.node_threshold, transcoder_list=list(cfg.transcoder or []),
                               prompt=cfg.prompt)
    nodes, edges = circuit.to_frames()
    rows = list(range(graph.n_features)) + list(range(graph.logit_start, graph.n_nodes))
    residual = (graph.inputs - graph.adjacency.sum(1) - graph.bias)[rows].abs().max()
    summary = {
        "tokens": graph.n_pos, "active_features": graph.n_active, "feature_nodes": graph.n_features,
        "nodes": len(circuit), "edges": circuit.graph.number_of_edges(),
        "graph_nodes": graph.n_nodes, "graph_edges": int((graph.adjacency != 0).sum()),
        "targets": list(graph.logit_labels), "target_probabilities": graph.logit_probabilities.tolist(),
        "replacement_score": replacement, "completeness_score": completeness,
        "kept_influence": float(pruned.influence[pruned.node_mask].sum() / pruned.influence.sum().clamp(min=1e-30)),
        "completeness_max_abs_error": float(residual), "transcoder_layers": sorted(transcoders),
        "transcoder_kind": "cross_layer_transcoder" if clt is not None else "transcoder_set",
    }
    if trained_tokens:
        summary["transcoder_tokens"] = trained_tokens
    out = Result(graphs={"circuit": circuit}, tables={"nodes": nodes, "edges": edges}, json={"graph": graph_json},
                 summary=summary, objects={"graph": graph, "pruned": pruned, "replacement_model": rm})
    out.lines = [f"{graph.n_pos} tokens, {graph.n_active} active features ({graph.n_features} attributed), targets "
                 + ", ".join(f"{t!r} ({p:.3f})" for t, p in zip(graph.logit_labels, summary["target_probabilities"],
                                                                 strict=True)),
                 f"pruned graph: {summary['nodes']} nodes, {summary['edges']} edges "
                 f"(node threshold {cfg.node_threshold}, edge threshold {cfg.edge_threshold})",
                 f"replacement score {replacement:.4f}, completeness score {completeness:.4f}"]
    if cfg.max_feature_nodes and graph.n_features < graph.n_active:
        out.warnings.append(f"{graph.n_active - graph.n_features} active features left out by --max-feature-nodes "
                            f"{cfg.max_feature_nodes}: the graph's rows are no longer complete")
    return out


def _figures(run: Any) -> dict[str, Any]:
    from workbench.circuit import Circuit

    s = run.summary
    title = (f"attribution graph (replacement {s.get('replacement_score', float('nan')):.3f}, "
             f"completeness {s.get('completeness_score', float('nan')):.3f})")
    return {"graph": Circuit.from_json(run.json("circuit")).figure(title=title)}


ATTRIBUTE = Analysis(
    kind="attribution", verb="attribute", config=AttributeConfig, compute=_compute, figures=_figures,
    help="attribution graph of one prompt over per-layer transcoders (circuit tracing); stores an attribution run",
    describe="Replace every MLP by its transcoder plus an error node, freeze attention patterns and norm scales from "
             "the clean run, compute every direct effect between features, errors, tokens and the output logits by "
             "batched backward passes, prune by influence and store the graph (also in circuit-tracer's JSON).",
    demo=AttributeConfig(prompt="The city was founded in the early years of the", train_tokens=20_480),
    demo_model="toy/llama-d64-l4")

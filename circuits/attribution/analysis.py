"""Attribution graphs behind the analysis contract (:mod:`workbench.analysis`): run kind ``attribution``
(verb ``attribute``).

Usage (notebook)::

    from circuits.attribution.analysis import ATTRIBUTE, AttributeConfig
    cfg = AttributeConfig(prompt="The city was founded in the early years of the", train_tokens=20_480)
    result = ATTRIBUTE.run(model, cfg)        # no --transcoder: trains TopK-16 transcoders for every layer first
    result.graphs["circuit"].figure().show()  # the pruned graph: tokens along x, layers up, size by influence
    result.json["graph"]                      # the same graph in circuit-tracer's graph JSON (schema version 1)
    result.objects["graph"]                   # the full AttributionGraph (adjacency, inputs, bias shares)
    result.json["features"]["features"]       # feature cards (circuit-tracer's feature JSON) of the top features

Stored run: the pruned ``circuit``, the tables, circuit-tracer's ``graph`` JSON, the full graph (tensors
``full_graph`` + JSON ``full_graph_nodes``; ``circuits.attribution.storage.load_graph(run)`` gives it back bit for
bit), the feature cards (JSON ``features``), and ``graph_files/`` (circuit-tracer's local layout: the graph JSON,
``features/<scan>/<index>.json``, ``graph-metadata.json``). Feature cards come from ``--feature-tokens`` held-out wiki
tokens (uniformly random tokens, with a warning, when the tokenizer cannot read the corpus).

Targets: the most likely next tokens (``desired_logit_prob`` of the mass, at most ``max_n_logits``); with
``correct`` one token's logit; with ``correct`` and ``incorrect`` their logit difference; or ``target`` a feature id
(``tc1.f12@5``) for the graph of one feature's pre-activation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from workbench.analysis import Analysis, Config, ConfigError, Result, model_spec, option

__all__ = ["ATTRIBUTE", "AttributeConfig"]

FEATURE_CORPUS, FEATURE_SEQ_LEN = "wiki", 64  # the feature cards' held-out text


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
    attention_head: str | None = option(None, "also split this head's attention score by source (QK attribution), "
                                              "written LAYER.HEAD like 1.0 (default off)")
    query_pos: int | None = option(None, "with --attention-head: the query position (default the last)", minimum=0)
    key_pos: int | None = option(None, "with --attention-head: the key position (default the one the head attends "
                                       "to most)", minimum=0)
    feature_files: bool = option(True, "feature cards (top contexts by activation interval, top/bottom logits, "
                                       "histogram, frequency) from held-out wiki text, stored in the run")
    feature_tokens: int = option(4096, "held-out tokens scanned for the feature cards (at most; fewer when the "
                                       "held-out text runs out)", minimum=1)
    max_feature_files: int = option(200, "feature cards for at most this many features, the most influential "
                                         "(0: every feature of the graph)", minimum=0)

    def validate(self) -> None:
        check_prompt(self)
        if self.attention_head is None and (self.query_pos is not None or self.key_pos is not None):
            raise ConfigError("--query-pos/--key-pos go with --attention-head LAYER.HEAD")
        if self.attention_head is not None:
            from circuits.attribution.attention_report import parse_head

            parse_head(self.attention_head)
        if self.incorrect is not None and self.correct is None:
            raise ConfigError("--incorrect needs --correct (the difference correct - incorrect)")
        if self.correct is not None and self.correct == self.incorrect:
            raise ConfigError(f"--correct and --incorrect are the same token {self.correct!r}: the difference is 0")
        if self.target != "logits" and self.correct is not None:
            raise ConfigError("--correct/--incorrect choose output tokens; they do not go with a feature --target")
        _feature_id(self.target)


def check_prompt(cfg: Any) -> None:
    """ConfigError for a blank --prompt, or neither --transcoder nor --train-tokens."""
    if cfg.prompt is None or not cfg.prompt.strip():
        raise ConfigError("give --prompt (at least one non-blank character)")
    if not cfg.transcoder and not cfg.train_tokens:
        raise ConfigError("give --transcoder FOLDER (one per layer), or --train-tokens N to train them first")


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


def prompt_replacement(model: Any, cfg: Any, progress: bool) -> tuple[Any, dict[int, Any], int]:
    """(ReplacementModel of ``cfg.prompt``, transcoders by layer, tokens they were trained on) for a config with
    ``prompt``, ``transcoder``, ``train_tokens`` and ``precision`` (BOS prepended when the tokenizer has one).
    ``transcoder``: SAELens folders (one per layer), or one circuit-tracer folder (a transcoder set or a cross-layer
    transcoder; the latter's layers map to None and ``rm.clt`` holds it)."""
    import torch

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

    bos = bos_id(model.tokenizer)
    tokens = torch.tensor(([bos] if bos is not None else []) + encode(model.tokenizer, cfg.prompt))
    check_context(model, len(tokens), "the --prompt")
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
    rm = ReplacementModel(model, tokens, sets, dtype=getattr(torch, cfg.precision))
    rm.clt = clt
    return rm, transcoders, trained_tokens


def _compute(model: Any, cfg: AttributeConfig, progress: bool) -> Result:
    from circuits.attribution.attribute import (
        TargetError,
        attribute,
        feature_target,
        logit_difference,
        salient_logits,
        token_logits,
    )
    from circuits.attribution.export import to_circuit, to_graph_json, write_graph_json
    from circuits.attribution.prune import graph_scores, prune
    from circuits.attribution.storage import GRAPH_JSON, GRAPH_TENSORS, graph_artifacts
    from workbench.data.tokens import bos_id

    tokenizer = model.tokenizer
    correct = _single_token(tokenizer, cfg.correct, "correct") if cfg.correct is not None else None
    incorrect = _single_token(tokenizer, cfg.incorrect, "incorrect") if cfg.incorrect is not None else None
    if correct is not None and correct == incorrect:
        raise ConfigError(f"--correct and --incorrect are the same token {tokenizer.decode([correct])!r}")
    feature = _feature_id(cfg.target)
    n_layers = int(model.cfg.n_layers)
    if feature is not None and not 0 <= feature[0] < n_layers:
        raise ConfigError(f"--target {cfg.target}: layer {feature[0]} does not exist; the model has layers "
                          f"0..{n_layers - 1}")
    rm, transcoders, trained_tokens = prompt_replacement(model, cfg, progress)
    section = None
    if cfg.attention_head is not None:  # checked before the graph's backward passes
        from circuits.attribution.attention_report import attention_section

        section = attention_section(rm, cfg.attention_head, cfg.query_pos, cfg.key_pos,
                                    [tokenizer.decode([t]) for t in rm.tokens.tolist()])
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
        "transcoder_kind": "cross_layer_transcoder" if rm.clt is not None else "transcoder_set",
    }
    if trained_tokens:
        summary["transcoder_tokens"] = trained_tokens
    graph_tensors, graph_doc = graph_artifacts(graph)
    out = Result(graphs={"circuit": circuit}, tables={"nodes": nodes, "edges": edges},
                 tensors={GRAPH_TENSORS: graph_tensors}, json={"graph": graph_json, GRAPH_JSON: graph_doc},
                 summary=summary, objects={"graph": graph, "pruned": pruned, "replacement_model": rm})
    cards: list[dict[str, Any]] | None = None
    if cfg.feature_files:
        cards = _feature_cards(model, rm, graph, pruned, cfg, bos_id(tokenizer), progress, out.warnings)
        out.json["features"] = {"corpus": FEATURE_CORPUS, "split": "heldout", "features": cards}
        summary["feature_cards"] = len(cards)
        summary["feature_tokens_scanned"] = cards[0]["n_tokens"] if cards else 0
    out.folders["graph_files"] = lambda folder: write_graph_json(folder / "attribution.json", graph_json, cards)
    out.lines = [f"{graph.n_pos} tokens, {graph.n_active} active features ({graph.n_features} attributed), targets "
                 + ", ".join(f"{t!r} ({p:.3f})" for t, p in zip(graph.logit_labels, summary["target_probabilities"],
                                                                 strict=True)),
                 f"pruned graph: {summary['nodes']} nodes, {summary['edges']} edges "
                 f"(node threshold {cfg.node_threshold}, edge threshold {cfg.edge_threshold})",
                 f"replacement score {replacement:.4f}, completeness score {completeness:.4f}"]
    if section is not None:
        table, data, extra, line = section
        out.tables["attention"], out.json["attention"] = table, data
        out.summary.update(extra)
        out.lines.append(line)
    if cfg.max_feature_nodes and graph.n_features < graph.n_active:
        out.warnings.append(f"{graph.n_active - graph.n_features} active features left out by --max-feature-nodes "
                            f"{cfg.max_feature_nodes}: the graph's rows are no longer complete")
    return out


def _feature_cards(model: Any, rm: Any, graph: Any, pruned: Any, cfg: AttributeConfig, bos: int | None,
                   progress: bool, warnings_out: list[str]) -> list[dict[str, Any]]:
    """Feature cards for the graph's most influential features (``--max-feature-files``) from held-out text."""
    import warnings

    from circuits.attribution.features import feature_cards

    best: dict[tuple[int, int], float] = {}
    for (layer, _, feat), infl in zip(graph.features.tolist(), pruned.influence[:graph.n_features].tolist(),
                                      strict=True):
        best[(layer, feat)] = max(best.get((layer, feat), 0.0), infl)
    chosen = sorted(best, key=lambda key: -best[key])
    chosen = chosen[:cfg.max_feature_files] if cfg.max_feature_files else chosen
    from circuits.dictionaries.buffer import UnreadableCorpusWarning, corpus_source, random_source

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = corpus_source(model.tokenizer, FEATURE_CORPUS, seq_len=FEATURE_SEQ_LEN, batch_size=16,
                               split="heldout", max_tokens=cfg.feature_tokens)
    if any(issubclass(w.category, UnreadableCorpusWarning) for w in caught):
        rows = -(-cfg.feature_tokens // FEATURE_SEQ_LEN)
        source = random_source(int(model.cfg.d_vocab), seq_len=FEATURE_SEQ_LEN, batch_size=min(16, rows),
                               n_batches=-(-rows // 16), seed=0, bos_id=bos)
        warnings_out.append(f"feature cards: the tokenizer does not read the {FEATURE_CORPUS} corpus (mostly its "
                            "unknown token); the cards were computed on uniformly random tokens instead")
    else:
        warnings_out.extend(f"feature cards: {w.message}" for w in caught)
    bias = {} if rm.w.rms else {layer: rm.w.ln2_b[layer] for layer in rm.sets}
    cards = feature_cards(model, rm.sets, sorted(chosen), source, max_tokens=cfg.feature_tokens,
                          exclude_tokens=[bos] if bos is not None else [], input_bias=bias, progress=progress,
                          device=str(rm.device))
    if cards and not cards[0]["n_tokens"]:
        warnings_out.append("feature cards: no token was scanned (every held-out token is the BOS); the cards are empty")
    return cards


def _figures(run: Any) -> dict[str, Any]:
    from workbench.circuit import Circuit

    s = run.summary
    title = (f"attribution graph (replacement {s.get('replacement_score', float('nan')):.3f}, "
             f"completeness {s.get('completeness_score', float('nan')):.3f})")
    figures = {"graph": Circuit.from_json(run.json("circuit")).figure(title=title)}
    if "attention" in run.names("json"):
        from circuits.attribution.attention_report import attention_figure

        figures["attention"] = attention_figure(run.json("attention"))
    return figures


ATTRIBUTE = Analysis(
    kind="attribution", verb="attribute", config=AttributeConfig, compute=_compute, figures=_figures,
    help="attribution graph of one prompt over per-layer transcoders (circuit tracing); stores an attribution run",
    describe="Replace every MLP by its transcoder plus an error node, freeze attention patterns and norm scales from "
             "the clean run, compute every direct effect between features, errors, tokens and the output logits by "
             "batched backward passes, prune by influence and store the graph (also in circuit-tracer's JSON).",
    demo=AttributeConfig(prompt="The city was founded in the early years of the", train_tokens=20_480),
    demo_model="toy/llama-d64-l4")

"""Attribution graphs (circuit tracing) over transcoders: the frozen replacement model of one prompt, direct-effect
edges by batched backward passes, influence pruning, the replacement and completeness scores, and export as a
:class:`workbench.circuit.Circuit` or circuit-tracer's graph JSON.

- :mod:`~circuits.attribution.replacement`: ``ReplacementModel``, ``FeatureSet``, ``feature_sets_from_transcoders``;
- :mod:`~circuits.attribution.attribute`: ``attribute`` and the targets (``salient_logits``, ``logit_difference``, ...);
- :mod:`~circuits.attribution.graph`: ``AttributionGraph``;
- :mod:`~circuits.attribution.prune`: ``prune``, ``node_influence``, ``edge_influence``, ``graph_scores``;
- :mod:`~circuits.attribution.export`: ``to_circuit``, ``to_graph_json``, ``write_graph_json``;
- :mod:`~circuits.attribution.interventions`, :mod:`~circuits.attribution.rerun`,
  :mod:`~circuits.attribution.predict`, :mod:`~circuits.attribution.intervene`: ``intervene`` (set, scale or zero
  features; rerun the linearised replacement or the spliced model; the graph's predicted change, sign agreement);
- :mod:`~circuits.attribution.attention`: ``qk_attribution`` (one head's score split by query and key source);
- :mod:`~circuits.attribution.analysis`: ``ATTRIBUTE`` behind the analysis contract
  (:mod:`~circuits.attribution.intervene_analysis`: ``INTERVENE``).
- :mod:`~circuits.attribution.export`: ``to_circuit``, ``to_graph_json``, ``write_graph_json`` (with feature files);
- :mod:`~circuits.attribution.storage`: the full graph in the store, ``load_graph(run)``;
- :mod:`~circuits.attribution.features`: ``feature_cards`` (circuit-tracer's feature JSON from held-out text);
- :mod:`~circuits.attribution.explore`, :mod:`~circuits.attribution.cards`: the Graph explorer page's computations;
- :mod:`~circuits.attribution.analysis`: ``ATTRIBUTE`` behind the analysis contract.
"""

"""Weights-based circuit analysis through transcoders (METHODS.md section 1): frozen clean run, direct contributions,
greedy path search from a target, and the resulting :class:`workbench.circuit.Circuit` with error nodes.

One call: ``tc_circuit(model, tokens, {layer: transcoder}, "logit", correct=a, incorrect=b)``; behind the contract:
``TC_CIRCUIT.run(model, TcCircuitConfig(prompt=..., transcoder=[...]))``.

Names are imported on first use (importing the package costs nothing).
"""

from workbench.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "State": "circuits.transcoder_paths.contributions",
    "Target": "circuits.transcoder_paths.contributions",
    "de_embedding": "circuits.transcoder_paths.contributions",
    "direct_contributions": "circuits.transcoder_paths.contributions",
    "feature_pullback": "circuits.transcoder_paths.contributions",
    "feature_target": "circuits.transcoder_paths.contributions",
    "head_contributions": "circuits.transcoder_paths.contributions",
    "head_state": "circuits.transcoder_paths.contributions",
    "logit_target": "circuits.transcoder_paths.contributions",
    "state_value": "circuits.transcoder_paths.contributions",
    "FrozenRun": "circuits.transcoder_paths.frozen",
    "TranscoderSetError": "circuits.transcoder_paths.frozen",
    "freeze": "circuits.transcoder_paths.frozen",
    "freeze_with_transcoders": "circuits.transcoder_paths.frozen",
    "spliced_logits": "circuits.transcoder_paths.frozen",
    "circuit_from_paths": "circuits.transcoder_paths.graph",
    "TcCircuitResult": "circuits.transcoder_paths.circuit",
    "make_target": "circuits.transcoder_paths.circuit",
    "metric_clean_vs_spliced": "circuits.transcoder_paths.circuit",
    "tc_circuit": "circuits.transcoder_paths.circuit",
    "Path": "circuits.transcoder_paths.search",
    "Step": "circuits.transcoder_paths.search",
    "paths_table": "circuits.transcoder_paths.search",
    "search_paths": "circuits.transcoder_paths.search",
    "TC_CIRCUIT": "circuits.transcoder_paths.analysis",
    "TcCircuitConfig": "circuits.transcoder_paths.analysis",
})

"""Weights-based circuit analysis through transcoders (METHODS.md section 1): frozen clean run, direct contributions,
greedy path search from a target, and the resulting :class:`circuits.graph.Circuit` with error nodes.

One call: ``tc_circuit(model, tokens, {layer: transcoder}, "logit", correct=a, incorrect=b)``.
"""

from circuits.transcoder_paths.contributions import (
    State,
    Target,
    de_embedding,
    direct_contributions,
    feature_pullback,
    feature_target,
    head_contributions,
    head_state,
    logit_target,
    state_value,
)
from circuits.transcoder_paths.frozen import FrozenRun, TranscoderSetError, freeze, spliced_logits
from circuits.transcoder_paths.graph import circuit_from_paths
from circuits.transcoder_paths.runs import (
    TcCircuitResult,
    make_target,
    metric_clean_vs_spliced,
    save_tc_circuit,
    tc_circuit,
)
from circuits.transcoder_paths.search import Path, Step, paths_table, search_paths

__all__ = [
    "FrozenRun", "Path", "State", "Step", "Target", "TcCircuitResult", "TranscoderSetError", "circuit_from_paths",
    "de_embedding", "direct_contributions", "feature_pullback", "feature_target", "freeze", "head_contributions",
    "head_state", "logit_target", "make_target", "metric_clean_vs_spliced", "paths_table", "save_tc_circuit",
    "search_paths", "spliced_logits", "state_value", "tc_circuit",
]

"""Weights-based circuit analysis through transcoders (METHODS.md section 1): frozen clean run, direct contributions,
greedy path search from a target, and the resulting :class:`circuits.graph.Circuit` with error nodes."""

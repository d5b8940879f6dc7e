"""Circuit analyses and their common graph type (:class:`workbench.circuit.Circuit`)."""

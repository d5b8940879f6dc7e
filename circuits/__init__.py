"""Circuit analyses and their common graph type (:class:`circuits.graph.Circuit`)."""

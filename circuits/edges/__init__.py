"""Edge-level circuits: the component edge graph, the edge-masked forward, and EAP, EAP-IG and ACDC.

- :mod:`~circuits.edges.graph`: ``EdgeGraph.of(model)``, senders, receivers and edge ids ``"emb->L0.H1"``;
- :mod:`~circuits.edges.forward`: ``edge_forward`` (each receiver's input mixed per edge from this run and the
  ablated run), ``ablated_outputs``;
- :mod:`~circuits.edges.metrics`: the task metric in any dtype and the KL divergence to the clean run;
- :mod:`~circuits.edges.methods`: ``eap``, ``eap_ig``, ``acdc``, ``edge_faithfulness``, ``EdgeScores``;
- :mod:`~circuits.edges.analysis`: ``EDGES``, behind the analysis contract (``workbench edges``).
"""

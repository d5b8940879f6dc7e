"""Statistics read from activations: activation sparsity, massive activations, linear probes."""

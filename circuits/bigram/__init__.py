"""Bigram subnetworks (Chang & Bergen 2025): weight masks trained by continuous sparsification so that the masked
model predicts the bigram distribution of the current token.

- :mod:`~circuits.bigram.counts`: ``BigramCounter``, ``BigramTable`` (sparse counts, smoothed rows, cross-entropy);
- :mod:`~circuits.bigram.masks`: ``find_groups`` (the masked weight matrices), ``masked_logits``;
- :mod:`~circuits.bigram.train`: ``train_masks`` (resumable), ``hard_masks``;
- :mod:`~circuits.bigram.evaluate`: ``evaluate_masks`` (bigram CE/KL, correlation, LM loss), ``random_like``;
- :mod:`~circuits.bigram.analysis`: ``BIGRAM`` behind the analysis contract (``workbench bigram``).
"""

"""Feature views in the library: top contexts can leave BOS out, and a latent's contexts render as HTML."""

from __future__ import annotations

import pandas as pd
import torch

from circuits.dictionaries.buffer import random_source
from circuits.dictionaries.features import feature_tables, top_contexts
from circuits.dictionaries.figures import contexts_html
from circuits.dictionaries.model import Dictionary


def test_top_contexts_leave_the_excluded_tokens_out(tiny_llama):
    d = Dictionary.create("sae", 32, 48, activation="relu", hook_in="blocks.0.hook_resid_post", seed=3)
    with torch.no_grad():
        d.b_enc.fill_(0.3)
    src = random_source(65, seq_len=12, batch_size=4, n_batches=2, seed=1, bos_id=64)
    everything = top_contexts(tiny_llama, d, src, k=4, before=2, after=1, progress=False)
    top_token = int(everything.windows[0, 0, 2])  # the centre token of latent 0's strongest context
    assert top_token >= 0
    skipped = top_contexts(tiny_llama, d, src, k=4, before=2, after=1, progress=False, exclude_tokens=[top_token])
    live = skipped.values > 0
    assert live.any() and not (skipped.windows[:, :, 2][live] == top_token).any()
    assert torch.equal(skipped.hist, everything.hist)  # the histograms still count every token

    latents, contexts = feature_tables(tiny_llama, d, skipped, tokenizer=tiny_llama.tokenizer)
    html = contexts_html(contexts, latent=0)
    assert html.count("<mark") == min(4, int(live[:, 0].sum())) and "<div>" in html
    assert "not active" in contexts_html(pd.DataFrame(columns=contexts.columns), latent=0)

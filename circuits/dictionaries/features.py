"""Feature views: top-activating contexts (streamed top-k), activation histograms, logit effects, de-embeddings.

- :func:`top_contexts` streams token batches through the model and keeps, per latent, the ``k`` largest activations
  with a window of token ids around each (the activating token at index ``before`` of the window); memory is
  ``k * d_sae * window`` ids whatever the token count. It also fills a per-latent histogram of the nonzero
  activations on fixed log-spaced bins.
- :func:`logit_effects`: ``W_dec @ W_U`` [d_sae, vocab] (the direct effect of a unit activation on the logits,
  final norm ignored), top promoted and suppressed tokens. Meaningful when ``hook_out`` writes to the residual stream.
- :func:`de_embeddings`: ``W_E @ W_enc`` [vocab, d_sae] (METHODS.md), the tokens that most excite a latent directly
  through the embedding (input norm ignored); meaningful for early layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from circuits.dictionaries.buffer import TokenSource
from circuits.dictionaries.model import Dictionary
from workbench.harvest import _as_batch

#: log10 bin edges of the activation histograms (activations below the first edge fall in the first bin)
HIST_EDGES = torch.linspace(-3.0, 3.0, 49)


@dataclass
class TopContexts:
    """values [k, d_sae] (descending, 0 where fewer than k activations), windows [k, d_sae, before + 1 + after] token
    ids (-1 outside the text), hist [d_sae, len(HIST_EDGES) - 1] counts of nonzero activations by log10 bin,
    tokens: tokens scanned."""

    values: torch.Tensor
    windows: torch.Tensor
    hist: torch.Tensor
    before: int
    after: int
    tokens: int


@torch.no_grad()
def top_contexts(
    model, d: Dictionary, source: TokenSource, *, k: int = 10, before: int = 8, after: int = 3,
    max_tokens: int | None = None, progress: bool = True, device: str | None = None,
    exclude_tokens: Sequence[int] = (),
) -> TopContexts:
    """Stream ``source`` and keep the top-``k`` activating tokens of every latent, with their contexts.

    ``exclude_tokens``: token ids whose activations never make a top context (e.g. BOS, on which the strongest
    latents of many models fire); they still count in the histograms.

    ``k`` >= 1, ``before`` and ``after`` >= 0, ``max_tokens`` None (the whole source) or >= 1 (ValueError naming
    the option otherwise)."""
    for name, value, lo in (("k", k, 1), ("before", before, 0), ("after", after, 0), ("max_tokens", max_tokens, 1)):
        if value is None and name == "max_tokens":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"top_contexts: {name} must be an integer >= {lo}, got {value!r}")
    device = device or str(getattr(model.cfg, "device", "cpu"))
    width = before + 1 + after
    values = torch.zeros(k, d.d_sae)
    windows = torch.full((k, d.d_sae, width), -1, dtype=torch.long)
    nb = len(HIST_EDGES) - 1
    hist = torch.zeros(d.d_sae, nb, dtype=torch.long)
    seen = 0
    bar = tqdm(total=max_tokens, desc="top-contexts", unit="tok", disable=not progress)
    for batch in source():
        tokens, mask = (t.to(device) for t in _as_batch(batch))
        _, cache = model.run_with_cache(tokens, names_filter=[d.hook_in], stop_at_layer=_stop_layer(d.hook_in))
        z = d.to(device).encode(cache[d.hook_in]).float().cpu() * mask.cpu()[..., None]
        B, S, _ = z.shape
        flat = z.reshape(B * S, d.d_sae)
        nz = flat[flat > 0]
        cols = (flat > 0).nonzero()[:, 1]
        bins = torch.bucketize(nz.log10(), HIST_EDGES[1:-1])
        hist.view(-1).index_add_(0, cols * nb + bins, torch.ones_like(bins))
        kk = min(k, B * S)
        ranked = flat
        if exclude_tokens:
            skip = torch.isin(tokens.cpu().reshape(-1), torch.tensor(list(exclude_tokens)))
            ranked = flat.masked_fill(skip[:, None], 0.0)
        bv, bi = ranked.topk(kk, dim=0)  # [kk, d_sae]
        padded = torch.nn.functional.pad(tokens.cpu(), (before, after), value=-1)
        padded = torch.where(torch.nn.functional.pad(mask.cpu(), (before, after)) > 0, padded, -1)
        rows, pos = bi // S, bi % S
        offs = torch.arange(width)
        bw = padded[rows[..., None], pos[..., None] + offs]  # [kk, d_sae, width]
        allv = torch.cat([values, bv])
        allw = torch.cat([windows, bw])
        values, order = allv.topk(k, dim=0)
        windows = allw.gather(0, order[..., None].expand(-1, -1, width))
        real = int(mask.sum())
        seen += real
        bar.update(real)
        if max_tokens is not None and seen >= max_tokens:
            break
    bar.close()
    windows[values <= 0] = -1
    return TopContexts(values=values, windows=windows, hist=hist, before=before, after=after, tokens=seen)


def _stop_layer(hook: str) -> int | None:
    import re

    m = re.match(r"blocks\.(\d+)\.", hook)
    return int(m.group(1)) + 1 if m else None


def _unembed(model) -> torch.Tensor:
    return model.W_U.detach().float().cpu()


def logit_effects(model, d: Dictionary, k: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top promoted and suppressed tokens per latent through ``W_dec @ W_U``:
    (top_values [d_sae, k], top_ids [d_sae, k], bottom_values [d_sae, k], bottom_ids [d_sae, k])."""
    w_u = _unembed(model)
    if w_u.shape[0] != d.d_out:
        raise ValueError(f"logit effects need d_out == d_model ({w_u.shape[0]}); this dictionary writes {d.d_out}")
    eff = d.W_dec.detach().float().cpu() @ w_u
    top = eff.topk(k, dim=-1)
    bottom = eff.topk(k, dim=-1, largest=False)
    return top.values, top.indices, bottom.values, bottom.indices


def de_embeddings(model, d: Dictionary, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens whose embeddings most excite each latent, ``W_E @ W_enc``: (values [d_sae, k], ids [d_sae, k])."""
    w_e = model.W_E.detach().float().cpu()
    if w_e.shape[1] != d.d_in:
        raise ValueError(f"de-embeddings need d_in == d_model ({w_e.shape[1]}); this dictionary reads {d.d_in}")
    top = (w_e @ d.W_enc.detach().float().cpu()).t().topk(k, dim=-1)
    return top.values, top.indices


def _decode(tokenizer, ids) -> list[str]:
    return [tokenizer.decode([int(i)]) if tokenizer is not None else str(int(i)) for i in ids]


def feature_tables(
    model, d: Dictionary, ctx: TopContexts, frequencies: torch.Tensor | None = None, tokenizer=None, k: int = 8,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two tables for browsing: ``latents`` (one row per latent: latent, frequency, max_activation, promoted,
    suppressed, de_embedding token strings) and ``contexts`` (latent, rank, activation, tokens (strings of the window),
    highlight (index of the activating token)); empty windows are left out."""
    rows = {"latent": list(range(d.d_sae)), "max_activation": ctx.values[0].tolist()}
    if frequencies is not None:
        rows["frequency"] = frequencies.float().tolist()
    try:
        _, top_i, _, bot_i = logit_effects(model, d, k)
        rows["promoted"] = [_decode(tokenizer, r) for r in top_i]
        rows["suppressed"] = [_decode(tokenizer, r) for r in bot_i]
    except ValueError:
        pass
    try:
        _, de_i = de_embeddings(model, d, k)
        rows["de_embedding"] = [_decode(tokenizer, r) for r in de_i]
    except ValueError:
        pass
    latents = pd.DataFrame(rows)
    vocab_cache: dict[int, str] = {}
    recs = []
    for rank, lat in (ctx.values > 0).nonzero().tolist():
        ids = ctx.windows[rank, lat].tolist()
        toks = []
        for i in ids:
            if i < 0:
                continue
            if i not in vocab_cache:
                vocab_cache[i] = _decode(tokenizer, [i])[0]
            toks.append(vocab_cache[i])
        lead = sum(1 for i in ids[: ctx.before] if i < 0)
        recs.append({"latent": lat, "rank": rank, "activation": float(ctx.values[rank, lat]), "tokens": toks,
                     "highlight": ctx.before - lead})
    contexts = pd.DataFrame(recs, columns=["latent", "rank", "activation", "tokens", "highlight"])
    return latents, contexts

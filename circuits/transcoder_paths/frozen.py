"""The clean run, frozen: attention patterns, norm scales and every sublayer output of one prompt.

With these frozen, everything a target reads from the residual stream is a linear function of the sublayer outputs
(METHODS.md section 1): a norm divides by the clean run's scale (LayerNorm also centres, a linear projection), an
attention head mixes source positions with the clean pattern, and a transcoder layer's MLP output is split into its
features, its decoder bias, its skip term and an explicit error node ``mlp_out - transcoder(ln2_normalized)``,
so the sum of the parts is the real MLP output and the model's forward is unchanged.

The analysis needs a model whose norms carry no weight of their own (the workbench's compatibility mode folds them
into the next linear map); :func:`freeze` checks this and refuses other models with a clear message.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from circuits.dictionaries.model import Dictionary

__all__ = ["FrozenRun", "TranscoderSetError", "freeze", "spliced_logits"]


class TranscoderSetError(ValueError):
    """The transcoders given do not fit the model (kind, hooks, widths or layer numbers)."""


def _bias(model, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A stacked bias of the model, or zeros of ``shape`` where the model has none."""
    try:
        value = getattr(model, name)
    except AttributeError:
        value = None
    if value is None:
        return torch.zeros(shape, device=model.W_E.device)
    return value.detach()


@dataclass
class FrozenRun:
    """One prompt's clean run with its frozen quantities (in the ``dtype`` given to :func:`freeze`, on the model's device).

    tokens [seq]; embed [seq, d] (token plus learned position embedding); centered: LayerNorm (True) or RMSNorm.
    ln1 / ln2: normalized inputs of attention / MLP [L, seq, d] and their scales [L, seq]; pattern [L, H, seq, seq];
    attn_out / mlp_out [L, seq, d]; final_scale [seq]; logits [seq, vocab].
    Weights: W_V [L, H_kv, d, d_head], b_V [L, H_kv, d_head], W_O [L, H, d_head, d], b_O [L, d], W_U [d, vocab],
    b_U [vocab]; n_rep query heads share one key-value head (head h reads kv head h // n_rep).
    transcoders: layer -> Dictionary; z: layer -> latent activations [seq, d_sae]; error: layer -> [seq, d]
    (``mlp_out - transcoder output``).
    """

    tokens: torch.Tensor
    embed: torch.Tensor
    centered: bool
    ln1: torch.Tensor
    ln1_scale: torch.Tensor
    ln2: torch.Tensor
    ln2_scale: torch.Tensor
    pattern: torch.Tensor
    attn_out: torch.Tensor
    mlp_out: torch.Tensor
    final_scale: torch.Tensor
    logits: torch.Tensor
    W_V: torch.Tensor
    b_V: torch.Tensor
    W_O: torch.Tensor
    b_O: torch.Tensor
    W_U: torch.Tensor
    b_U: torch.Tensor
    n_rep: int
    bos_id: int | None = None
    transcoders: dict[int, Dictionary] = field(default_factory=dict)
    z: dict[int, torch.Tensor] = field(default_factory=dict)
    error: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.pattern.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.pattern.shape[1])

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[0])

    def center(self, v: torch.Tensor) -> torch.Tensor:
        """The norm's centring projection applied to ``v`` [..., d] (identity for RMSNorm; P = P^T)."""
        return v - v.mean(-1, keepdim=True) if self.centered else v

    def transcoder_output(self, layer: int) -> torch.Tensor:
        """The transcoder's output at ``layer`` [seq, d] (features + decoder bias + skip term)."""
        tc = self.transcoders[layer]
        return tc.decode(self.z[layer], self.ln2[layer] if tc.W_skip is not None else None)


def _check_transcoders(model, transcoders: Mapping[int, Dictionary]) -> dict[int, Dictionary]:
    out: dict[int, Dictionary] = {}
    n_layers, d_model = model.cfg.n_layers, model.cfg.d_model
    for layer, tc in transcoders.items():
        if not isinstance(layer, int) or not 0 <= layer < n_layers:
            raise TranscoderSetError(f"transcoder layer {layer!r} is not a layer of this model (0..{n_layers - 1})")
        if not isinstance(tc, Dictionary) or tc.kind not in ("transcoder", "skip_transcoder"):
            raise TranscoderSetError(
                f"layer {layer}: expected a transcoder or skip transcoder Dictionary, got "
                f"{getattr(tc, 'kind', type(tc).__name__)!r}"
            )
        want_in, want_out = f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
        if tc.hook_in != want_in or tc.hook_out != want_out:
            raise TranscoderSetError(
                f"layer {layer}: the transcoder maps {tc.hook_in} -> {tc.hook_out}; accepted: {want_in} -> {want_out}"
            )
        if tc.d_in != d_model or tc.d_out != d_model:
            raise TranscoderSetError(f"layer {layer}: transcoder widths {tc.d_in} -> {tc.d_out}, model d_model {d_model}")
        out[layer] = tc
    return out


def _as_prompt(tokens: torch.Tensor) -> torch.Tensor:
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 2 and tokens.shape[0] == 1:
        tokens = tokens[0]
    if tokens.ndim != 1 or tokens.numel() == 0 or tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"expected one prompt's token ids [seq] or [1, seq], got {tuple(tokens.shape)} {tokens.dtype}")
    return tokens.long()


@torch.no_grad()
def freeze(
    model, tokens: torch.Tensor, transcoders: Mapping[int, Dictionary] | None = None, *, dtype: torch.dtype = torch.float64
) -> FrozenRun:
    """Run ``model`` once on one prompt (tokens [seq] or [1, seq]) and freeze what the linear analysis needs.

    ``transcoders`` maps layer -> transcoder of that layer's MLP (``blocks.L.ln2.hook_normalized`` ->
    ``blocks.L.hook_mlp_out``); their latents and error nodes are computed from the clean run (on copies in ``dtype``).
    Everything frozen is kept in ``dtype`` (float64 by default, so that sums of many contributions stay exact).
    """
    transcoders = _check_transcoders(model, dict(transcoders or {}))
    tokens = _as_prompt(tokens).to(model.W_E.device)
    L = model.cfg.n_layers
    names = {"hook_embed", "hook_pos_embed", "ln_final.hook_scale", "ln_final.hook_normalized", "ln_final.hook_out"}
    per_layer = ("ln1.hook_normalized", "ln1.hook_scale", "ln1.hook_out", "ln2.hook_normalized", "ln2.hook_scale",
                 "ln2.hook_out", "attn.hook_pattern", "hook_attn_out", "hook_mlp_out")
    names |= {f"blocks.{b}.{n}" for b in range(L) for n in per_layer}
    logits, cache = model.run_with_cache(tokens[None], names_filter=lambda n: n in names)
    for key in [f"blocks.{b}.ln{i}" for b in range(L) for i in (1, 2)] + ["ln_final"]:
        if not torch.allclose(cache[f"{key}.hook_out"], cache[f"{key}.hook_normalized"], atol=1e-6, rtol=1e-5):
            raise ValueError(
                f"{key} applies its own weight or bias; the weights-based analysis needs norms folded into the next "
                "linear map (load the model with workbench.models.load_model, which enables compatibility mode)"
            )

    def stack(name: str) -> torch.Tensor:
        return torch.stack([cache[f"blocks.{b}.{name}"][0] for b in range(L)]).to(dtype)

    embed = cache["hook_embed"][0] + (cache["hook_pos_embed"][0] if "hook_pos_embed" in cache else 0)
    n_heads, d_model = model.cfg.n_heads, model.cfg.d_model
    W_V = model.W_V.detach().to(dtype)
    bos = getattr(model.cfg, "bos_token_id", None)
    if bos is None and getattr(model, "tokenizer", None) is not None:
        bos = model.tokenizer.bos_token_id
    run = FrozenRun(
        tokens=tokens,
        embed=embed.to(dtype),
        centered=str(model.cfg.normalization_type).startswith("LN"),
        ln1=stack("ln1.hook_normalized"),
        ln1_scale=stack("ln1.hook_scale")[..., 0],
        ln2=stack("ln2.hook_normalized"),
        ln2_scale=stack("ln2.hook_scale")[..., 0],
        pattern=stack("attn.hook_pattern"),
        attn_out=stack("hook_attn_out"),
        mlp_out=stack("hook_mlp_out"),
        final_scale=cache["ln_final.hook_scale"][0, :, 0].to(dtype),
        logits=logits[0].to(dtype),
        W_V=W_V,
        b_V=_bias(model, "b_V", tuple(W_V.shape[:2]) + (W_V.shape[-1],)).to(dtype),
        W_O=model.W_O.detach().to(dtype),
        b_O=_bias(model, "b_O", (L, d_model)).to(dtype),
        W_U=model.W_U.detach().to(dtype),
        b_U=_bias(model, "b_U", (model.W_U.shape[1],)).to(dtype),
        n_rep=n_heads // W_V.shape[1],
        bos_id=None if bos is None else int(bos),
        transcoders=transcoders,
    )
    for layer, tc in transcoders.items():
        tc = copy.deepcopy(tc).to(device=run.ln2.device, dtype=dtype).requires_grad_(False)
        run.transcoders[layer] = tc
        run.z[layer] = tc.encode(run.ln2[layer]).to(dtype)
        run.error[layer] = run.mlp_out[layer] - run.transcoder_output(layer)
    return run


@torch.no_grad()
def spliced_logits(model, tokens: torch.Tensor, transcoders: Mapping[int, Dictionary]) -> torch.Tensor:
    """Logits [batch, seq, vocab] of ``model`` on tokens [batch, seq] with each given layer's MLP output replaced
    by its transcoder's output (read from ``blocks.L.ln2.hook_normalized``)."""
    device = model.W_E.device
    transcoders = {
        layer: tc if tc.W_enc.device == device else copy.deepcopy(tc).to(device)
        for layer, tc in _check_transcoders(model, dict(transcoders)).items()
    }
    inputs: dict[int, torch.Tensor] = {}

    def save_input(layer: int):
        def hook(x, hook):  # noqa: ANN001, ANN202
            inputs[layer] = x
            return x

        return hook

    def replace(layer: int):
        def hook(out, hook):  # noqa: ANN001, ANN202
            tc = transcoders[layer]
            x = inputs[layer].to(tc.W_enc.dtype)
            return tc(x)[0].to(out.dtype)

        return hook

    hooks = []
    for layer in transcoders:
        hooks.append((f"blocks.{layer}.ln2.hook_normalized", save_input(layer)))
        hooks.append((f"blocks.{layer}.hook_mlp_out", replace(layer)))
    with model.hooks(fwd_hooks=hooks):
        return model(torch.as_tensor(tokens).to(model.W_E.device), return_type="logits")

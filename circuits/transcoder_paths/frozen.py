"""The clean run, frozen: attention patterns, norm scales and every sublayer output of one prompt.

With these frozen, everything a target reads from the residual stream is a linear function of the sublayer outputs
(METHODS.md section 1): a norm divides by the clean run's scale (LayerNorm also centres, a linear projection), an
attention head mixes source positions with the clean pattern, and a transcoder layer's MLP output is split into its
features, its decoder bias, its skip term and an explicit error node ``mlp_out - transcoder(ln2_normalized)``,
so the sum of the parts is the real MLP output and the model's forward is unchanged.

The analysis needs a model whose norms carry no weight of their own (the workbench's compatibility mode folds them
into the next linear map); :func:`freeze_with_transcoders` checks this and refuses other models with a clear message.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from circuits.dictionaries.model import Dictionary
from circuits.frozen.clean import capture
from circuits.frozen.facts import ModelFacts
from circuits.frozen.weights import model_weights

__all__ = ["FrozenRun", "TranscoderSetError", "freeze", "freeze_with_transcoders", "spliced_logits"]


class TranscoderSetError(ValueError):
    """The transcoders given do not fit the model (kind, hooks, widths or layer numbers)."""


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
    facts = ModelFacts.of(model)
    n_layers, d_model = facts.n_layers, facts.d_model
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
def freeze_with_transcoders(
    model, tokens: torch.Tensor, transcoders: Mapping[int, Dictionary] | None = None, *, dtype: torch.dtype = torch.float64
) -> FrozenRun:
    """Run ``model`` once on one prompt (tokens [seq] or [1, seq]) and freeze what the linear analysis needs.

    ``transcoders`` maps layer -> transcoder of that layer's MLP (``blocks.L.ln2.hook_normalized`` ->
    ``blocks.L.hook_mlp_out``); their latents and error nodes are computed from the clean run (on copies in ``dtype``).
    The clean run is :func:`circuits.frozen.clean.capture` of the model's weights in ``dtype`` (float64 by default,
    so that sums of many contributions stay exact).
    """
    transcoders = _check_transcoders(model, dict(transcoders or {}))
    tokens = _as_prompt(tokens).to(model.W_E.device)
    facts = ModelFacts.of(model)
    if not facts.has_mlp:
        raise TranscoderSetError("transcoder circuits need MLP blocks; this model is attention-only")
    clean = capture(model, tokens, dtype, method="transcoder circuits")
    w = model_weights(model, dtype)
    for key, weight, bias in [*((f"blocks.{b}.ln{i}", getattr(w, f"ln{i}_w")[b], getattr(w, f"ln{i}_b")[b])
                                for b in range(facts.n_layers) for i in (1, 2)), ("ln_final", w.lnf_w, w.lnf_b)]:
        if not (torch.allclose(weight, torch.ones_like(weight), atol=1e-6, rtol=0) and bool((bias == 0).all())):
            raise ValueError(
                f"{key} applies its own weight or bias; the weights-based analysis needs norms folded into the next "
                "linear map (load the model with workbench.models.load_model, which enables compatibility mode)"
            )

    def stack(name: str) -> torch.Tensor:
        return clean.stack(name)[:, 0]

    run = FrozenRun(
        tokens=tokens,
        embed=clean.embed[0],
        centered=facts.centered,
        ln1=stack("normed1"),
        ln1_scale=1 / stack("scale1")[..., 0],
        ln2=stack("normed2"),
        ln2_scale=1 / stack("scale2")[..., 0],
        pattern=stack("pattern"),
        attn_out=stack("attn_out"),
        mlp_out=stack("mlp_out"),
        final_scale=1 / clean.final_scale[0, :, 0],
        logits=clean.logits[0],
        W_V=w.W_V,
        b_V=w.b_V,
        W_O=w.W_O,
        b_O=w.b_O,
        W_U=w.W_U,
        b_U=w.b_U,
        n_rep=facts.n_rep,
        bos_id=facts.bos_id,
        transcoders=transcoders,
    )
    for layer, tc in transcoders.items():
        tc = copy.deepcopy(tc).to(device=run.ln2.device, dtype=dtype).requires_grad_(False)
        run.transcoders[layer] = tc
        run.z[layer] = tc.encode(run.ln2[layer]).to(dtype)
        run.error[layer] = run.mlp_out[layer] - run.transcoder_output(layer)
    return run


freeze = freeze_with_transcoders  # the name the transcoder analyses have always used


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

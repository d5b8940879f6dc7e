"""The local replacement model of one prompt: MLPs replaced by transcoder features, attention and norms frozen.

For one prompt the clean run (:func:`circuits.frozen.clean.capture`) fixes every attention pattern and every norm's
scale. With those frozen, and with each MLP output written as

    mlp_out[m, t] = sum over feature sets s writing to m of  sum_f a[s, t, f] * W_dec[s -> m][f]
                    + b_dec[m] + W_skip-term (a skip transcoder's x @ W_skip, linear in the MLP input) + err[m, t]

(``err`` = the true MLP output minus the transcoders' output, one error node per layer and position), the model is
an affine map from its source nodes (feature activations ``a``, error vectors, token embeddings) to every MLP input
and to the final norm's output. :meth:`ReplacementModel.run` evaluates that map for any values of the sources; at
the clean values it reproduces the clean run, logits included, exactly (up to float rounding).

A :class:`FeatureSet` is "the features of one layer, read from that layer's MLP input, whose decoders write to one
or more MLP outputs": a per-layer transcoder writes to its own layer only; a cross-layer transcoder's layer-l
encoder would write to layers l..L-1 (``decoders`` keyed by target layer).

Shapes: T = prompt length, d = d_model, L = layers, n = features of one set, B = a batch of evaluations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from circuits.frozen.clean import CleanRun, capture
from circuits.frozen.facts import ModelFacts
from circuits.frozen.weights import Weights, model_weights

__all__ = ["FeatureSet", "FeatureSetError", "ReplacementModel", "feature_sets_from_clt", "feature_sets_from_transcoders"]


class FeatureSetError(ValueError):
    """The feature sets (transcoders) given do not fit the model: layer, hook or width."""


@dataclass
class FeatureSet:
    """The features read at ``layer``'s MLP input (``blocks.L.ln2`` output, bias included).

    W_enc [d, n], b_enc [n]; ``encode(pre [.., n]) -> activations [.., n]`` (ReLU, TopK, ...: any function of the
    pre-activations that is zero for inactive features); decoders: target layer -> W_dec [n, d] (target >= layer);
    b_dec: target layer -> [d] constant added to that MLP output; W_skip [d, d] (optional): a linear term from this
    layer's MLP input to its own MLP output. ``name``: the dictionary prefix of node ids (``tc`` -> ``tc4.f12@3``).
    """

    layer: int
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    encode: Callable[[torch.Tensor], torch.Tensor]
    decoders: dict[int, torch.Tensor]
    b_dec: dict[int, torch.Tensor] = field(default_factory=dict)
    W_skip: torch.Tensor | None = None
    name: str = "tc"

    @property
    def n_features(self) -> int:
        return int(self.W_enc.shape[1])

    def to(self, dtype: torch.dtype, device: torch.device | str) -> FeatureSet:
        """A copy in ``dtype`` on ``device`` (the activation function is applied in that dtype)."""
        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(dtype=dtype, device=device)
        return FeatureSet(self.layer, cast(self.W_enc), cast(self.b_enc), self.encode,
                          {m: cast(W) for m, W in self.decoders.items()}, {m: cast(b) for m, b in self.b_dec.items()},
                          None if self.W_skip is None else cast(self.W_skip), self.name)


def feature_sets_from_transcoders(transcoders: Mapping[int, object], facts: ModelFacts) -> list[FeatureSet]:
    """One :class:`FeatureSet` per per-layer transcoder (a ``circuits.dictionaries.model.Dictionary`` of kind
    ``transcoder`` or ``skip_transcoder`` mapping ``blocks.L.ln2.hook_normalized`` -> ``blocks.L.hook_mlp_out``).

    Raises :class:`FeatureSetError` naming the layer for a transcoder of another kind, hook or width.
    """
    from circuits.dictionaries.model import Dictionary

    out = []
    for layer, tc in sorted(transcoders.items()):
        if not isinstance(layer, int) or not 0 <= layer < facts.n_layers:
            raise FeatureSetError(f"transcoder layer {layer!r} is not a layer of this model (0..{facts.n_layers - 1})")
        if not isinstance(tc, Dictionary) or tc.kind not in ("transcoder", "skip_transcoder"):
            raise FeatureSetError(f"layer {layer}: expected a transcoder or skip transcoder, got "
                                  f"{getattr(tc, 'kind', type(tc).__name__)!r}")
        want = (f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out")
        if (tc.hook_in, tc.hook_out) != want:
            raise FeatureSetError(f"layer {layer}: the transcoder maps {tc.hook_in} -> {tc.hook_out}; accepted: "
                                  f"{want[0]} -> {want[1]}")
        if tc.d_in != facts.d_model or tc.d_out != facts.d_model:
            raise FeatureSetError(f"layer {layer}: transcoder widths {tc.d_in} -> {tc.d_out}, but the model's d_model "
                                  f"is {facts.d_model} (a transcoder made for another model?)")
        out.append(FeatureSet(layer, tc.W_enc, tc.b_enc, _activation_of(tc), {layer: tc.W_dec}, {layer: tc.b_dec},
                              tc.W_skip, "tc"))
    return out


def feature_sets_from_clt(clt, facts: ModelFacts) -> list[FeatureSet]:
    """One :class:`FeatureSet` per layer of a cross-layer transcoder
    (:class:`circuits.dictionaries.clt.CrossLayerTranscoder`): layer l's features read MLP input l and write to
    the MLP outputs of layers l..L-1 (``decoders`` {m: W_dec[l -> m] [n, d]}); layer l's set carries b_dec[l].
    Node ids use the prefix ``clt`` (``clt1.f12@5``). Raises :class:`FeatureSetError` for another model's CLT."""
    if (clt.n_layers, clt.d_model) != (facts.n_layers, facts.d_model):
        raise FeatureSetError(f"the cross-layer transcoder has {clt.n_layers} layers of width {clt.d_model}, the model "
                              f"{facts.n_layers} of width {facts.d_model} (a CLT made for another model?)")
    out = []
    for layer in range(clt.n_layers):
        decoders = {m: clt.W_dec[layer][:, m - layer] for m in range(layer, clt.n_layers)}
        out.append(FeatureSet(layer, clt.W_enc[layer], clt.b_enc[layer], _clt_activation(clt, layer), decoders,
                              {layer: clt.b_dec[layer]}, None, "clt"))
    return out


def _clt_activation(clt, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Layer ``layer``'s activation of a CLT, applied in the pre-activations' dtype."""
    if clt.activation == "jumprelu":
        th = clt.threshold[layer].detach()
        return lambda pre: pre * (pre > th.to(pre))
    if clt.activation == "topk":
        k = int(clt.k)

        def topk(pre: torch.Tensor) -> torch.Tensor:
            vals, idx = pre.topk(k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
        return topk
    return torch.relu


def _activation_of(tc) -> Callable[[torch.Tensor], torch.Tensor]:
    """The dictionary's activation applied to pre-activations (ReLU, or TopK then ReLU)."""
    if tc.activation == "relu":
        return torch.relu
    k = int(tc.k)

    def topk(pre: torch.Tensor) -> torch.Tensor:
        vals, idx = pre.topk(k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))

    return topk


@dataclass
class Sources:
    """Values of the source nodes for :meth:`ReplacementModel.run`, each with a leading batch dim B.

    acts [B, F] (the active features, in :attr:`ReplacementModel.active` order), errors [B, L, T, d], embed [B, T, d]
    (the token embeddings, without learned positions).
    """

    acts: torch.Tensor
    errors: torch.Tensor
    embed: torch.Tensor


class ReplacementModel:
    """The frozen replacement model of ``model`` on one prompt ``tokens`` [T] (see the module docstring).

    Attributes: ``w`` (:class:`Weights` in ``dtype``), ``clean`` (the clean run), ``sets`` (feature sets by layer),
    ``pre`` (layer -> feature pre-activations [T, n]), ``active`` [F, 3] (layer, position, feature) of the active
    features sorted by layer, then position, then feature (circuit-tracer's order), ``activations`` [F],
    ``errors`` [L, T, d], ``embed`` [T, d] (token embeddings), ``mlp_in`` [L, T, d] (the MLP inputs, norm bias
    included), ``logits`` [T, V] of the clean run; ``clt``: the cross-layer transcoder the sets were made from, if
    any (set by whoever built the sets from one).
    """

    clt: object | None = None

    def __init__(self, model, tokens: torch.Tensor, sets: list[FeatureSet], *, dtype: torch.dtype = torch.float32):
        self.facts = ModelFacts.of(model).check("attribution graphs")
        if not self.facts.has_mlp:
            raise FeatureSetError("attribution graphs replace MLPs by transcoders; this model is attention-only")
        tokens = torch.as_tensor(tokens).long().reshape(-1)
        if tokens.numel() == 0:
            raise ValueError("the prompt has no tokens")
        if self.facts.n_ctx and tokens.numel() > self.facts.n_ctx:
            raise ValueError(f"the prompt is {tokens.numel()} tokens, longer than the model's context length of "
                             f"{self.facts.n_ctx} tokens")
        if int(tokens.max()) >= self.facts.d_vocab or int(tokens.min()) < 0:
            raise ValueError(f"token ids must lie in 0..{self.facts.d_vocab - 1}")
        self.dtype = dtype
        self.w: Weights = model_weights(model, dtype, method="attribution graphs")
        self.device = self.w.W_E.device
        self.tokens = tokens.to(self.device)
        self.clean: CleanRun = capture(model, self.tokens, dtype, method="attribution graphs")
        seen = set()
        for s in sets:
            if s.layer in seen:
                raise FeatureSetError(f"two feature sets read layer {s.layer}; give one per layer")
            seen.add(s.layer)
            bad = [m for m in s.decoders if not s.layer <= m < self.facts.n_layers]
            if bad:
                raise FeatureSetError(f"layer {s.layer}'s features write to layer {bad[0]}; a set writes to its own "
                                      f"layer or later ones (0..{self.facts.n_layers - 1})")
            d = self.facts.d_model
            shapes = [tuple(s.W_enc.shape), *(tuple(W.shape) for W in s.decoders.values())]
            if shapes[0] != (d, s.n_features) or any(sh != (s.n_features, d) for sh in shapes[1:]):
                raise FeatureSetError(f"layer {s.layer}: encoder/decoder shapes {shapes} do not fit d_model {d} "
                                      "(features for another model?)")
        self.sets = {s.layer: s.to(dtype, self.device) for s in sorted(sets, key=lambda s: s.layer)}
        w = self.w
        self.embed = w.W_E[self.tokens]
        self.mlp_in = torch.stack([lc.normed2[0] + (0 if w.rms else w.ln2_b[i]) for i, lc in enumerate(self.clean.layers)])
        self.pre: dict[int, torch.Tensor] = {}
        rows = []
        acts = []
        for layer, s in self.sets.items():
            pre = self.mlp_in[layer] @ s.W_enc + s.b_enc
            a = s.encode(pre)
            self.pre[layer] = pre
            pos, feat = torch.nonzero(a, as_tuple=True)
            rows.append(torch.stack([torch.full_like(pos, layer), pos, feat], 1))
            acts.append(a[pos, feat])
        self.active = torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.long, device=self.device)
        self.activations = torch.cat(acts) if acts else torch.zeros(0, dtype=dtype, device=self.device)
        self.logits = self.clean.logits[0]
        mlp_true = self.clean.stack("mlp_out")[:, 0]
        self.errors = mlp_true - self.transcoder_outputs()
        self.sources = Sources(self.activations[None], self.errors[None], self.embed[None])
        #: [L, H] or None: a head with 0 here writes nothing through its frozen attention in :meth:`run` (the clean
        #: run, the features and the error nodes stay as they are): the paths through one head are the difference of
        #: the graph with and without it
        self.head_mask: torch.Tensor | None = None

    # ------------------------------------------------------------------ shape facts
    @property
    def n_layers(self) -> int:
        return self.facts.n_layers

    @property
    def n_pos(self) -> int:
        return int(self.tokens.numel())

    @property
    def n_features(self) -> int:
        return int(self.active.shape[0])

    def set_slices(self) -> dict[int, slice]:
        """layer -> the slice of :attr:`active` holding that set's features."""
        out, start = {}, 0
        counts = torch.bincount(self.active[:, 0], minlength=self.n_layers).tolist() if self.n_features else []
        for layer in self.sets:
            n = counts[layer] if counts else 0
            out[layer] = slice(start, start + n)
            start += n
        return out

    # ------------------------------------------------------------------ the affine map
    def _norm(self, x: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
              constants: bool) -> torch.Tensor:
        """The frozen norm: centre (LayerNorm), times the clean run's 1/scale [T, 1], times the weight, plus bias."""
        if not self.w.rms:
            x = x - x.mean(-1, keepdim=True)
        out = x * scale * weight
        return out + bias if constants and not self.w.rms else out

    def _decoded(self, layer: int, acts: torch.Tensor) -> torch.Tensor:
        """The features' writes into MLP output ``layer``: [B, T, d] from acts [B, F]."""
        B, d = acts.shape[0], self.w.W_E.shape[1]
        out = torch.zeros(B, self.n_pos, d, dtype=acts.dtype, device=acts.device)
        for src, sl in self.set_slices().items():
            W = self.sets[src].decoders.get(layer)
            if W is None or sl.stop == sl.start:
                continue
            pos, feat = self.active[sl, 1], self.active[sl, 2]
            out = out.index_add(1, pos, acts[:, sl, None] * W[feat][None])
        return out

    def run(self, src: Sources, *, constants: bool = True, writes: Mapping[str, torch.Tensor] | None = None,
            stacked: bool = True) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]:
        """Evaluate the affine map: (MLP inputs [B, L, T, d], final norm output [B, T, d]).

        ``constants``: include the constant terms (learned positions, norm biases, attention and MLP output biases,
        decoder biases); with every source zero and ``constants`` True the outputs are the bias shares.
        ``writes``: extra [B, T, d] tensors added to the residual stream, keyed ``"emb"`` (after the embedding) or
        ``"mlp<l>"`` (after MLP ``l``'s output): the points where the sources write (used for gradients).
        ``stacked`` False: the MLP inputs as a list of L tensors [B, T, d] (a backward pass from the first l of them
        then stops at layer l).
        """
        mlp_in, final = self._forward(src, constants, writes or {})
        return (torch.stack(mlp_in, 1) if stacked else mlp_in), final

    def transcoder_outputs(self) -> torch.Tensor:
        """What the feature sets write into each MLP output on the clean run [L, T, d] (features, decoder biases,
        skip terms; the error nodes are the true MLP outputs minus this)."""
        acts = self.activations[None]
        out = []
        for layer in range(self.n_layers):
            y = self._decoded(layer, acts)[0]
            for s in self.sets.values():
                if layer in s.b_dec:
                    y = y + s.b_dec[layer]
            s = self.sets.get(layer)
            if s is not None and s.W_skip is not None:
                y = y + self.mlp_in[layer] @ s.W_skip
            out.append(y)
        return torch.stack(out)

    def _forward(self, src: Sources, constants: bool, writes: Mapping[str, torch.Tensor]):
        w, T = self.w, self.n_pos
        x = src.embed
        if constants and w.W_pos is not None:
            x = x + w.W_pos[:T]
        if "emb" in writes:
            x = x + writes["emb"]
        group = w.n_heads // w.n_kv
        decoded = [self._decoded(m, src.acts) for m in range(self.n_layers)]
        mlp_in = []
        for layer, lc in enumerate(self.clean.layers):
            h = self._norm(x, lc.scale1[0], w.ln1_w[layer], w.ln1_b[layer], constants)
            v = torch.einsum("btd,hde->bthe", h, w.W_V[layer])
            if constants:
                v = v + w.b_V[layer]
            z = torch.einsum("hqk,bkhe->bqhe", lc.pattern[0], v.repeat_interleave(group, dim=-2))
            if self.head_mask is not None:
                z = z * self.head_mask[layer].to(z)[None, None, :, None]
            attn = torch.einsum("bthe,hed->btd", z, w.W_O[layer])
            if constants:
                attn = attn + w.b_O[layer]
            mid = x + attn
            h2 = self._norm(mid, lc.scale2[0], w.ln2_w[layer], w.ln2_b[layer], constants)
            mlp_in.append(h2)
            out = decoded[layer]
            for s in self.sets.values():
                if constants and layer in s.b_dec:
                    out = out + s.b_dec[layer]
            s = self.sets.get(layer)
            if s is not None and s.W_skip is not None:
                out = out + h2 @ s.W_skip
            x = mid + out + src.errors[:, layer]
            if f"mlp{layer}" in writes:
                x = x + writes[f"mlp{layer}"]
        final = self._norm(x, self.clean.final_scale[0], w.lnf_w, w.lnf_b, constants)
        return mlp_in, final

    def replacement_logits(self) -> torch.Tensor:
        """The replacement model's logits [T, V] at the clean source values (equal to the clean logits)."""
        _, final = self.run(self.sources)
        return final[0] @ self.w.W_U + self.w.b_U

"""The CD-T propagation rules: each maps a decomposition ``(beta, gamma)`` of a layer's input to one of its output.

Every rule keeps ``beta + gamma`` equal to what the layer computes from ``beta + gamma`` (the clean activation when the
input was clean): this is the completeness identity the tests check in float64. The one exception is ``share_eps > 0``,
the published code's tolerance, which loses a little of each bias (see below).

Options (:class:`Rules`). ``Rules.published()`` is the published CD-T code (adelaidehsu/CD_Circuit,
``pyfunctions/cdt_source_to_target.py`` ``prop_GPT`` with ``cdt_core.py``), reproduced to float64 rounding
(``tests/test_cdt_published.py`` holds it to a port of that code at 1e-6; measured 2e-14). The defaults are this project's
choice: no sign rule, the ``"ablated"`` attention rule, exact bias shares (LayerNorm biases by the normed parts) and the
model's own norm epsilon, because on ``toy/induction-2l`` the published rules miss the previous-token heads, which act
through keys (K-composition) rather than values, and their head rankings disagree with activation patching; the
defaults agree with it (see ``case_studies/cdt_induction.md``).

- ``sign_rule``: where ``beta`` and ``gamma`` have opposite signs the sum goes to the part of larger magnitude. Applied
  where the published code applies it: after the MLP's input projection (before the activation; a gated MLP's up and
  gate projections), after its output projection and after the residual addition at the block's end; not after the
  attention branch's residual addition (published: on; default off).
- ``attention``: ``"own"`` (published; default ``"ablated"``): ``A_beta = softmax(Q_beta K_beta^T / sqrt(dh) + mask)``, ``context_beta =
  A_beta V_beta`` and ``context_gamma = A V - context_beta``; ``"total"``: the pattern ``A`` of the total is held fixed and
  ``context_beta = A V_beta``; ``"ablated"`` (this project's addition): the attention block as one nonlinearity,
  ``context_gamma = softmax(Q_gamma K_gamma^T) V_gamma`` and ``context_beta = A V - context_gamma``, which lets a source
  act through queries and keys (K- and Q-composition), not only through values. Known limit: gamma then follows a run
  with the source ablated but with norm statistics frozen from the total, and on deep models (SmolLM2's 30 layers) it
  can grow so large that beta + gamma keeps only a few digits even in float64; use ``"own"`` or ``"total"`` there.
- ``bias_split``: ``"proportional"`` (published): a bias ``b`` of ``W x + b`` is shared in proportion to ``|W beta|`` and
  ``|W gamma|``, elementwise; ``"gamma"``: biases stay irrelevant.
- ``norm_bias``: how a LayerNorm's bias is shared: ``"output"`` (default) by the normed parts, ``"input"`` (published) by
  the magnitudes of the norm's input parts, before centring.
- ``share_eps``: ``b |a| / (|a| + |c| + share_eps)`` to beta and ``b |c| / (|a| + |c| + share_eps)`` to gamma (published:
  1e-8, in every share); 0 (default): beta ``b s`` and gamma ``b (1 - s)``, ``s = |a| / (|a| + |c|)`` (0 where both
  vanish), so the bias is shared exactly (this departs from METHODS.md section 2, which follows the published formula).
  With ``share_eps > 0`` the totals lose ``b share_eps / (|a| + |c| + share_eps)`` at each bias, and the model decomposed
  is the published code's own pass with ``beta = 0`` (:func:`circuits.cdt.clean.full_forward` with the rules); the
  decomposition then walks both parts (the beta-only walk needs exact completeness), about twice the work.
- ``norm_eps``: the epsilon of LayerNorm/RMSNorm (None: the model's own; published: 1e-8, hard-coded in the published
  ``GPTLayerNormWrapper.eps``). Any other value changes the model too: :func:`circuits.cdt.decompose.decompose` recomputes
  the clean run with it, so the totals are the activations of the model with that epsilon; the ablation means stay the
  model's own (the published code takes them from ``model.run_with_cache``).

Weights: the published code decomposes TransformerLens weights loaded with ``fold_ln=False`` (its notebooks also centre the
writing weights and the unembedding and refactor the attention matrices). CD-T depends on such processing; load the
model with ``workbench.models.load_model(..., weight_processing=False)`` for the checkpoint's own weights.

Measured differences (a random 3-layer GPT-2, d_model 32, random biases, float64, weights unprocessed; 36 sources: every
head at two positions and over all positions; logit difference; largest published relevance 0.124 zero / 0.100 mean
ablation). Maximum distance from the published code's output, zero / mean ablation: the defaults 0.085 / 0.032; the
published rules on processed weights 0.076 / 0.046; the published rules with the model's epsilon 0.013 / 0.022, with
LayerNorm biases by the normed parts 0.025 / 0.022, without the share tolerance 5e-5 / 1.1e-3; with only the sign rule and own-pattern
attention of the published rules (LayerNorm bias by the normed parts, model epsilon, exact shares) 0.023 / 0.022.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch

from circuits.cdt.weights import Weights, activation

__all__ = ["Rules", "add_bias", "bias_share", "total_bias", "attention", "gated_product", "linear", "nonlinear", "norm", "sign_rule"]

Pair = tuple[torch.Tensor, torch.Tensor]
ATTENTION_RULES = ("own", "total", "ablated")
BIAS_SPLITS = ("proportional", "gamma")
NORM_BIASES = ("output", "input")
PUBLISHED_EPS = 1e-8  # the published code's LayerNorm epsilon and bias-share tolerance


@dataclass(frozen=True)
class Rules:
    """The options of the decomposition (see the module docstring)."""

    sign_rule: bool = False
    attention: str = "ablated"
    bias_split: str = "proportional"
    norm_bias: str = "output"
    share_eps: float = 0.0
    norm_eps: float | None = None

    @classmethod
    def published(cls) -> Rules:
        """The published CD-T code's behaviour: sign rule on, own-pattern attention, biases shared by magnitude with a
        1e-8 tolerance, LayerNorm biases shared by the norm's input parts, norm epsilon 1e-8."""
        return cls(sign_rule=True, attention="own", bias_split="proportional", norm_bias="input",
                   share_eps=PUBLISHED_EPS, norm_eps=PUBLISHED_EPS)

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_RULES:
            raise ValueError(f"attention rule must be one of {ATTENTION_RULES}, got {self.attention!r}")
        if self.bias_split not in BIAS_SPLITS:
            raise ValueError(f"bias_split must be one of {BIAS_SPLITS}, got {self.bias_split!r}")
        if self.norm_bias not in NORM_BIASES:
            raise ValueError(f"norm_bias must be one of {NORM_BIASES}, got {self.norm_bias!r}")
        if isinstance(self.share_eps, bool) or not (isinstance(self.share_eps, (int, float)) and self.share_eps >= 0):
            raise ValueError(f"share_eps must be a number >= 0, got {self.share_eps!r}")
        if self.norm_eps is not None and (isinstance(self.norm_eps, bool) or not (
                isinstance(self.norm_eps, (int, float)) and self.norm_eps > 0)):
            raise ValueError(f"norm_eps must be a positive number or None, got {self.norm_eps!r}")

    @classmethod
    def from_options(cls, **options) -> Rules:
        """Rules from keyword options; an unknown option raises TypeError naming the known ones."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown CD-T rule option(s) {', '.join(unknown)}; options: {', '.join(sorted(known))}")
        return cls(**options)

    def to_dict(self) -> dict:
        return asdict(self)

    def changes_model(self, w: Weights) -> bool:
        """Whether these rules decompose another model than ``w``'s: another norm epsilon, or biases that lose
        ``share_eps`` (see :func:`total_bias`)."""
        return self.weights(w) is not w or bool(self.share_eps)

    def weights(self, w: Weights) -> Weights:
        """``w`` with the norms' epsilon these rules ask for (``w`` itself when ``norm_eps`` is None or the model's)."""
        if self.norm_eps is None or float(self.norm_eps) == w.eps:
            return w
        return replace(w, eps=float(self.norm_eps))


def bias_share(a: torch.Tensor, c: torch.Tensor, rules: Rules) -> torch.Tensor:
    """The fraction of a bias that goes to beta, from the magnitudes ``a = |beta|`` and ``c = |gamma|`` (elementwise):
    ``a / (a + c + share_eps)``; with ``share_eps == 0``, ``a / (a + c)`` and 0 where both vanish."""
    total = a + c
    if rules.share_eps:
        return a / (total + rules.share_eps)
    return torch.where(total > 0, a / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(total))


def total_bias(bias: torch.Tensor, y: torch.Tensor, rules: Rules) -> torch.Tensor:
    """The bias the total gets where its pre-bias value is ``y``: ``bias`` itself, or with ``share_eps > 0``
    ``bias |y| / (|y| + share_eps)``, what the published shares give a total whose relevant part is zero."""
    if not rules.share_eps:
        return bias
    m = y.abs()
    return bias * m / (m + rules.share_eps)


def add_bias(beta: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor, rules: Rules, by: Pair | None = None) -> Pair:
    """Add ``bias`` (broadcast over the last dims) to the pair, shared as ``rules.bias_split`` says: beta gets ``bias *
    share`` (:func:`bias_share` of the magnitudes of ``by``, default the pair itself) and gamma the rest, or with
    ``share_eps > 0`` its own share ``bias |c| / (|a| + |c| + share_eps)`` as published."""
    if rules.bias_split == "gamma" or not bool(bias.any()):
        return beta, gamma + total_bias(bias, beta + gamma if by is None else by[0] + by[1], rules)
    a, c = (beta, gamma) if by is None else by
    part = bias * bias_share(a.abs(), c.abs(), rules)
    if rules.share_eps:  # the published shares: gamma's is symmetric, so the total loses bias * share_eps / (...)
        return beta + part, gamma + bias * bias_share(c.abs(), a.abs(), rules)
    return beta + part, gamma + (bias - part)


def linear(pair: Pair, weight: torch.Tensor, bias: torch.Tensor | None, rules: Rules, equation: str | None = None) -> Pair:
    """``W x + b`` on each part: ``x @ weight`` (or ``einsum(equation, x, weight)``), then the bias shared by magnitude."""
    beta, gamma = pair
    if equation is None:
        beta, gamma = beta @ weight, gamma @ weight
    else:
        beta, gamma = torch.einsum(equation, beta, weight), torch.einsum(equation, gamma, weight)
    if bias is None:
        return beta, gamma
    return add_bias(beta, gamma, bias, rules)


def norm(pair: Pair, w: Weights, weight: torch.Tensor, bias: torch.Tensor, rules: Rules) -> Pair:
    """LayerNorm/RMSNorm: statistics from the total; each part centred (LayerNorm) and scaled by them, then ``* weight``
    and (LayerNorm) the bias shared by magnitude: of the normed parts (``norm_bias="output"``) or of the input parts
    before centring (``"input"``)."""
    beta, gamma = pair
    x = beta + gamma
    eps = w.eps if rules.norm_eps is None else float(rules.norm_eps)
    if w.rms:
        scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        return beta * scale * weight, gamma * scale * weight
    centred = x - x.mean(-1, keepdim=True)
    scale = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
    out_beta = (beta - beta.mean(-1, keepdim=True)) * scale * weight
    out_gamma = (gamma - gamma.mean(-1, keepdim=True)) * scale * weight
    return add_bias(out_beta, out_gamma, bias, rules, by=pair if rules.norm_bias == "input" else None)


def nonlinear(pair: Pair, kind: str) -> Pair:
    """Elementwise nonlinearity ``s``: ``gamma' = s(gamma)``, ``beta' = s(beta + gamma) - s(gamma)``."""
    beta, gamma = pair
    g = activation(kind, gamma)
    return activation(kind, beta + gamma) - g, g


def gated_product(up: Pair, gate: Pair) -> Pair:
    """``u * g`` of a gated MLP: ``gamma' = u_gamma g_gamma``, ``beta' = u g - u_gamma g_gamma``."""
    g = up[1] * gate[1]
    return (up[0] + up[1]) * (gate[0] + gate[1]) - g, g


def sign_rule(pair: Pair, rules: Rules) -> Pair:
    """Where the parts have opposite signs, the sum goes to the one of larger magnitude (only when ``rules.sign_rule``)."""
    if not rules.sign_rule:
        return pair
    beta, gamma = pair
    total = beta + gamma
    opposite = (beta * gamma) < 0
    to_beta = beta.abs() > gamma.abs()
    beta = torch.where(opposite, torch.where(to_beta, total, 0.0), beta)
    return beta, total - beta


def _pattern(q: torch.Tensor, k: torch.Tensor, group: int) -> torch.Tensor:
    """Causal softmax pattern [R, H, Tq, Tk] from q [R, T, H, dh] and k [R, T, KV, dh]."""
    k = k.repeat_interleave(group, dim=-2)
    scores = torch.einsum("rqhe,rkhe->rhqk", q, k) / math.sqrt(q.shape[-1])
    T = q.shape[1]
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(mask, float("-inf")).softmax(-1)


def attention(q: Pair, k: Pair, v: Pair, group: int, rules: Rules) -> Pair:
    """Attention of rotated ``q`` [R, T, H, dh], ``k``, ``v`` [R, T, KV, dh] pairs -> context pair [R, T, H, dh].

    ``rules.attention == "own"``: ``context_beta = softmax(Q_beta K_beta^T) V_beta``, ``context_gamma = A V - context_beta``;
    ``"total"``: ``context_beta = A V_beta``, ``context_gamma = A V_gamma``; ``"ablated"``: ``context_gamma =
    softmax(Q_gamma K_gamma^T) V_gamma``, ``context_beta = A V - context_gamma``; ``A`` the pattern of the totals.
    """
    total_q, total_k = q[0] + q[1], k[0] + k[1]
    A = _pattern(total_q, total_k, group)
    v_beta = v[0].repeat_interleave(group, dim=-2)
    if rules.attention == "total":
        v_gamma = v[1].repeat_interleave(group, dim=-2)
        return torch.einsum("rhqk,rkhe->rqhe", A, v_beta), torch.einsum("rhqk,rkhe->rqhe", A, v_gamma)
    v_total = (v[0] + v[1]).repeat_interleave(group, dim=-2)
    context = torch.einsum("rhqk,rkhe->rqhe", A, v_total)
    if rules.attention == "ablated":
        A_gamma = _pattern(q[1], k[1], group)
        gamma = torch.einsum("rhqk,rkhe->rqhe", A_gamma, v[1].repeat_interleave(group, dim=-2))
        return context - gamma, gamma
    A_beta = _pattern(q[0], k[0], group)
    beta = torch.einsum("rhqk,rkhe->rqhe", A_beta, v_beta)
    return beta, context - beta

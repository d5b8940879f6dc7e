"""Training dynamics of massive activations and MLP sparsity over a zoo family's checkpoints (METHODS.md section 3).

At every checkpoint of every member, on ``n_sequences`` fixed held-out windows of the member's own text:
- ``massive_ratio`` per layer: top-1 |h| / median |h| of the block's residual output (the output of decoder layer
  ``l``, the same tensor as the bridge's ``blocks.l.hook_resid_post``), per sequence, averaged over sequences;
  ``top1`` and ``median`` are the averaged parts;
- ``mlp_active`` per layer: the fraction of MLP activations that are nonzero (ReLU) or, for other activations, the
  fraction of pre-activations (the activation function's input; the gate for gated MLPs) that are > 0.

Each (member, layer) curve of a statistic is fitted by :func:`probes.dynamics_fit.fit_dynamics`, and the five
parameters are predicted from architecture features across members (:mod:`probes.dynamics_predict`).
Checkpoints are read with transformers directly (one small forward each), not through a bridge, for speed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from probes.dynamics_fit import MIN_POINTS, TooFewCheckpointsError, fit_dynamics

STATISTICS = ("massive_ratio", "mlp_active")


def member_config(name: str) -> dict[str, Any]:
    """The zoo config of a checkpoint-family member (ValueError for a member of no family, e.g. induction-2l)."""
    from workbench import zoo

    cfg = zoo.get(name).config
    if "family" not in cfg or "text" not in cfg:
        raise ValueError(f"toy/{name} is not a checkpoint-family member; families: {zoo.families()}")
    return cfg


def heldout_sequences(name: str, n_sequences: int = 10, seed: int = 4242) -> torch.Tensor:
    """``n_sequences`` fixed held-out windows of member ``name``'s text: LongTensor [n, context]."""
    return config_sequences(member_config(name), n_sequences, seed)


def config_sequences(cfg: dict[str, Any], n_sequences: int = 10, seed: int = 4242) -> torch.Tensor:
    """Held-out windows for a member config dict (its ``text`` setting and ``context``): LongTensor [n, context]."""
    from workbench.zoo_tokenizer import TextConfig, load_text_tokenizer, token_streams, windows

    text = TextConfig(corpora=tuple(cfg["text"]["corpora"]), vocab=int(cfg["text"]["vocab"]))
    bos = load_text_tokenizer(text).bos_token_id
    return windows(token_streams(text)["heldout"], n_sequences, int(cfg["context"]), torch.Generator().manual_seed(seed), bos)


def _layers_and_acts(model) -> tuple[list, list]:
    if hasattr(model, "model") and hasattr(model.model, "layers"):  # Llama-style
        layers = list(model.model.layers)
        return layers, [layer.mlp.act_fn for layer in layers]
    if hasattr(model, "gpt_neox"):  # Pythia-style
        layers = list(model.gpt_neox.layers)
        return layers, [layer.mlp.act for layer in layers]
    if hasattr(model, "transformer") and hasattr(model.transformer, "h"):  # GPT-2-style
        layers = list(model.transformer.h)
        return layers, [layer.mlp.act for layer in layers]
    raise ValueError(f"{type(model).__name__}: dynamics reads Llama-, GPT-2- and GPT-NeoX-style models only")


@torch.no_grad()
def checkpoint_statistics(folder, tokens: torch.Tensor, relu: bool, revision: str | None = None) -> pd.DataFrame:
    """Per-layer statistics of one checkpoint (a Hugging Face folder, or a hub name at ``revision``) on ``tokens`` [n, seq].

    Returns one row per layer: ``layer``, ``massive_ratio``, ``top1``, ``median``, ``mlp_active``.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), revision=revision).eval()
    layers, acts = _layers_and_acts(model)
    resid: dict[int, torch.Tensor] = {}
    active: dict[int, torch.Tensor] = {}

    def on_layer(i):
        def hook(_module, _inputs, output):
            resid[i] = (output[0] if isinstance(output, tuple) else output).detach()
        return hook

    def on_act(i):
        def hook(_module, inputs, output):
            on = (output != 0) if relu else (inputs[0] > 0)
            active[i] = on.float().mean()
        return hook

    handles = [m.register_forward_hook(on_layer(i)) for i, m in enumerate(layers)]
    handles += [m.register_forward_hook(on_act(i)) for i, m in enumerate(acts)]
    try:
        model(input_ids=tokens)
    finally:
        for h in handles:
            h.remove()
    rows = []
    for i in range(len(layers)):
        flat = resid[i].abs().flatten(1).double()  # [n, seq * d_model]
        top1, median = flat.max(dim=1).values, flat.median(dim=1).values
        rows.append({"layer": i, "massive_ratio": float((top1 / median).mean()), "top1": float(top1.mean()),
                     "median": float(median.mean()), "mlp_active": float(active[i])})
    return pd.DataFrame(rows)


def folder_statistics(root, steps: list[int], tokens: torch.Tensor, relu: bool, member: str,
                      progress: bool = True) -> pd.DataFrame:
    """Statistics of the checkpoints ``root/step-<N>`` for ``steps`` on ``tokens`` [n, seq].

    Returns columns ``member, step, layer, massive_ratio, top1, median, mlp_active`` (one row per step and layer).
    """
    from workbench.train import step_dir

    frames = []
    for step in tqdm(steps, desc=f"dynamics {member}", disable=not progress, unit="ckpt"):
        frames.append(checkpoint_statistics(step_dir(root, step), tokens, relu).assign(member=member, step=step))
    out = pd.concat(frames, ignore_index=True)
    return out[["member", "step", "layer", "massive_ratio", "top1", "median", "mlp_active"]]


def member_statistics(name: str, n_sequences: int = 10, progress: bool = True) -> pd.DataFrame:
    """:func:`folder_statistics` of every saved checkpoint of zoo member ``name`` (built on first use)."""
    from workbench import zoo
    from workbench.train import CHECKPOINTS

    cfg = member_config(name)
    zoo.build(name, progress=progress)
    tokens = heldout_sequences(name, n_sequences)
    return folder_statistics(zoo.folder(name) / CHECKPOINTS, zoo.checkpoint_steps(name), tokens,
                             cfg["activation"] == "relu", name, progress)


def resolve_members(target: str) -> list[str]:
    """Members covered by ``target`` (a family or a member name), each a checkpoint-family member."""
    from workbench import zoo

    members = zoo.targets(target)
    for name in members:
        member_config(name)
    return members


def check_checkpoints(name: str) -> None:
    """Raise TooFewCheckpointsError unless built member ``name`` has at least five checkpoints."""
    from workbench import zoo

    steps = zoo.checkpoint_steps(name)
    if len(steps) < MIN_POINTS:
        raise TooFewCheckpointsError(
            f"toy/{name} has {len(steps)} checkpoints (steps {steps}); a five-parameter fit needs at least {MIN_POINTS}"
        )


def fit_table(stats: pd.DataFrame, statistic: str = "massive_ratio") -> pd.DataFrame:
    """Fit every (member, layer) curve of ``statistic`` in ``stats`` (as from :func:`member_statistics`).

    Returns one row per (member, layer): ``member, layer, statistic, A, lam, gamma, t0, K, r2, t_peak, aic,
    aic_step, r2_step, n, preferred`` (``preferred`` is ``"five-parameter"`` or ``"step"``, the lower AIC).
    """
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; accepted: {', '.join(STATISTICS)}")
    rows = []
    for (member, layer), group in stats.groupby(["member", "layer"], sort=False):
        group = group.sort_values("step")
        if len(group) < MIN_POINTS:
            raise TooFewCheckpointsError(
                f"toy/{member} layer {layer} has {len(group)} checkpoints; a five-parameter fit needs at least {MIN_POINTS}"
            )
        fit = fit_dynamics(group["step"].to_numpy(), group[statistic].to_numpy())
        row = {"member": member, "layer": int(layer), "statistic": statistic, **fit.to_dict()}
        row["preferred"] = "five-parameter" if fit.aic <= fit.aic_step else "step"
        rows.append(row)
    return pd.DataFrame(rows)


def dynamics_figure(stats: pd.DataFrame, fits: pd.DataFrame, statistic: str = "massive_ratio") -> Any:
    """A plotly figure: per member and layer, the measured ``statistic`` (markers) and its fitted curve (line)."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    fig = go.Figure()
    palette = qualitative.Plotly
    for i, ((member, layer), group) in enumerate(stats.groupby(["member", "layer"], sort=False)):
        color = palette[i % len(palette)]
        group = group.sort_values("step")
        label = f"{member} L{layer}"
        fig.add_scatter(x=group["step"].clip(lower=1), y=group[statistic], mode="markers", name=label,
                        marker={"color": color, "size": 5}, legendgroup=label)
        match = fits[(fits["member"] == member) & (fits["layer"] == layer) & (fits["statistic"] == statistic)]
        if len(match):
            f = match.iloc[0]
            t = np.unique(np.concatenate([[0.0], np.geomspace(1, max(1.0, float(group["step"].max())), 200)]))
            y = f["A"] * np.exp(-f["lam"] * (f["gamma"] * t + f["t0"])) * np.log(f["gamma"] * t + f["t0"]) + f["K"]
            fig.add_scatter(x=np.clip(t, 1, None), y=y, mode="lines", name=f"{label} fit (R² {f['r2']:.3f})",
                            line={"color": color}, legendgroup=label, showlegend=False)
    fig.update_xaxes(type="log", title="training step (step 0 drawn at 1)")
    fig.update_yaxes(title=statistic.replace("_", " "))
    fig.update_layout(title=f"{statistic.replace('_', ' ')} across checkpoints, with five-parameter fits")
    return fig

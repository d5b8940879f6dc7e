"""Cross-layer transcoders behind the analysis contract (:mod:`workbench.analysis`): run kind ``clt``, verb
``train-clt`` (train one CLT over every layer, evaluate it with every MLP replaced at once, store it in
circuit-tracer's layout).

Usage (notebook)::

    from circuits.dictionaries.clt_analysis import TRAIN_CLT, TrainCltConfig, run_clt
    info, result = TRAIN_CLT.launch("toy/llama-d64-l2", TrainCltConfig(activation="topk", k=8, tokens=40_960))
    result.tables["layers"]                  # per layer: FVU, L0, dead / dense fractions
    result.summary["ce_recovered_zero"]      # every MLP replaced at once
    clt = run_clt(Store().load("clt", info.run_id))

A ``clt`` run folder holds ``clt/`` (``config.yaml``, ``W_enc_{l}.safetensors``, ``W_dec_{l}.safetensors``: open it
with circuit-tracer, or with ``workbench attribute --transcoder <run>/clt``), table ``layers``, table ``history``,
tensors ``frequencies`` {``f``: [L, n]} and ``decoder_norms`` {``source_target``: [L, L], the mean decoder norm of
each source layer's features into each target layer}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from circuits.dictionaries.analysis import HeldOutOptions, _check_corpus, _check_folder, _reworded
from workbench.analysis import Analysis, ConfigError, Result, model_spec, option

__all__ = ["TRAIN_CLT", "TrainCltConfig", "clt_result", "run_clt"]


@dataclass
class TrainCltConfig(HeldOutOptions):
    """Options of ``workbench train-clt`` (one cross-layer transcoder over every layer)."""

    activation: Literal["relu", "topk", "jumprelu"] = option(
        "topk", "ReLU with a decoder-norm-weighted L1, TopK (k per layer), or JumpReLU with a tanh penalty")
    k: int = option(16, "TopK: active features per layer and token", minimum=1)
    l1: float = option(1e-3, "ReLU / JumpReLU: sparsity penalty coefficient", minimum=0.0)
    expansion: float = option(4.0, "features per layer per d_model dimension", minimum=0.0, exclusive_minimum=True,
                              maximum=256)
    tokens: int = option(81_920, "training tokens", minimum=1)
    batch_size: int = option(256, "activations per optimiser step", minimum=1)
    lr: float = option(2e-3, "learning rate", minimum=0.0, exclusive_minimum=True)
    warmup: int = option(20, "warm-up steps", minimum=0)
    tanh_c: float = option(1.0, "JumpReLU: the penalty's tanh scale c in tanh(c * a * ||W_dec||)", minimum=0.0,
                           exclusive_minimum=True)
    bandwidth: float = option(0.05, "JumpReLU: straight-through estimator bandwidth", minimum=0.0,
                              exclusive_minimum=True)
    seed: int = option(0, "seed of the data order and the initialisation", minimum=0)
    workdir: str | None = option(None, "folder for resume checkpoints (a killed run continues from there)", path=True)
    checkpoint_every: int = option(200, "with --workdir: checkpoint every this many steps", minimum=1)

    def validate(self) -> None:
        super().validate()
        _check_corpus(self.corpus, self.seq_len, [("train", self.tokens, "--tokens")])
        if self.batch_size > self.tokens:
            raise ConfigError(f"--batch-size {self.batch_size} exceeds --tokens {self.tokens}: the budget holds no "
                              "optimiser step; lower --batch-size or raise --tokens")
        _check_folder(self.workdir, "--workdir")


def run_clt(run: Any) -> Any:
    """The CrossLayerTranscoder of a stored ``clt`` run."""
    from circuits.dictionaries.clt_io import load_clt

    return load_clt(run.subpath("clt"))


def _train(model: Any, cfg: TrainCltConfig, progress: bool) -> Result:
    from circuits.dictionaries.train import TrainingConfigError
    from workbench.limits import check_context

    check_context(model, cfg.seq_len, f"--seq-len {cfg.seq_len}")
    d_sae = max(1, round(int(model.cfg.d_model) * cfg.expansion))
    if cfg.activation == "topk" and cfg.k > d_sae:
        raise ConfigError(f"--k {cfg.k} exceeds the {d_sae} features per layer (d_model {model.cfg.d_model} x "
                          f"--expansion {cfg.expansion:g}); accepted: 1 <= k <= {d_sae}")
    try:
        return _train_clt(model, cfg, progress)
    except TrainingConfigError as exc:
        raise _reworded(exc) from exc


def _train_clt(model: Any, cfg: TrainCltConfig, progress: bool) -> Result:
    from circuits.dictionaries.buffer import corpus_source
    from circuits.dictionaries.clt_eval import evaluate_clt
    from circuits.dictionaries.clt_train import CltSpec, train_clt
    from circuits.dictionaries.train import TrainDictConfig

    spec = CltSpec(activation=cfg.activation, expansion=cfg.expansion, l1=cfg.l1,
                   k=cfg.k if cfg.activation == "topk" else None, tanh_c=cfg.tanh_c, bandwidth=cfg.bandwidth)
    train = TrainDictConfig(tokens=cfg.tokens, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup,
                            seed=cfg.seed, checkpoint_every=cfg.checkpoint_every, block_batches=8)
    device = str(model.W_E.device)
    source = corpus_source(model.tokenizer, cfg.corpus, seq_len=cfg.seq_len, batch_size=8, seed=cfg.seed)
    eval_source = corpus_source(model.tokenizer, cfg.corpus, seq_len=cfg.seq_len, batch_size=8, split="heldout")
    trained = train_clt(model, source, spec, train, workdir=cfg.workdir, progress=progress, device=device)
    clt = trained.dictionaries["clt"]
    ev = evaluate_clt(model, clt, eval_source, max_tokens=cfg.eval_tokens, progress=progress, device=device)
    result = clt_result(model, clt, ev, trained)
    result.params = {"spec": spec.__dict__, "train": dict(train.__dict__), "seconds_training": trained.seconds}
    return result


def clt_result(model: Any, clt: Any, ev: Any, trained: Any = None) -> Result:
    """Everything a ``clt`` run holds, from a CrossLayerTranscoder, its
    :class:`~circuits.dictionaries.clt_eval.CltEval` and (optionally) its TrainResult."""
    import pandas as pd
    import torch

    from circuits.dictionaries.clt_io import save_clt

    spec_name = model_spec(model)
    out = Result()
    out.folders["clt"] = lambda path: save_clt(clt, path, model_name=spec_name)
    out.tables["layers"] = pd.DataFrame(ev.layers)
    if trained is not None:
        rows = [{"step": h["step"], **{k: v for k, v in h["clt"].items() if k != "l0_layers"}}
                for h in trained.history]
        out.tables["history"] = pd.DataFrame(rows)
    with torch.no_grad():
        norms = clt.decoder_norms().mean(-1).cpu()  # [source, target]
    out.tensors["frequencies"] = {"f": ev.frequencies.cpu()}
    out.tensors["decoder_norms"] = {"source_target": norms}
    out.summary = {
        "fvu": [r["fvu"] for r in ev.layers], "l0": [r["l0"] for r in ev.layers],
        "dead_fraction": [r["dead_fraction"] for r in ev.layers],
        "dense_fraction": [r["dense_fraction"] for r in ev.layers],
        **{k: ev.metrics[k] for k in ("ce_clean", "ce_spliced", "ce_zero_ablated", "ce_mean_ablated",
                                      "ce_recovered_zero", "ce_recovered_mean", "kl", "l0_total", "fvu_mean")},
        "cross_layer_share": _cross_share(norms), "eval_tokens": ev.tokens,
        "steps": trained.steps if trained else 0, "tokens_trained": trained.tokens if trained else 0,
        "d_sae": clt.d_sae, "n_layers": clt.n_layers}
    out.warnings = (list(trained.warnings) if trained else []) + list(ev.warnings)
    if all(r["l0"] == 0 for r in ev.layers):
        out.warnings.insert(0, "every CLT feature is dead at every layer (L0 0): the CLT reconstructs nothing but "
                               "its biases; lower --l1, raise --tokens or --lr")
    out.lines = [f"{'layer':>5} {'L0':>8} {'FVU':>8} {'dead':>6}"]
    out.lines += [f"{r['layer']:>5} {r['l0']:>8.2f} {_num(r['fvu'])} {r['dead_fraction']:>6.2f}" for r in ev.layers]
    m = ev.metrics
    out.lines.append(f"every MLP replaced: CE {m['ce_clean']:.4f} clean -> {m['ce_spliced']:.4f} spliced "
                     f"({m['ce_zero_ablated']:.4f} zero-ablated), CE recovered {_num(m['ce_recovered_zero'])} (zero) "
                     f"{_num(m['ce_recovered_mean'])} (mean)")
    return out


def _num(v: Any) -> str:
    return f"{v:>8.3f}" if isinstance(v, (int, float)) else f"{'-':>8}"


def _cross_share(norms: Any) -> float | None:
    """Share of the decoder norm that goes to later layers (off-diagonal / total of the [L, L] mean norms)."""
    total = float(norms.sum())
    return None if total <= 0 else float((norms.sum() - norms.diagonal().sum()) / total)


def _figures(run: Any) -> dict[str, Any]:
    from circuits.dictionaries.figures import frequency_histogram
    from circuits.dictionaries.figures_clt import decoder_norm_heatmap, layer_bars

    figs = {"layers": layer_bars(run.table("layers")),
            "decoder_norms": decoder_norm_heatmap(run.tensors("decoder_norms")["source_target"])}
    freqs = run.tensors("frequencies")["f"]
    figs["frequencies"] = frequency_histogram(freqs.reshape(-1), "CLT feature firing frequencies (every layer)")
    return figs


TRAIN_CLT = Analysis(
    kind="clt", verb="train-clt", config=TrainCltConfig, compute=_train, figures=_figures,
    help="train a cross-layer transcoder over every layer, evaluate it with every MLP replaced, store it in "
         "circuit-tracer's layout",
    describe="One encoder per layer reads the MLP input; each layer's features write to its own and every later "
             "MLP output. Trained jointly on every layer (ReLU + decoder-norm-weighted L1, TopK or JumpReLU); "
             "reports FVU and L0 per layer and the loss with every MLP replaced at once.",
    demo=TrainCltConfig(activation="topk", k=8, expansion=4.0, tokens=65_536, batch_size=256, eval_tokens=2048,
                        seq_len=64),
    demo_model="toy/llama-d64-l2")

"""A per-layer transcoder set, as the circuit methods read it (transcoder circuits, attribution graphs): loaded from
SAELens-layout folders, or trained on the fly.

Training uses one recipe (TopK-16, 4x, every layer, on wiki tokens) so that a run without folders is reproducible
from its options alone.
"""

from __future__ import annotations

from typing import Any

from workbench.errors import ConfigError

__all__ = ["transcoders_by_layer"]


def transcoders_by_layer(model: Any, folders: list[str] | None, train_tokens: int, *, progress: bool = False,
                         source: Any = None, workdir: str | None = None) -> tuple[dict[int, Any], int]:
    """``(layer -> transcoder Dictionary, tokens trained on)``: the transcoders in ``folders`` (one per layer,
    each on ``blocks.L.ln2.hook_normalized`` -> ``blocks.L.hook_mlp_out``), or, without folders, transcoders for
    every layer trained on ``train_tokens`` tokens: wiki tokens, or those of ``source`` (a
    :data:`circuits.dictionaries.buffer.TokenSource`, e.g. a synthetic task's own inputs). ``workdir``: training
    checkpoints there, and a killed run resumes from them. Raises DictionaryFileError for a corrupt folder,
    DictionaryMismatchError for one made for another model, ConfigError for a repeated layer or another hook."""
    if folders:
        from circuits.dictionaries.saelens_io import check_fits, hook_layer, load_dictionary

        out: dict[int, Any] = {}
        for folder in folders:
            tc = load_dictionary(folder, device=str(model.W_E.device))
            check_fits(tc, model)
            layer = hook_layer(tc.hook_in)
            if layer is None or layer in out or not tc.hook_in.endswith("ln2.hook_normalized"):
                raise ConfigError(f"{folder}: reads {tc.hook_in}; expected one transcoder per layer, on "
                                  "blocks.L.ln2.hook_normalized")
            out[layer] = tc
        return out, 0
    if train_tokens <= 0:
        raise ConfigError("give --transcoder FOLDER (one per layer), or --train-tokens N to train them first")
    from circuits.dictionaries.buffer import corpus_source
    from circuits.dictionaries.train import DictSpec, TrainDictConfig, train_dictionaries

    n_layers = int(model.cfg.n_layers)
    specs = [DictSpec(hook_in=f"blocks.{layer}.ln2.hook_normalized", kind="transcoder",
                      hook_out=f"blocks.{layer}.hook_mlp_out", activation="topk", k=16, expansion=4.0, name=f"L{layer}")
             for layer in range(n_layers)]
    train = TrainDictConfig(tokens=train_tokens, batch_size=256, lr=2e-3, warmup_steps=10, block_batches=8)
    if source is None:
        source = corpus_source(model.tokenizer, "wiki", seq_len=64, batch_size=16, max_tokens=int(train_tokens * 1.05))
    trained = train_dictionaries(model, source, specs, train, progress=progress, device=str(model.W_E.device),
                                 workdir=workdir)
    return {layer: trained.dictionaries[f"L{layer}"] for layer in range(n_layers)}, trained.tokens

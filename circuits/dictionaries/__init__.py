"""Sparse dictionaries (SAEs, transcoders, skip transcoders): model, training, evaluation, SAELens-format files,
feature views.

- :class:`Dictionary` (``circuits.dictionaries.model``): encode / decode / forward on [..., d_in] activations.
- :func:`train_dictionaries` with :class:`DictSpec` / :class:`TrainDictConfig`: several dictionaries in one pass.
- :func:`evaluate_dictionaries`: L0, FVU, spliced loss, CE recovered, KL, dead / dense on held-out text.
- :func:`save_dictionary` / :func:`load_dictionary`: SAELens folders (``cfg.json`` + ``sae_weights.safetensors``).
- :data:`TRAIN_DICT` / :data:`EVAL_DICT`: the analyses behind the contract; :func:`run_dictionaries` reads a run's.
- :class:`CrossLayerTranscoder` (``clt``), :func:`train_clt`, :func:`evaluate_clt`, :func:`save_clt` / :func:`load_clt`
  (circuit-tracer's layout, also :func:`save_transcoder_set`); :data:`TRAIN_CLT` (verb ``train-clt``).
- :func:`write_shards` (activations to safetensors shards on disk, resumable), :class:`ShardBuffer` (train from them:
  ``train_dictionaries(..., buffer=ShardBuffer(folder, batch_size=...))``), :func:`evaluate_on_shards`.

Names are imported on first use (importing the package costs nothing).
"""

from workbench.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "ACTIVATIONS": "circuits.dictionaries.model",
    "KINDS": "circuits.dictionaries.model",
    "Dictionary": "circuits.dictionaries.model",
    "transcoders_by_layer": "circuits.dictionaries.transcoder_set",
    "DictionaryConfigError": "circuits.dictionaries.model",
    "expansion_width": "circuits.dictionaries.model",
    "DictSpec": "circuits.dictionaries.train",
    "TrainDictConfig": "circuits.dictionaries.train",
    "train_dictionaries": "circuits.dictionaries.train",
    "evaluate_dictionaries": "circuits.dictionaries.evaluate",
    "load_dictionary": "circuits.dictionaries.saelens_io",
    "save_dictionary": "circuits.dictionaries.saelens_io",
    "corpus_source": "circuits.dictionaries.buffer",
    "EVAL_DICT": "circuits.dictionaries.analysis",
    "TRAIN_DICT": "circuits.dictionaries.analysis",
    "EvalDictionaryConfig": "circuits.dictionaries.analysis",
    "TrainDictionaryConfig": "circuits.dictionaries.analysis",
    "run_dictionaries": "circuits.dictionaries.analysis",
    "CrossLayerTranscoder": "circuits.dictionaries.clt",
    "CltSpec": "circuits.dictionaries.clt_train",
    "train_clt": "circuits.dictionaries.clt_train",
    "evaluate_clt": "circuits.dictionaries.clt_eval",
    "save_clt": "circuits.dictionaries.clt_io",
    "load_clt": "circuits.dictionaries.clt_io",
    "save_transcoder_set": "circuits.dictionaries.clt_io",
    "load_circuit_tracer": "circuits.dictionaries.clt_io",
    "TRAIN_CLT": "circuits.dictionaries.clt_analysis",
    "TrainCltConfig": "circuits.dictionaries.clt_analysis",
    "write_shards": "circuits.dictionaries.shards",
    "ShardBuffer": "circuits.dictionaries.shard_buffer",
    "evaluate_on_shards": "circuits.dictionaries.shard_eval",
})

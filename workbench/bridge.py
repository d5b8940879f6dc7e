"""Booting a Hugging Face folder as a transformer-lens ``TransformerBridge`` in compatibility mode, with or without
the library's weight processing, and in float64 without float32 rounding. :func:`workbench.models.load_model` resolves
specs and calls :func:`boot`; the zoo's reports call it on their own checkpoint folders."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any


def boot(folder: str | Path, *, device: str, dtype: Any, weight_processing: bool = True) -> Any:
    """The bridge of the model in ``folder`` on ``device`` in ``dtype`` (a torch dtype; None: float32), in compatibility mode and
    eval mode; ``weight_processing`` as in :func:`workbench.models.load_model`."""
    import torch
    import transformer_lens.model_bridge.sources.transformers  # noqa: F401  (attaches boot_transformers)
    from transformer_lens.model_bridge import TransformerBridge

    dtype = dtype or torch.float32
    bridge = TransformerBridge.boot_transformers(str(folder), device=device, dtype=dtype)
    if not weight_processing:
        bridge.enable_compatibility_mode(no_processing=True)
    elif dtype == torch.float64:
        with _processing_in_float64():
            bridge.enable_compatibility_mode()
    else:
        bridge.enable_compatibility_mode()
    bridge.eval()
    return bridge


@contextmanager
def _processing_in_float64():
    """While active, the library's weight processing runs its steps in the weights' own dtype (float64).

    transformer-lens 4's ``ProcessWeights.process_weights`` casts every tensor that is not float32 to float32 before
    its steps and back after (meant for float16 / bfloat16), which leaves a float64 model's processed weights with
    float32 rounding. This runs the same steps, in the same order and with the same guards, without that cast.
    """
    from transformer_lens.weight_processing import ProcessWeights

    original = ProcessWeights.__dict__["process_weights"]

    def process(state_dict, cfg, fold_ln=True, center_writing_weights=True, center_unembed=True,
                fold_value_biases=True, refactor_factored_attn_matrices=False, adapter=None):
        P = ProcessWeights
        norm = getattr(cfg, "normalization_type", "LN")
        if fold_ln and adapter and not getattr(adapter, "supports_fold_ln", True):
            fold_ln = False
        if fold_ln and norm in ("LN", "LNPre"):
            state_dict = P.fold_layer_norm(state_dict, cfg, fold_biases=True, center_weights=True, adapter=adapter)
        elif fold_ln and norm in ("RMS", "RMSPre"):
            state_dict = P.fold_layer_norm(state_dict, cfg, fold_biases=False, center_weights=False, adapter=adapter)
        if center_writing_weights and adapter and not getattr(adapter, "supports_center_writing_weights", True):
            center_writing_weights = False
        centre = center_writing_weights and norm in ("LN", "LNPre") and not getattr(cfg, "final_rms", False)
        if centre:
            state_dict = P.center_writing_weights(state_dict, cfg, adapter=adapter)
        if center_unembed:
            state_dict = P.center_unembed(state_dict, cfg=cfg, adapter=adapter)
        if fold_value_biases:
            state_dict = P.fold_value_biases(state_dict, cfg, adapter=adapter)
            if centre:
                for layer in range(cfg.n_layers):
                    key = P._get_param_key(f"blocks.{layer}.attn.b_O", adapter)
                    if key in state_dict:
                        b_O = P.convert_tensor_to_tl_format(key, state_dict, state_dict.get(key), cfg, adapter, layer)
                        state_dict[key] = P.convert_tensor_to_hf_format(key, b_O - b_O.mean(), cfg, adapter, layer)
        if refactor_factored_attn_matrices:
            state_dict = P.refactor_factored_attn_matrices(state_dict, cfg, adapter=adapter)
        return state_dict

    ProcessWeights.process_weights = staticmethod(process)
    try:
        yield
    finally:
        ProcessWeights.process_weights = original

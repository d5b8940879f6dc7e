"""Shared fixtures: no network, an isolated cache, small deterministic models."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# dashboard pages import their shared helpers from app/, which `streamlit run app/Home.py` puts on the path
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))


class NetworkBlocked(RuntimeError):
    """Raised when a test tries to open a network connection."""


def _is_loopback(address: object) -> bool:
    if isinstance(address, tuple) and address:
        host = str(address[0])
        return host in ("localhost", "::1") or host.startswith("127.")
    return isinstance(address, (str, bytes))  # AF_UNIX paths are local


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    """Make every socket connection fail, except to this machine itself (loopback, unix sockets)."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_create = socket.create_connection

    def guarded_connect(self, address):
        if not _is_loopback(address):
            raise NetworkBlocked(f"tests must not use the network (tried to connect to {address!r})")
        return real_connect(self, address)

    def guarded_connect_ex(self, address):
        if not _is_loopback(address):
            raise NetworkBlocked(f"tests must not use the network (tried to connect to {address!r})")
        return real_connect_ex(self, address)

    def guarded_create(address, *args, **kwargs):
        if not _is_loopback(address):
            raise NetworkBlocked(f"tests must not use the network (tried to connect to {address!r})")
        return real_create(address, *args, **kwargs)

    socket.socket.connect = guarded_connect
    socket.socket.connect_ex = guarded_connect_ex
    socket.create_connection = guarded_create
    yield
    socket.socket.connect = real_connect
    socket.socket.connect_ex = real_connect_ex
    socket.create_connection = real_create


@pytest.fixture(autouse=True, scope="session")
def _workbench_home(tmp_path_factory):
    """An isolated cache for the whole session (models are converted or trained once, into it)."""
    home = tmp_path_factory.mktemp("workbench-home")
    os.environ["WORKBENCH_HOME"] = str(home)
    os.environ.pop("WORKBENCH_RUNS", None)
    yield home


@pytest.fixture(scope="session")
def smollm2_reference(_workbench_home):
    """transformers' own SmolLM2 model and tokenizer loaded from the bundled GGUF file (the reference)."""
    from workbench.smollm2 import load_hf_from_gguf

    return load_hf_from_gguf()


@pytest.fixture(scope="session")
def smollm2(smollm2_reference):
    """SmolLM2-135M through the workbench's loading path (converted once into the session cache)."""
    from workbench.models import load_model, models_dir
    from workbench.smollm2 import convert

    model, tokenizer = smollm2_reference
    convert(models_dir() / "smollm2-135m", model=model, tokenizer=tokenizer)
    return load_model("smollm2-135m", device="cpu")


# The small variant of toy/induction-2l: same architecture and data, shorter sequences, 1200 steps (about 25 s).
SMALL_INDUCTION = dict(half_len=16, steps=1200, n_checkpoints=6, resume_every=200)


@pytest.fixture(scope="session")
def tiny_toy(tmp_path_factory):
    """The small induction toy, trained once per session: (folder, config, bridge of its last step)."""
    from workbench.induction_toy import InductionConfig, train_induction
    from workbench.models import load_model

    cfg = InductionConfig(**SMALL_INDUCTION)
    folder = tmp_path_factory.mktemp("tiny-toy")
    train_induction(cfg, folder, progress=False)
    bridge = load_model(str(folder / "checkpoints" / f"step-{cfg.steps:07d}"), device="cpu")
    return folder, cfg, bridge


@pytest.fixture(scope="session")
def induction_2l(_workbench_home):
    """The zoo's ``toy/induction-2l`` itself, built once into the session cache (about 40 s): its bridge."""
    from workbench.models import load_model

    return load_model("toy/induction-2l", device="cpu")


def _save_random_model(folder, config):
    """Save a randomly initialised transformers model with the toy word-level tokenizer; return its bridge."""
    import torch
    from transformers import AutoModelForCausalLM

    from workbench.induction_toy import make_tokenizer
    from workbench.models import load_model

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(folder)
    make_tokenizer(config.vocab_size - 1).save_pretrained(folder)
    return load_model(str(folder), device="cpu")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    """A random GPT-style model (LayerNorm, learned positions, GELU MLP, biases): 2 layers, d_model 32, 4 heads."""
    from transformers import GPT2Config

    config = GPT2Config(vocab_size=65, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=64,
                        eos_token_id=64, activation_function="gelu_new")
    return _save_random_model(tmp_path_factory.mktemp("tiny-gpt2"), config)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A random Llama-style model (RMSNorm, rotary, grouped-query attention, SiLU-gated MLP): 2 layers, d_model 32."""
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=65, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, bos_token_id=64, eos_token_id=64,
                         pad_token_id=64, tie_word_embeddings=False)
    return _save_random_model(tmp_path_factory.mktemp("tiny-llama"), config)


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory):
    """A small ViT (ReLU, d_model 32, 2 layers, 4x4 patches) trained for 300 steps on the digits (about 3 s of CPU;
    accuracy about 0.7): its bridge."""
    from workbench.models import load_model
    from workbench.zoo_vit import VisionMember, train_vit

    cfg = VisionMember("tiny-vit", 32, 2, "relu", steps=300, lr=5e-3, n_checkpoints=2)
    folder = tmp_path_factory.mktemp("tiny-vit")
    train_vit(cfg, folder, progress=False)
    return load_model(str(folder / "checkpoints" / f"step-{cfg.steps:07d}"), device="cpu")

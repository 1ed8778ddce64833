"""Checkpoints written before the GPT's blocks moved to tokgen.nn still load and give the same numbers.

``fixtures/gpt_tiny.safetensors`` was written by the code before the move: a small GPT with every optional part
(grouped-query attention, EOS, a factorized vocabulary) under its state-dict keys (``model.*``), a fixed input and
the outputs it gave (full forward, the second output stage, and a cached prefix plus one cached step).
"""
import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tokgen.generator import GPT, GPTConfig

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "gpt_tiny.safetensors")


def test_gpt_fixture_loads_with_the_same_keys_and_outputs():
    with safe_open(FIXTURE, framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    tensors = load_file(FIXTURE)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    model = GPT(GPTConfig(**config)).eval()
    assert sorted(model.state_dict()) == sorted(state)
    model.load_state_dict(state, strict=True)
    tokens, labels = tensors["input.tokens"], tensors["input.labels"]
    with torch.no_grad():
        logits, h = model(tokens, labels, return_hidden=True)
        lo = model.lo_logits(h, torch.zeros(h.shape[:2], dtype=torch.long))
        caches = model.new_cache(2, 6)
        x = model.embed(tokens, labels)
        cached, _ = model.forward_cached(x[:, :4], 0, caches)
        step, _ = model.forward_cached(x[:, 4:5], 4, caches)
    for name, value in (("logits", logits), ("lo_logits", lo), ("cached", cached), ("step", step)):
        torch.testing.assert_close(value, tensors[f"expected.{name}"], rtol=1e-5, atol=1e-5, msg=name)

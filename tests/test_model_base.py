"""Every tokgen model loads the same ways: ``from_checkpoint`` (a Lightning checkpoint, EMA weights first) and
``save_pretrained`` / ``from_pretrained`` (config.json + model.safetensors); files written by older versions
(tests/fixtures, see make_legacy_models.py there) still load and give the outputs they gave then."""
import os

import pytest
import torch
from safetensors.torch import load_file

from tokgen.checkpoint import load_checkpoint
from tokgen.generator import GPT
from tokgen.tokenizers import FlowTokenizer, HaltingTokenizer, Tokenizer1D, load_tokenizer
from tokgen.video.tokenizer import VideoTokenizer

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
LEGACY = {"tokenizer1d": Tokenizer1D, "halting_tokenizer": HaltingTokenizer, "flow_tokenizer": FlowTokenizer,
          "video_tokenizer": VideoTokenizer, "video_patch_tokenizer": VideoTokenizer, "generator": GPT}


def outputs_of(model, ref: dict) -> dict:
    """The outputs make_legacy_models.py stored for ``model``'s kind, recomputed from the same inputs."""
    with torch.no_grad():
        if isinstance(model, GPT):
            return {"logits": model(ref["tokens"], ref["labels"])}
        if isinstance(model, VideoTokenizer):
            recon, extras = model(ref["video"], ref["ids"] if model.config.kind == "trajectory" else None)
            return {"recon": recon, "tokens": extras["tokens"]}
        codes = model.encode(ref["images"])
        out = {"codes": codes, "recon_k2": model.decode(codes[:, :2])}
        if isinstance(model, HaltingTokenizer):
            out["halting_codes"], out["lengths"] = model.encode(ref["images"], target_error=0.1)
        return out


def assert_outputs(got: dict, ref: dict) -> None:
    """Codes and lengths exactly; float outputs up to summation order (thread counts differ between runs)."""
    for key, value in got.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, ref[key], rtol=1e-5, atol=1e-6, msg=key)
        else:
            assert torch.equal(value, ref[key]), key


@pytest.mark.parametrize("name", sorted(LEGACY))
def test_legacy_checkpoints_load_and_give_their_outputs(name):
    path = os.path.join(FIXTURES, f"{name}.ckpt")
    cls = LEGACY[name]
    model = cls.from_checkpoint(path)
    assert type(model) is cls
    state = load_checkpoint(path)["state_dict"]
    prefix = "generator" if cls is GPT else "tokenizer"
    ema = any(k.startswith(f"ema_{prefix}.") for k in state)
    for use_ema, want in ((True, f"ema_{prefix}." if ema else f"{prefix}."), (False, f"{prefix}.")):
        loaded = cls.from_checkpoint(path, use_ema=use_ema).state_dict()
        assert loaded.keys() == {k[len(want):] for k in state if k.startswith(want)}
        for k, v in loaded.items():
            assert torch.equal(v, state[want + k]), k
    ref = load_file(os.path.join(FIXTURES, f"{name}.outputs.safetensors"))
    assert_outputs(outputs_of(model, ref), ref)
    if cls is not GPT and cls is not VideoTokenizer:
        assert type(load_tokenizer(path)) is cls


def test_legacy_checkpoint_metadata_reaches_the_model():
    gpt = GPT.from_checkpoint(os.path.join(FIXTURES, "generator.ckpt"))
    assert gpt.tokenizer_info == {"codebook_size": 125, "num_tokens": 4, "checkpoint": None}
    video = VideoTokenizer.from_checkpoint(os.path.join(FIXTURES, "video_tokenizer.ckpt"))
    assert video.extraction is None and video.extraction_settings() == {"max_trajectories": 4}


def test_legacy_save_pretrained_folder_loads():
    model = Tokenizer1D.from_pretrained(os.path.join(FIXTURES, "tokenizer1d_pretrained"))
    ref = load_file(os.path.join(FIXTURES, "tokenizer1d_pretrained.outputs.safetensors"))
    assert_outputs(outputs_of(model, ref), ref)

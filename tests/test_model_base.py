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
from tokgen.video import PatchVideoTokenizer, TrajectoryTokenizer, VideoTokenizer

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
LEGACY = {"tokenizer1d": Tokenizer1D, "halting_tokenizer": HaltingTokenizer, "flow_tokenizer": FlowTokenizer,
          "video_tokenizer": TrajectoryTokenizer, "video_patch_tokenizer": PatchVideoTokenizer, "generator": GPT}


def outputs_of(model, ref: dict) -> dict:
    """The outputs make_legacy_models.py stored for ``model``'s kind, recomputed from the same inputs."""
    with torch.no_grad():
        if isinstance(model, GPT):
            return {"logits": model(ref["tokens"], ref["labels"])}
        if isinstance(model, VideoTokenizer):
            recon, extras = model(ref["video"], ref["ids"] if model.needs_trajectories else None)
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
    if cls is not GPT and not issubclass(cls, VideoTokenizer):
        assert type(load_tokenizer(path)) is cls


def test_legacy_checkpoint_metadata_reaches_the_model():
    gpt = GPT.from_checkpoint(os.path.join(FIXTURES, "generator.ckpt"))
    assert gpt.tokenizer_info == {"codebook_size": 125, "num_tokens": 4, "checkpoint": None}
    video = TrajectoryTokenizer.from_checkpoint(os.path.join(FIXTURES, "video_tokenizer.ckpt"))
    assert video.extraction is None and video.extraction_settings() == {"max_trajectories": 4}


def test_legacy_save_pretrained_folder_loads():
    model = Tokenizer1D.from_pretrained(os.path.join(FIXTURES, "tokenizer1d_pretrained"))
    ref = load_file(os.path.join(FIXTURES, "tokenizer1d_pretrained.outputs.safetensors"))
    assert_outputs(outputs_of(model, ref), ref)


@pytest.mark.parametrize("name,cls", [("video_tokenizer", TrajectoryTokenizer),
                                      ("video_patch_tokenizer", PatchVideoTokenizer)])
def test_video_files_written_before_the_split_load_into_the_class_of_their_kind(name, cls):
    """Checkpoints and save_pretrained folders from the single VideoTokenizer class (config ``kind`` "trajectory" or
    "patch", both config's fields) load, through the family loader and the class itself, into the class of their
    kind, and give the outputs they gave then; the other class names the right one."""
    other = PatchVideoTokenizer if cls is TrajectoryTokenizer else TrajectoryTokenizer
    ref = load_file(os.path.join(FIXTURES, f"{name}.outputs.safetensors"))  # the pretrained folders hold the EMA
    ckpt, folder = os.path.join(FIXTURES, f"{name}.ckpt"), os.path.join(FIXTURES, f"{name}_pretrained")
    for model in (VideoTokenizer.from_checkpoint(ckpt), cls.from_checkpoint(ckpt),
                  VideoTokenizer.from_pretrained(folder), cls.from_pretrained(folder)):
        assert type(model) is cls and type(model.config) is cls.config_class and not model.training
        assert model.extraction is None
        assert_outputs(outputs_of(model, ref), ref)
    with pytest.raises(ValueError, match=f"load it with {cls.__name__}"):
        other.from_checkpoint(ckpt)
    with pytest.raises(ValueError, match=f"load it with {cls.__name__}"):
        other.from_pretrained(folder)


# ------------------------------------------------------------------------------------- save_pretrained round trips
def tiny_models() -> dict:
    from tokgen.generator import GPTConfig
    from tokgen.tokenizers import FlowTokenizerConfig, HaltingConfig, TokenizerConfig
    from tokgen.video import PatchVideoTokenizerConfig, TrajectoryTokenizerConfig

    tok = dict(image_size=8, patch_size=4, width=16, encoder_depth=1, decoder_depth=1, num_heads=2, num_tokens=4,
               quantizer={"kind": "fsq", "levels": [5, 5, 5]})
    video = dict(image_size=16, num_frames=2, width=16, num_heads=2, encoder_depth=1, decoder_depth=1)
    gpt = dict(vocab_size=125, block_size=4, num_classes=2, dim=16, n_layer=1, n_head=2, multiple_of=16)
    return {
        "tokenizer1d": Tokenizer1D(TokenizerConfig.from_dict({**tok, "token_mixing": True})),
        "halting": HaltingTokenizer(HaltingConfig.from_dict({**tok, "eps_bins": 4, "halt_head_hidden": 8})),
        "flow": FlowTokenizer(FlowTokenizerConfig.from_dict({**tok, "sample_steps": 2})),
        "video_trajectory": TrajectoryTokenizer(TrajectoryTokenizerConfig(patch_size=8, decoder_width=16, max_tokens=4,
                                                                          **video)),
        "video_patch": PatchVideoTokenizer(PatchVideoTokenizerConfig(tubelet=[1, 8, 8], **video)),
        "gpt": GPT(GPTConfig(**gpt, use_eos=True, vocab_factors=[5, 25])),
        "gpt_tied": GPT(GPTConfig(**{**gpt, "block_size": 5}, tie_weights=True)),
    }


def reference_inputs() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"images": torch.rand(2, 3, 8, 8, generator=g) * 2 - 1, "video": torch.rand(2, 2, 3, 16, 16, generator=g) * 2 - 1,
            "ids": torch.randint(0, 3, (2, 2, 16, 16), generator=g), "tokens": torch.randint(0, 125, (2, 4), generator=g),
            "labels": torch.tensor([0, 2])}


@pytest.mark.parametrize("name", sorted(tiny_models()))
def test_save_pretrained_then_from_pretrained_gives_the_same_model(tmp_path, name):
    torch.manual_seed(0)
    model = tiny_models()[name].eval()
    with torch.no_grad():  # move every weight off its init (zero-initialised layers included)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    if isinstance(model, GPT):
        model.tokenizer_info = {"codebook_size": 125, "num_tokens": 4}
    if isinstance(model, VideoTokenizer):
        model.extraction = {"max_trajectories": 4, "min_area": 0.01}
    model.save_pretrained(tmp_path / name)
    assert sorted(os.listdir(tmp_path / name)) == ["config.json", "model.safetensors"]
    loaded = type(model).from_pretrained(tmp_path / name)
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    if isinstance(model, VideoTokenizer):  # the family loader picks the class from the saved config's kind
        assert type(VideoTokenizer.from_pretrained(tmp_path / name)) is type(model)
    assert getattr(loaded, "tokenizer_info", None) == getattr(model, "tokenizer_info", None)
    assert getattr(loaded, "extraction", None) == getattr(model, "extraction", None)
    state = model.state_dict()
    assert loaded.state_dict().keys() == state.keys()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k
    ref = reference_inputs()
    want = outputs_of(model, ref)
    for key, value in outputs_of(loaded, ref).items():
        assert torch.equal(value, want[key]), key
    if name == "gpt_tied":
        assert loaded.head.weight is loaded.tok_embedding.weight


def test_from_pretrained_names_the_class_of_another_kind(tmp_path):
    tiny_models()["halting"].save_pretrained(tmp_path / "halting")
    with pytest.raises(ValueError, match="holds a 'halting_tokenizer' model.*HaltingTokenizer.from_pretrained"):
        GPT.from_pretrained(tmp_path / "halting")
    with pytest.raises(ValueError, match="unknown generator config keys"):
        (tmp_path / "halting" / "config.json").write_text('{"width": 3}')
        GPT.from_pretrained(tmp_path / "halting")


def test_from_checkpoint_names_the_class_of_another_kind():
    with pytest.raises(ValueError, match="not a tokgen generator checkpoint.*kind='halting_tokenizer'"):
        GPT.from_checkpoint(os.path.join(FIXTURES, "halting_tokenizer.ckpt"))
    with pytest.raises(ValueError, match="not a tokgen tokenizer checkpoint.*HaltingTokenizer.from_checkpoint"):
        Tokenizer1D.from_checkpoint(os.path.join(FIXTURES, "halting_tokenizer.ckpt"))


def test_every_model_kind_names_one_class():
    from tokgen.model import TokgenModel

    assert {k: c.__name__ for k, c in TokgenModel.kinds.items()} == {
        "tokenizer1d": "Tokenizer1D", "halting_tokenizer": "HaltingTokenizer", "flow_tokenizer": "FlowTokenizer",
        "video_tokenizer": "VideoTokenizer", "generator": "GPT"}
    assert Tokenizer1D.class_for_kind("flow_tokenizer") is FlowTokenizer
    assert Tokenizer1D.class_for_kind("generator") is Tokenizer1D  # outside the family: the caller's class


# ------------------------------------------------------------------------------------- training modules
def _legacy_fields(config: dict, legacy: dict) -> dict:
    """The fields of ``config`` that ``legacy`` has, nested configs (e.g. the quantizer's) included: new fields
    with defaults may be added at any level."""
    return {k: _legacy_fields(config[k], v) if isinstance(v, dict) and isinstance(config.get(k), dict)
            else config.get(k) for k, v in legacy.items()}


@pytest.mark.parametrize("name", sorted(LEGACY))
def test_training_modules_still_write_what_legacy_checkpoints_hold(name):
    """The same state-dict keys and every checkpoint["tokgen"] entry a checkpoint of the earlier modules held."""
    from tokgen.generator import GPTConfig
    from tokgen.lit import FlowModule, GeneratorModule, HaltingModule, TokenizerModule
    from tokgen.lit.video import VideoTokenizerModule
    from tokgen.tokenizers import FlowTokenizerConfig, HaltingConfig, TokenizerConfig
    from tokgen.video import VideoTokenizerConfig

    legacy = load_checkpoint(os.path.join(FIXTURES, f"{name}.ckpt"))
    meta = legacy["tokgen"]
    ema = 0.9 if any(k.startswith("ema_") for k in legacy["state_dict"]) else 0.0
    module = {
        "tokenizer1d": lambda: TokenizerModule(TokenizerConfig.from_dict(meta["tokenizer_config"]), ema_decay=ema),
        "halting_tokenizer": lambda: HaltingModule(HaltingConfig.from_dict(meta["tokenizer_config"]), ema_decay=ema),
        "flow_tokenizer": lambda: FlowModule(FlowTokenizerConfig.from_dict(meta["tokenizer_config"]), ema_decay=ema),
        "video_tokenizer": lambda: VideoTokenizerModule(
            VideoTokenizerConfig.from_dict(meta["video_tokenizer_config"]), ema_decay=ema),
        "generator": lambda: GeneratorModule(GPTConfig.from_dict(meta["generator_config"]), ema_decay=ema),
    }[name.replace("video_patch_tokenizer", "video_tokenizer")]()
    if name == "generator":
        module.tokenizer_info = meta["tokenizer"]
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    assert list(ckpt["state_dict"]) == list(legacy["state_dict"])
    assert set(meta) <= set(ckpt["tokgen"]), set(meta) - set(ckpt["tokgen"])
    for key, value in meta.items():
        if key.endswith("_config"):  # configs may gain fields with defaults; every legacy field keeps its value
            if key == "video_tokenizer_config":  # except the other video kind's fields, which the model never read
                other = {"trajectory": {"tubelet"}, "patch": {"patch_size", "decoder_width", "max_tokens"}}
                value = {k: v for k, v in value.items() if k not in other[value["kind"]]}
                assert set(ckpt["tokgen"][key]) == set(value), key
            assert _legacy_fields(ckpt["tokgen"][key], value) == value, key
        else:
            assert ckpt["tokgen"][key] == value, key
    assert type(module.trained_model) is LEGACY[name]  # built once, of its own class (HaltingModule included)

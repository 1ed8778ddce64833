"""The 1D tokenizer model: masks, prefix decoding, nested dropout, export and loading."""
import pytest
import torch

from tokgen.nn import unpatchify, PatchEmbed
from tokgen.tokenizers import (
    Tokenizer1D, apply_nested_dropout, power_of_two_budgets, register_attention_mask, sample_keep_lengths,
)


def test_patchify_roundtrip():
    x = torch.randn(2, 3, 16, 16)
    p = 4
    # (B, C, g, p, g, p) -> (B, g*g, p*p*C) in the layout unpatchify expects
    patches = x.view(2, 3, 4, p, 4, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, p * p * 3)
    assert torch.equal(unpatchify(patches, p, 3), x)


def test_image_size_not_divisible_by_patch(tiny_config):
    with pytest.raises(ValueError, match="image_size=30 is not divisible by patch_size=4"):
        tiny_config(image_size=30)
    with pytest.raises(ValueError, match="image_size=30"):
        PatchEmbed(30, 4, 3, 8)


def test_causal_register_mask():
    m = register_attention_mask(num_patches=3, num_tokens=4, mode="causal")
    assert m[:3, :3].all() and not m[:3, 3:].any()  # patches never see registers
    assert m[3:, :3].all()  # registers see all patches
    assert torch.equal(m[3:, 3:], torch.tril(torch.ones(4, 4, dtype=torch.bool)))
    assert register_attention_mask(3, 4, "bidirectional") is None


def test_causal_tokens_do_not_depend_on_later_registers(tiny_config):
    """With causal registers, changing register j's learned input leaves tokens < j unchanged."""
    torch.manual_seed(0)
    model = Tokenizer1D(tiny_config(register_attention="causal")).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    before = model.encode_latents(x)
    with torch.no_grad():
        model.registers[:, 5] += torch.randn(model.registers.shape[-1])
    after = model.encode_latents(x)
    assert torch.allclose(before[:, :5], after[:, :5], atol=1e-6)
    assert not torch.allclose(before[:, 5:], after[:, 5:])
    bi = Tokenizer1D(tiny_config(register_attention="bidirectional")).eval()
    b0 = bi.encode_latents(x)
    with torch.no_grad():
        bi.registers[:, 5] += torch.randn(bi.registers.shape[-1])
    assert not torch.allclose(b0[:, :5], bi.encode_latents(x)[:, :5])


def test_token_mixing_keeps_prefix_property_and_gives_a_linear_path(tiny_config):
    """token_mixing: causal tokens still ignore later registers, a masked suffix still decodes like a prefix,
    and each token is tied to the patches by its own mixing weights (no longer identical at initialisation)."""
    torch.manual_seed(0)
    model = Tokenizer1D(tiny_config(register_attention="causal", token_mixing=True)).eval()
    assert model.enc_mix.shape == (8, 16) and model.dec_mix.shape == (16, 8)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    before = model.encode_latents(x)
    with torch.no_grad():
        model.registers[:, 5] += torch.randn(model.registers.shape[-1])
        model.enc_mix[6] += 1.0
    after = model.encode_latents(x)
    assert torch.allclose(before[:, :5], after[:, :5], atol=1e-6)
    assert not torch.allclose(before[:, 5:], after[:, 5:])
    codes = model.encode(x)
    z = model.quantizer.codes_to_latents(codes)
    assert torch.allclose(model.decode(codes[:, :3]), model.decode_latents(z, torch.full((2,), 3)), atol=1e-5)
    # without mixing, registers are one learned vector each and ignore the image until attention mixes them
    plain = Tokenizer1D(tiny_config(token_mixing=False))
    assert plain.enc_mix is None and plain.dec_mix is None
    n_extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    assert n_extra == 2 * 8 * 16


@pytest.mark.parametrize("kind", ["fsq", "vq", "binary", "identity"])
def test_encode_decode_every_prefix(tiny_config, kind):
    q = {"fsq": {"kind": "fsq", "levels": [5, 5, 5]}, "vq": {"kind": "vq", "dim": 8, "codebook_size": 64},
         "binary": {"kind": "binary", "dim": 8}, "identity": {"kind": "identity", "dim": 8}}[kind]
    model = Tokenizer1D(tiny_config(quantizer=q)).eval()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    codes = model.encode(x)
    assert codes.shape[:2] == (3, 8)
    outs = [model.decode(codes[:, :k]) for k in range(1, 9)]
    assert all(o.shape == x.shape for o in outs)
    # decoding a prefix equals decoding full codes with the rest masked out
    z = model.quantizer.codes_to_latents(codes)
    keep = torch.full((3,), 3)
    assert torch.allclose(outs[2], model.decode_latents(z, keep), atol=1e-5)


def test_decode_budget_out_of_range(tiny_config):
    model = Tokenizer1D(tiny_config()).eval()
    codes = model.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"k=0 is outside the accepted range 1\.\.8"):
        model.decode(codes[:, :0])
    with pytest.raises(ValueError, match=r"k=9 is outside the accepted range 1\.\.8"):
        model.decode(torch.cat([codes, codes[:, :1]], dim=1))


def test_nested_dropout_sampling():
    g = torch.Generator().manual_seed(0)
    k = sample_keep_lengths(4000, 32, "uniform", generator=g)
    assert k.min() == 1 and k.max() == 32 and abs(k.float().mean().item() - 16.5) < 0.6
    k2 = sample_keep_lengths(1000, 32, "pow2", generator=g)
    assert set(k2.tolist()) == {1, 2, 4, 8, 16, 32}
    assert power_of_two_budgets(24) == [1, 2, 4, 8, 16, 24]
    k3 = sample_keep_lengths(1000, 32, "pow2_full", generator=g)
    assert (k3[:500] == 32).all() and set(k3[500:].tolist()) == {1, 2, 4, 8, 16, 32}
    k4 = sample_keep_lengths(1000, 32, "pow2_dual", generator=g)  # the prefix half of a dual decode: k < K
    assert set(k4.tolist()) == {1, 2, 4, 8, 16}
    assert (sample_keep_lengths(5, 8, "none") == 8).all()
    with pytest.raises(ValueError, match="'bogus'"):
        sample_keep_lengths(2, 8, "bogus")
    tokens = torch.randn(2, 4, 3)
    mask = torch.full((3,), 7.0)
    out = apply_nested_dropout(tokens, torch.tensor([1, 3]), mask)
    assert torch.equal(out[0, :1], tokens[0, :1]) and (out[0, 1:] == 7).all()
    assert torch.equal(out[1, :3], tokens[1, :3]) and (out[1, 3:] == 7).all()


def test_save_pretrained_roundtrip(tmp_path, tiny_config):
    torch.manual_seed(0)
    model = Tokenizer1D(tiny_config(quantizer={"kind": "vq", "dim": 8, "codebook_size": 64})).eval()
    model.save_pretrained(tmp_path / "tok")
    files = sorted(p.name for p in (tmp_path / "tok").iterdir())
    assert "config.json" in files and "model.safetensors" in files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)  # nothing that executes code on load
    loaded = Tokenizer1D.from_pretrained(tmp_path / "tok").eval()
    assert loaded.config == model.config
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    codes = model.encode(x)
    assert torch.equal(loaded.encode(x), codes)
    for k in (1, 4, 8):
        assert torch.equal(loaded.decode(codes[:, :k]), model.decode(codes[:, :k]))


def test_pow2_dual_training_step_decodes_full_and_prefix(tiny_config):
    """nested_dropout="pow2_dual": one encoder pass, the decoder sees every example twice (all K, then k < K)."""
    from tokgen.lit import TokenizerModule
    from tokgen.lit.tokenizer import OptimConfig

    torch.manual_seed(0)
    module = TokenizerModule(tokenizer=tiny_config(), nested_dropout="pow2_dual", ema_decay=0.0,
                             optim=OptimConfig(grad_clip=None))
    seen = []
    original = module.tokenizer.decode_latents
    module.tokenizer.decode_latents = lambda z, keep=None: seen.append((z.shape[0], keep.clone())) or original(z, keep)
    module.optimizers = lambda: torch.optim.SGD(module.parameters(), lr=0.0)
    module.lr_schedulers = lambda: torch.optim.lr_scheduler.LambdaLR(module.optimizers(), lambda s: 1.0)
    module.manual_backward = lambda loss: loss.backward()
    module.log_dict = module.log = lambda *a, **k: None
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    loss = module.training_step({"image": images}, 0)
    (rows, keep), = seen
    K = module.tokenizer.num_tokens
    assert rows == 6 and (keep[:3] == K).all() and (keep[3:] < K).all() and torch.isfinite(loss)

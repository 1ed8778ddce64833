"""Rectified-flow decoder and flow tokenizer (pixel and AutoencoderKL latent space): shapes, deterministic sampling,
every budget and step count, the VAE path contract, training, checkpoints, and `tokgen eval` / `tokgen sample`.

Latent-mode tests use a tiny *randomly initialised* diffusers AutoencoderKL (2 blocks of 8/16 channels, 4 latent
channels, downsampling 2) saved to a temporary folder: an honest stand-in that tests the plumbing (loading, scaling,
shapes, gradients kept out of the VAE), not reconstruction quality. The REPA feature network is an untrained
TorchScript conv net for the same reason.
"""
import copy
import json

import pytest
import torch
import yaml
from PIL import Image

from tokgen.cli import lightning_main, main
from tokgen.data import ShapesDataModule
from tokgen.generator import GPT, GPTConfig, tokenizer_identity
from tokgen.lit import FlowModule
from tokgen.metrics import FeatureNet, save_feature_extractor
from tokgen.tokenizers import FlowTokenizer, FlowTokenizerConfig, Tokenizer1D, TokenizerConfig, load_tokenizer
from tokgen.tokenizers.flow_decoder import repa_alignment

torch.set_num_threads(1)

TINY = dict(image_size=16, patch_size=4, width=32, encoder_depth=1, decoder_depth=2, num_heads=2, num_tokens=8,
            quantizer={"kind": "fsq", "levels": [5, 5, 5]}, sample_steps=2)


def flow_config(**overrides) -> FlowTokenizerConfig:
    return FlowTokenizerConfig.from_dict({**TINY, **overrides})


def shapes_images(n: int = 8, size: int = 16) -> torch.Tensor:
    dm = ShapesDataModule(image_size=size, train_size=n, val_size=n, test_size=n)
    dm.setup("fit")
    return torch.stack([dm.train_set[i]["image"] for i in range(n)])


def save_checkpoint(path, tok: FlowTokenizer) -> str:
    """A checkpoint in the layout `tokgen fit` with FlowModule writes."""
    torch.save({"state_dict": {f"tokenizer.{k}": v for k, v in tok.state_dict().items()},
                "tokgen": {"kind": "flow_tokenizer", "tokenizer_config": tok.config.to_dict()}}, path)
    return str(path)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A tiny randomly initialised AutoencoderKL (test stand-in, see the module docstring), in diffusers' layout."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.5)
    path = tmp_path_factory.mktemp("vae") / "tiny_vae"
    vae.save_pretrained(path)
    return str(path)


def latent_config(vae_dir, **overrides) -> FlowTokenizerConfig:
    values = dict(space="latent", vae_path=vae_dir, latent_channels=4, vae_downsample=2, patch_size=2)
    return flow_config(**{**values, **overrides})


@pytest.fixture(scope="module")
def pixel_tok():
    torch.manual_seed(0)
    return FlowTokenizer(flow_config()).eval()


# ---------------------------------------------------------------------------------------------- decoding
def test_every_budget_and_step_count_decodes(pixel_tok):
    x = shapes_images(3)
    codes = pixel_tok.encode(x)
    assert codes.shape == (3, 8) and codes.dtype == torch.long
    for k in range(1, 9):
        for steps in (1, 3):
            images = pixel_tok.decode(codes[:, :k], steps=steps)
            assert images.shape == (3, 3, 16, 16) and torch.isfinite(images).all()
    guided = pixel_tok.decode(codes[:, :2], cfg=3.0)
    assert guided.shape == (3, 3, 16, 16) and torch.isfinite(guided).all()
    with pytest.raises(ValueError, match="token budget k=9 is outside the accepted range 1..8"):
        pixel_tok.decode(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="steps=0 must be a positive integer"):
        pixel_tok.decode(codes, steps=0)


def test_sampling_is_deterministic_for_a_seed(pixel_tok):
    # a trained-looking decoder: the zero-initialised output layer would return pure noise for any tokens
    tok = copy.deepcopy(pixel_tok)
    torch.manual_seed(1)
    for p in tok.flow.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    codes = tok.encode(shapes_images(4))
    a = tok.decode(codes[:, :4], seed=7)
    assert torch.equal(a, tok.decode(codes[:, :4], seed=7))  # same seed, same images
    assert not torch.allclose(a, tok.decode(codes[:, :4], seed=8))  # another seed, other images
    # each image's noise follows from (seed, its tokens): independent of the batch it is decoded in
    assert torch.allclose(a[2:3], tok.decode(codes[2:3, :4], seed=7), atol=1e-5)
    # guidance changes the images only when the scale is not 1
    assert not torch.allclose(a, tok.decode(codes[:, :4], seed=7, cfg=3.0))
    # an explicit generator draws the batch's noise from it, reproducibly
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(tok.decode(codes, generator=g1), tok.decode(codes, generator=g2))
    # defaults from the config, changed for a block or for good
    with tok.sampling_options(seed=7):
        assert torch.equal(tok.decode(codes[:, :4]), a)
    assert tok.sampling.seed == 0
    assert tok.configure_sampling(steps=5).steps == 5 and tok.sampling.seed == 0


# ---------------------------------------------------------------------------------------------- latent mode
def test_latent_mode_shapes_scaling_and_frozen_vae(vae_dir):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    tok = FlowTokenizer(latent_config(vae_dir))
    x = shapes_images(2)
    reference = AutoencoderKL.from_pretrained(vae_dir).eval()
    with torch.no_grad():
        expected = reference.encode(x).latent_dist.mean * reference.config.scaling_factor
    latents = tok.to_space(x)
    assert latents.shape == (2, 4, 8, 8)  # 16x16 images, downsampling 2, 4 latent channels
    assert torch.allclose(latents, expected, atol=1e-6)  # scaled by the VAE's scaling_factor (0.5 here)
    assert tok.patch_embed.num_patches == tok.flow.patch_embed.num_patches == 16  # patch 2 on the 8x8 latent grid
    codes = tok.eval().encode(x)
    assert codes.shape == (2, 8)
    images = tok.decode(codes[:, :3], steps=2)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()

    # the VAE is frozen and outside the module tree: no parameters, state dict entries or EMA copies of it
    names = [n for n, _ in tok.named_parameters()] + list(tok.state_dict())
    assert not any("vae" in n or "post_quant" in n for n in names)
    assert all(not p.requires_grad for p in tok.vae.vae.parameters())
    assert copy.deepcopy(tok).vae is tok.vae
    # gradients reach encoder and flow, never the VAE
    z_q = tok.quantize(tok.encode_registers(tok.to_space(x)))[0]
    tok.flow.loss(tok.to_space(x), z_q)["flow"].backward()
    assert tok.registers.grad is not None and tok.flow.from_token.weight.grad is not None
    assert all(p.grad is None for p in tok.vae.vae.parameters())


def test_missing_or_mismatched_vae_is_a_clear_error(vae_dir, tmp_path):
    missing = str(tmp_path / "no_vae_here")
    tok = FlowTokenizer(latent_config(vae_dir, vae_path=missing))  # builds without the VAE (recipes on meta)
    with pytest.raises(FileNotFoundError, match="AutoencoderKL not found at vae_path=.*no_vae_here"):
        tok.encode(shapes_images(1))
    module = FlowModule(tokenizer=latent_config(vae_dir, vae_path=missing))
    with pytest.raises(FileNotFoundError, match="no_vae_here"):
        module.setup("fit")  # training stops before the first step
    with pytest.raises(ValueError, match="space='latent' needs vae_path"):
        flow_config(space="latent")
    wrong = FlowTokenizer(latent_config(vae_dir, latent_channels=16))
    with pytest.raises(ValueError, match="latent_channels=4, downsampling 2.*latent_channels=16"):
        wrong.vae


# ---------------------------------------------------------------------------------------------- training
def test_training_steps_reduce_the_flow_loss():
    torch.manual_seed(0)
    tok = FlowTokenizer(flow_config())
    x = shapes_images(8)

    def held_out_loss():  # fixed times, noise and tokens: comparable before and after
        with torch.no_grad():
            z_q = tok.quantize(tok.encode_latents(x))[0]
            return tok.flow.loss(x, z_q, generator=torch.Generator().manual_seed(0))["flow"].item()

    before = held_out_loss()
    opt = torch.optim.AdamW(tok.parameters(), lr=3e-3)
    for _ in range(40):
        z_q, _, aux = tok.quantize(tok.encode_latents(x))
        keep = torch.randint(1, 9, (8,))
        loss = tok.flow.loss(x, z_q, keep, drop_prob=0.1)["flow"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_loss()
    assert after < 0.8 * before, (before, after)


def test_endpoint_examples_are_a_regression_from_the_tokens():
    """At t = 1 the noised input is pure noise, so the flow loss of an endpoint example is the squared error of
    x_hat = noise - v against x: with endpoint_prob ~ 1 every example is one, checked against that formula."""
    torch.manual_seed(0)
    tok = FlowTokenizer(flow_config()).eval()
    with torch.no_grad():  # a non-zero output layer, so v depends on the input
        for p in tok.flow.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    x = shapes_images(4)
    z_q = tok.quantize(tok.encode_latents(x))[0]
    with torch.no_grad():
        got = tok.flow.loss(x, z_q, endpoint_prob=0.999999, generator=torch.Generator().manual_seed(3))["flow"]
        g = torch.Generator().manual_seed(3)
        torch.randn(4, generator=g)  # the logit-normal draw (overridden)
        assert (torch.rand(4, generator=g) < 0.999999).all()
        noise = torch.randn(*x.shape, generator=g)
        v = tok.flow(noise, torch.ones(4), tok.flow.embed_tokens(z_q, None))[0]
        want = torch.nn.functional.mse_loss(noise - v, x)
        torch.testing.assert_close(got, want)
        # without endpoint examples the same seed gives middle times: a different loss
        plain = tok.flow.loss(x, z_q, generator=torch.Generator().manual_seed(3))["flow"]
    assert not torch.isclose(plain, got)
    with pytest.raises(ValueError, match="endpoint_prob=1.5"):
        FlowModule(flow_config(), endpoint_prob=1.5)


def test_flow_decoder_on_a_frozen_encoder_from_a_direct_tokenizer(tmp_path):
    """init_encoder copies a direct tokenizer's encoder + quantizer (same codes), freeze_encoder keeps them fixed
    while the flow decoder trains; mismatched settings and a frozen random encoder are clear errors."""
    torch.manual_seed(0)
    direct = Tokenizer1D(TokenizerConfig.from_dict({k: v for k, v in TINY.items() if k != "sample_steps"}))
    ckpt = tmp_path / "direct.ckpt"
    torch.save({"state_dict": {f"tokenizer.{k}": v for k, v in direct.state_dict().items()},
                "tokgen": {"kind": "tokenizer1d", "tokenizer_config": direct.config.to_dict()}}, ckpt)
    from tokgen.lit.tokenizer import OptimConfig

    module = FlowModule(flow_config(), optim=OptimConfig(total_steps=10), init_encoder=str(ckpt), freeze_encoder=True,
                        ema_decay=0.0)
    x = shapes_images(4)
    assert torch.equal(module.tokenizer.encode(x), direct.eval().encode(x))
    frozen = {n: p.clone() for n, p in module.tokenizer.named_parameters() if not n.startswith("flow.")}
    assert frozen and not any(p.requires_grad for n, p in module.tokenizer.named_parameters() if n in frozen)
    flow_before = {n: p.clone() for n, p in module.tokenizer.flow.named_parameters()}
    opt = module.configure_optimizers()[0][0]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in module.tokenizer.flow.parameters()}
    for _ in range(2):
        z_q = module.tokenizer.quantize(module.tokenizer.encode_registers(x))[0]
        loss = module.tokenizer.flow.loss(x, z_q)["flow"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in module.tokenizer.named_parameters() if n in frozen)
    assert any(not torch.equal(p, flow_before[n]) for n, p in module.tokenizer.flow.named_parameters())
    with pytest.raises(ValueError, match="width: checkpoint 32 vs recipe 48"):
        FlowModule(flow_config(width=48), init_encoder=str(ckpt))
    with pytest.raises(ValueError, match="freeze_encoder=True needs init_encoder"):
        FlowModule(flow_config(), freeze_encoder=True)


def test_repa_alignment_and_head():
    feats = torch.randn(2, 16, 6)
    assert repa_alignment(feats, feats.mean(1)).item() == pytest.approx(0.0, abs=1e-5)  # global features (B, D)
    grid = feats.transpose(1, 2).reshape(2, 6, 4, 4)
    assert repa_alignment(feats, grid).item() == pytest.approx(0.0, abs=1e-5)  # a (B, D, h, w) map, same grid
    assert repa_alignment(feats, feats).item() == pytest.approx(0.0, abs=1e-5)  # (B, M, D) tokens
    assert repa_alignment(feats, -feats).item() == pytest.approx(2.0, abs=1e-5)
    assert repa_alignment(feats, torch.randn(2, 6, 2, 2)).shape == ()  # resized to the decoder's 4x4 grid
    with pytest.raises(ValueError, match="repa_dim=6; set tokenizer.repa_dim: 5"):
        repa_alignment(feats, torch.randn(2, 5))

    torch.manual_seed(0)
    tok = FlowTokenizer(flow_config(repa_depth=1, repa_dim=6))
    x = shapes_images(2)
    z_q = tok.quantize(tok.encode_latents(x))[0]
    losses = tok.flow.loss(x, z_q, repa_target=torch.randn(2, 6, 3, 3))
    losses["repa"].backward()
    assert tok.flow.repa_proj[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs repa_features"):
        FlowModule(tokenizer=flow_config(repa_depth=1, repa_dim=6), repa_weight=0.5)
    with pytest.raises(ValueError, match="set repa_depth and repa_dim together"):
        flow_config(repa_depth=1)


def write_flow_recipe(tmp_path, **init_args) -> str:
    tokenizer = {k: v for k, v in TINY.items()}
    tokenizer.update(init_args.pop("tokenizer", {}))
    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 8, "val_check_interval": 8,
                    "check_val_every_n_epoch": None, "limit_val_batches": 1, "log_every_n_steps": 2,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(tmp_path / "run")},
        "checkpoint": {"every_n_train_steps": 8},
        "model": {"class_path": "tokgen.lit.FlowModule", "init_args": {
            "tokenizer": tokenizer, "optim": {"lr": 2e-3, "warmup_steps": 2}, "nested_dropout": "pow2",
            "ema_decay": 0.9, "val_steps": 2, **init_args}},
        "data": {"class_path": "tokgen.data.ShapesDataModule", "init_args": {
            "image_size": 16, "train_size": 256, "val_size": 8, "batch_size": 8}},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_fit_through_the_cli_writes_a_flow_checkpoint_that_loads(tmp_path):
    feature_net = str(tmp_path / "features.safetensors")  # untrained stand-in: images in [0, 1] -> (B, 6) features
    save_feature_extractor(FeatureNet(channels=3, num_classes=2, width=4, feature_dim=6), feature_net, {"name": "repa"})
    recipe = write_flow_recipe(tmp_path, tokenizer={"repa_depth": 1, "repa_dim": 6}, repa_weight=0.5,
                               repa_features=feature_net, nested_dropout="pow2_dual")
    cli = lightning_main(["fit", "--config", recipe])
    run = tmp_path / "run"
    metrics = cli.trainer.callback_metrics
    for name in ("val/psnr_k1", "val/psnr_k8", "val/flow_loss", "train/flow", "train/repa"):
        assert name in metrics, sorted(metrics)
    assert (run / "samples" / "val_latest.png").is_file()
    ckpt = run / "checkpoints" / "last.ckpt"
    meta = torch.load(ckpt, weights_only=True)["tokgen"]
    assert meta["kind"] == "flow_tokenizer" and meta["flow"]["repa_weight"] == 0.5
    tok = load_tokenizer(str(ckpt))
    assert isinstance(tok, FlowTokenizer) and tok.sampling.steps == 2
    x = shapes_images(2)
    ema = cli.model.ema_tokenizer.eval()
    codes = tok.encode(x)
    assert torch.equal(codes, ema.encode(x))
    assert torch.equal(tok.decode(codes[:, :4]), ema.decode(codes[:, :4]))
    with pytest.raises(ValueError, match="not a flow tokenizer checkpoint"):
        FlowTokenizer.from_checkpoint(save_plain_tokenizer(tmp_path / "plain.ckpt"))


def save_plain_tokenizer(path) -> str:
    cfg = TokenizerConfig.from_dict({k: v for k, v in TINY.items() if k != "sample_steps"})
    torch.manual_seed(0)
    torch.save({"state_dict": {f"tokenizer.{k}": v for k, v in Tokenizer1D(cfg).state_dict().items()},
                "tokgen": {"kind": "tokenizer1d", "tokenizer_config": cfg.to_dict()}}, path)
    return str(path)


def test_latent_checkpoint_round_trip(vae_dir, tmp_path):
    torch.manual_seed(0)
    tok = FlowTokenizer(latent_config(vae_dir)).eval()
    path = save_checkpoint(tmp_path / "latent.ckpt", tok)
    loaded = load_tokenizer(path)
    assert isinstance(loaded, FlowTokenizer) and loaded.config.space == "latent"
    x = shapes_images(2)
    codes = loaded.encode(x)
    assert torch.equal(codes, tok.encode(x))
    assert torch.equal(loaded.decode(codes[:, :2]), tok.decode(codes[:, :2]))
    moved = tmp_path / "moved.ckpt"
    cfg = tok.config.to_dict()
    cfg["vae_path"] = str(tmp_path / "vae_moved_away")
    torch.save({"state_dict": {f"tokenizer.{k}": v for k, v in tok.state_dict().items()},
                "tokgen": {"kind": "flow_tokenizer", "tokenizer_config": cfg}}, moved)
    with pytest.raises(FileNotFoundError, match="vae_moved_away"):
        load_tokenizer(str(moved))


# ---------------------------------------------------------------------------------------------- commands
def test_eval_and_sample_commands_decode_with_flow_steps(pixel_tok, tmp_path):
    ckpt = save_checkpoint(tmp_path / "flow.ckpt", pixel_tok)
    out = tmp_path / "eval" / "report.json"
    main(["eval", "--ckpt", ckpt, "--data", "shapes", "--num-images", "6", "--budgets", "1,8", "--metrics", "psnr",
          "--batch-size", "3", "--no-stats-cache", "--no-progress", "--flow-steps", "3", "--flow-seed", "5",
          "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["flow_sampling"] == {"steps": 3, "cfg": 1.0, "seed": 5, "shift": 1.0}
    assert set(report["metrics"]["psnr"]) == {"1", "8"}
    plain = save_plain_tokenizer(tmp_path / "plain.ckpt")
    with pytest.raises(SystemExit) as err:
        main(["eval", "--ckpt", plain, "--data", "shapes", "--num-images", "4", "--metrics", "psnr",
              "--no-stats-cache", "--no-progress", "--flow-steps", "3", "--out", str(tmp_path / "x.json")])
    assert "--flow-steps only apply to flow tokenizer checkpoints" in str(err.value.code)

    # tokgen sample: a tiny untrained GPT on this tokenizer's codes, decoded by the flow
    torch.manual_seed(1)
    gen = GPT(GPTConfig(vocab_size=125, block_size=8, num_classes=2, dim=32, n_layer=1, n_head=2, hidden_dim=64))
    gen_path = tmp_path / "gen.ckpt"
    torch.save({"state_dict": {f"generator.{k}": v for k, v in gen.state_dict().items()},
                "tokgen": {"kind": "generator", "generator_config": gen.config.to_dict(),
                           "tokenizer": tokenizer_identity(load_tokenizer(ckpt), ckpt)}}, gen_path)
    args = ["sample", "--tokenizer", ckpt, "--generator", str(gen_path), "--budgets", "2,8", "--num", "2",
            "--flow-steps", "2", "--device", "cpu", "--threads", "1"]
    main([*args, "--out", str(tmp_path / "a.png")])
    main([*args, "--out", str(tmp_path / "b.png")])
    for k in (2, 8):
        assert Image.open(tmp_path / f"a_k{k}.png").size == (2 * 17 + 1, 2 * 17 + 1)
        assert (tmp_path / f"a_k{k}.png").read_bytes() == (tmp_path / f"b_k{k}.png").read_bytes()  # deterministic

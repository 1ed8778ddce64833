"""Halting tokenizer: prefix-shaped lengths from one encoder pass, eps range errors, halting labels, the search
baseline on a hand-built case, two-phase training, and the adaptive eval / tokenize commands."""
import json
import math

import pytest
import torch

from tokgen.cli import main
from tokgen.data.tokens import load_token_shards
from tokgen.tokenizers import HaltingConfig, HaltingTokenizer, Tokenizer1D, load_tokenizer, search_min_tokens
from tokgen.tokenizers.halting import halting_targets, lengths_from_halting

QUANTIZERS = {"fsq": {"kind": "fsq", "levels": [5, 5, 5]}, "vq": {"kind": "vq", "codebook_size": 64, "dim": 8}}


def halting_config(**overrides):
    values = dict(image_size=16, patch_size=4, width=32, encoder_depth=1, decoder_depth=1, num_heads=2, num_tokens=8,
                  quantizer=QUANTIZERS["fsq"], eps_min=0.03, eps_max=0.3, eps_bins=8)
    values.update(overrides)
    return HaltingConfig.from_dict(values)


def spread_halting(tok: HaltingTokenizer, x: torch.Tensor | None = None, eps: float = 0.1) -> HaltingTokenizer:
    """Random weights give halting logits that barely vary; a larger head whose bias puts ~15% of the
    (image, position) logits of ``x`` above 0 spreads the lengths over 1..K."""
    torch.manual_seed(1)
    x = images(16) if x is None else x
    with torch.no_grad():
        tok.halt_head.weight.normal_(0, 0.5)
        tok.eps_embed.weight.normal_(0, 1.0)
        logits = tok.encode_hidden(x, tok.condition_index(eps, x.shape[0]))[1]
        tok.halt_head.bias -= logits[:, 1:].flatten().quantile(0.85)
    return tok.eval()


def images(n=6, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("quantizer", ["fsq", "vq"])
def test_prefix_lengths_from_one_encoder_pass(attention, quantizer):
    torch.manual_seed(0)
    tok = spread_halting(HaltingTokenizer(halting_config(register_attention=attention, quantizer=QUANTIZERS[quantizer])))
    x = images(16)
    calls = {"encoder": 0, "decoder": 0}
    hooks = [getattr(tok, name).register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
             for name in calls]
    codes, lengths = tok.encode(x, target_error=0.1)
    for h in hooks:
        h.remove()
    assert calls == {"encoder": 1, "decoder": 0}
    K = tok.num_tokens
    assert codes.shape == (16, K) and lengths.dtype == torch.long
    assert ((lengths >= 1) & (lengths <= K)).all() and lengths.unique().numel() > 1  # varied, so the checks bite

    # the same pass by hand: length = first position >= 1 whose halting probability exceeds the threshold
    condition = tok.condition_index(0.1, 16)
    latents, logits = tok.encode_hidden(x, condition)
    full = tok.quantize(latents)[1]
    p = torch.sigmoid(logits)
    for b in range(16):
        above = [i for i in range(1, K) if p[b, i] > tok.config.halt_threshold]
        assert lengths[b] == (above[0] if above else K)
        L = int(lengths[b])
        assert torch.equal(codes[b, :L], full[b, :L]) and (codes[b, L:] == 0).all()  # kept set = prefix

    # decoding the padded codes with their lengths equals decoding the prefix with the rest masked
    recon = tok.decode_lengths(codes, lengths)
    for b in (0, 1):
        L = int(lengths[b])
        alone = tok.decode_latents(tok.quantizer.codes_to_latents(full[b:b + 1, :L]))
        torch.testing.assert_close(recon[b:b + 1], alone, atol=1e-5, rtol=1e-5)
    # plain encode is the unconditioned any-prefix tokenizer
    assert tok.encode(x).shape == (16, K)


def test_lengths_from_halting_hand_built():
    logits = torch.tensor([[9.0, -9, -9, 9, 9],     # position 0 never halts -> first halt at 3
                           [-9, -9, -9, -9, -9],    # nothing halts -> K
                           [-9, 9, -9, -9, -9],     # halts at 1; later positions do not resurrect tokens
                           [0.0, 0.1, 0.3, 2, 3]])  # thresholds decide
    assert lengths_from_halting(logits, 0.5).tolist() == [3, 5, 1, 1]
    assert lengths_from_halting(logits, 0.6).tolist() == [3, 5, 1, 3]


def test_halting_targets_full_and_partial_labels():
    T = torch.tensor([3, 3, 3])
    targets, weights = halting_targets(T, 5, too_high=torch.tensor([False, True, False]),
                                       too_low=torch.tensor([False, False, True]))
    assert targets[0].tolist() == [0, 0, 0, 1, 1] and weights[0].tolist() == [0, 1, 1, 1, 1]
    # eps0 above the range: 3 tokens do not reach eps_max -> positions 1..3 must stay active, later unknown
    assert targets[1].tolist()[:4] == [0, 0, 0, 0] and weights[1].tolist() == [0, 1, 1, 1, 0]
    # eps0 below the range: 3 tokens suffice for eps_min -> positions >= 3 halt, earlier unknown
    assert targets[2].tolist()[3:] == [1, 1] and weights[2].tolist() == [0, 0, 0, 1, 1]


def test_target_error_outside_trained_range():
    tok = spread_halting(HaltingTokenizer(halting_config()))
    x = images(8)
    for bad in (0.01, 0.5, float("nan")):
        with pytest.raises(ValueError, match=r"target_error|finite") as err:
            tok.encode(x, target_error=bad)
        if not math.isnan(bad):
            assert f"target_error={bad:g}" in str(err.value) and "[0.03, 0.3]" in str(err.value)
    with pytest.raises(ValueError, match="3 values for a batch of 8"):
        tok.encode(x, target_error=torch.tensor([0.1, 0.1, 0.1]))
    # documented clamping: the lengths are exactly those of the nearest trained value
    assert torch.equal(tok.encode(x, target_error=0.5, clamp=True)[1], tok.encode(x, target_error=0.3)[1])
    assert torch.equal(tok.encode(x, target_error=0.001, clamp=True)[1], tok.encode(x, target_error=0.03)[1])
    # the edges of the range are accepted and binned to the first / last bin
    assert tok.condition_index(0.03, 1).item() == 1 and tok.condition_index(0.3, 1).item() == 8
    with pytest.raises(ValueError, match="eps_min < eps_max"):
        halting_config(eps_min=0.3, eps_max=0.1)


class _StepDecoder(torch.nn.Module):
    """Stand-in decoder: image b decoded from k tokens is the target plus a constant error curve[b][k - 1]."""

    def __init__(self, target, curves):
        super().__init__()
        self.target, self.curves = target, torch.tensor(curves)

    def decode_latents(self, z_q, keep):
        rows = z_q[:, 0, 0].long()  # z_q carries the image index
        shift = self.curves[rows, keep - 1] * 2  # an L1 error e on [0, 1] is 2e in [-1, 1]
        return self.target[rows] - shift[:, None, None, None]


def test_search_baseline_hand_built():
    K = 8
    curves = [[0.30, 0.20, 0.12, 0.09, 0.08, 0.05, 0.04, 0.03],  # meets 0.1 first at k=4
              [0.08, 0.07, 0.06, 0.05, 0.05, 0.05, 0.05, 0.05],  # at k=1
              [0.40, 0.39, 0.38, 0.37, 0.36, 0.35, 0.34, 0.33],  # never
              [0.20, 0.20, 0.20, 0.20, 0.20, 0.20, 0.20, 0.10]]  # only at K
    target = torch.ones(4, 3, 4, 4) * 0.9  # [-1, 1]; minus 2e stays inside, so clamping never hides error
    dec = _StepDecoder(target, curves)
    z_q = torch.arange(4).float()[:, None, None].expand(4, K, 1)
    lin = search_min_tokens(dec, z_q, target, 0.1, "linear")
    assert lin["length"].tolist() == [4, 1, 8, 8] and lin["met"].tolist() == [True, True, False, True]
    assert lin["passes"].tolist() == [4, 1, 8, 8]
    torch.testing.assert_close(lin["error"], torch.tensor([0.09, 0.08, 0.33, 0.10]), atol=1e-5, rtol=0)
    bis = search_min_tokens(dec, z_q, target, 0.1, "binary")
    assert bis["length"].tolist() == [4, 1, 8, 8] and bis["met"].tolist() == [True, True, False, True]
    assert (bis["passes"] <= math.ceil(math.log2(K)) + 1).all() and bis["passes"].max() >= 3
    with pytest.raises(ValueError, match="search method 'ternary'"):
        search_min_tokens(dec, z_q, target, 0.1, "ternary")


@pytest.mark.parametrize("head_hidden, attention, quantizer", [(0, "causal", "fsq"), (16, "bidirectional", "vq")])
def test_two_phase_training_steps_and_checkpoint(tmp_path, head_hidden, attention, quantizer):
    """A few two-phase steps run end to end (losses finite, weights move, halting head trained) and the checkpoint
    reloads as a HaltingTokenizer without YAML. (Learning monotone lengths needs minutes of training: see
    benchmarks/halting.py.)"""
    import lightning as L

    from tokgen.data import ShapesDataset
    from tokgen.lit import HaltingModule, OptimConfig

    L.seed_everything(0)
    config = halting_config(halt_head_hidden=head_hidden, register_attention=attention, quantizer=QUANTIZERS[quantizer])
    module = HaltingModule(config, optim=OptimConfig(lr=1e-3, warmup_steps=2),
                           ema_decay=0.9,
                           val_target_errors=[0.05, 0.2])
    before = {k: v.clone() for k, v in module.tokenizer.state_dict().items()}
    shapes = ShapesDataset(32, image_size=16, seed=0)
    train = torch.utils.data.DataLoader([shapes[i] for i in range(32)], batch_size=16)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1, val_check_interval=4,
                        check_val_every_n_epoch=None,
                        enable_checkpointing=False, default_root_dir=str(tmp_path))
    trainer.fit(module, train_dataloaders=train, val_dataloaders=train)
    logged = trainer.callback_metrics
    for name in ("train/rec", "train/halt_bce", "val/length_eps0.05", "val/met_eps0.2"):
        assert name in logged and torch.isfinite(logged[name]), name
    after = module.tokenizer.state_dict()
    moved = ["halt_head.weight", "eps_embed.weight", "encoder.blocks.0.attn.qkv.weight", "to_pixels.weight"]
    for name in moved + (["halt_mlp.1.weight"] if head_hidden else []):
        assert not torch.equal(before[name], after[name]), name
    path = str(tmp_path / "halting.ckpt")
    trainer.save_checkpoint(path)
    tok = load_tokenizer(path)
    assert isinstance(tok, HaltingTokenizer) and tok.config.eps_bins == 8
    assert tok.config.halt_head_hidden == head_hidden and (tok.halt_mlp is None) == (head_hidden == 0)
    assert tok.config.register_attention == attention and tok.config.quantizer.kind == quantizer
    torch.testing.assert_close(tok.halt_head.weight, module.ema_tokenizer.halt_head.weight)  # EMA weights by default
    x = torch.stack([shapes[i]["image"] for i in range(4)])
    assert tok.encode(x, target_error=0.1)[1].shape == (4,)
    with pytest.raises(ValueError, match="not a halting tokenizer"):
        plain = tmp_path / "plain.ckpt"
        torch.save({"state_dict": {}, "tokgen": {"kind": "tokenizer1d", "tokenizer_config": {}}}, plain)
        HaltingTokenizer.from_checkpoint(str(plain))


def save_halting(path, tok):
    torch.save({"state_dict": {f"tokenizer.{k}": v for k, v in tok.state_dict().items()},
                "tokgen": {"kind": "halting_tokenizer", "tokenizer_config": tok.config.to_dict()}}, path)
    return str(path)


def test_eval_adaptive_and_tokenize_target_error(tmp_path, tiny_config):
    torch.manual_seed(0)  # independent of the tests before it
    tok = spread_halting(HaltingTokenizer(halting_config()))
    ckpt = save_halting(tmp_path / "halting.ckpt", tok)
    assert isinstance(load_tokenizer(ckpt), HaltingTokenizer)

    out = tmp_path / "adaptive.json"
    main(["eval", "--ckpt", ckpt, "--data", "shapes", "--num-images", "20", "--batch-size", "8",
          "--target-errors", "0.2,0.05", "--out", str(out), "--no-progress"])
    report = json.loads(out.read_text())
    assert [r["eps"] for r in report["results"]] == [0.05, 0.2] and report["num_images"] == 20
    for r in report["results"]:
        assert sum(r["length_histogram"]) == 20 and len(r["length_histogram"]) == 8
        assert 1 <= r["search_linear"]["mean_tokens"] <= 8 and 0 <= r["fraction_met"] <= 1
    assert (tmp_path / "adaptive_lengths.png").stat().st_size > 0 and (tmp_path / "adaptive.md").exists()

    # the shards hold exactly what encode returns: lengths, and codes zero-padded past them
    tokens = tmp_path / "tokens"
    main(["tokenize", "--ckpt", ckpt, "--data", "shapes", "--split", "train", "--out", str(tokens), "--limit", "12",
          "--batch-size", "5", "--target-error", "0.1", "--no-progress"])
    index, codes, lengths, _ = load_token_shards(str(tokens))
    from tokgen.commands.tokenize import build_split
    from tokgen.data.spec import resolve_data_spec

    dataset, _ = build_split(resolve_data_spec("shapes", 16, 3), "train")
    want_codes, want_lengths = tok.encode(torch.stack([dataset[i]["image"] for i in range(12)]), target_error=0.1)
    assert index["target_error"] == 0.1 and torch.equal(lengths.long(), want_lengths)
    assert torch.equal(codes.long(), want_codes) and lengths.unique().numel() > 1
    # the length distribution: in the index and as a histogram PNG beside the shards
    assert index["lengths"]["histogram"] == torch.bincount(lengths.long(), minlength=9).tolist()
    assert abs(index["lengths"]["mean"] - lengths.float().mean().item()) < 1e-6
    assert set(index["lengths"]["per_class_mean"]) <= {"0", "1", "2", "3"}
    assert (tokens / "lengths.png").stat().st_size > 0

    # bad inputs: eps outside the range, a fixed-length checkpoint, a flag that does not apply
    def error(argv):
        with pytest.raises(SystemExit) as info:
            main(argv)
        return str(info.value.code)

    assert "target_error=0.9 is outside the trained range" in error(
        ["eval", "--ckpt", ckpt, "--data", "shapes", "--target-errors", "0.1,0.9", "--no-progress"])
    assert "target_error=0.001 is outside" in error(
        ["tokenize", "--ckpt", ckpt, "--data", "shapes", "--out", str(tmp_path / "t2"), "--target-error", "0.001"])
    plain = tmp_path / "plain.ckpt"
    torch.manual_seed(0)
    fixed = Tokenizer1D(tiny_config())
    torch.save({"state_dict": {f"tokenizer.{k}": v for k, v in fixed.state_dict().items()},
                "tokgen": {"kind": "tokenizer1d", "tokenizer_config": fixed.config.to_dict()}}, plain)
    assert "needs a halting tokenizer" in error(
        ["eval", "--ckpt", str(plain), "--data", "shapes", "--target-errors", "0.1", "--no-progress"])
    assert "needs a halting tokenizer" in error(
        ["tokenize", "--ckpt", str(plain), "--data", "shapes", "--out", str(tmp_path / "t3"), "--target-error", "0.1"])
    assert "--budgets does not apply" in error(
        ["eval", "--ckpt", ckpt, "--data", "shapes", "--target-errors", "0.1", "--budgets", "1,2"])


def test_token_mixing_reaches_the_halting_encoder():
    """With token_mixing the halting encoder's registers start from the learned pooling of the patches too:
    the pooling matrix gets gradient from the register latents and the halting logits."""
    torch.manual_seed(0)
    tok = HaltingTokenizer(halting_config(token_mixing=True))
    latents, logits = tok.encode_hidden(images(4), tok.condition_index(0.1, 4))
    (latents.square().mean() + logits.mean()).backward()
    assert tok.enc_mix is not None and tok.enc_mix.grad is not None and tok.enc_mix.grad.abs().sum() > 0


def test_eps_condition_interpolates_between_bin_embeddings():
    """eps on a log scale: eps_min -> bin 1, eps_max -> bin eps_bins, the geometric mid-point half way; the
    condition token is the linear interpolation of the two neighbouring rows (row 0 = unconditioned)."""
    tok = HaltingTokenizer(halting_config(eps_bins=8))
    mid = math.sqrt(0.03 * 0.3)
    coords = tok.condition_index(torch.tensor([0.03, mid, 0.3]), 3)
    torch.testing.assert_close(coords, torch.tensor([1.0, 4.5, 8.0]))
    E = tok.eps_embed.weight
    emb = tok.condition_embedding(torch.tensor([0.0, 1.0, 4.5, 8.0]))
    torch.testing.assert_close(emb, torch.stack([E[0], E[1], 0.5 * (E[4] + E[5]), E[8]]))
    # every eps in the range moves the condition continuously: nearby eps give nearby tokens
    a, b = tok.condition_embedding(tok.condition_index(torch.tensor([0.1, 0.101]), 2))
    assert 0 < (a - b).norm() < 0.05 * E[1:].norm(dim=1).mean()
    with pytest.raises(ValueError, match="eps_bins=1"):
        halting_config(eps_bins=1)


class _ImageList(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "index": i}


def test_calibrate_threshold_is_the_smallest_meeting_min_met():
    """calibrate_threshold decodes every prefix once per eps on a calibration split; the threshold it returns
    meets eps on >= min_met of those images when scored by evaluate_adaptive, and the grid value below it does
    not. Stand-in decoder (random weights give errors that do not fall with k): image i decoded from k tokens is
    the image plus a uniform L1 error base_i / k on [0, 1]."""
    from tokgen.metrics.adaptive import calibrate_threshold, evaluate_adaptive
    from tokgen.metrics.datasets import EvalData

    torch.manual_seed(0)
    tok = spread_halting(HaltingTokenizer(halting_config()))
    x = torch.rand(24, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 0.2 - 0.1
    base = torch.linspace(0.05, 0.6, 24)
    data = EvalData(_ImageList(x), 16, 3, None, {"test": "calibration"})

    def decode_latents(z_q, keep):  # batches arrive whole and in order (batch_size 8, no search)
        rows = torch.arange(z_q.shape[0]) + decode_latents.offset
        return x[rows] + 2 * (base[rows] / keep)[:, None, None, None]

    encode_hidden = tok.encode_hidden

    def tracking_encode(images, condition=None):  # the decoder learns which images the batch holds
        decode_latents.offset = int(((x - images[:1]).flatten(1).abs().sum(1) == 0).nonzero()[0])
        return encode_hidden(images, condition)

    tok.encode_hidden, tok.decode_latents = tracking_encode, decode_latents
    eps = [0.05, 0.1]
    grid = [0.1, 0.3, 0.5, 0.7, 0.9, 0.99]
    mets = [min(r["fraction_met"] for r in evaluate_adaptive(
        tok, data, eps, batch_size=8, threshold=g, search=False, progress=False)["results"]) for g in grid]
    assert mets[-1] > mets[0], "the stand-in must respond to the threshold for this test to bite"
    min_met = (mets[0] + mets[-1]) / 2
    cal = calibrate_threshold(tok, data, eps, min_met=min_met, batch_size=8, grid=grid, progress=False)
    assert cal["reached"] and cal["num_images"] == 24
    j = grid.index(cal["threshold"])
    assert j > 0 and mets[j] >= min_met and all(m < min_met for m in mets[:j])
    for k, thr in enumerate(grid):  # the lookup table agrees with scoring
        got = evaluate_adaptive(tok, data, eps, batch_size=8, threshold=thr, search=False, progress=False)
        for r in got["results"]:
            assert abs(cal["per_eps"][r["eps"]]["fraction_met"][k] - r["fraction_met"]) < 1e-6
            assert abs(cal["per_eps"][r["eps"]]["mean_tokens"][k] - r["mean_tokens"]) < 1e-5
    table = cal["table"]  # one threshold per eps: each the smallest reaching min_met there, not rising with eps
    assert [e for e, _ in table] == eps and table[0][1] >= table[1][1]
    for e, thr in table:
        met = cal["per_eps"][e]["fraction_met"]
        assert met[grid.index(thr)] >= min_met
    assert all(m < min_met for m in cal["per_eps"][eps[-1]]["fraction_met"][:grid.index(table[-1][1])])
    with pytest.raises(ValueError, match="min_met"):
        calibrate_threshold(tok, data, eps, min_met=1.5)


def test_per_eps_thresholds_interpolate_in_log_eps():
    """``halt_thresholds`` gives each eps its own threshold (linear in log eps between entries, the end values
    outside); encode uses it, an explicit threshold overrides it, and a table whose thresholds rise with eps (a
    lower eps could halt earlier) is refused."""
    tok = spread_halting(HaltingTokenizer(halting_config(halt_thresholds=[[0.05, 0.9], [0.2, 0.3]])))
    thr = tok.threshold_at(torch.tensor([0.03, 0.05, 0.1, 0.2, 0.3]), 5)
    mid = 0.9 + (math.log(0.1) - math.log(0.05)) / (math.log(0.2) - math.log(0.05)) * (0.3 - 0.9)
    torch.testing.assert_close(thr, torch.tensor([0.9, 0.9, mid, 0.3, 0.3]))
    x = images(8)
    for eps in (0.05, 0.1, 0.2):
        _, lengths = tok.encode(x, target_error=eps)
        _, explicit = tok.encode(x, target_error=eps, threshold=float(tok.threshold_at(eps, 1)))
        assert torch.equal(lengths, explicit)
    with pytest.raises(ValueError, match="thresholds in \\(0, 1\\) not rising"):
        halting_config(halt_thresholds=[[0.05, 0.3], [0.2, 0.9]])
    with pytest.raises(ValueError, match="halt_thresholds="):
        halting_config(halt_thresholds=[[0.05]])


class BrightnessStandIn:
    """Stand-in decoder for head refits (random weights give errors that do not fall with k): image i decoded from
    k tokens is the image plus a uniform L1 error base_i / k, where base_i grows with the image's brightness, so the
    search minimum ceil(base_i / eps) (and every prefix's error) is learnable from the image. Used as a context
    manager around calls that encode and decode ``self.x`` with ``tok``."""

    def __init__(self, tok, n: int = 96):
        g = torch.Generator().manual_seed(5)
        level = torch.rand(n, generator=g) - 0.5  # image brightness in [-0.5, 0.5]
        self.x = level[:, None, None, None] + 0.02 * torch.randn(n, 3, 16, 16, generator=g)
        self.base = 0.1 + 0.8 * (level + 0.5)  # L1 error of one token, on [0, 1] images
        self.tok = tok

    def __enter__(self):
        tok, x, base, batch = self.tok, self.x, self.base, {}
        encoder_states, quantize = tok.encoder_states, tok.quantize

        def tracking_states(images, condition=None):  # remember which images this batch holds
            batch["rows"] = ((x[None] - images[:, None]).flatten(2).abs().sum(2) == 0).float().argmax(1)
            return encoder_states(images, condition)

        def index_quantize(latents):  # z_q carries the image index
            z_q, codes, aux = quantize(latents)
            return batch["rows"].float()[:, None, None].expand(-1, z_q.shape[1], 1), codes, aux

        def decode_latents(z_q, keep):
            rows = z_q[:, 0, 0].long()
            return x[rows] + 2 * (base[rows] / keep)[:, None, None, None]

        tok.encoder_states, tok.quantize, tok.decode_latents = tracking_states, index_quantize, decode_latents
        return self

    def __exit__(self, *exc):
        del self.tok.encoder_states, self.tok.quantize, self.tok.decode_latents


def test_refit_halting_head_learns_the_search_minimum(tmp_path):
    """``refit_halting_head`` fits only the halting head to search labels on the frozen encoder, and
    ``refit_checkpoint`` writes it to a new checkpoint (stand-in decoder: :class:`BrightnessStandIn`)."""
    from tokgen.commands.refit_halting import parse_range
    from tokgen.metrics.datasets import EvalData
    from tokgen.tokenizers.halting_refit import refit_checkpoint, refit_halting_head

    torch.manual_seed(0)
    tok = HaltingTokenizer(halting_config()).eval()
    ckpt = save_halting(tmp_path / "halting.ckpt", tok)
    standin = BrightnessStandIn(tok)
    x = standin.x
    data = EvalData(_ImageList(x), 16, 3, None, {"test": "refit"})
    probe = x[:16]
    cond = tok.condition_index(0.1, 16)
    latents_before = tok.encode_latents(probe, cond)
    head_before = {k: v.clone() for k, v in tok.state_dict().items() if k.startswith(("halt_mlp", "halt_head"))}

    with standin:
        summary = refit_halting_head(tok, data, eps_range=(0.05, 0.3), reps=2, steps=300, lr=3e-3, batch_size=64,
                                     holdout=0.25, progress=False)
    assert summary["examples"] == 192 and summary["holdout_examples"] == 48
    before, after = summary["holdout_before"], summary["holdout_after"]
    assert after["bce"] < 0.7 * before["bce"], summary
    assert after["mean_abs_diff"] < before["mean_abs_diff"], summary
    assert 1.5 < summary["mean_kstar"] < 7.5, "the stand-in must spread k* over 1..K for this test to bite"
    # only the head moved: the encoder's latents (hence the codes) are bit-identical
    torch.testing.assert_close(tok.encode_latents(probe, cond), latents_before, rtol=0, atol=0)
    assert any(not torch.equal(v, tok.state_dict()[k]) for k, v in head_before.items())

    out = tmp_path / "refit.ckpt"
    refit_checkpoint(ckpt, str(out), tok, summary)
    loaded = HaltingTokenizer.from_checkpoint(str(out))
    for k, v in tok.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    assert torch.load(str(out), weights_only=True)["tokgen"]["halting_refit"]["steps"] == 300
    original = HaltingTokenizer.from_checkpoint(ckpt)  # the input checkpoint is untouched
    for k, v in head_before.items():
        torch.testing.assert_close(original.state_dict()[k], v, rtol=0, atol=0)

    with pytest.raises(ValueError, match="is the input checkpoint"):
        refit_checkpoint(ckpt, ckpt, tok, summary)
    with pytest.raises(ValueError, match=r"eps_range=\(0.01, 0.2\)"):
        refit_halting_head(tok, data, eps_range=(0.01, 0.2), progress=False)
    with pytest.raises(ValueError, match="--eps-range 'a,b'"):
        parse_range("a,b")
    with pytest.raises(SystemExit, match="eps_range"):
        main(["refit-halting", "--ckpt", ckpt, "--data", "shapes", "--out", str(tmp_path / "r2.ckpt"),
              "--eps-range", "0.5,0.9", "--num-images", "4", "--no-progress"])
    with pytest.raises(SystemExit, match="go together"):
        main(["refit-halting", "--ckpt", ckpt, "--data", "shapes", "--out", str(tmp_path / "r2.ckpt"),
              "--calibrate", "0.8", "--num-images", "4", "--no-progress"])
    with pytest.raises(SystemExit, match="target_error=0.9 is outside"):
        main(["refit-halting", "--ckpt", ckpt, "--data", "shapes", "--out", str(tmp_path / "r2.ckpt"),
              "--calibrate", "0.8", "--target-errors", "0.1,0.9", "--num-images", "4", "--no-progress"])


def test_error_model_head_learns_every_prefix_error(tmp_path):
    """The error-model head (``halt_head="error_model"``) on a nested tokenizer models each prefix's error per
    image: after ``refit_halting_head`` on a few random prefixes per image the held-out likelihood improves, the
    lengths at several eps land near the search minimum ceil(base / eps), and a lower eps never gives fewer tokens
    for any image (stand-in decoder: :class:`BrightnessStandIn`)."""
    from tokgen.metrics.datasets import EvalData
    from tokgen.tokenizers.halting import halting_from_tokenizer
    from tokgen.tokenizers.halting_refit import refit_halting_head

    torch.manual_seed(0)
    cfg = {k: v for k, v in halting_config().to_dict().items() if k in Tokenizer1D().config.to_dict()}
    tok = halting_from_tokenizer(Tokenizer1D(cfg).eval(), 0.05, 0.3, halt_head_hidden=32)
    assert tok.config.halt_head == "error_model"
    standin = BrightnessStandIn(tok)
    data = EvalData(_ImageList(standin.x), 16, 3, None, {"test": "error model"})
    with standin:
        summary = refit_halting_head(tok, data, prefixes=3, steps=400, lr=3e-3, batch_size=64, holdout=0.25,
                                     progress=False)
    assert summary["head"] == "error_model" and summary["examples"] == 96 and summary["prefixes"] == 3
    assert summary["holdout_after"]["nll"] < summary["holdout_before"]["nll"] - 1.0, summary
    K = tok.num_tokens
    lengths = {}
    for eps in (0.06, 0.1, 0.15, 0.3):
        _, lengths[eps] = tok.encode(standin.x, target_error=eps, threshold=0.5)
        kstar = (standin.base / eps).ceil().clamp(1, K).long()
        assert (lengths[eps] - kstar).abs().float().mean() < 1.0, (eps, lengths[eps], kstar)
    for lo, hi in zip(sorted(lengths), sorted(lengths)[1:]):  # per image, not only on average
        assert (lengths[lo] >= lengths[hi]).all()
    with pytest.raises(ValueError, match="needs a target error"):
        tok.halting_logits(torch.zeros(2, K, tok.config.width), torch.zeros(2))
    with pytest.raises(ValueError, match="condition_encoder=false"):
        HaltingConfig.from_dict({**tok.config.to_dict(), "condition_encoder": True})
    with pytest.raises(ValueError, match="halt_head='nope' is not supported"):
        HaltingConfig.from_dict({**tok.config.to_dict(), "halt_head": "nope"})
    from tokgen.lit.halting import HaltingModule
    with pytest.raises(ValueError, match="refit-halting --head error-model"):
        HaltingModule(tokenizer=tok.config)


def test_refit_halting_command_stores_the_calibrated_threshold(tmp_path):
    """``tokgen refit-halting --calibrate``: the threshold chosen on the val split becomes the new checkpoint's
    halt_threshold (random-weight tokenizer: the numbers are meaningless, the plumbing is what is checked)."""
    from tokgen.commands.refit_halting import main as refit_main

    torch.manual_seed(0)
    tok = spread_halting(HaltingTokenizer(halting_config()))
    ckpt = save_halting(tmp_path / "halting.ckpt", tok)
    out = tmp_path / "refit.ckpt"
    summary = refit_main(["--ckpt", ckpt, "--data", "shapes", "--out", str(out), "--num-images", "8", "--steps", "5",
                          "--calibrate", "0.5", "--target-errors", "0.3,0.2", "--calibrate-images", "8",
                          "--no-progress"])
    cal = summary["calibration"]
    assert cal["num_images"] == 8 and set(cal["per_eps"]) == {"0.2", "0.3"}
    assert cal["threshold"] != 0.5, "the stand-in must move the threshold for this test to bite"
    loaded = HaltingTokenizer.from_checkpoint(str(out))
    assert loaded.config.halt_threshold == cal["threshold"]
    assert HaltingTokenizer.from_checkpoint(ckpt).config.halt_threshold == 0.5  # the input is untouched


def test_generator_trained_on_halting_lengths_refuses_another_halting_head(tmp_path):
    """Token shards made at a target error record the halting identity (head fingerprint, threshold, eps); a
    generator trained on them samples with that tokenizer, and is refused with a tokenizer whose halting head
    differs (its lengths would mean something else), or with a fixed-length tokenizer."""
    from tokgen.data.tokens import read_index
    from tokgen.generator import GPT, GPTConfig

    torch.manual_seed(0)
    tok = spread_halting(HaltingTokenizer(halting_config()))
    ckpt = save_halting(tmp_path / "halting.ckpt", tok)
    tokens = tmp_path / "tokens"
    main(["tokenize", "--ckpt", ckpt, "--data", "shapes", "--out", str(tokens), "--limit", "8", "--target-error", "0.1",
          "--no-progress"])
    identity = read_index(str(tokens))["tokenizer"]
    assert identity["halting"]["target_error"] == 0.1 and len(identity["halting"]["fingerprint"]) == 16
    gen = GPT(GPTConfig(vocab_size=tok.quantizer.codebook_size, block_size=8, num_classes=4, dim=32, n_layer=1,
                        n_head=2, use_eos=True))
    gen_path = tmp_path / "gen.ckpt"
    torch.save({"state_dict": {f"generator.{k}": v for k, v in gen.state_dict().items()},
                "tokgen": {"kind": "generator", "generator_config": gen.config.to_dict(), "tokenizer": identity}},
               gen_path)
    args = ["sample", "--generator", str(gen_path), "--eos", "--num", "2", "--classes", "0"]
    main([*args, "--tokenizer", ckpt, "--out", str(tmp_path / "ok.png")])
    assert (tmp_path / "ok.png").exists()
    with torch.no_grad():
        tok.halt_head.bias += 0.5  # a refit head: same codes, other lengths
    other = save_halting(tmp_path / "other.ckpt", tok)
    with pytest.raises(SystemExit) as err:
        main([*args, "--tokenizer", other, "--out", str(tmp_path / "no.png")])
    message = str(err.value.code)
    assert f"fingerprint {identity['halting']['fingerprint']}" in message and "halting fingerprint" in message
    assert not (tmp_path / "no.png").exists()


def test_halting_added_to_a_nested_tokenizer_keeps_its_codes(tmp_path):
    """``tokgen refit-halting`` on a plain nested tokenizer checkpoint: the new halting tokenizer's codes are the
    nested tokenizer's at every eps (its encoder is unchanged and does not read eps), only the head is new; it loads
    with ``load_tokenizer``; a fixed-length tokenizer and a missing --eps-range are refused with clear errors
    (random-weight tokenizer: the lengths themselves are not checked here)."""
    from tokgen.commands.refit_halting import main as refit_main
    from tokgen.tokenizers.halting import halting_from_tokenizer

    torch.manual_seed(0)
    cfg = {k: v for k, v in halting_config().to_dict().items() if k in Tokenizer1D().config.to_dict()}
    nested = Tokenizer1D(cfg).eval()
    src = tmp_path / "nested.ckpt"
    torch.save({"state_dict": {f"tokenizer.{k}": v for k, v in nested.state_dict().items()},
                "tokgen": {"kind": "tokenizer1d", "tokenizer_config": nested.config.to_dict(),
                           "nested_dropout": "pow2_dual"}}, src)
    x = images(6)
    tok = halting_from_tokenizer(nested, 0.05, 0.3)
    assert not tok.config.condition_encoder
    for eps in (0.05, 0.3):
        codes, lengths = tok.encode(x, target_error=eps)
        kept = torch.arange(codes.shape[1])[None] < lengths[:, None]
        assert torch.equal(codes[kept], nested.encode(x)[kept])
    out = tmp_path / "halting.ckpt"
    refit_main(["--ckpt", str(src), "--data", "shapes", "--out", str(out), "--num-images", "8", "--steps", "3",
                "--eps-range", "0.05,0.3", "--head-hidden", "16", "--prefixes", "2", "--calibrate", "0.5",
                "--target-errors", "0.1,0.2", "--calibrate-images", "4", "--no-progress"])
    loaded = load_tokenizer(str(out))
    assert isinstance(loaded, HaltingTokenizer) and loaded.config.eps_min == 0.05 and loaded.config.halt_head_hidden == 16
    assert loaded.config.halt_head == "error_model"
    table = loaded.config.halt_thresholds  # one threshold per calibrated eps, stored with the checkpoint
    assert [e for e, _ in table] == [0.1, 0.2] and table[0][1] >= table[1][1]
    assert torch.equal(loaded.encode(x), nested.encode(x))
    with pytest.raises(ValueError, match="--eps-range"):
        refit_main(["--ckpt", str(src), "--data", "shapes", "--out", str(tmp_path / "b.ckpt"), "--no-progress"])
    fixed = torch.load(src, weights_only=True)
    fixed["tokgen"]["nested_dropout"] = "none"
    torch.save(fixed, tmp_path / "fixed.ckpt")
    with pytest.raises(ValueError, match="fixed-length"):
        refit_main(["--ckpt", str(tmp_path / "fixed.ckpt"), "--data", "shapes", "--out", str(tmp_path / "c.ckpt"),
                    "--eps-range", "0.05,0.3", "--no-progress"])
    with pytest.raises(ValueError, match="halt_head_hidden > 0"):
        HaltingConfig.from_dict({**tok.config.to_dict(), "halt_head_hidden": 0})


def test_search_reads_a_prefix_error_table_like_decoding():
    """search_min_tokens with a precomputed prefix-error table (used when codes do not depend on eps) finds the
    same lengths, errors and decoder-pass counts as decoding each probe."""
    from tokgen.tokenizers.halting import prefix_errors

    torch.manual_seed(0)
    cfg = {k: v for k, v in halting_config().to_dict().items() if k in Tokenizer1D().config.to_dict()}
    tok = Tokenizer1D(cfg).eval()
    x = images(12)
    with torch.no_grad():
        z_q = tok.quantize(tok.encode_latents(x))[0]
        table = prefix_errors(tok, z_q, x)
    eps = table.median().item()
    for method in ("linear", "binary"):
        decoded = search_min_tokens(tok, z_q, x, eps, method)
        looked_up = search_min_tokens(tok, z_q, x, eps, method, errors=table)
        assert torch.equal(decoded["length"], looked_up["length"]) and torch.equal(decoded["passes"], looked_up["passes"])
        assert torch.allclose(decoded["error"], looked_up["error"], atol=1e-6)
    assert 1 < decoded["length"].float().mean() < 8, "eps must split the images for this test to bite"

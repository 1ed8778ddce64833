"""Tokenizer throughput, memory and MFU: the `tok-small-v1` workload (shared/BENCHMARK_WORKLOADS.md) and the
CPU recipes.

    python benchmarks/tokenizer_throughput.py               # everything (~2-3 minutes on 2 cores)
    python benchmarks/tokenizer_throughput.py --quick       # fewer repeats, smaller scaling sweeps
    python benchmarks/tokenizer_throughput.py --compile     # also torch.compile'd training / inference

tok-small-v1 is built from tokgen's own parts (``tokgen.nn`` Transformer / PatchEmbed / LearnedPosEmb /
unpatchify, ``tokgen.quantize.VectorQuantizer``) in the TiTok layout of the workload: an encoder over
``[class, 64 patches | 32 latents]`` (97 tokens), VQ 4096 x 12 (l2-normalised), a decoder over
``[class, 64 mask tokens | 32 tokens]``, then linear 256 -> 192, depth-to-space and a 3x3 conv (6.53 M
parameters). fp32, synthetic data made once with seed 0, the same batch every step.

Reported: training images/s (batch 32, AdamW), inference images/s (batch 64) for the round trip, encode and
decode, peak RSS per phase, and MFU = model FLOPs/s / the fp32 matmul peak of this machine (a 2048 x 2048
matmul timed in the same run). Model FLOPs follow the workload: forward = 2 x parameters-in-blocks x tokens
(both halves), training = 3 x forward. Also: the CPU recipes' models at their batch sizes, and step time vs
the number of tokens K and vs image size. The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (ROOT, PeakRSS, emit, log, machine_info, matmul_peak, median, op_breakdown, sdpa_backend,  # noqa: E402
                     throughput, timed)

sys.path.insert(0, ROOT)
from tokgen.nn import LearnedPosEmb, PatchEmbed, Transformer, check_patch_grid, unpatchify  # noqa: E402
from tokgen.quantize import VectorQuantizer  # noqa: E402

RECIPES = ("configs/tokenizer/shapes_tiny.yaml", "configs/tokenizer/fmnist_small.yaml")


# ---------------------------------------------------------------------------------------------------- model
class TokSmallV1(nn.Module):
    """The tok-small-v1 tokenizer (TiTok layout) from tokgen parts; sizes are arguments for the scaling sweeps.

    Encoder: [class, patches] + position embedding, then K latents + their own position embedding, pre-LN
    Transformer (final LayerNorm), keep the latents, linear width -> token_dim. VQ (l2-normalised,
    straight-through). Decoder: linear token_dim -> width + position embedding on the tokens; [class, N mask
    tokens] + position embedding, then the tokens; Transformer; keep the N mask outputs, linear width ->
    p*p*C, depth-to-space to (C, H, W), 3x3 conv.
    """

    def __init__(self, image_size: int = 64, patch_size: int = 8, width: int = 256, depth: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 4.0, num_tokens: int = 32, codebook_size: int = 4096, token_dim: int = 12,
                 channels: int = 3):
        super().__init__()
        grid = check_patch_grid(image_size, patch_size)
        self.num_patches, self.num_tokens, self.patch_size, self.channels = grid * grid, num_tokens, patch_size, channels
        n = self.num_patches
        # encoder
        self.patch_embed = PatchEmbed(image_size, patch_size, channels, width)
        self.enc_class = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.enc_pos = LearnedPosEmb(n + 1, width)
        self.latents = nn.Parameter(torch.randn(1, num_tokens, width) * 0.02)
        self.latent_pos = LearnedPosEmb(num_tokens, width)
        self.encoder = Transformer(width, depth, num_heads, mlp_ratio)
        self.to_token = nn.Linear(width, token_dim)
        self.quantizer = VectorQuantizer(codebook_size, token_dim, beta=0.25, normalize=True)
        # decoder
        self.from_token = nn.Linear(token_dim, width)
        self.token_pos = LearnedPosEmb(num_tokens, width)
        self.dec_class = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.dec_pos = LearnedPosEmb(n + 1, width)
        self.decoder = Transformer(width, depth, num_heads, mlp_ratio)
        self.to_pixels = nn.Linear(width, patch_size * patch_size * channels)
        self.conv_out = nn.Conv2d(channels, channels, 3, padding=1)

    @property
    def seq_len(self) -> int:
        return self.num_patches + 1 + self.num_tokens

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> continuous latents (B, K, token_dim)."""
        B = images.shape[0]
        x = self.enc_pos(torch.cat([self.enc_class.expand(B, -1, -1), self.patch_embed(images)], dim=1))
        latents = self.latent_pos(self.latents.expand(B, -1, -1))
        x = self.encoder(torch.cat([x, latents], dim=1))
        return self.to_token(x[:, -self.num_tokens:])

    def decode_latents(self, z_q: torch.Tensor) -> torch.Tensor:
        """(B, K, token_dim) -> images (B, C, H, W)."""
        B = z_q.shape[0]
        tokens = self.token_pos(self.from_token(z_q))
        queries = torch.cat([self.dec_class.expand(B, -1, -1), self.mask_token.expand(B, self.num_patches, -1)], dim=1)
        x = self.decoder(torch.cat([self.dec_pos(queries), tokens], dim=1))
        pixels = self.to_pixels(x[:, 1 : self.num_patches + 1])  # (B, N, p*p*C)
        return self.conv_out(unpatchify(pixels, self.patch_size, self.channels))

    def forward(self, images: torch.Tensor):
        z_q, codes, aux = self.quantizer(self.encode_latents(images))
        return self.decode_latents(z_q), codes, aux

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.quantizer(self.encode_latents(images))[1]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode_latents(self.quantizer.codes_to_latents(codes))

    def flops_forward(self) -> int:
        """Model FLOPs of one image's forward (workload convention): 2 x parameters in blocks x tokens."""
        return transformer_flops(self, [(self.encoder, self.seq_len), (self.decoder, self.seq_len)])


def transformer_flops(model: nn.Module, stacks: list[tuple[nn.Module, int]]) -> int:
    """2 x (parameters in the blocks of each Transformer stack) x (tokens it runs on), summed."""
    return sum(2 * sum(p.numel() for p in stack.blocks.parameters()) * tokens for stack, tokens in stacks)


def reconstruction_loss(recon, images, aux) -> torch.Tensor:
    return F.mse_loss(recon, images) + sum(aux.values())


# ---------------------------------------------------------------------------------------------------- measurements
def adamw(model: nn.Module, lr: float, betas, weight_decay: float, fused: bool | None):
    kwargs = {"fused": True} if fused else {"foreach": False} if fused is False else {}
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay, **kwargs)


def train_step_fn(model, images, opt, loss_fn=reconstruction_loss, forward=None, phases: dict | None = None):
    """One training step (zero_grad, forward, loss, backward, step, loss.item()); ``phases`` collects the
    seconds of forward+loss, backward and optimizer step of every call."""
    forward = forward or model

    def step():
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        recon, _, aux = forward(images)
        loss = loss_fn(recon, images, aux)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        loss.item()
        if phases is not None:
            for name, dt in (("forward", t1 - t0), ("backward", t2 - t1), ("optimizer", time.perf_counter() - t2)):
                phases.setdefault(name, []).append(dt)

    return step


def bench_training(model, batch, warmup, repeats, flops_per_image, peak, fused=True, forward=None, image_size=64,
                   seed=0, profile=False) -> dict:
    images = torch.rand(batch, model.channels, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    model.train()
    opt = adamw(model, 1e-4, (0.9, 0.999), 1e-4, fused)
    phases: dict = {}
    with PeakRSS() as mem:
        times = timed(train_step_fn(model, images, opt, forward=forward, phases=phases), warmup, repeats)
    med = median(times)
    t = throughput(3 * flops_per_image, batch, med, peak)
    out = {"batch": batch, "ms_per_step": 1e3 * med, "images_per_s": t["items_per_s"],
           "model_gflop_per_s": t["model_gflop_per_s"], "mfu": t["mfu"], "times_s": times, **mem.as_dict(),
           "phase_ms": {k: 1e3 * median(v[warmup:]) for k, v in phases.items()}}
    if profile:  # where the step's time goes: self CPU time per op category of one more step
        out["profile"] = prof = op_breakdown(train_step_fn(model, images, opt, forward=forward))
        mm = prof["ms"].get("matmul")
        if mm:  # the matmuls alone, against the peak: what the GEMMs reach without everything else
            out["matmul_only_gflop_per_s"] = 3 * flops_per_image * batch / (mm / 1e3) / 1e9
            out["matmul_only_mfu"] = out["matmul_only_gflop_per_s"] / peak
    return out


@torch.inference_mode()
def bench_inference(model, batch, warmup, repeats, flops_per_image, peak, encode=None, decode=None, seed=0) -> dict:
    model.eval()
    encode, decode = encode or model.encode, decode or model.decode
    images = torch.rand(batch, model.channels, 64, 64, generator=torch.Generator().manual_seed(seed))
    ids = encode(images)
    assert ids.shape == (batch, model.num_tokens) and ids.dtype == torch.long
    out = {"batch": batch}
    with PeakRSS() as mem:
        for name, fn, share in (("round_trip", lambda: decode(encode(images)), 1.0),
                                ("encode", lambda: encode(images), 0.5), ("decode", lambda: decode(ids), 0.5)):
            times = timed(fn, warmup, repeats)
            med = median(times)
            t = throughput(share * flops_per_image, batch, med, peak)
            out[name] = {"ms_per_batch": 1e3 * med, "images_per_s": t["items_per_s"],
                         "model_gflop_per_s": t["model_gflop_per_s"], "mfu": t["mfu"], "times_s": times}
    out.update(mem.as_dict())
    return out


def bench_recipe(path: str, warmup: int, repeats: int, peak: float) -> dict:
    """Training step of a CPU recipe's tokenizer at the recipe's batch size (model, loss and optimizer only)."""
    import yaml

    from tokgen.lit.losses import pixel_loss
    from tokgen.tokenizers import Tokenizer1D, TokenizerConfig
    from tokgen.tokenizers.nested_dropout import sample_keep_lengths

    with open(os.path.join(ROOT, path)) as f:
        recipe = yaml.safe_load(f)
    init = recipe["model"]["init_args"]
    batch = recipe["data"]["init_args"]["batch_size"]
    torch.manual_seed(0)
    model = Tokenizer1D(TokenizerConfig.from_dict(init["tokenizer"])).train()
    c = model.config
    seq = model.patch_embed.num_patches + c.num_tokens
    flops = transformer_flops(model, [(model.encoder, seq), (model.decoder, seq)])
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(batch, c.channels, c.image_size, c.image_size, generator=gen) * 2 - 1
    keep = sample_keep_lengths(batch, c.num_tokens, init.get("nested_dropout", "none"), generator=gen)
    optim = init.get("optim", {})
    opt = torch.optim.AdamW(model.parameters(), lr=optim.get("lr", 1e-4), weight_decay=optim.get("weight_decay", 0.0),
                            fused=True)
    kind = init.get("loss", {}).get("reconstruction", "l2")
    times = timed(train_step_fn(model, images, opt, lambda r, x, aux: pixel_loss(r, x, kind) + sum(aux.values()),
                                forward=lambda x: model(x, keep)), warmup, repeats)
    med = median(times)
    t = throughput(3 * flops, batch, med, peak)
    return {"recipe": path, "parameters": sum(p.numel() for p in model.parameters()), "batch": batch,
            "image_size": c.image_size, "num_tokens": c.num_tokens, "width": c.width, "ms_per_step": 1e3 * med,
            "images_per_s": t["items_per_s"], "model_gflop_per_s": t["model_gflop_per_s"], "mfu": t["mfu"],
            "times_s": times}


def bench_scaling(values, build, batch, warmup, repeats, image_size_of=lambda v: 64) -> dict:
    out = {}
    for v in values:
        torch.manual_seed(0)
        model = build(v)
        r = bench_training(model, batch, warmup, repeats, model.flops_forward(), 1.0, image_size=image_size_of(v))
        out[str(v)] = {"tokens_in_sequence": model.seq_len, "ms_per_step": r["ms_per_step"],
                       "model_gflop_per_s": r["model_gflop_per_s"], "times_s": r["times_s"]}
        log(f"  {v}: {r['ms_per_step']:.0f} ms/step ({model.seq_len} tokens), {r['model_gflop_per_s']:.1f} GFLOP/s")
    return out


# ---------------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="1 warm-up, 3 repeats; shorter scaling sweeps")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile'd training and inference")
    p.add_argument("--compile-only", action="store_true", help="only eager vs compiled training / inference of tok-small-v1")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: adamw,recipes,scaling")
    p.add_argument("--json", default=None, help="also write the JSON to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.repeats = 1, 3
    skip = set(filter(None, args.skip.split(",")))
    if args.compile_only:
        args.compile = True
        skip |= {"adamw", "recipes", "scaling"}

    torch.set_num_threads(args.threads)
    result = {"benchmark": "tokenizer_throughput", "workload": "tok-small-v1", **machine_info(),
              "warmup": args.warmup, "repeats": args.repeats,
              "sdpa_backend": {"tok-small-v1 (97 tokens, no mask)": sdpa_backend(4, 97, 64),
                               "causal-register mask (recipes)": sdpa_backend(4, 80, 32, mask=True)}}
    peak = matmul_peak()
    result["matmul_peak"] = peak
    log(f"matmul peak (2048^3 fp32, {args.threads} threads): {peak['gflop_per_s']:.1f} GFLOP/s")
    peak_gflops = peak["gflop_per_s"]

    torch.manual_seed(0)
    model = TokSmallV1()
    flops = model.flops_forward()
    result["parameters"] = {
        "total": sum(p.numel() for p in model.parameters()),
        "encoder": sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("quantizer", "from_token", "token_pos", "dec_", "mask_token", "decoder", "to_pixels", "conv_out"))),
        "codebook": model.quantizer.codebook.numel(),
        "blocks": sum(p.numel() for p in model.encoder.blocks.parameters()) + sum(p.numel() for p in model.decoder.blocks.parameters()),
    }
    result["parameters"]["decoder"] = result["parameters"]["total"] - result["parameters"]["encoder"] - result["parameters"]["codebook"]
    result["model_gflop_forward_per_image"] = flops / 1e9
    log(f"tok-small-v1: {result['parameters']['total']:,} parameters, {flops / 1e9:.3f} GFLOP forward per image")

    train = bench_training(model, 32, args.warmup, args.repeats, flops, peak_gflops, profile=not args.compile_only)
    result["training"] = train
    log(f"training (batch 32, fused AdamW): {train['images_per_s']:.1f} images/s, {train['ms_per_step']:.0f} ms/step, "
        f"MFU {100 * train['mfu']:.1f}%, peak RSS {train['peak_rss_mb']:.0f} MB; phases (ms) "
        + ", ".join(f"{k} {v:.0f}" for k, v in train["phase_ms"].items()))
    if "profile" in train:
        log(f"  profile (share of self CPU time): {train['profile']['share']}; matmuls alone reach "
            f"{100 * train.get('matmul_only_mfu', float('nan')):.0f}% of the peak")
    if "adamw" not in skip:  # the optimizer implementation: for-loop (torch's CPU default) vs fused
        torch.manual_seed(0)
        loop = bench_training(TokSmallV1(), 32, args.warmup, args.repeats, flops, peak_gflops, fused=False)
        result["training_adamw_forloop"] = loop
        result["fused_adamw_speedup"] = loop["ms_per_step"] / train["ms_per_step"]
        log(f"training with for-loop AdamW: {loop['ms_per_step']:.0f} ms/step (fused is {result['fused_adamw_speedup']:.3f}x)")

    inf = bench_inference(model, 64, args.warmup, args.repeats, flops, peak_gflops)
    result["inference"] = inf
    log("inference (batch 64): " + ", ".join(f"{k} {inf[k]['images_per_s']:.0f} images/s" for k in ("round_trip", "encode", "decode"))
        + f", peak RSS {inf['peak_rss_mb']:.0f} MB")

    if args.compile:
        result["compile"] = bench_compiled(model, flops, peak_gflops, args, train, inf)

    if "recipes" not in skip:
        result["recipes"] = {}
        for path in RECIPES:
            r = bench_recipe(path, args.warmup, args.repeats, peak_gflops)
            result["recipes"][os.path.basename(path).removesuffix(".yaml")] = r
            log(f"recipe {path}: {r['images_per_s']:.0f} images/s (batch {r['batch']}), MFU {100 * r['mfu']:.1f}%")

    if "scaling" not in skip:
        batch, w, n = (8, 1, 2) if args.quick else (16, 1, 3)
        log(f"scaling (training step, batch {batch}):")
        result["scaling"] = {"batch": batch, "warmup": w, "repeats": n,
                             "vs_num_tokens": bench_scaling([16, 32, 64, 128, 256], lambda k: TokSmallV1(num_tokens=k), batch, w, n),
                             "vs_image_size": bench_scaling([32, 64, 96, 128], lambda s: TokSmallV1(image_size=s), batch, w, n,
                                                            image_size_of=lambda s: s)}
    return emit(result, args.json)


def bench_compiled(model, flops, peak_gflops, args, train, inf) -> dict:
    """torch.compile (inductor) of the training forward and of encode / decode; speed-ups vs eager."""
    out = {}
    torch.manual_seed(0)
    fresh = TokSmallV1()
    start = time.perf_counter()
    compiled = torch.compile(fresh)
    r = bench_training(fresh, 32, args.warmup, args.repeats, flops, peak_gflops, forward=compiled)
    r["compile_and_warmup_s"] = time.perf_counter() - start - sum(r["times_s"])
    out["training"] = r
    out["training_speedup"] = train["ms_per_step"] / r["ms_per_step"]
    log(f"compiled training: {r['images_per_s']:.1f} images/s ({out['training_speedup']:.3f}x eager), MFU {100 * r['mfu']:.1f}%")
    start = time.perf_counter()
    enc, dec = torch.compile(model.encode), torch.compile(model.decode)
    r = bench_inference(model, 64, args.warmup, args.repeats, flops, peak_gflops, encode=enc, decode=dec)
    r["compile_and_warmup_s"] = time.perf_counter() - start - sum(sum(r[k]["times_s"]) for k in ("round_trip", "encode", "decode"))
    out["inference"] = r
    out["inference_round_trip_speedup"] = inf["round_trip"]["ms_per_batch"] / r["round_trip"]["ms_per_batch"]
    log(f"compiled inference: round trip {r['round_trip']['images_per_s']:.0f} images/s ({out['inference_round_trip_speedup']:.3f}x eager)")
    return out


if __name__ == "__main__":
    main()

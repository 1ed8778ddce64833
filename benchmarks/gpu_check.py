"""GPU check of the paper-scale recipes: each one built from its YAML at its per-GPU batch size and trained for a
few dozen steps through the real Lightning Trainer (tokgen's LightningCLI) on synthetic data, in one prepared run
that fits in 8 minutes on one H200.

Per recipe (``--only`` picks some; each section has its own time budget and the whole run a total one, so it ends
in time; a recipe that fails or runs out of time is reported as such and the next one runs):
  training      images/s (tokenizers) or tokens/s (generators), median step time (after ``--warmup`` steps that
                include compilation), peak GPU memory, loss finite and falling (mean of the last 5 steps below the
                first 5), and MFU: the model's training FLOPs (3 x forward; halting 4 x, its first phase is an
                extra forward) per median step over a bf16 matmul peak measured at the start of the same run.
                FLOPs are counted by torch's FlopCounterMode on the meta device (the transformers' matmuls and
                attention; quantizer, loss networks such as LPIPS and the frozen VAE are not counted).
  tokenizers    encode and decode images/s at batch 256 (bf16 autocast, eager, a fresh copy of the weights), and
                the attention kernels SDPA dispatches to (flash / efficient / math) for that tokenizer.
  generators    decode tokens/s at batch 64 for k = 32, 64, 128, 256, without and with CFG (scale 2, i.e. 128
                rows; not for the FSDP variants, whose model is their DDP recipe's), through ``generate(..., compile=True)`` (static cache, CUDA graphs), plus the eager cached
                path at the largest k for comparison, and the attention kernels of a training forward and of
                the cached decode steps.
The recipes run with their speed levers (``model.init_args.speed``) as written; ``--set KEY=VALUE`` changes any
recipe key for every recipe (e.g. ``--set model.init_args.speed.activation_checkpointing=false``). Data:
``tokgen.data.synthetic`` (smooth 256x256 images, or code sequences that follow the class), so the loss falls
within the run; ``optim.warmup_steps`` is set to 5 and validation, logging and checkpoint writing are off.
The paper-scale LPIPS runs with a randomly initialised VGG (``perceptual_random_backbone``: same compute, no
weights download) and the flow recipe with a randomly initialised AutoencoderKL of FlexTok's VAE shape (16
latent channels, downsampling 8) written to a temporary folder.

On the GPU machine (no internet; it lacks diffusers, lpips, jsonargparse and litdata): carry them as wheels.
Here, once, into the git-ignored folder ``wheels/``::

    pip download --no-deps -d wheels diffusers==0.42.1 lpips==0.1.4 jsonargparse==4.53.0 \\
        docstring-parser==0.18.0 typeshed-client==2.15.0 litdata==0.2.76 boto3 botocore s3transfer jmespath
    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux2014_x86_64 -d wheels obstore==0.12.1 importlib_metadata

(30 MB; boto3 and obstore only make litdata importable), then run, with the ``wheels`` folder carried to the
device (the device tool's ``carry: ["wheels"]``, ``timeout_s`` about 540)::

    bash benchmarks/gpu_check.sh wheels --json $OUT/gpu_check.json

(``gpu_check.sh`` installs the wheels without dependencies into ``/tmp/tokgen_site``, puts it on PYTHONPATH and
runs ``python3 benchmarks/gpu_check.py --json $OUT/gpu_check.json``). The last line printed is one JSON object.
``--tiny`` runs the same code on CPU with tiny sizes, 3 steps, fp32 (tests/test_benchmarks.py).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
import traceback

import lightning as L
import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, emit, log, machine_info, matmul_peak, median  # noqa: E402

sys.path.insert(0, ROOT)  # this checkout's tokgen, also when another one is installed

# name -> (recipe, kind); run in this order (most important first, so a short budget still covers them)
RECIPES = {
    "imagenet_titok_l32": ("configs/tokenizer/imagenet_titok_l32.yaml", "tokenizer"),
    "imagenet_flextok_d18": ("configs/tokenizer/imagenet_flextok_d18.yaml", "tokenizer"),
    "imagenet_gpt_b": ("configs/generator/imagenet_gpt_b.yaml", "generator"),
    "imagenet_gpt_l": ("configs/generator/imagenet_gpt_l.yaml", "generator"),
    "shapes_halting_gpu": ("configs/tokenizer/shapes_halting_gpu.yaml", "halting"),
    "imagenet_flextok_d18_flow": ("configs/tokenizer/imagenet_flextok_d18_flow.yaml", "flow"),
    "imagenet_gpt_b_fsdp": ("configs/generator/imagenet_gpt_b_fsdp.yaml", "generator"),
    "imagenet_gpt_l_fsdp": ("configs/generator/imagenet_gpt_l_fsdp.yaml", "generator"),
}
# seconds each section may take on the GPU (training with its compilation, then its encode/decode or generation
# part), plus whatever earlier sections left unused; the FSDP variants repeat their DDP recipe's model, so they get
# the least
BUDGET_S = {"imagenet_titok_l32": 80, "imagenet_flextok_d18": 75, "imagenet_gpt_b": 75, "imagenet_gpt_l": 85,
            "shapes_halting_gpu": 35, "imagenet_flextok_d18_flow": 60, "imagenet_gpt_b_fsdp": 20,
            "imagenet_gpt_l_fsdp": 25}
# share of a section's budget its training may take (the rest: encode/decode, or the decode step's compilation
# and the sweep); the FSDP variants only train (their model and decoding are those of the DDP recipe)
TRAIN_SHARE = {"tokenizer": 0.75, "flow": 0.75, "halting": 1.0, "generator": 0.5}
HALTING_BASELINE_MS = 45.0  # the one earlier GPU measurement of shapes_halting_gpu's step (issue 20)
DECODE_KS = (32, 64, 128, 256)

TINY_TOKENIZER = {"image_size": 32, "patch_size": 8, "width": 32, "encoder_depth": 1, "decoder_depth": 1,
                  "num_heads": 2, "num_tokens": 8}
TINY_GENERATOR = {"vocab_size": 512, "block_size": 16, "num_classes": 10, "dim": 64, "n_layer": 2, "n_head": 4}


# ---------------------------------------------------------------------------------------------------- recipe
def set_key(cfg: dict, key: str, value) -> None:
    """Set a dotted key of a nested recipe dict, creating missing sections."""
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def make_vae(folder: str, tiny: bool) -> str:
    """A randomly initialised diffusers AutoencoderKL written to ``folder``: FlexTok's VAE shape (16 latent channels,
    downsampling 8, SD-style widths) or, tiny, 4 channels and downsampling 2."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    if tiny:
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                            latent_channels=4, norm_num_groups=4, sample_size=32, scaling_factor=0.5)
    else:
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                            layers_per_block=2, latent_channels=16, norm_num_groups=32, sample_size=256,
                            scaling_factor=0.5)
    path = os.path.join(folder, "vae_c16" if not tiny else "vae_tiny")
    vae.save_pretrained(path)
    return path


def check_config(name: str, kind: str, args, workdir: str) -> dict:
    """The recipe as a dict, changed for the check: synthetic data at the recipe's batch size, one device, the
    recipe's precision (fp32 with --tiny), ``steps`` steps, no validation / logging / checkpoints, a short LR
    warm-up, tiny sizes with --tiny, and the ``--set`` overrides last."""
    path, _ = RECIPES[name]
    with open(os.path.join(ROOT, path)) as f:
        cfg = yaml.safe_load(f)
    init = cfg["model"]["init_args"]
    batch = cfg["data"]["init_args"]["batch_size"]
    trainer = cfg["trainer"]
    trainer.update({"accelerator": "cpu" if args.tiny else "gpu", "devices": 1, "num_nodes": 1,
                    "max_steps": args.steps, "limit_val_batches": 0, "num_sanity_val_steps": 0,
                    "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                    "log_every_n_steps": 10**6, "default_root_dir": os.path.join(workdir, name)})
    trainer.pop("val_check_interval", None)
    if args.tiny:
        trainer["precision"] = "32-true"
        if not isinstance(trainer.get("strategy"), str):
            trainer["strategy"] = "auto"  # FSDP needs CUDA: the tiny run checks the same recipe unsharded
    if trainer.get("strategy") == "ddp":
        trainer["strategy"] = "auto"  # one device
    init.setdefault("optim", {})["warmup_steps"] = 5
    if kind == "generator":
        g = init["generator"]
        if args.tiny:
            g.update(TINY_GENERATOR)
            batch = 4
        cfg["data"] = {"class_path": "tokgen.data.synthetic.SyntheticTokenDataModule",
                       "init_args": {"codebook_size": g["vocab_size"], "num_tokens": g["block_size"],
                                     "num_classes": g["num_classes"], "batch_size": batch,
                                     "num_examples": max(16 * batch, 64), "num_workers": 0}}
    else:
        t = init["tokenizer"]
        if args.tiny:
            t.update(TINY_TOKENIZER)
            batch = 4
            if init.get("val_budgets"):
                init["val_budgets"] = [k for k in init["val_budgets"] if k <= t["num_tokens"]]
            if kind == "flow":
                t.update({"patch_size": 2, "latent_channels": 4, "vae_downsample": 2, "sample_steps": 2})
        if kind == "flow":
            t["vae_path"] = make_vae(workdir, args.tiny)
            init["val_steps"] = 2
        if (init.get("loss") or {}).get("perceptual_weight", 0) > 0:
            init["loss"]["perceptual_random_backbone"] = True  # same compute; no weights on the machine
        cfg["data"] = {"class_path": "tokgen.data.synthetic.SyntheticImageDataModule",
                       "init_args": {"image_size": t["image_size"], "channels": t["channels"],
                                     "batch_size": batch, "num_examples": max(8 * batch, 32),
                                     "num_workers": 0 if args.tiny else 4}}
    if args.tiny:  # compile on CPU generates C++ for minutes; the tiny run checks tracing only
        init.setdefault("speed", {})["compile_backend"] = "aot_eager"
    for item in args.set:
        key, _, value = item.partition("=")
        set_key(cfg, key, yaml.safe_load(value))
    return cfg


# ---------------------------------------------------------------------------------------------------- training
class StepTimer(L.Callback):
    """Wall time and loss of every training step (the device is synchronised around each step)."""

    def __init__(self, sync):
        self.sync, self.times, self.losses = sync, [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.sync()
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.sync()
        self.times.append(time.perf_counter() - self.start)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


def train_flops(module, kind: str, batch: int) -> float | None:
    """Training FLOPs of one step of ``batch`` examples, counted on the meta device (see the module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    if kind == "generator":
        model = module.generator
        K = module.generator_config.block_size
        return 3.0 * batch * model.flops_forward(K, K)
    config = module.tokenizer_config
    with torch.device("meta"):
        tok = type(module.tokenizer)(config).eval()
        with FlopCounterMode(display=False) as counter:
            if kind == "flow":
                c = config.latent_channels if config.space == "latent" else config.channels
                s = config.image_size // (config.vae_downsample if config.space == "latent" else 1)
                x = torch.empty(batch, c, s, s)
                z = tok.encode_registers(x)
                tok.flow(x, torch.empty(batch), tok.flow.embed_tokens(z))
            else:
                images = torch.empty(batch, config.channels, config.image_size, config.image_size)
                z = tok.encode_latents(images)
                tok.decode_latents(z)
    return (4.0 if kind == "halting" else 3.0) * counter.get_total_flops()


def run_training(name: str, kind: str, args, workdir: str, budget_s: float, peak_flops: float, device) -> tuple:
    """Build the recipe through tokgen's LightningCLI (run=False) and fit ``args.steps`` steps; returns the
    report and the trained LightningModule."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tokgen.cli import lightning_main, silence_upstream_noise

    cfg = check_config(name, kind, args, workdir)
    cfg["trainer"]["max_time"] = {"seconds": max(int(budget_s), 1)}
    cfg_path = os.path.join(workdir, f"{name}.yaml")
    with open(cfg_path, "w") as f:
        yaml.safe_dump(cfg, f)
    silence_upstream_noise()
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it sees this script's own arguments
    try:
        cli = lightning_main(["--config", cfg_path], run=False, exit_on_error=False)
    finally:
        sys.argv = argv
    trainer, module = cli.trainer, cli.model
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]  # no 7 GB writes
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    timer = StepTimer(sync)
    trainer.callbacks.append(timer)
    batch = cli.datamodule.batch_size
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=cli.datamodule)
    times, losses = timer.times, timer.losses
    warm = min(args.warmup, max(len(times) - 1, 0))
    steady = times[warm:]
    report = {"recipe": RECIPES[name][0], "kind": kind, "batch": batch, "steps": len(times),
              "precision": str(trainer.precision), "strategy": type(trainer.strategy).__name__,
              "speed": dict(vars(module.speed)), "first_step_s": round(times[0], 3) if times else None,
              "step_times_s": [round(t, 5) for t in times]}
    if not steady:
        report["error"] = "no training step finished within the time budget"
        return report, module
    step = median(steady)
    per_item = module.generator_config.block_size if kind == "generator" else 1
    flops = train_flops(module, kind, batch)
    report.update({
        "median_step_ms": round(1000 * step, 3),
        ("tokens_per_s" if kind == "generator" else "images_per_s"): round(batch * per_item / step, 1),
        "train_gflops_per_step": round(flops / 1e9, 3) if flops else None,
        "mfu": round(flops / step / peak_flops, 4) if flops else None,
        "loss_first": losses[:5], "loss_last": losses[-5:],
        "loss_finite": all(math.isfinite(x) for x in losses),
        "loss_falling": len(losses) >= 2 and sum(losses[-5:]) / len(losses[-5:]) < sum(losses[:5]) / len(losses[:5]),
    })
    if device.type == "cuda":
        report["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if kind == "halting":
        report["speedup_vs_45ms"] = round(HALTING_BASELINE_MS / (1000 * step), 2)
    return report, module


# ---------------------------------------------------------------------------------------------------- inference
def timed_call(fn, sync, warmup: int = 1, repeats: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return median(times)


def fresh_copy(model: torch.nn.Module, build, device: torch.device) -> torch.nn.Module:
    """An uncompiled model with ``model``'s weights (the trained one has its blocks compiled for training shapes), on
    ``device`` (the Trainer's teardown has moved the trained model back to the CPU)."""
    copy_ = build()
    copy_.load_state_dict(model.state_dict())
    return copy_.to(device).eval()


def sdpa_kernels(fn) -> list[str]:
    """The aten attention kernels ``scaled_dot_product_attention`` dispatches to in one call of ``fn`` (flash,
    efficient / memory-efficient, cudnn or math), read from the profiler's op names."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sorted({e.key.replace("aten::", "") for e in prof.key_averages()
                   if e.key.startswith("aten::_scaled_dot_product") or e.key.startswith("aten::_flash_attention")
                   or e.key.startswith("aten::_efficient_attention")})


def tokenizer_inference(module, args, device, deadline: float) -> dict:
    """Encode and decode images/s at batch ``args.codec_batch`` (bf16 autocast on CUDA; a flow tokenizer decodes
    with its recipe's sampling steps)."""
    tok = fresh_copy(module.tokenizer, lambda: type(module.tokenizer)(module.tokenizer_config), device)
    c = module.tokenizer_config
    B = args.codec_batch
    images = torch.rand(B, c.channels, c.image_size, c.image_size, device=device) * 2 - 1
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = {"batch": B}
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        codes = tok.encode(images)
        out["sdpa_kernels"] = sdpa_kernels(lambda: tok.decode(tok.encode(images[:2])))
        t = timed_call(lambda: tok.encode(images), sync)
        out["encode_images_per_s"] = round(B / t, 1)
        if time.perf_counter() < deadline:
            sampled = hasattr(tok, "flow")  # a flow decoder samples (sample_steps passes): one timed call
            t = timed_call(lambda: tok.decode(codes), sync, warmup=0 if args.tiny or sampled else 1,
                           repeats=1 if sampled else 2)
            out["decode_images_per_s"] = round(B / t, 1)
        else:
            out["decode_images_per_s"] = "skipped: time budget"
    return out


def generator_inference(module, args, device, deadline: float) -> dict:
    """Decode tokens/s at batch ``args.decode_batch`` for each k, without and with CFG, compiled and (largest k)
    eager; the weights in bf16 on CUDA."""
    from tokgen.generator import GPT, generate

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = fresh_copy(module.generator, lambda: GPT(module.generator_config), device).to(dtype)
    if args.tiny:
        model.compile_decode(backend="aot_eager")
    c = model.config
    B = args.decode_batch
    labels = torch.arange(B, device=device) % max(c.num_classes, 1)
    ks = [k for k in DECODE_KS if k <= c.block_size] or [c.block_size]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = {"batch": B, "dtype": str(dtype).replace("torch.", ""), "compiled": {}, "eager": {}}
    codes = torch.randint(c.vocab_size, (2, c.block_size), device=device)
    with torch.no_grad():  # the attention of the teacher-forced forward (is_causal; eval: no dropout), of decoding
        out["sdpa_kernels_training"] = sdpa_kernels(lambda: model.loss(codes, labels[:2]))
        out["sdpa_kernels_decode"] = sdpa_kernels(lambda: generate(model, labels[:2], 2))
    for cfg_scale in (1.0, 2.0):
        tag = "cfg" if cfg_scale != 1.0 else "nocfg"
        for i, k in enumerate(ks):
            if time.perf_counter() > deadline:
                out["compiled"][f"{tag}_k{k}"] = "skipped: time budget"
                continue
            gen = torch.Generator().manual_seed(0)
            run = lambda: generate(model, labels, k, cfg_scale=cfg_scale, generator=gen, compile=True)  # noqa: E731
            t = timed_call(run, sync, warmup=1 if i == 0 else 0, repeats=2)
            out["compiled"][f"{tag}_k{k}"] = {"tokens_per_s": round(B * k / t, 1), "seconds": round(t, 4)}
        k = ks[-1]
        if time.perf_counter() < deadline:
            gen = torch.Generator().manual_seed(0)
            t = timed_call(lambda: generate(model, labels, k, cfg_scale=cfg_scale, generator=gen), sync,
                           warmup=1, repeats=1)
            out["eager"][f"{tag}_k{k}"] = {"tokens_per_s": round(B * k / t, 1), "seconds": round(t, 4)}
    return out


# ---------------------------------------------------------------------------------------------------- main
def failure(err: Exception) -> dict:
    """A report entry for a section that raised: the error and the end of its traceback."""
    return {"error": f"{type(err).__name__}: {str(err)[:500]}", "traceback": traceback.format_exc()[-3000:]}


def bf16_peak(device, tiny: bool) -> dict:
    """The matmul peak this run's MFU is measured against: bf16 8192^3 on CUDA; fp32 256^3 on CPU (--tiny)."""
    if device.type != "cuda":
        peak = matmul_peak(n=256, warmup=1, repeats=3)
        return {"dtype": "float32", "n": 256, "tflops": peak["gflop_per_s"] / 1e3}
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    times = []
    for i in range(13):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        torch.cuda.synchronize()
        if i >= 3:
            times.append((time.perf_counter() - start) / 10)
    return {"dtype": "bfloat16", "n": n, "tflops": 2 * n**3 / median(times) / 1e12}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=None,
                   help=f"comma-separated recipes to run (default: all): {', '.join(RECIPES)}")
    p.add_argument("--steps", type=int, default=None, help="training steps per recipe (default 30; --tiny 3)")
    p.add_argument("--warmup", type=int, default=None,
                   help="first steps left out of the timing (compilation; default 10; --tiny 1)")
    p.add_argument("--total-s", type=float, default=460.0, help="time budget of the recipes in seconds")
    p.add_argument("--codec-batch", type=int, default=None, help="encode/decode batch (default 256; --tiny 4)")
    p.add_argument("--decode-batch", type=int, default=None, help="generation batch (default 64; --tiny 2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a recipe key for every recipe, e.g. model.init_args.speed.compile=false")
    p.add_argument("--tiny", action="store_true", help="tiny sizes on CPU, fp32 (the test of this script)")
    p.add_argument("--json", default=None, help="also write the result JSON to this file")
    args = p.parse_args(argv)
    names = list(RECIPES) if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown or not names:
        p.error(f"--only: unknown recipe(s) {', '.join(unknown) or '(none given)'}; accepted: {', '.join(RECIPES)}")
    args.names = names
    for item in args.set:
        if "=" not in item:
            p.error(f"--set {item!r}: expected KEY=VALUE, e.g. model.init_args.speed.compile=false")
    defaults = {"steps": (30, 3), "warmup": (10, 1), "codec_batch": (256, 4), "decode_batch": (64, 2)}
    for key, (gpu, tiny) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, tiny if args.tiny else gpu)
    if args.steps < 2:
        p.error(f"--steps {args.steps}: needs at least 2 (a warm-up step and a timed one)")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; use --tiny for the CPU check")
    device = torch.device("cpu" if args.tiny else "cuda")
    info = machine_info()
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    peak = bf16_peak(device, args.tiny)
    log(f"matmul peak: {peak['tflops']:.1f} TFLOP/s ({peak['dtype']})")
    results = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as workdir:
        for i, name in enumerate(args.names):
            kind = RECIPES[name][1]
            left = args.total_s - (time.perf_counter() - start)
            # a section may use its own budget plus what earlier sections left unused (the later ones keep theirs)
            reserve = sum(BUDGET_S[n] for n in args.names[i + 1:])
            budget = min(left, max(BUDGET_S[name], left - reserve)) if not args.tiny else left  # tiny: seconds
            if not args.tiny and left < 0.5 * BUDGET_S[name]:
                results[name] = {"skipped": f"time budget: {left:.0f} s left of --total-s {args.total_s:.0f}"}
                log(f"{name}: skipped (time budget)")
                continue
            section_start = time.perf_counter()
            log(f"{name}: training {args.steps} steps ...")
            module = None
            sharded = name.endswith("_fsdp")
            try:
                train_budget = budget * (1.0 if sharded else TRAIN_SHARE[kind])
                report, module = run_training(name, kind, args, workdir, train_budget, peak["tflops"] * 1e12, device)
            except Exception as err:  # report and go on with the next recipe
                report = {"recipe": RECIPES[name][0], **failure(err)}
            if module is not None and "error" not in report and not sharded and kind != "halting":
                section, measure = (("generation", generator_inference) if kind == "generator"
                                    else ("codec", tokenizer_inference))
                try:  # a failure here keeps the training figures
                    report[section] = measure(module, args, device, section_start + budget)
                except Exception as err:
                    report[section] = failure(err)
            report["section_s"] = round(time.perf_counter() - section_start, 1)
            results[name] = report
            log(f"{name}: {json.dumps({k: v for k, v in report.items() if k not in ('step_times_s', 'traceback')})}")
            del module
            gc.collect()
            torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    result = {"benchmark": "gpu_check", "tiny": args.tiny, **info, "matmul_peak": peak, "recipes": results,
              "total_s": round(time.perf_counter() - start, 1)}
    return emit(result, args.json)


if __name__ == "__main__":
    main()

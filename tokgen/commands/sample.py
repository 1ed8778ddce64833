"""``tokgen sample``: class-conditional images from a generator + tokenizer at chosen token budgets.

    tokgen sample --tokenizer runs/fmnist_small/checkpoints/last.ckpt \\
        --generator runs/gen_fmnist_small/checkpoints/last.ckpt --budgets 1,4,16,32 --classes 0,3,7 \\
        --num 8 --cfg 2.0 --seed 0 --out samples.png [--out-dir samples/]

Writes one PNG grid per budget (rows = classes, columns = the first ``--grid-cols`` samples of each class;
``samples_k4.png`` etc. when several budgets are asked for) and, with ``--out-dir``, every sample as
``<out-dir>/k<budget>/<index>_c<class>.png`` (for gFID).

With a video tokenizer checkpoint (trajectory tokens) the samples are clips, written as tiled GIF / MP4 files:
see :mod:`tokgen.commands.sample_video`.

Distributed: ``accelerate launch --multi_gpu --num_processes N sample/images.py <same args>`` (or
``torchrun --nproc_per_node N sample/images.py ...``) splits the batches over processes (accelerate's
``split_between_processes``) and gathers the grid on the main process; on a machine without GPUs the same
command runs N CPU processes on the gloo backend (``accelerate launch --cpu`` would start only one).
Sample i is drawn from uniforms derived from ``(seed, i)`` and batches are fixed slices of the sample list,
so the images are the same whatever the number of processes.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from ..checkpoint import checkpoint_kind
from ..generator import CFG_SCHEDULES, GPT, check_generator_tokenizer, generate, sample_uniforms
from ..data.base import check_number
from ..generator.generate import FLAG_NAMES, check_sampling
from .checks import CommandParser, check_output_path
from .flow_options import add_flow_arguments, apply_flow_arguments


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # grids of an image tokenizer (PIL writes them)


def build_parser(prog: str = "tokgen sample") -> argparse.ArgumentParser:
    p = CommandParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="tokenizer checkpoint (`tokgen fit` with TokenizerModule, "
                   "or a video tokenizer: clips)")
    p.add_argument("--generator", required=True, help="generator checkpoint (`tokgen fit` with GeneratorModule)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget", type=int, default=None, help="token budget k (default: the full K)")
    budget.add_argument("--budgets", default=None, help="several budgets, comma separated, e.g. 1,4,16")
    p.add_argument("--classes", default=None,
                   help="class ids, comma separated (default: every class; unconditional generators take none)")
    p.add_argument("--num", "--num-samples", dest="num", type=int, default=8,
                   help="samples per class (unconditional: in total); default 8. Under torchrun write --num-samples: "
                        "torchrun's own parser reads --num as an abbreviation of its --numa-binding")
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale (1 = off); default 1")
    p.add_argument("--cfg-schedule", default="constant", help=f"one of {', '.join(CFG_SCHEDULES)}")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 = greedy); default 1")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely codes (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--eos", action="store_true",
                   help="each sample ends where the generator puts end-of-sequence (generators trained with use_eos); "
                        "--budget is then the cap. Samples stream through --batch-size slots, a finished sample's "
                        "slot taking the next one, and their lengths go to --metrics-json and <out>_lengths.png")
    p.add_argument("--data-lengths", default=None,
                   help="with --eos: a token-shard folder (`tokgen tokenize`) whose length distribution the sampled "
                        "one is compared with (JSON and histogram)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses randomness derived from (seed, i)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per generation batch (default 64)")
    p.add_argument("--out", default=None, help="grid PNG (default samples.png; video tokenizers: a tiled .gif or "
                   ".mp4, default samples.gif), suffixed _k<budget> for several budgets")
    p.add_argument("--out-dir", default=None,
                   help="also write every sample as a PNG (clips: .gif/.mp4) under this folder")
    p.add_argument("--fps", type=float, default=8.0, help="frame rate of written clips (video tokenizers); default 8")
    p.add_argument("--grid-cols", type=int, default=16, help="at most this many samples per class in the grid")
    p.add_argument("--device", default="auto", help="auto | cpu (auto = the process's accelerator if any)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per process (default: cores / processes)")
    p.add_argument("--no-ema", action="store_true", help="raw instead of EMA weights (both models)")
    p.add_argument("--classifier", default=None,
                   help="classifier file with classify(x) (`tokgen train-features`, safetensors): report the share of "
                        "samples labelled as their conditioning class, per budget")
    p.add_argument("--trust-torchscript", action="store_true", help="also accept a TorchScript --classifier "
                   "(deprecated); TorchScript runs code stored in the file, so only for files you trust")
    p.add_argument("--metrics-json", default=None, help="write the per-budget accuracy (and settings) as JSON")
    add_flow_arguments(p)
    return p


def parse_int_list(name: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name} {text!r} must be comma-separated integers, e.g. 1,4,16") from None
    if not values:
        raise ValueError(f"{name} {text!r} is empty")
    return values


def resolve_budgets(args, tokenizer_k: int, block_size: int, tokenizer_what: str = "the tokenizer's K") -> list[int]:
    if args.budgets is not None:
        budgets = sorted(set(parse_int_list("--budgets", args.budgets)))
    else:
        budgets = [args.budget if args.budget is not None else min(tokenizer_k, block_size)]
    for k in budgets:
        if k < 1:
            raise ValueError(f"token budget {k} must be >= 1")
        if k > tokenizer_k:
            raise ValueError(f"token budget {k} is above {tokenizer_what}={tokenizer_k} (accepted 1..{tokenizer_k})")
        if k > block_size:
            raise ValueError(f"token budget {k} is above the generator's context block_size={block_size} "
                             f"(accepted 1..{block_size})")
    return budgets


def resolve_classes(args, num_classes: int) -> list[int | None]:
    if num_classes == 0:
        if args.classes is not None:
            raise ValueError(f"--classes {args.classes} given, but the generator is unconditional (num_classes=0)")
        return [None]
    classes = parse_int_list("--classes", args.classes) if args.classes is not None else list(range(num_classes))
    for c in classes:
        if not 0 <= c < num_classes:
            raise ValueError(f"class id {c} is out of range: the generator has {num_classes} classes "
                             f"(accepted 0..{num_classes - 1})")
    return classes


def check_generator_options(args, c) -> None:
    """--cfg and --eos against the generator's config."""
    if args.cfg != 1.0 and c.num_classes == 0:
        raise ValueError(f"--cfg {args.cfg} needs a class-conditional generator; this one is unconditional")
    if args.eos and not c.use_eos:
        raise ValueError("--eos needs a generator trained with use_eos: true")


def plan_samples(args, classes: list[int | None]) -> tuple[list, list[list[int]], set[int]]:
    """Sample i has class labels[i]; batches are fixed slices of the sample list (the same whatever the number
    of processes); grid members are the first --grid-cols samples of each class."""
    labels = [cls for cls in classes for _ in range(args.num)]
    batches = [list(range(s, min(len(labels), s + args.batch_size))) for s in range(0, len(labels), args.batch_size)]
    return labels, batches, {i for i in range(len(labels)) if i % args.num < args.grid_cols}


def generate_budgets(model: GPT, args, idx: list[int], labels: list, budgets: list[int], device,
                     shared: bool, slots: int | None = None,
                     codes_per_token: int = 1) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Codes (B, b * G) and lengths (B,) <= b * G (in codes) per budget b for the samples ``idx`` (sample i has
    class labels[i]); with ``shared`` one generation at the largest budget serves every budget (its prefixes), else
    one per budget. ``slots`` (with --eos): the samples stream through that many decode slots (see ``generate``).
    ``codes_per_token`` G: budgets count tokens of G codes each (a group quantizer's), and EOS only ends a sample
    after whole tokens, so every length is a multiple of G."""
    G = codes_per_token
    u = sample_uniforms(args.seed, idx, max(budgets) * G * model.config.draws_per_token)
    lab = None if labels[idx[0]] is None else torch.tensor([labels[i] for i in idx], device=device)
    outputs = {}
    for k in [max(budgets)] if shared else budgets:
        outputs[k] = generate(
            model, lab, k * G, batch_size=len(idx), cfg_scale=args.cfg, cfg_schedule=args.cfg_schedule,
            temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p, stop_at_eos=args.eos,
            eos_every=G, slots=slots, uniforms=u)
    return {b: (codes[:, :b * G], lengths.clamp(max=b * G))
            for b in budgets for codes, lengths in [outputs.get(b, outputs[max(budgets)])]}


def load_classifier(path: str, channels: int, size: int, trust_torchscript: bool = False):
    """A `tokgen train-features` file (its network must have ``classify``), wrapped for uint8 images; TorchScript
    only with ``trust_torchscript``."""
    from ..metrics.features import FeatureExtractor

    extractor = FeatureExtractor(path, probe=(channels, size), trust_torchscript=trust_torchscript,
                                 what="--classifier")
    if not hasattr(extractor.net, "classify"):
        raise ValueError(f"--classifier {path} has no classify() method; write one with `tokgen train-features`")
    return extractor


@torch.no_grad()
def classify(extractor, images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> predicted classes (B,), with the extractor's own input adaptation (FeatureExtractor)."""
    x = images.float() / 255
    if extractor.channels is not None and x.shape[1] != extractor.channels:
        x = x.mean(1, keepdim=True) if extractor.channels == 1 else x.expand(-1, extractor.channels, -1, -1)
    if extractor.input_size is not None and tuple(x.shape[-2:]) != (extractor.input_size, extractor.input_size):
        x = torch.nn.functional.interpolate(x, size=(extractor.input_size,) * 2, mode="bilinear", antialias=True,
                                            align_corners=False)
    return extractor.net.classify(x).argmax(-1)


def budget_path(out: str, budget: int, several: bool) -> str:
    if not several:
        return out
    stem, ext = os.path.splitext(out)
    return f"{stem}_k{budget}{ext or '.png'}"


def run(args: argparse.Namespace) -> dict:
    """Sample, write the PNGs; returns {"grids": {budget: path}, "accuracy": {budget: share}} on the main process
    ({} elsewhere); accuracy only with ``--classifier``."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from ..images import save_png, tile, to_uint8
    from ..tokenizers import load_tokenizer

    for name in ("num", "batch_size", "grid_cols"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {args.seed}")
    check_sampling(args.temperature, args.top_k, args.top_p, args.cfg, args.cfg_schedule, names=FLAG_NAMES)
    if args.device not in ("auto", "cpu"):
        raise ValueError(f"--device {args.device!r} is not accepted; use auto or cpu (accelerate picks the GPU)")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {args.threads}")
    check_number("--fps", args.fps, 0, low_open=True)
    if args.out is not None:
        check_output_path("--out", args.out)
    if args.out_dir is not None:
        check_output_path("--out-dir", args.out_dir, folder=True)
    if args.metrics_json is not None:
        check_output_path("--metrics-json", args.metrics_json, suffixes=(".json",))
    # without cpu=True accelerate treats a CPU-only multi-process launch as single-process (duplicate work)
    state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if state.num_processes != launched:
        raise ValueError(f"launched {launched} processes but accelerate sees {state.num_processes}; "
                         f"check the launcher (e.g. `accelerate launch --multi_gpu --num_processes N` or torchrun)")
    if state.device.type == "cpu":
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // state.num_processes))
    device = state.device
    if checkpoint_kind(args.tokenizer) == "video_tokenizer":  # trajectory tokens: clips instead of images
        from .sample_video import run_video

        return run_video(args, state)
    args.out = check_output_path("--out", args.out or "samples.png", suffixes=IMAGE_EXTENSIONS)

    tokenizer = load_tokenizer(args.tokenizer, use_ema=not args.no_ema).to(device)
    if tokenizer.quantizer.codes_per_token > 1:
        raise ValueError(f"tokenizer {args.tokenizer} has {tokenizer.quantizer.codes_per_token} codes per token "
                         f"(quantizer groups); sampling grouped codes is implemented for video tokenizers only")
    apply_flow_arguments(tokenizer, args, args.tokenizer)  # flow tokenizers: --flow-steps/--flow-cfg/--flow-seed
    model = GPT.from_checkpoint(args.generator, use_ema=not args.no_ema).to(device)
    check_generator_tokenizer(model, tokenizer, args.tokenizer, args.generator)
    c = model.config
    budgets = resolve_budgets(args, tokenizer.num_tokens, c.block_size)
    classes = resolve_classes(args, c.num_classes)
    check_generator_options(args, c)

    classifier = None
    if args.classifier:
        if classes == [None]:
            raise ValueError("--classifier needs a class-conditional generator (it checks the conditioning class)")
        classifier = load_classifier(args.classifier, tokenizer.config.channels, tokenizer.config.image_size,
                                     args.trust_torchscript)

    labels, batches, grid_members = plan_samples(args, classes)
    # one generation at the largest budget serves every budget (prefixes) unless the schedule depends on k
    shared = args.cfg_schedule == "constant" or args.cfg == 1.0
    shared = shared and not args.eos

    data_lengths = None
    if args.data_lengths is not None:
        if not args.eos:
            raise ValueError("--data-lengths compares the lengths the generator chooses: it needs --eos")
        data_lengths = shard_lengths(args.data_lengths, max(budgets))

    grid: dict[int, list] = {b: [] for b in budgets}
    hits: dict[int, list] = {b: [0, 0] for b in budgets}  # correct, total (with --classifier)
    sampled: dict[int, list] = {b: [] for b in budgets}  # (sample index, length) with --eos
    with state.split_between_processes(batches) as my_batches:
        streamed = None
        if args.eos and my_batches:  # one stream through batch-size slots: the cost follows the sum of lengths
            flat = [i for idx in my_batches for i in idx]
            streamed = generate_budgets(model, args, flat, labels, budgets, device, shared, slots=args.batch_size)
        start = 0
        for idx in my_batches:
            if streamed is None:
                outputs = generate_budgets(model, args, idx, labels, budgets, device, shared)
            else:
                outputs = {b: (c[start:start + len(idx)], n[start:start + len(idx)]) for b, (c, n) in streamed.items()}
                start += len(idx)
            for b in budgets:
                codes, lengths = outputs[b]
                with torch.no_grad():
                    if args.eos:
                        latents = tokenizer.quantizer.codes_to_latents(codes)
                        images = tokenizer.decode_latents(latents, keep=lengths)
                    else:
                        images = tokenizer.decode(codes)
                images = to_uint8(images).cpu()
                if classifier is not None:
                    predicted = classify(classifier, images)
                    hits[b][0] += int((predicted == torch.tensor([labels[i] for i in idx])).sum())
                    hits[b][1] += len(idx)
                if args.eos:
                    sampled[b] += list(zip(idx, lengths.tolist()))
                for j, i in enumerate(idx):
                    if args.out_dir:
                        folder = os.path.join(args.out_dir, f"k{b}")
                        os.makedirs(folder, exist_ok=True)
                        name = f"{i:06d}.png" if labels[i] is None else f"{i:06d}_c{labels[i]}.png"
                        save_png(images[j], os.path.join(folder, name))
                    if i in grid_members:
                        grid[b].append((i, images[j], int(lengths[j])))

    written, accuracy, length_reports = {}, {}, {}
    for b in budgets:
        members = gather_object(grid[b]) if state.num_processes > 1 else grid[b]
        counts = gather_object([hits[b]]) if state.num_processes > 1 else [hits[b]]
        chosen = (gather_object(sampled[b]) if state.num_processes > 1 else sampled[b]) if args.eos else None
        if classifier is not None:
            accuracy[b] = sum(c[0] for c in counts) / max(1, sum(c[1] for c in counts))
        if state.is_main_process:
            members = sorted(members, key=lambda m: m[0])
            images = torch.stack([m[1] for m in members])
            nrow = min(args.num, args.grid_cols)
            path = budget_path(args.out, b, len(budgets) > 1)
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            if args.eos:  # each tile captioned with the tokens its sample chose
                length_reports[b] = report_lengths(chosen, labels, b, data_lengths, path)
                save_captioned_grid(members, labels, nrow, path)
            else:
                save_png(tile(images, nrow), path)
            written[b] = path
            print(f"budget k={b}: {len(labels)} samples, grid {path}"
                  + (f", images {os.path.join(args.out_dir, f'k{b}')}" if args.out_dir else "")
                  + (f", classifier accuracy {accuracy[b]:.3f}" if classifier is not None else "")
                  + (f", mean length {length_reports[b]['sampled']['mean']:.2f} (histogram "
                     f"{length_reports[b]['histogram']})" if args.eos else ""))
    if state.is_main_process and args.metrics_json:
        report = {"tokenizer": args.tokenizer, "generator": args.generator, "classifier": args.classifier,
                  "samples_per_budget": len(labels), "classes": classes, "cfg": args.cfg,
                  "cfg_schedule": args.cfg_schedule, "temperature": args.temperature, "top_k": args.top_k,
                  "top_p": args.top_p, "seed": args.seed, "grids": {str(b): p for b, p in written.items()},
                  "accuracy": {str(b): a for b, a in accuracy.items()}, "eos": args.eos}
        if args.eos:
            report["lengths"] = {str(b): r for b, r in length_reports.items()}
        os.makedirs(os.path.dirname(os.path.abspath(args.metrics_json)), exist_ok=True)
        with open(args.metrics_json, "w") as f:
            json.dump(report, f, indent=1)
    state.wait_for_everyone()
    return {"grids": written, "accuracy": accuracy} if state.is_main_process else {}


def shard_lengths(path: str, cap: int) -> dict:
    """The length distribution of a token-shard folder (lengths above ``cap`` counted at the cap)."""
    from ..data.tokens import load_token_shards
    from ..metrics.lengths import length_summary

    index, _, lengths, labels = load_token_shards(path)
    return length_summary(lengths.clamp(max=cap), cap, labels if index.get("num_classes") else None)


def report_lengths(chosen: list[tuple[int, int]], labels: list, cap: int, data: dict | None, grid_path: str) -> dict:
    """Summary of the sampled lengths (and the data's), plus ``<grid stem>_lengths.png`` comparing them."""
    from ..metrics.lengths import length_summary, plot_length_comparison

    chosen = sorted(chosen)
    lengths = torch.tensor([n for _, n in chosen])
    classes = None if labels[0] is None else torch.tensor([labels[i] for i, _ in chosen])
    report = {"sampled": length_summary(lengths, cap, classes)}
    summaries = {"generated": report["sampled"]}
    if data is not None:
        report["data"] = summaries["data"] = data
        report["mean_ratio"] = report["sampled"]["mean"] / data["mean"]
        shared = sorted(set(report["sampled"].get("per_class_mean", {})) & set(data.get("per_class_mean", {})), key=int)
        if len(shared) >= 2:  # do classes that need more tokens in the data also get more in the samples?
            from ..metrics.adaptive import spearman

            rho = spearman(torch.tensor([report["sampled"]["per_class_mean"][c] for c in shared]),
                           torch.tensor([data["per_class_mean"][c] for c in shared]))
            report["per_class_spearman"] = None if rho != rho else rho  # None: one side has equal means
    report["histogram"] = os.path.splitext(grid_path)[0] + "_lengths.png"
    plot_length_comparison(summaries, report["histogram"], title=f"tokens per sample (cap {cap})")
    return report


def save_captioned_grid(members: list[tuple], labels: list, nrow: int, path: str) -> None:
    """Grid of (index, uint8 image, length) members, one row per class (``nrow`` tiles), each tile captioned
    with its length."""
    from ..images import save_labelled_grid

    rows, captions = [], []
    for cls in dict.fromkeys(labels[i] for i, _, _ in members):
        group = [m for m in members if labels[m[0]] == cls]
        for start in range(0, len(group), nrow):
            part = group[start:start + nrow]
            rows.append(("" if cls is None else f"c{cls}", torch.stack([m[1] for m in part]).float() / 255))
            captions.append([str(m[2]) for m in part])
    save_labelled_grid(rows, path, captions=captions)


def main(argv: list[str], prog: str = "tokgen sample") -> dict:
    return run(build_parser(prog).parse_args(argv))

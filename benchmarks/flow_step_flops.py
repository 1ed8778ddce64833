"""Training FLOPs of one step: the direct fmnist recipe against the two-stage flow recipe (issue 6's compute match).

    python benchmarks/flow_step_flops.py

Counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions) on one batch of the recipes'
size: the direct tokenizer's forward + backward of its reconstruction loss, and the flow recipe's forward +
backward with the encoder and quantizer frozen (as ``freeze_encoder`` leaves them: no weight gradients there) on
the flow loss. ``flow_steps_per_direct_step`` is how many flow steps cost one direct step; the flow recipe's
2000 steps stand in for the last 1000 of ``fmnist_small``. The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, emit, log  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--direct", default="configs/tokenizer/fmnist_small.yaml")
    p.add_argument("--flow", default="configs/tokenizer/fmnist_flow_small.yaml")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from torch.utils.flop_counter import FlopCounterMode

    from tokgen.tokenizers import FlowTokenizer, FlowTokenizerConfig, Tokenizer1D, TokenizerConfig

    def recipe(path):
        cfg = yaml.safe_load(open(os.path.join(ROOT, path)))
        return cfg["model"]["init_args"], cfg["data"]["init_args"]["batch_size"]

    torch.manual_seed(0)
    d_args, batch = recipe(args.direct)
    f_args, f_batch = recipe(args.flow)
    if batch != f_batch:
        raise SystemExit(f"batch sizes differ ({batch} vs {f_batch}): compare steps of the same batch")
    direct = Tokenizer1D(TokenizerConfig.from_dict(d_args["tokenizer"]))
    flow = FlowTokenizer(FlowTokenizerConfig.from_dict(f_args["tokenizer"]))
    if f_args.get("freeze_encoder"):
        for name, param in flow.named_parameters():
            if not name.startswith("flow."):
                param.requires_grad_(False)
    c = direct.config
    x = torch.rand(batch, c.channels, c.image_size, c.image_size) * 2 - 1

    with FlopCounterMode(display=False) as counter:
        recon = direct.decode_latents(direct.quantize(direct.encode_latents(x))[0])
        (recon - x).square().mean().backward()
    direct_flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        z_q = flow.quantize(flow.encode_latents(x))[0]
        flow.flow.loss(x, z_q)["flow"].backward()
    flow_flops = counter.get_total_flops()
    log(f"direct step {direct_flops / 1e9:.1f} GFLOP, flow step {flow_flops / 1e9:.1f} GFLOP (batch {batch})")
    return emit({
        "benchmark": "flow_step_flops", "batch": batch, "direct_recipe": args.direct, "flow_recipe": args.flow,
        "frozen_encoder": bool(f_args.get("freeze_encoder")),
        "direct_gflop_per_step": direct_flops / 1e9, "flow_gflop_per_step": flow_flops / 1e9,
        "flow_steps_per_direct_step": direct_flops / flow_flops,
    }, args.json)


if __name__ == "__main__":
    main()

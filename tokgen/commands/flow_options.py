"""``--flow-steps / --flow-cfg / --flow-seed``: how ``tokgen eval`` and ``tokgen sample`` decode with a flow tokenizer
(``tokgen.tokenizers.FlowTokenizer``); the defaults are the checkpoint's ``sample_steps``, ``cfg_scale`` and
``sample_seed``. Other tokenizers decode in one pass and reject the options."""
from __future__ import annotations

import argparse
from dataclasses import asdict

FLOW_OPTIONS = {"flow_steps": "steps", "flow_cfg": "cfg", "flow_seed": "seed"}


def add_flow_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("flow decoder (flow tokenizer checkpoints only)")
    group.add_argument("--flow-steps", type=int, help="Euler steps per decode (default: the checkpoint's sample_steps)")
    group.add_argument("--flow-cfg", type=float, help="token guidance scale, 1 = none (default: the checkpoint's)")
    group.add_argument("--flow-seed", type=int, help="noise seed; each image's noise follows from (seed, its tokens), "
                       "so decoding is deterministic (default: the checkpoint's sample_seed)")


def apply_flow_arguments(tokenizer, args: argparse.Namespace, path: str) -> dict | None:
    """Set the flow tokenizer's sampling from the parsed options; returns the options used (None: not a flow
    tokenizer). A ValueError when flow options are given for another tokenizer."""
    from ..tokenizers import FlowTokenizer

    given = {name: getattr(args, flag) for flag, name in FLOW_OPTIONS.items() if getattr(args, flag, None) is not None}
    if not isinstance(tokenizer, FlowTokenizer):
        if given:
            flags = ", ".join("--" + flag.replace("_", "-") for flag, name in FLOW_OPTIONS.items() if name in given)
            raise ValueError(f"{flags} only apply to flow tokenizer checkpoints; {path} holds a "
                             f"{type(tokenizer).__name__}, which decodes in one pass")
        return None
    return asdict(tokenizer.configure_sampling(**given))

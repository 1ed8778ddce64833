"""Speed of two tokgen trees (e.g. before and after a refactor) compared in one process: is a change within noise?

Both trees' ``tokgen`` packages are imported into this process (each under its own ``sys.modules`` snapshot,
swapped in before each of its measurements), and their measurements alternate A, B then B, A, so that a slow drift
of a shared machine cancels in each pair's ratio B / A. Reported per measurement: the median of the paired
ratios and their quartiles, plus each tree's median time.

- ``--reps`` rounds of whole measurements (each builds its models from the same seed): a tokenizer's training step
  and encode + decode round trip, a GPT's training step, cached generation ms/token at k = 32 and 128, and the
  Lightning ``TokenizerModule`` step through a Trainer (optimizer, EMA, nested dropout, losses).
- ``--fine-reps`` call-by-call alternation of the tokenizer round trip and training step, on identical weights
  (finer than whole rounds: the pair of calls is a fraction of a second apart).

Example (the tree before a change as a detached worktree)::

    git worktree add --detach /tmp/before <commit>
    python benchmarks/tree_ab.py --a /tmp/before --b . --reps 12 --fine-reps 60 --json ab.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, log, machine_info, timed  # noqa: E402

TOKENIZER = dict(image_size=32, channels=1, patch_size=4, width=128, encoder_depth=4, decoder_depth=4, num_heads=4,
                 num_tokens=32, register_attention="causal", quantizer={"kind": "fsq", "levels": [8, 5, 5, 5]})
GENERATOR = dict(vocab_size=1000, block_size=128, num_classes=10, dim=256, n_layer=4, n_head=8)


class Trees:
    """Both trees' tokgen, importable by turns: :meth:`use` puts one tree's modules in ``sys.modules`` (so the lazy
    imports inside its functions resolve to the same tree) and returns them by name."""

    def __init__(self, paths: list[str]):
        self.base_path, self.saved = list(sys.path), {}
        for path in paths:
            self.clear()
            sys.path[:] = [path] + self.base_path
            import tokgen  # noqa: F401
            import tokgen.data  # noqa: F401
            import tokgen.generator  # noqa: F401
            import tokgen.lit  # noqa: F401
            import tokgen.tokenizers  # noqa: F401

            if not os.path.abspath(sys.modules["tokgen"].__file__).startswith(os.path.abspath(path)):
                raise SystemExit(f"tree_ab: {path} has no tokgen package of its own")
            self.saved[path] = {m: mod for m, mod in sys.modules.items() if m == "tokgen" or m.startswith("tokgen.")}

    @staticmethod
    def clear() -> None:
        for name in [m for m in sys.modules if m == "tokgen" or m.startswith("tokgen.")]:
            del sys.modules[name]

    def use(self, path: str) -> dict:
        self.clear()
        sys.modules.update(self.saved[path])
        sys.path[:] = [path] + self.base_path
        return self.saved[path]


def median_ms(fn, n: int) -> float:
    """Median milliseconds of ``n`` calls after one untimed call."""
    return 1000 * statistics.median(timed(fn, 1, n))


def tokenizer_and_step(mods: dict):
    """A seeded tokenizer, its AdamW (lr 0: the weights stay put) and one training step on a fixed batch."""
    tk = mods["tokgen.tokenizers"]
    torch.manual_seed(0)
    tok = tk.Tokenizer1D(tk.TokenizerConfig.from_dict(TOKENIZER))
    opt = torch.optim.AdamW(tok.parameters(), lr=0.0, foreach=True)
    x = torch.rand(32, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def step():
        tok.train()
        opt.zero_grad(set_to_none=True)
        (tok(x)[0] - x).square().mean().backward()
        opt.step()

    def round_trip():
        tok.eval()
        with torch.no_grad():
            tok.decode(tok.encode(x))

    return step, round_trip


def measure(mods: dict) -> dict:
    """One round of every whole measurement (ms) with this tree's modules."""
    import lightning as L

    gen, lit, tk, data = mods["tokgen.generator"], mods["tokgen.lit"], mods["tokgen.tokenizers"], mods["tokgen.data"]
    step, round_trip = tokenizer_and_step(mods)
    out = {"tokenizer_train_step_ms": median_ms(step, 5), "tokenizer_round_trip_ms": median_ms(round_trip, 5)}
    torch.manual_seed(0)
    gpt = gen.GPT(gen.GPTConfig(**GENERATOR))
    opt = torch.optim.AdamW(gpt.parameters(), lr=0.0, foreach=True)
    codes, labels = torch.randint(1000, (16, 128)), torch.arange(16) % 10

    def gpt_step():
        gpt.train()
        opt.zero_grad(set_to_none=True)
        gpt.loss(codes, labels)[0].backward()
        opt.step()

    out["gpt_train_step_ms"] = median_ms(gpt_step, 5)
    gpt.eval()
    for k in (32, 128):
        g = torch.Generator().manual_seed(0)
        out[f"generate_k{k}_ms_per_token"] = median_ms(lambda: gen.generate(gpt, labels[:8], k, generator=g), 3) / k

    class StepTimes(L.Callback):
        def __init__(self):
            self.times = []

        def on_train_batch_start(self, *args):
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args):
            self.times.append(time.perf_counter() - self.start)

    timer = StepTimes()
    torch.manual_seed(0)
    module = lit.TokenizerModule(tokenizer=tk.TokenizerConfig.from_dict({**TOKENIZER, "channels": 3}),
                                 nested_dropout="pow2", ema_decay=0.999)
    dm = data.ShapesDataModule(image_size=32, train_size=512, val_size=16, batch_size=32)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=10, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[timer])
    trainer.fit(module, datamodule=dm)
    out["lit_tokenizer_step_ms"] = 1000 * statistics.median(timer.times[3:])
    return out


def summarise(a: list[float], b: list[float]) -> dict:
    ratios = [y / x for x, y in zip(a, b)]
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return {"ratio_b_over_a_median": round(statistics.median(ratios), 3), "ratio_q1": round(q1, 3),
            "ratio_q3": round(q3, 3), "a_median": round(statistics.median(a), 3), "b_median": round(statistics.median(b), 3),
            "n": len(ratios)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="the reference tree (a checkout holding tokgen/), e.g. before a change")
    p.add_argument("--b", required=True, help="the tree compared with it, e.g. after the change")
    p.add_argument("--reps", type=int, default=12, help="rounds of whole measurements (alternating order)")
    p.add_argument("--fine-reps", type=int, default=60, help="call-by-call pairs of the tokenizer step / round trip")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.reps < 1 or args.fine_reps < 0:
        p.error(f"--reps {args.reps} must be >= 1 and --fine-reps {args.fine_reps} >= 0")
    torch.set_num_threads(args.threads)
    a, b = os.path.abspath(args.a), os.path.abspath(args.b)
    trees = Trees([a, b])
    rows = {a: [], b: []}
    for r in range(args.reps):
        for path in (a, b) if r % 2 == 0 else (b, a):
            rows[path].append(measure(trees.use(path)))
        log(f"round {r + 1}/{args.reps}: " + ", ".join(
            f"{k} {rows[b][-1][k] / rows[a][-1][k]:.3f}" for k in rows[a][-1]))
    result = {"benchmark": "tree_ab", **machine_info(), "a": a, "b": b, "reps": args.reps,
              "rounds": {k: summarise([x[k] for x in rows[a]], [x[k] for x in rows[b]]) for k in rows[a][0]}}
    if args.fine_reps:
        fns = {path: tokenizer_and_step(trees.use(path)) for path in (a, b)}
        fine = {}
        for i, name in enumerate(("tokenizer_train_step", "tokenizer_round_trip")):
            times = {a: [], b: []}
            for path in (a, b):
                fns[path][i]()
            for r in range(args.fine_reps):
                for path in (a, b) if r % 2 == 0 else (b, a):
                    trees.use(path)
                    start = time.perf_counter()
                    fns[path][i]()
                    times[path].append(1000 * (time.perf_counter() - start))
            fine[name] = summarise(times[a], times[b])
        result["call_by_call"] = fine
    return emit(result, args.json)


if __name__ == "__main__":
    main()

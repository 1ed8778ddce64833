"""Sampling codes from a :class:`~tokgen.generator.model.GPT`: KV-cached decoding, temperature / top-k /
top-p, classifier-free guidance (constant or linear schedule), a fixed budget k or stop at end-of-sequence.

Randomness is explicit: every generated token t of row b is drawn by inverse-CDF sampling with one uniform
number ``uniforms[b, t]``. :func:`sample_uniforms` derives them from ``(seed, sample index)`` only, so a
sample is the same whatever batch or process it is generated in, and the codes for budget k are the prefix
of the codes for any larger budget (with the constant CFG schedule).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .model import GPT

CFG_SCHEDULES = ("constant", "linear")


# ---------------------------------------------------------------------------------------------------- randomness
def sample_seed(seed: int, index: int) -> int:
    """A 64-bit seed for sample ``index`` of a run seeded with ``seed`` (independent streams per sample)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed={seed} and sample index={index} must be non-negative integers")
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0])


def sample_uniforms(seed: int, indices: Sequence[int], num_steps: int) -> torch.Tensor:
    """(len(indices), num_steps) uniforms in [0, 1); row i depends only on (seed, indices[i])."""
    rows = [torch.rand(num_steps, generator=torch.Generator().manual_seed(sample_seed(seed, int(i))))
            for i in indices]
    return torch.stack(rows) if rows else torch.empty(0, num_steps)


# ---------------------------------------------------------------------------------------------------- options
API_NAMES = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "cfg": "cfg_scale",
             "cfg_schedule": "cfg_schedule"}
FLAG_NAMES = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "cfg": "--cfg",
              "cfg_schedule": "--cfg-schedule"}


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, cfg_scale: float = 1.0,
                   cfg_schedule: str = "constant", names: dict[str, str] = API_NAMES) -> None:
    """Refuse sampling settings that would silently do something else: a negative temperature (0 = greedy), a
    negative top-k (0 or None = all codes), a top-p outside (0, 1] (1 or None = off), a negative guidance scale
    (0 = the unconditional model, 1 = off). ``names``: how the messages call them (FLAG_NAMES for the CLI)."""
    for key, value in (("temperature", temperature), ("top_p", top_p), ("cfg", cfg_scale)):
        if value is not None and not (isinstance(value, (int, float)) and np.isfinite(value)):
            raise ValueError(f"{names[key]}={value!r} must be a finite number")
    if temperature < 0:
        raise ValueError(f"{names['temperature']}={temperature} must be >= 0 (0 = greedy, 1 = the model's "
                         f"distribution)")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise ValueError(f"{names['top_k']}={top_k!r} must be an int >= 0 (0 = keep every code)")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"{names['top_p']}={top_p} must be in (0, 1] (1 = off)")
    if cfg_scale < 0:
        raise ValueError(f"{names['cfg']}={cfg_scale} must be >= 0 (1 = no guidance, 0 = the unconditional model)")
    if cfg_schedule not in CFG_SCHEDULES:
        raise ValueError(f"{names['cfg_schedule']} {cfg_schedule!r} is not accepted; use one of "
                         f"{', '.join(CFG_SCHEDULES)}")


# ---------------------------------------------------------------------------------------------------- one token
def sample_next(
    logits: torch.Tensor,
    u: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """logits (B, V), uniforms u (B,) -> sampled ids (B,). temperature 0 = greedy (argmax)."""
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(dim=-1)
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        # keep the smallest set of most likely tokens whose mass reaches top_p; sample in sorted order
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        sorted_probs = sorted_probs.masked_fill(sorted_probs.cumsum(-1) - sorted_probs > top_p, 0.0)
        return order.gather(-1, _inverse_cdf(sorted_probs, u)[:, None]).squeeze(-1)
    return _inverse_cdf(probs, u)


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index of the first category whose cumulative mass exceeds u * total (zero-mass categories never win)."""
    cdf = probs.cumsum(dim=-1)
    target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def cfg_scale_at(step: int, num_steps: int, scale: float, schedule: str) -> float:
    """Guidance scale for token ``step`` (0-based) of ``num_steps``.

    constant: ``scale`` for every token. linear: grows from ~1 to ``scale`` over the sequence,
    ``1 + (scale - 1) * (step + 1) / num_steps``.
    """
    if schedule == "constant":
        return scale
    return 1.0 + (scale - 1.0) * (step + 1) / num_steps


# ---------------------------------------------------------------------------------------------------- generate
@torch.no_grad()
def generate(
    model: GPT,
    labels: torch.Tensor | None,
    num_tokens: int,
    *,
    batch_size: int | None = None,
    cfg_scale: float = 1.0,
    cfg_schedule: str = "constant",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_at_eos: bool = False,
    eos_every: int = 1,
    slots: int | None = None,
    uniforms: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    cache_dtype: torch.dtype | None = None,
    compile: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``num_tokens`` codes per row.

    Args:
        labels: (B,) class ids in 0..num_classes-1 (None for an unconditional model; give ``batch_size``).
        num_tokens: the token budget k (1..block_size); with ``stop_at_eos`` the upper bound.
        cfg_scale: classifier-free guidance; 1 = off. Conditional and null-class rows run as one batch of 2B.
        cfg_schedule: "constant" or "linear" (see :func:`cfg_scale_at`).
        temperature, top_k, top_p: logit temperature (0 = greedy), keep the k most likely / the nucleus.
        stop_at_eos: (models with ``use_eos``) stop a row at its end-of-sequence token (never before its first
            code, so every sample has 1..num_tokens codes); otherwise EOS is
            never sampled and every row gets exactly ``num_tokens`` codes. A row that ends leaves the batch.
        eos_every: (with ``stop_at_eos``) EOS may only follow a multiple of this many codes, so lengths are
            multiples of it: the codes of a token of a group quantizer (``codes_per_token``), e.g. a trajectory
            of G codes, are never cut. ``num_tokens`` must be a multiple of it.
        slots: (with ``stop_at_eos`` and the cache) at most this many samples decode at once; when one ends, the
            next waiting sample takes its slot, so the batch stays full and the cost follows the sum of the
            samples' lengths, not the longest one. Default: all rows at once.
        uniforms: (B, >= num_tokens * d) uniforms, d = ``model.config.draws_per_token`` per generated code
            (see :func:`sample_uniforms`); None draws them with ``generator``.
        use_cache: False recomputes the whole prefix at every step (reference path for tests/benchmarks).
        cache_dtype: dtype of the KV cache (default: the model's). ``torch.bfloat16`` halves the memory each
            decode step reads at long contexts (attention in bf16, so logits differ at ~1e-2).
        compile: decode with the compiled static-shape step (:meth:`GPT.decode_step`, gpt-fast style; compiled
            on first use by :meth:`GPT.compile_decode`, CUDA graphs on a GPU): same codes as the eager path up to
            float rounding. Fixed budgets only (not with ``stop_at_eos``, whose rows leave the batch).

    Returns:
        codes (B, num_tokens) int64 (positions >= length are 0) and lengths (B,) int64.
    """
    c = model.config
    device = model.head.weight.device
    if labels is None:
        if c.num_classes > 0:
            raise ValueError(f"the generator is class-conditional ({c.num_classes} classes): pass class labels")
        if batch_size is None:
            raise ValueError("an unconditional generator needs batch_size")
        labels = torch.full((batch_size,), c.num_classes, dtype=torch.long, device=device)
    else:
        labels = labels.to(device=device, dtype=torch.long)
        check_labels(labels, c.num_classes)
    B = labels.shape[0]
    check_budget(num_tokens, c.block_size)
    check_sampling(temperature, top_k, top_p, cfg_scale, cfg_schedule)
    guided = cfg_scale != 1.0
    if guided and c.num_classes == 0:
        raise ValueError(f"cfg_scale={cfg_scale} needs a class-conditional generator; this one is unconditional")
    if stop_at_eos and not c.use_eos:
        raise ValueError("stop_at_eos needs a generator trained with use_eos=True")
    if isinstance(eos_every, bool) or not isinstance(eos_every, int) or eos_every < 1 or num_tokens % eos_every:
        raise ValueError(f"eos_every={eos_every!r} must be a positive int dividing num_tokens={num_tokens} (EOS may "
                         f"only follow whole groups of eos_every codes)")
    draws = c.draws_per_token  # uniforms per code: 1, or 2 with a factorized vocabulary
    if uniforms is None:
        uniforms = torch.rand(B, num_tokens * draws, generator=generator)
    if uniforms.dim() != 2 or uniforms.shape[0] != B or uniforms.shape[1] < num_tokens * draws:
        raise ValueError(f"uniforms must have shape ({B}, >= {num_tokens * draws}), got {tuple(uniforms.shape)}")
    uniforms = uniforms.to(device)

    rows = torch.cat([labels, torch.full_like(labels, c.num_classes)]) if guided else labels  # (R,)
    codes = torch.zeros(B, num_tokens, dtype=torch.long, device=device)
    lengths = torch.full((B,), num_tokens, dtype=torch.long, device=device)
    eos = c.output_size - 1 if c.use_eos else None  # EOS is the last first-stage logit

    def guide(logits: torch.Tensor, t) -> torch.Tensor:
        """Classifier-free guidance at step t (an int, or a (B,) tensor of per-row steps)."""
        if not guided:
            return logits
        cond, uncond = logits.float().chunk(2)
        scale = cfg_scale_at(t, num_tokens, cfg_scale, cfg_schedule)
        if isinstance(scale, torch.Tensor):
            scale = scale[:, None]
        return uncond + scale * (cond - uncond)

    if compile and (stop_at_eos or not use_cache):
        raise ValueError("compile=True decodes fixed budgets with the KV cache: it needs stop_at_eos=False and "
                         "use_cache=True")
    if stop_at_eos and use_cache:
        return decode_in_slots(model, rows, num_tokens, slots or B, guided, guide, uniforms, temperature, top_k,
                               top_p, cache_dtype, eos_every)
    if slots is not None:
        raise ValueError("slots needs stop_at_eos=True and use_cache=True (fixed budgets decode all rows at once)")

    # Rows still generating: ``active`` indexes the output rows, ``active_rows`` their conditions (conditional
    # rows then null-class rows when guided). A row that samples EOS leaves the batch (and its KV cache), so a
    # batch's cost follows the sum of its rows' lengths, not its longest row.
    active = torch.arange(B, device=device)
    active_rows = rows
    if compile:
        step = model.compiled_decode or model.compile_decode()
        kvs = model.static_cache(rows.shape[0], dtype=cache_dtype)
        positions = torch.arange(num_tokens, device=device)

        def forward_cached(x: torch.Tensor, t: int, caches) -> tuple[torch.Tensor, torch.Tensor]:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
            return step(x, positions[t], kvs)
    else:
        forward_cached = model.forward_cached
    if use_cache:
        caches = None if compile else model.new_cache(rows.shape[0], num_tokens, dtype=cache_dtype)
        logits, hidden = forward_cached(model.class_embedding(rows)[:, None], 0, caches)
    for t in range(num_tokens):
        if not use_cache:
            prefix = codes[active, :t]
            prefix = prefix.repeat(2, 1) if guided else prefix
            logits, hidden = model(prefix, active_rows, last_only=True, return_hidden=True)
            logits, hidden = logits[:, -1], hidden[:, -1]
        logits = guide(logits, t)
        if eos is not None and (not stop_at_eos or t == 0 or t % eos_every):
            # a sample has at least one code (one group of eos_every codes) and ends only after whole groups
            logits = logits.clone()
            logits[:, eos] = float("-inf")
        u = uniforms[active]
        token = sample_next(logits, u[:, t * draws], temperature, top_k, top_p)
        ended = token == eos if stop_at_eos else None
        if model.factorized is not None:  # second stage: the low factor given the chosen high factor
            hi = token.clamp(max=c.vocab_factors[0] - 1)  # rows that chose EOS: any valid index, result unused
            lo_logits = guide(model.lo_logits(hidden, hi.repeat(2) if guided else hi), t)
            lo = sample_next(lo_logits, u[:, t * draws + 1], temperature, top_k, top_p)
            token = hi * model.factorized.n1 + lo
        if ended is not None and bool(ended.any()):
            token = token.masked_fill(ended, 0)
            codes[active, t] = token
            lengths[active[ended]] = t
            keep = (~ended).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            kept_rows = torch.cat([keep, keep + active.numel()]) if guided else keep
            active, active_rows, token = active[keep], active_rows[kept_rows], token[keep]
            if use_cache:
                for cache in caches:
                    cache.keep_rows(kept_rows)
        else:
            codes[active, t] = token
        if use_cache and t + 1 < num_tokens:
            feed = token.repeat(2) if guided else token
            logits, hidden = forward_cached(model.embed_codes(feed)[:, None], t + 1, caches)
    return codes, lengths


def decode_in_slots(model: GPT, rows: torch.Tensor, num_tokens: int, slots: int, guided: bool, guide,
                    uniforms: torch.Tensor,
                    temperature: float, top_k: int | None, top_p: float | None,
                    cache_dtype: torch.dtype | None, eos_every: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Stop-at-EOS decoding with a KV cache, ``slots`` samples at a time (continuous batching).

    Every slot holds one sample at its own step t (codes generated so far) and feeds one input per decode call
    at sequence position t: its condition at t = 0, then its last code. A sample ends at EOS or after
    ``num_tokens`` codes; its slot then starts the next waiting sample at position 0 (earlier cache entries of
    the slot are masked out, see :meth:`KVCache.update`), or leaves the batch when none waits.
    ``rows``: (B,) conditions, followed by B null-class rows when ``guided``; ``guide(logits, steps)`` applies
    the guidance. EOS is only sampled after a multiple of ``eos_every`` codes (see :func:`generate`). Returns codes
    (B, num_tokens) and lengths (B,) as :func:`generate`.
    """
    c = model.config
    B = uniforms.shape[0]
    labels, null = rows[:B], c.num_classes
    device = rows.device
    draws, eos = c.draws_per_token, c.output_size - 1
    codes = torch.zeros(B, num_tokens, dtype=torch.long, device=device)
    lengths = torch.full((B,), num_tokens, dtype=torch.long, device=device)

    def conditions(samples: torch.Tensor) -> torch.Tensor:  # (S,) sample ids -> (R, dim) first inputs
        ids = torch.cat([labels[samples], torch.full_like(samples, null)]) if guided else labels[samples]
        return model.class_embedding(ids)

    S = min(slots, B)
    sample = torch.arange(S, device=device)  # the sample each slot holds
    step = torch.zeros(S, dtype=torch.long, device=device)  # its codes so far = the position of its input
    waiting = S  # next sample to start
    caches = model.new_cache(2 * S if guided else S, num_tokens, dtype=cache_dtype)
    for cache in caches:  # a slot reads (masked) positions it never wrote: they must hold numbers, not NaN garbage
        cache.kv.zero_()
    x = conditions(sample)
    while sample.numel():
        logits, hidden = model.forward_cached(x[:, None], torch.cat([step, step]) if guided else step, caches)
        logits = guide(logits, step).clone()
        logits[(step == 0) | (step % eos_every != 0), eos] = float("-inf")  # >= 1 code, whole groups of codes
        u = uniforms[sample]
        token = sample_next(logits, u.gather(1, (step * draws)[:, None]).squeeze(1), temperature, top_k, top_p)
        ended = token == eos
        if model.factorized is not None:  # second stage: the low factor given the chosen high factor
            hi = token.clamp(max=c.vocab_factors[0] - 1)  # rows that chose EOS: any valid index, result unused
            lo_logits = guide(model.lo_logits(hidden, hi.repeat(2) if guided else hi), step)
            lo = sample_next(lo_logits, u.gather(1, (step * draws + 1)[:, None]).squeeze(1), temperature, top_k, top_p)
            token = hi * model.factorized.n1 + lo
        token = token.masked_fill(ended, 0)
        codes[sample, step] = token
        lengths[sample[ended]] = step[ended]
        done = ended | (step + 1 == num_tokens)
        step = step + 1
        x = model.embed_codes(token.repeat(2) if guided else token)
        if not bool(done.any()):
            continue
        free = done.nonzero().squeeze(1)
        refill, leave = free[: B - waiting], free[B - waiting:]
        if refill.numel():  # waiting samples take the free slots, from position 0
            new = torch.arange(waiting, waiting + refill.numel(), device=device)
            waiting += refill.numel()
            sample[refill], step[refill] = new, 0
            slot_rows = torch.cat([refill, refill + sample.numel()]) if guided else refill
            x[slot_rows] = conditions(new)
        if leave.numel():  # nothing waits: these slots leave the batch and the cache
            keep = torch.ones(sample.numel(), dtype=torch.bool, device=device)
            keep[leave] = False
            keep = keep.nonzero().squeeze(1)
            kept_rows = torch.cat([keep, keep + sample.numel()]) if guided else keep
            sample, step, x = sample[keep], step[keep], x[kept_rows]
            for cache in caches:
                cache.keep_rows(kept_rows)
    return codes, lengths


def check_budget(k: int, limit: int, what: str = "the generator's context (block_size)") -> None:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= limit:
        raise ValueError(f"token budget {k!r} is outside {what}: accepted 1..{limit}")


def check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if labels.dim() != 1:
        raise ValueError(f"labels must have shape (B,), got {tuple(labels.shape)}")
    if num_classes == 0:
        raise ValueError("the generator is unconditional (num_classes=0): pass no class labels")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        raise ValueError(
            f"class id {int(bad[0])} is out of range: the generator has {num_classes} classes "
            f"(accepted 0..{num_classes - 1})"
        )

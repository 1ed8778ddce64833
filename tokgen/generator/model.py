"""A Llama-style GPT over tokenizer codes (LlamaGen-style class-conditional image generation).

Sequence layout (one condition token, then the codes coarse to fine)::

    position:   0        1        2              T
    input:    [class] [code_0] [code_1] ... [code_{T-1}]
    predicts:  code_0   code_1   code_2  ...  code_T (or EOS)

- The class embedding table has ``num_classes + 1`` rows; the last row is the *null* class used for
  classifier-free guidance (labels are dropped to it with probability ``class_dropout`` in training).
  With ``num_classes = 0`` the model is unconditional and position 0 is a learned start embedding.
- Blocks are pre-norm: ``x + Attn(RMSNorm(x))`` then ``x + SwiGLU(RMSNorm(x))``; attention
  (:class:`tokgen.nn.CausalSelfAttention`) uses a fused qkv projection and an output projection, both without
  bias, grouped-query heads (``n_kv_head``) and 1D rotary embeddings (RoPE, :mod:`tokgen.nn.rope`) on q and k.
  The condition position is *not* rotated (angle 0), code ``i`` is rotated by angle ``i * theta``.
- Output: RMSNorm + linear to ``vocab_size`` logits (+1 for the end-of-sequence token when ``use_eos``);
  optionally tied to the token embedding.
- Factorized output (``vocab_factors = [n0, n1]``, ``n0 * n1 = vocab_size``) for large codebooks: a code is
  the pair ``(hi, lo) = (code // n1, code % n1)``; the head predicts ``hi`` (n0-way, +EOS), then a small
  SwiGLU block reads the hidden state plus an embedding of ``hi`` and predicts ``lo`` (n1-way), so
  ``p(code) = p(hi) p(lo | hi)`` exactly, at the cost of n0 + n1 instead of n0 * n1 outputs. Inputs are
  embedded as ``E_hi[hi] + E_lo[lo]``. For FSQ levels [8, 8, 8, 5, 5, 5] (codes are mixed-radix with the
  first level least significant) ``[125, 512]`` splits the codes into the 5-level and the 8-level digits.
- Every position is trained, so one model serves every prefix length (token budget) k.

Inference runs through :class:`~tokgen.generator.kv_cache.KVCache`: ``forward_cached`` writes the new keys
and values at ``start_pos`` and attends only over the filled part of the cache, so a decode step at
position t reads t cached keys (not the whole pre-allocated cache): generating k tokens costs k steps of
the linear layers plus attention reads that grow with t (measured by benchmarks/generation_cost.py; the
README's generation-cost table holds the numbers).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DictConfig
from ..model import TokgenModel
from ..nn import CausalSelfAttention, CheckpointableBlock, SwiGLU, rope_tables
from .kv_cache import KVCache


@dataclass
class GPTConfig(DictConfig):
    """Architecture of the generator (saved with every checkpoint; enough to rebuild the model)."""

    config_name = "generator"

    vocab_size: int = 4096  # codebook size of the tokenizer (codes are 0..vocab_size-1)
    block_size: int = 256  # maximum number of codes per sequence (the tokenizer's K)
    num_classes: int = 10  # 0 = unconditional
    dim: int = 256
    n_layer: int = 8
    n_head: int = 8
    n_kv_head: int | None = None  # key/value heads (grouped-query attention); None = n_head (multi-head)
    hidden_dim: int | None = None  # SwiGLU width; None = 2/3 * 4 * dim rounded up to multiple_of (Llama)
    multiple_of: int = 256
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    tie_weights: bool = False
    use_eos: bool = False  # extra end-of-sequence token (id vocab_size) for variable-length sequences
    vocab_factors: list[int] | None = None  # [n0, n1] with n0 * n1 = vocab_size: factorized output head
    class_dropout: float = 0.1  # training: probability that a label is replaced by the null class
    dropout: float = 0.0  # attention / residual dropout in training
    init_std: float = 0.02

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "dim", "n_layer", "n_head", "multiple_of"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"generator {name}={value!r} must be a positive integer")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"generator num_classes={self.num_classes!r} must be an integer >= 0 (0 = unconditional)")
        if self.dim % self.n_head != 0 or (self.dim // self.n_head) % 2 != 0:
            raise ValueError(
                f"generator dim={self.dim} must be divisible by n_head={self.n_head} with an even head size (RoPE)"
            )
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if not isinstance(self.n_kv_head, int) or self.n_kv_head < 1 or self.n_head % self.n_kv_head:
            raise ValueError(f"generator n_kv_head={self.n_kv_head!r} must be a positive divisor of n_head={self.n_head}")
        if self.hidden_dim is None:
            hidden = int(2 * 4 * self.dim / 3)
            self.hidden_dim = self.multiple_of * math.ceil(hidden / self.multiple_of)
        if self.vocab_factors is not None:
            factors = list(self.vocab_factors)
            if len(factors) != 2 or any(not isinstance(f, int) or f < 2 for f in factors) or math.prod(factors) != self.vocab_size:
                raise ValueError(
                    f"generator vocab_factors={self.vocab_factors!r} must be two integers >= 2 whose product is "
                    f"vocab_size={self.vocab_size} (e.g. [125, 512] for FSQ levels [8, 8, 8, 5, 5, 5])"
                )
            if self.tie_weights:
                raise ValueError("generator tie_weights is not supported with vocab_factors")
            self.vocab_factors = factors
        for name in ("class_dropout", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"generator {name}={getattr(self, name)} must be in [0, 1)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def output_size(self) -> int:
        """Number of first-stage logits: the codes (or the high factor n0), plus EOS when ``use_eos``."""
        first = self.vocab_factors[0] if self.vocab_factors else self.vocab_size
        return first + int(self.use_eos)

    @property
    def draws_per_token(self) -> int:
        """Uniform random numbers consumed per sampled code (one per output stage)."""
        return 2 if self.vocab_factors else 1

    @property
    def eos_id(self) -> int | None:
        return self.vocab_size if self.use_eos else None

    @property
    def max_seq_len(self) -> int:
        """Longest input: the condition + K codes (the last code is only fed when EOS follows it)."""
        return self.block_size + int(self.use_eos)


# ---------------------------------------------------------------------------------------------------- blocks
class Block(CheckpointableBlock):
    """One GPT layer: ``x + Attn(RMSNorm(x))`` then ``x + SwiGLU(RMSNorm(x))`` (dropout on both branches)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.dim, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config.dim, config.n_head, config.n_kv_head, config.dropout)
        self.mlp_norm = nn.RMSNorm(config.dim, eps=config.norm_eps)
        self.mlp = SwiGLU(config.dim, config.hidden_dim)
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def forward(self, x, cos, sin, start_pos: int = 0, cache: KVCache | None = None):
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, start_pos, cache))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


# ---------------------------------------------------------------------------------------------------- output
class FactorizedCodes(nn.Module):
    """Input embedding and second output stage of a factorized vocabulary (see the module docstring)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        n0, n1 = config.vocab_factors
        self.n1 = n1
        self.embed_lo = nn.Embedding(n1, config.dim)  # input: E_hi[code // n1] + E_lo[code % n1]
        self.hi_embedding = nn.Embedding(n0, config.dim)  # second stage: which hi was chosen
        self.norm = nn.RMSNorm(config.dim, eps=config.norm_eps)
        self.mlp = SwiGLU(config.dim, config.hidden_dim)
        self.out_norm = nn.RMSNorm(config.dim, eps=config.norm_eps)
        self.head = nn.Linear(config.dim, n1, bias=False)

    def lo_logits(self, h: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """h: (..., dim) final hidden states, hi: (...) chosen high factors -> (..., n1) logits of the low factor."""
        u = h + self.hi_embedding(hi)
        u = u + self.mlp(self.norm(u))
        return self.head(self.out_norm(u))


# ---------------------------------------------------------------------------------------------------- model
class GPT(TokgenModel):
    """The generator; loaded from a checkpoint, ``tokenizer_info`` holds the identity of the tokenizer whose codes it
    was trained on (see :mod:`tokgen.generator.compat`), or None."""

    config_class = GPTConfig
    kind = "generator"
    config_key = "generator_config"
    module_attr = "generator"
    metadata = {"tokenizer_info": "tokenizer"}
    description = "tokgen generator"
    hint = "pass a checkpoint written by `tokgen fit` with tokgen.lit.GeneratorModule"

    def __init__(self, config: GPTConfig | dict | None = None):
        super().__init__()
        self.config = c = self.make_config(config)
        self.class_embedding = nn.Embedding(c.num_classes + 1, c.dim)  # last row = null class
        self.tok_embedding = nn.Embedding(c.output_size, c.dim)  # codes (or high factors) + EOS
        self.blocks = nn.ModuleList([Block(c) for _ in range(c.n_layer)])
        self.norm = nn.RMSNorm(c.dim, eps=c.norm_eps)
        self.head = nn.Linear(c.dim, c.output_size, bias=False)
        self.factorized = FactorizedCodes(c) if c.vocab_factors else None
        if c.tie_weights:
            self.head.weight = self.tok_embedding.weight
        self.tokenizer_info: dict | None = None  # set by from_checkpoint / from_pretrained
        self.compiled_decode = None  # set by compile_decode
        self.static_caches: dict = {}  # (rows, dtype, device) -> buffers reused by compiled decoding
        cos, sin = rope_tables(c.max_seq_len, c.head_dim, c.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("attn.proj.weight") or name.endswith("mlp.w2.weight"):
                nn.init.normal_(p, std=c.init_std / math.sqrt(2 * c.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)

    # ------------------------------------------------------------------ inputs
    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def condition(self, labels: torch.Tensor | None, batch_size: int, device) -> torch.Tensor:
        """labels (B,) in 0..num_classes (num_classes = null) or None (all null) -> (B, 1, dim)."""
        if labels is None:
            labels = torch.full((batch_size,), self.null_class, dtype=torch.long, device=device)
        if self.training and self.config.class_dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.config.class_dropout
            labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        return self.class_embedding(labels)[:, None]

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (...) in 0..vocab_size (vocab_size = EOS) -> (..., dim)."""
        if self.factorized is None:
            return self.tok_embedding(codes)
        n1 = self.factorized.n1
        return self.tok_embedding(codes // n1) + self.factorized.embed_lo(codes % n1)

    def embed(self, tokens: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """tokens: (B, T) input codes (may be T = 0) -> (B, T + 1, dim) = [condition, code embeddings]."""
        return torch.cat([self.condition(labels, tokens.shape[0], tokens.device), self.embed_codes(tokens)], dim=1)

    # ------------------------------------------------------------------ full forward (training)
    def forward(
        self, tokens: torch.Tensor, labels: torch.Tensor | None = None, last_only: bool = False, return_hidden: bool = False
    ):
        """Teacher-forced logits of the next code after every prefix.

        tokens: (B, T) input codes c_0..c_{T-1} (T may be 0); labels: (B,) class ids (None = null class).
        Returns logits (B, T + 1, output_size): row t predicts code t given the condition and codes < t
        (with ``vocab_factors``: its high factor; see :meth:`lo_logits`). To train on targets (B, T) feed
        ``tokens = targets[:, :-1]`` (or use :meth:`loss`). ``last_only``: only the last row.
        ``return_hidden``: also return the normalized final hidden states (B, T + 1, dim).
        """
        T = tokens.shape[1] + 1
        if T > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {T} positions (condition + {T - 1} codes) is longer than the generator's "
                f"context of {self.config.max_seq_len} (block_size={self.config.block_size})"
            )
        x = self.embed(tokens, labels)
        cos, sin = self._rope(0, T)
        for block in self.blocks:
            x = block(x, cos, sin)
        if last_only:
            x = x[:, -1:]
        h = self.norm(x)
        return (self.head(h), h) if return_hidden else self.head(h)

    def lo_logits(self, h: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Second output stage of a factorized vocabulary: logits (..., n1) of ``code % n1`` given ``hi``."""
        return self.factorized.lo_logits(h, hi)

    def loss(self, targets: torch.Tensor, labels: torch.Tensor | None, ignore_index: int = -100):
        """Mean next-code cross-entropy over the non-ignored targets (B, T) and the accuracy of the argmax.

        With a factorized vocabulary the loss is -log p(hi) - log p(lo | hi), i.e. the same quantity.
        """
        logits, h = self(targets[:, :-1].clamp(min=0), labels, return_hidden=True)  # (B, T, out), (B, T, dim)
        valid = targets != ignore_index
        if self.factorized is None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=ignore_index)
            correct = logits.argmax(-1) == targets
        else:
            n1 = self.factorized.n1
            hi = torch.where(valid, targets // n1, ignore_index)  # EOS (= vocab_size) -> hi = n0, the EOS logit
            eos = self.config.eos_id
            has_lo = valid & (targets != eos) if eos is not None else valid
            lo = torch.where(has_lo, targets % n1, ignore_index)
            lo_logits = self.lo_logits(h, torch.where(has_lo, hi, 0))
            loss_hi = F.cross_entropy(logits.flatten(0, 1).float(), hi.flatten(), ignore_index=ignore_index, reduction="sum")
            loss_lo = F.cross_entropy(lo_logits.flatten(0, 1).float(), lo.flatten(), ignore_index=ignore_index, reduction="sum")
            loss = (loss_hi + loss_lo) / valid.sum().clamp(min=1)
            correct = (logits.argmax(-1) == hi) & ((lo_logits.argmax(-1) == lo) | ~has_lo)
        acc = (correct & valid).sum() / valid.sum().clamp(min=1)
        return loss, acc

    # ------------------------------------------------------------------ cached inference
    def new_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> list[KVCache]:
        """One static, pre-allocated KV cache per layer for up to ``max_len`` positions (condition included)."""
        if max_len > self.config.max_seq_len:
            raise ValueError(f"cache of {max_len} positions exceeds the generator's context {self.config.max_seq_len}")
        ref = self.head.weight
        return [
            KVCache(batch_size, self.config.n_kv_head, max_len, self.config.head_dim,
                    device=device or ref.device, dtype=dtype or ref.dtype)
            for _ in self.blocks
        ]

    def forward_cached(self, x: torch.Tensor, start_pos: int | torch.Tensor, caches: list[KVCache]) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, dim) embeddings at positions start_pos..start_pos+T-1 -> (logits (B, out), hidden (B, dim))
        of the last position. Keys/values are written into ``caches``; earlier positions must already be there.
        ``start_pos`` may be a (B,) tensor of per-row positions when T = 1 (rows at different steps).
        """
        cos, sin = self._rope(start_pos, x.shape[1])
        for block, cache in zip(self.blocks, caches):
            x = block(x, cos, sin, start_pos, cache)
        h = self.norm(x[:, -1])
        return self.head(h), h

    def static_cache(self, batch_size: int, dtype=None) -> list[torch.Tensor]:
        """Zero-filled static cache buffers (2, batch_size, n_kv_head, max_seq_len, head_dim), one per layer, for
        :meth:`decode_step`: the full context whatever the budget, so one compiled step serves every k. The
        buffers of a (batch_size, dtype, device) are kept on the model and reused (zeroed) by later calls, so their
        addresses stay fixed for CUDA-graph replay."""
        c, ref = self.config, self.head.weight
        dtype = dtype or ref.dtype
        key = (batch_size, dtype, ref.device)
        if key not in self.static_caches:
            buffers = [torch.zeros(2, batch_size, c.n_kv_head, c.max_seq_len, c.head_dim, device=ref.device,
                                   dtype=dtype) for _ in self.blocks]
            for buffer in buffers:
                torch._dynamo.mark_static_address(buffer)
            self.static_caches[key] = buffers
        for buffer in self.static_caches[key]:
            buffer.zero_()
        return self.static_caches[key]

    def decode_step(self, x: torch.Tensor, pos: torch.Tensor, kvs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-token cached forward with static shapes (what ``generate(..., compile=True)`` compiles):
        x (B, 1, dim) embeddings at sequence position ``pos`` (a one-element long tensor on the model's device),
        ``kvs`` from :meth:`static_cache` (written in place) -> (logits (B, out), hidden (B, dim)). Same
        result as :meth:`forward_cached` at that position."""
        index = pos.reshape(1)
        cos = self.rope_cos.index_select(0, index).view(1, 1, -1)
        sin = self.rope_sin.index_select(0, index).view(1, 1, -1)
        for block, kv in zip(self.blocks, kvs):
            x = block(x, cos, sin, index, kv)
        h = self.norm(x[:, -1])
        return self.head(h), h

    def compile_decode(self, **options):
        """Compile :meth:`decode_step` with ``torch.compile(**options)`` (default: mode "reduce-overhead", i.e.
        CUDA graphs on a GPU, and fullgraph) and return the compiled function; ``generate(..., compile=True)``
        uses the last one compiled (compiling it on first use). Call it again to change the options."""
        options = {"fullgraph": True, **options}
        if options.get("backend", "inductor") == "inductor":
            options.setdefault("mode", "reduce-overhead")
        self.compiled_decode = torch.compile(self.decode_step, **options)
        return self.compiled_decode

    def _rope(self, start, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(start, torch.Tensor):  # per-row positions (B,), one position each
            return self.rope_cos[start].view(-1, 1, 1, self.rope_cos.shape[-1]), \
                self.rope_sin[start].view(-1, 1, 1, self.rope_sin.shape[-1])
        cos = self.rope_cos[start : start + length].view(length, 1, -1)  # broadcast over (B, T, heads, hd)
        sin = self.rope_sin[start : start + length].view(length, 1, -1)
        return cos, sin

    # ------------------------------------------------------------------ bookkeeping
    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.class_embedding.weight.numel()
            if not self.config.tie_weights:
                n -= self.tok_embedding.weight.numel()
        return n

    def flops_forward(self, new_tokens: int, context: int, logits_rows: int | None = None, attention: bool = True) -> int:
        """Matmul FLOPs (2 per multiply-add) of one forward over ``new_tokens`` positions per sequence that
        attend to ``context`` keys in total (causal: the i-th new position sees context - new_tokens + i + 1),
        with the output head(s) on ``logits_rows`` rows (default: all new positions). Per sequence.
        ``attention=False``: projections and heads only (what torch's FlopCounterMode sees on CPU)."""
        c = self.config
        rows = new_tokens if logits_rows is None else logits_rows
        qkv = c.dim + 2 * c.n_kv_head * c.head_dim  # q, k, v output width
        per_layer = 2 * c.dim * (qkv + c.dim + 3 * c.hidden_dim)  # qkv, proj, w13, w2 per position
        first = context - new_tokens + 1
        keys = new_tokens * (first + context) // 2  # sum of visible keys over the new positions
        attn = 2 * 2 * keys * c.dim if attention else 0  # q.k and p.v
        head = 2 * c.dim * c.output_size
        if c.vocab_factors:  # second stage: SwiGLU + n1-way head
            head += 2 * c.dim * (3 * c.hidden_dim + c.vocab_factors[1])
        return c.n_layer * (new_tokens * per_layer + attn) + rows * head

"""The GPT generator: architecture sizes, RoPE, KV-cache decoding, sampling, CFG, EOS, FLOP counts."""
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tokgen.generator import (
    GPT, GPTConfig, apply_rope, cfg_scale_at, generate, rope_tables, sample_next, sample_uniforms,
)
from tokgen.lit.generator import IGNORE_INDEX, build_targets


def tiny(**overrides):
    values = dict(vocab_size=50, block_size=12, num_classes=4, dim=32, n_layer=2, n_head=4, hidden_dim=48)
    values.update(overrides)
    torch.manual_seed(0)
    return GPT(GPTConfig(**values)).eval()


def test_ar_small_v1_size_matches_benchmark_workload():
    """BENCHMARK_WORKLOADS ar-small-v1: vocab 4096, 10 classes + null, dim 256, 8 layers x 8 heads,
    fused qkv / out-proj / SwiGLU 768 without bias, untied output: about 8.92 M parameters."""
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=4096, block_size=256, num_classes=10, dim=256, n_layer=8, n_head=8))
    assert model.config.hidden_dim == 768  # Llama rule: 2/3 * 4 * 256 rounded up to a multiple of 256
    assert model.num_parameters() == 8_920_064
    assert model.blocks[0].attn.qkv.weight.shape == (768, 256) and model.blocks[0].attn.qkv.bias is None
    assert model.head.bias is None and model.head.weight is not model.tok_embedding.weight
    assert model.class_embedding.num_embeddings == 11


def test_grouped_query_attention_config():
    model = tiny(n_kv_head=2)
    assert model.blocks[0].attn.qkv.weight.shape == ((4 + 2 * 2) * 8, 32)  # 4 query heads, 2 key/value heads
    assert tiny().config.n_kv_head == 4  # default: one key/value head per query head
    with pytest.raises(ValueError, match="n_kv_head=3 must be a positive divisor of n_head=4"):
        GPTConfig(vocab_size=50, block_size=12, dim=32, n_head=4, n_kv_head=3)


def test_weight_tying_and_eos_vocabulary():
    model = tiny(tie_weights=True, use_eos=True)
    assert model.head.weight is model.tok_embedding.weight
    assert model.head.out_features == 51 and model.config.eos_id == 50
    assert model.config.max_seq_len == 13


def test_rope_condition_is_not_rotated_and_attention_is_relative():
    cos, sin = rope_tables(10, 8, 10000.0)
    assert torch.equal(cos[0], torch.ones(8)) and torch.equal(sin[0], torch.zeros(8))
    assert torch.equal(cos[1], torch.ones(8))  # code 0 is rotated by angle 0 too: positions start after the prefix
    q, k = torch.randn(8), torch.randn(8)
    dot = lambda i, j: (apply_rope(q, cos[i], sin[i]) * apply_rope(k, cos[j], sin[j])).sum()
    assert torch.allclose(dot(3, 1), dot(8, 6), atol=1e-5)  # depends only on the offset
    assert not torch.allclose(dot(3, 1), dot(3, 2), atol=1e-3)
    assert torch.allclose(apply_rope(q, cos[5], sin[5]).norm(), q.norm(), atol=1e-5)  # a rotation


@pytest.mark.parametrize("guided_rows, factors, kv_heads", [(False, None, None), (True, None, None),
                                                           (True, [5, 10], None), (True, None, 2), (False, None, 1)])
def test_kv_cache_decode_matches_full_forward(guided_rows, factors, kv_heads):
    """Also with grouped-query attention (n_kv_head 2 or 1 for 4 query heads): the cache holds n_kv_head heads."""
    model = tiny(vocab_factors=factors, n_kv_head=kv_heads)
    B, T = 3, 11
    tokens = torch.randint(0, 50, (B, T))
    labels = torch.tensor([0, 3, 4])  # 4 = null class, as in the CFG rows
    if guided_rows:
        tokens, labels = tokens.repeat(2, 1), torch.cat([labels, torch.full_like(labels, 4)])
    with torch.no_grad():
        full, hidden = model(tokens, labels, return_hidden=True)  # (B, T + 1, V), (B, T + 1, dim)
        caches = model.new_cache(tokens.shape[0], T + 1)
        assert caches[0].kv.shape[2] == (kv_heads or 4)
        steps = [model.forward_cached(model.class_embedding(labels)[:, None], 0, caches)]
        for t in range(T):
            steps.append(model.forward_cached(model.embed_codes(tokens[:, t])[:, None], t + 1, caches))
    assert torch.allclose(torch.stack([s[0] for s in steps], 1), full, atol=1e-4, rtol=0)
    assert torch.allclose(torch.stack([s[1] for s in steps], 1), hidden, atol=1e-4, rtol=0)
    # a chunked prefill (several positions after cached ones) agrees too
    with torch.no_grad():
        caches = model.new_cache(tokens.shape[0], T + 1)
        x = model.embed(tokens, labels)
        model.forward_cached(x[:, :5], 0, caches)
        last, _ = model.forward_cached(x[:, 5:9], 5, caches)
    assert torch.allclose(last, full[:, 8], atol=1e-4, rtol=0)


def test_reduced_precision_cache_is_close_and_opt_in():
    model = tiny()
    tokens, labels = torch.randint(0, 50, (2, 9)), torch.tensor([0, 1])
    with torch.no_grad():
        full = model(tokens, labels)
        caches = model.new_cache(2, 10, dtype=torch.bfloat16)
        logits, _ = model.forward_cached(model.embed(tokens, labels), 0, caches)
    assert caches[0].kv.dtype == torch.bfloat16 and logits.dtype == torch.float32
    assert torch.allclose(logits, full[:, -1], atol=5e-2) and not torch.equal(logits, full[:, -1])
    codes, _ = generate(model, labels, 6, cache_dtype=torch.bfloat16)
    assert codes.shape == (2, 6)


def test_cache_returns_only_the_filled_part():
    model = tiny()
    caches = model.new_cache(2, 12)
    k = torch.randn(2, 4, 3, 8)
    keys, values = caches[0].update(0, k, k)
    assert keys.shape == (2, 4, 3, 8)
    keys, _ = caches[0].update(3, k[:, :, :1], k[:, :, :1])
    assert keys.shape == (2, 4, 4, 8) and torch.equal(keys[:, :, :3], k)
    with pytest.raises(ValueError, match="holds 12 positions"):
        caches[0].update(12, k[:, :, :1], k[:, :, :1])


@pytest.mark.parametrize("cfg, factors, kv_heads", [(1.0, None, None), (3.0, None, None), (3.0, [5, 10], None),
                                                    (3.0, None, 2)])
def test_generate_with_cache_equals_full_recomputation(cfg, factors, kv_heads):
    model = tiny(vocab_factors=factors, n_kv_head=kv_heads)
    labels = torch.tensor([0, 1, 2, 3, 1])
    u = sample_uniforms(7, range(5), 24)
    a, la = generate(model, labels, 12, cfg_scale=cfg, uniforms=u)
    b, lb = generate(model, labels, 12, cfg_scale=cfg, uniforms=u, use_cache=False)
    assert torch.equal(a, b) and torch.equal(la, lb) and (la == 12).all()
    assert a.shape == (5, 12) and a.min() >= 0 and a.max() < 50


def test_samples_depend_only_on_their_own_uniforms_and_budget_prefixes():
    model = tiny()
    labels = torch.tensor([0, 1, 2, 3])
    u = sample_uniforms(3, range(4), 12)
    assert torch.equal(sample_uniforms(3, [2, 3], 5), u[2:, :5])  # (seed, index) only; prefix of longer draws
    both, _ = generate(model, labels, 12, cfg_scale=2.0, uniforms=u)
    alone, _ = generate(model, labels[2:], 12, cfg_scale=2.0, uniforms=u[2:])
    short, _ = generate(model, labels, 5, cfg_scale=2.0, uniforms=u)
    assert torch.equal(both[2:], alone)
    assert torch.equal(both[:, :5], short)  # constant CFG: budget k is the prefix of a longer generation
    other, _ = generate(model, labels, 12, cfg_scale=2.0, uniforms=sample_uniforms(4, range(4), 12))
    assert not torch.equal(both, other)


def test_classifier_free_guidance_combines_conditional_and_null_logits():
    model = tiny()
    labels = torch.tensor([1, 2])
    with torch.no_grad():
        cond = model(torch.zeros(2, 0, dtype=torch.long), labels)[:, 0]
        null = model(torch.zeros(2, 0, dtype=torch.long), torch.full_like(labels, 4))[:, 0]
    guided = null + 3.0 * (cond - null)
    codes, _ = generate(model, labels, 1, cfg_scale=3.0, temperature=0)
    assert torch.equal(codes[:, 0], guided.argmax(-1))
    assert cfg_scale_at(0, 4, 3.0, "constant") == 3.0
    assert [cfg_scale_at(t, 4, 3.0, "linear") for t in range(4)] == [1.5, 2.0, 2.5, 3.0]


def test_sample_next_greedy_top_k_top_p_and_distribution():
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0]]).repeat(4000, 1)
    u = torch.rand(4000, generator=torch.Generator().manual_seed(0))
    assert (sample_next(logits, u, temperature=0) == 1).all()
    assert (sample_next(logits, u, top_k=1) == 1).all()
    assert (sample_next(logits, u, top_p=0.1) == 1).all()
    assert set(sample_next(logits, u, top_k=2).tolist()) == {1, 2}
    freq = torch.bincount(sample_next(logits, u), minlength=4).float() / 4000
    assert torch.allclose(freq, torch.softmax(logits[0], -1), atol=0.03)
    hot = torch.bincount(sample_next(logits, u, temperature=0.5), minlength=4).float() / 4000
    assert hot[1] > freq[1] + 0.1  # lower temperature sharpens
    assert set(sample_next(torch.tensor([[0.0, float("-inf"), 0.0]]).repeat(500, 1), u[:500]).tolist()) == {0, 2}


class FakeHead(nn.Module):
    """Stands in for the (first-stage) output layer of a 2-row batch: code 3 is likely, EOS (the last logit)
    wins for row 0 from the 3rd call on, never for row 1. Rows that end leave the batch, so once the batch has
    shrunk to row 1 alone no row ends any more; ``rows`` records the batch size of every call."""

    def __init__(self, size):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size, 1))
        self.calls, self.size, self.rows = 0, size, []

    def forward(self, x):
        logits = torch.zeros(x.shape[0], self.size)
        logits[:, 3] = 10.0
        if self.calls >= 2 and x.shape[0] == 2:
            logits[0, -1] = 20.0
        self.calls += 1
        self.rows.append(x.shape[0])
        return logits


@pytest.mark.parametrize("factors", [None, [5, 10]])
def test_eos_stops_a_row_and_fixed_budget_never_samples_eos(factors):
    model = tiny(use_eos=True, vocab_factors=factors)
    n1 = 10 if factors else 1  # with factors, code // n1 is what the fake head chooses
    model.head = FakeHead(model.config.output_size)
    codes, lengths = generate(model, torch.tensor([0, 1]), 10, stop_at_eos=True, temperature=0)
    assert lengths.tolist() == [2, 10]
    assert model.head.rows == [2, 2, 2] + [1] * 7  # row 0 left the batch at its EOS (3rd call)
    assert (codes[0, :2] // n1 == 3).all() and (codes[0, 2:] == 0).all() and (codes[1] // n1 == 3).all()
    model.head = FakeHead(model.config.output_size)
    codes, lengths = generate(model, torch.tensor([0, 1]), 10, temperature=0)
    assert (lengths == 10).all() and (codes // n1 == 3).all()  # EOS masked out at a fixed budget
    with pytest.raises(ValueError, match="use_eos"):
        generate(tiny(), torch.tensor([0]), 4, stop_at_eos=True)


@pytest.mark.parametrize("cfg,factors,use_cache,slots", [(1.0, None, True, None), (3.0, None, True, None),
                                                         (3.0, [5, 10], True, None), (3.0, None, False, None),
                                                         (1.0, None, True, 3), (3.0, [5, 10], True, 3)])
def test_rows_end_independently_and_match_rows_generated_alone(cfg, factors, use_cache, slots):
    """With EOS made likely, rows of one batch end at different steps and leave it (or, with ``slots``, hand
    their slot to the next waiting sample); every row's codes and length equal those of the same row generated
    alone with the same uniforms, so leaving the batch and refilling slots change nothing but the cost."""
    model = tiny(use_eos=True, vocab_factors=factors)
    with torch.no_grad():
        model.head.weight[-1] *= 0  # the EOS logit: a large constant through the normed hidden state's mean
        model.head.weight[-1] += 0.35
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    uniforms = torch.rand(8, 24, generator=torch.Generator().manual_seed(0))
    codes, lengths = generate(model, labels, 10, stop_at_eos=True, cfg_scale=cfg, uniforms=uniforms,
                              use_cache=use_cache, slots=slots)
    assert 1 < len(set(lengths.tolist())), lengths  # rows really end at different steps
    assert (lengths < 10).any() and (lengths > 0).any()
    for i in range(8):
        one_codes, one_length = generate(model, labels[i : i + 1], 10, stop_at_eos=True, cfg_scale=cfg,
                                         uniforms=uniforms[i : i + 1], use_cache=use_cache)
        assert one_length.item() == lengths[i].item()
        assert torch.equal(one_codes[0], codes[i])
        assert (codes[i, lengths[i]:] == 0).all()


@pytest.mark.parametrize("use_cache,slots", [(True, None), (False, None), (True, 3)])
def test_eos_only_after_whole_groups_of_codes(use_cache, slots):
    """eos_every=G (G codes per trajectory): with EOS made likely, every length is a multiple of G (at least G),
    the same rows with eos_every=1 stop at other lengths, and codes past a length are 0."""
    model = tiny(use_eos=True)
    with torch.no_grad():
        model.head.weight[-1] *= 0
        model.head.weight[-1] += 0.35
    labels = torch.arange(16) % 4
    uniforms = torch.rand(16, 12, generator=torch.Generator().manual_seed(2))
    _, free = generate(model, labels, 12, stop_at_eos=True, uniforms=uniforms, use_cache=use_cache, slots=slots)
    assert (free % 3 != 0).any()  # without the rule EOS also falls inside groups
    codes, lengths = generate(model, labels, 12, stop_at_eos=True, eos_every=3, uniforms=uniforms,
                              use_cache=use_cache, slots=slots)
    assert (lengths % 3 == 0).all() and (lengths >= 3).all() and len(set(lengths.tolist())) > 1
    for i in range(16):
        assert (codes[i, lengths[i]:] == 0).all()
    with pytest.raises(ValueError, match=r"eos_every=5 must be a positive int dividing num_tokens=12"):
        generate(model, labels, 12, stop_at_eos=True, eos_every=5)


def test_slots_are_refilled_so_the_batch_stays_full():
    """8 samples through 3 slots: every decode call runs 3 rows until fewer than 3 samples are left, and the
    number of calls is the sum of the samples' decode steps divided by 3 (rounded up, plus the tail)."""
    model = tiny(use_eos=True)
    with torch.no_grad():
        model.head.weight[-1] *= 0
        model.head.weight[-1] += 0.35
    batch_rows = []
    model.head.register_forward_hook(lambda m, i, o: batch_rows.append(o.shape[0]))
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    uniforms = torch.rand(8, 12, generator=torch.Generator().manual_seed(0))
    _, lengths = generate(model, labels, 10, stop_at_eos=True, uniforms=uniforms, slots=3)
    steps = torch.where(lengths < 10, lengths + 1, lengths)  # a sample that ends at EOS spends one call on it
    assert sum(batch_rows) == int(steps.sum())  # no call is spent on a finished sample
    full = [r for r in batch_rows if r == 3]
    assert batch_rows[: len(full)] == full and len(full) >= (int(steps.sum()) - 3 * 10) // 3
    assert batch_rows == sorted(batch_rows, reverse=True)  # slots only leave once nothing waits
    with pytest.raises(ValueError, match="slots needs stop_at_eos"):
        generate(model, labels, 10, slots=3)


def test_slots_never_read_unwritten_cache_memory():
    """A refilled slot reads (masked) cache positions that none of its samples wrote; the cache memory is not
    initialised, so garbage there (NaN here, planted on purpose) must not reach the logits: every row still
    equals the row generated alone."""
    model = tiny(use_eos=True)
    with torch.no_grad():
        model.head.weight[-1] *= 0
        model.head.weight[-1] += 0.35
    new_cache = model.new_cache

    def poisoned(*args, **kwargs):
        caches = new_cache(*args, **kwargs)
        for cache in caches:
            cache.kv.fill_(float("nan"))
        return caches

    model.new_cache = poisoned
    labels = torch.arange(12) % 4
    uniforms = torch.rand(12, 12, generator=torch.Generator().manual_seed(1))
    codes, lengths = generate(model, labels, 10, stop_at_eos=True, uniforms=uniforms, slots=3)
    for i in range(12):
        one_codes, one_length = generate(model, labels[i : i + 1], 10, stop_at_eos=True,
                                         uniforms=uniforms[i : i + 1], use_cache=False)
        assert one_length.item() == lengths[i].item() and torch.equal(one_codes[0], codes[i])


def test_build_targets_with_eos():
    codes = torch.tensor([[5, 6, 7, 8], [1, 2, 0, 0]])
    assert torch.equal(build_targets(codes, torch.tensor([4, 2]), None), codes)
    t = build_targets(codes, torch.tensor([4, 2]), eos_id=99)
    assert t.tolist() == [[5, 6, 7, 8, 99], [1, 2, 99, IGNORE_INDEX, IGNORE_INDEX]]


def test_bad_generate_inputs():
    model = tiny()
    with pytest.raises(ValueError, match=r"token budget 13 is outside .* accepted 1..12"):
        generate(model, torch.tensor([0]), 13)
    with pytest.raises(ValueError, match=r"class id 4 is out of range.*accepted 0..3"):
        generate(model, torch.tensor([4]), 3)
    with pytest.raises(ValueError, match="class-conditional"):
        generate(model, None, 3, batch_size=2)
    uncond = tiny(num_classes=0)
    codes, _ = generate(uncond, None, 3, batch_size=2)
    assert codes.shape == (2, 3)
    with pytest.raises(ValueError, match="unconditional"):
        generate(uncond, None, 3, batch_size=2, cfg_scale=2.0)
    with pytest.raises(ValueError, match="longer than the generator's context"):
        model(torch.zeros(1, 12, dtype=torch.long), torch.tensor([0]))


def test_label_dropout_only_in_training():
    model = tiny(class_dropout=0.5)
    labels = torch.zeros(400, dtype=torch.long)
    model.train()
    torch.manual_seed(0)
    emb = model.condition(labels, 400, "cpu")[:, 0]
    dropped = (emb == model.class_embedding.weight[4]).all(-1).float().mean()
    assert 0.4 < dropped < 0.6
    model.eval()
    assert torch.equal(model.condition(labels, 400, "cpu")[:, 0], model.class_embedding.weight[[0] * 400])


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_flop_formula_matches_flop_counter(kv_heads):
    model = tiny(n_kv_head=kv_heads)
    tokens, labels = torch.randint(0, 50, (2, 9)), torch.tensor([0, 1])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(tokens, labels)
    # FlopCounterMode counts the projections and the head (SDPA on CPU is not counted), per batch of 2
    assert counter.get_total_flops() == 2 * model.flops_forward(10, 10, attention=False)
    attention = model.flops_forward(10, 10) - model.flops_forward(10, 10, attention=False)
    assert attention == 2 * 2 * 2 * 32 * (10 * 11 // 2)  # layers * (q.k + p.v) * 2 FLOPs * dim * causal pairs
    caches = model.new_cache(2, 10)
    with torch.no_grad():
        model.forward_cached(model.embed(tokens[:, :6], labels), 0, caches)
        with FlopCounterMode(display=False) as counter:
            model.forward_cached(model.tok_embedding(tokens[:, 6])[:, None], 7, caches)
    assert counter.get_total_flops() == 2 * model.flops_forward(1, 8, attention=False)


@pytest.mark.parametrize("factors", [None, [5, 10]])
def test_training_loss_learns_a_class_pattern(factors):
    """A few Adam steps on codes fully determined by the class: greedy decoding reproduces them."""
    model = tiny(vocab_factors=factors, class_dropout=0.0).train()
    labels = torch.arange(64) % 4
    targets = (13 * labels[:, None] + 7 * torch.arange(8)[None]) % 50
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss0 = None
    for _ in range(60):
        loss, acc = model.loss(targets, labels)
        loss0 = loss0 if loss0 is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss0 > 3.0 and loss.item() < 0.1 and acc > 0.99
    codes, _ = generate(model.eval(), torch.arange(4), 8, temperature=0)
    assert torch.equal(codes, targets[:4])


def test_factorized_loss_is_the_joint_negative_log_likelihood():
    model = tiny(vocab_factors=[5, 10])
    targets, labels = torch.randint(0, 50, (2, 6)), torch.tensor([0, 1])
    loss, _ = model.loss(targets, labels)
    with torch.no_grad():
        logits, h = model(targets[:, :-1], labels, return_hidden=True)
        lo_logits = model.lo_logits(h, targets // 10)
    nll = -(logits.log_softmax(-1).gather(-1, (targets // 10)[..., None])
            + lo_logits.log_softmax(-1).gather(-1, (targets % 10)[..., None]))
    assert torch.allclose(loss, nll.mean(), atol=1e-5)
    with pytest.raises(ValueError, match=r"vocab_factors=\[5, 5\] must be two integers"):
        GPTConfig(vocab_size=50, vocab_factors=[5, 5])

"""Tests for tokgen.quantize: the shared interface, each quantizer's method, errors, and VQ restart
(including a 2-process gloo run checking that ranks keep identical codebooks)."""
from __future__ import annotations

import math
import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.nn.functional as F

from tokgen.quantize import (
    FSQ,
    BinaryQuantizer,
    GroupQuantizer,
    IdentityQuantizer,
    Quantizer,
    QuantizerConfig,
    VectorQuantizer,
    build_quantizer,
)

B, K = 3, 7


def make(kind: str, **kw) -> Quantizer:
    torch.manual_seed(0)
    return build_quantizer(kind, **kw)


ALL = [
    ("fsq", {}),
    ("fsq", {"levels": [3, 4, 2]}),
    ("vq", {"codebook_size": 256, "dim": 8}),
    ("vq", {"codebook_size": 256, "dim": 8, "normalize": False}),
    ("binary", {"dim": 10}),
    ("identity", {"dim": 5}),
    ("identity", {"dim": 5, "bound": "tanh"}),
]
IDS = [f"{k}-{'-'.join(f'{a}={b}' for a, b in kw.items())}" for k, kw in ALL]


# ---------------------------------------------------------------------------------- interface
@pytest.mark.parametrize("kind,kw", ALL, ids=IDS)
def test_shapes_and_dtypes(kind, kw):
    q = make(kind, **kw)
    z = torch.randn(B, K, q.dim)
    z_q, codes, aux = q(z)
    assert z_q.shape == (B, K, q.dim) and z_q.dtype == torch.float32
    assert isinstance(aux, dict)
    for v in aux.values():
        assert v.ndim == 0
    if q.is_discrete:
        assert codes.shape == (B, K) and codes.dtype == torch.int64
        assert int(codes.min()) >= 0 and int(codes.max()) < q.codebook_size
        assert set(q.stats(codes)) == {"usage", "perplexity"}
    else:
        assert q.codebook_size is None
        assert codes.shape == (B, K, q.dim) and codes.is_floating_point()
        assert q.stats(codes) == {}
    # bf16 input (e.g. under autocast) still gives float32 outputs
    z_q16, _, _ = q(z.bfloat16())
    assert z_q16.dtype == torch.float32


@pytest.mark.parametrize("kind,kw", ALL, ids=IDS)
def test_codes_to_latents_reproduces_forward(kind, kw):
    q = make(kind, **kw).eval()
    z = torch.randn(B, K, q.dim) * 2
    z_q, codes, _ = q(z)
    assert torch.equal(q.codes_to_latents(codes), z_q)


@pytest.mark.parametrize("kind,kw", ALL, ids=IDS)
def test_module_cast_to_bf16_keeps_codes_exact(kind, kw):
    q = make(kind, **kw)
    ref_codes = q.eval()(torch.randn(B, K, q.dim))[1]
    q = q.to(torch.bfloat16).eval()  # e.g. a "bf16-true" run; FSQ constants must not lose precision
    z = torch.randn(B, K, q.dim, dtype=torch.bfloat16)
    z_q, codes, _ = q(z)
    assert z_q.dtype == torch.float32 and codes.dtype == ref_codes.dtype
    assert torch.equal(q.codes_to_latents(codes), z_q)
    if kind == "fsq":
        assert torch.equal(z_q, FSQ(q.levels)(z)[0])


def test_aux_losses_only_for_vq():
    for kind in ("fsq", "binary", "identity"):
        assert make(kind)(torch.randn(2, 3, make(kind).dim))[2] == {}
    assert set(make("vq")(torch.randn(2, 3, 12))[2]) == {"vq_codebook", "vq_commit"}


# ---------------------------------------------------------------------------------- FSQ
@pytest.mark.parametrize("levels", [[8, 8, 8, 5, 5, 5], [3, 4, 2], [2], [7, 6]])
def test_fsq_reaches_exactly_prod_levels_codes(levels):
    fsq = FSQ(levels)
    d = len(levels)
    assert fsq.dim == d and fsq.codebook_size == math.prod(levels)
    # Dense 1D sweep on every channel at once: each channel reaches exactly L evenly spaced values.
    sweep = torch.linspace(-8, 8, 4001)
    z_q, _, _ = fsq(sweep[:, None].expand(-1, d).contiguous())          # (4001, d)
    reps = []
    for i, L in enumerate(levels):
        values, first = torch.unique(z_q[:, i], return_inverse=True)
        assert values.numel() == L
        torch.testing.assert_close(values, torch.linspace(-1, 1, L), rtol=0, atol=1e-6)
        # one sweep point per reached value, to build the full grid below
        reps.append(torch.stack([sweep[(first == j).nonzero()[0, 0]] for j in range(L)]))
    grid = torch.cartesian_prod(*reps).reshape(-1, d)                    # (prod(levels), d)
    _, codes, _ = fsq(grid)
    assert torch.equal(codes.sort().values, torch.arange(math.prod(levels)))
    # and nothing outside the grid: random large inputs stay in range
    _, codes, _ = fsq(torch.randn(10000, d) * 10)
    assert int(codes.min()) >= 0 and int(codes.max()) < fsq.codebook_size


def test_fsq_zero_maps_to_zero_for_odd_levels_and_is_monotone():
    fsq = FSQ([5, 8])
    z_q, _, _ = fsq(torch.zeros(1, 2))
    assert z_q[0, 0].item() == 0.0  # odd L: 0 is a grid value
    sweep = torch.linspace(-6, 6, 1001)[:, None].expand(-1, 2).contiguous()
    z_q, _, _ = fsq(sweep)
    assert (z_q.diff(dim=0) >= 0).all()


def test_fsq_straight_through_gradient():
    levels = [8, 5, 4]
    fsq = FSQ(levels)
    z = (torch.randn(B, K, 3) * 1.5).requires_grad_()
    up = torch.randn(B, K, 3)
    (fsq(z)[0] * up).sum().backward()
    # reference: the same map with rounding replaced by identity, written out independently
    z2 = z.detach().clone().requires_grad_()
    L = torch.tensor(levels, dtype=torch.float32)
    h = (L - 1) / 2
    off = (L % 2 == 0).float() * 0.5
    smooth = (torch.tanh(z2 + torch.atanh(off / (h + 1e-3))) * (h + 1e-3) - off + L // 2) / h - 1
    (smooth * up).sum().backward()
    assert z.grad.abs().sum() > 0
    torch.testing.assert_close(z.grad, z2.grad)


# ---------------------------------------------------------------------------------- binary
def test_binary_bits_pack_and_unpack():
    bq = BinaryQuantizer(dim=3)
    z = torch.tensor([[[0.3, -2.0, 0.0], [-1.0, -1.0, -1.0], [5.0, 1.0, 0.1]]])  # sign(0) = +1
    z_q, codes, _ = bq(z)
    assert codes.tolist() == [[1 + 4, 0, 7]]
    assert z_q.tolist() == [[[1, -1, 1], [-1, -1, -1], [1, 1, 1]]]
    all_codes = torch.arange(8)
    lat = bq.codes_to_latents(all_codes)
    assert torch.equal(bq(lat)[1], all_codes)
    # largest supported width round-trips too, including the top bit
    bq62 = BinaryQuantizer(dim=62)
    codes = torch.tensor([0, 1, 2**61, 2**62 - 1, 123456789012345])
    assert torch.equal(bq62(bq62.codes_to_latents(codes))[1], codes)
    assert bq62.codebook_size == 2**62


def test_binary_straight_through_gradient():
    bq = BinaryQuantizer(dim=6)
    z = torch.randn(B, K, 6, requires_grad=True)
    up = torch.randn(B, K, 6)
    (bq(z)[0] * up).sum().backward()
    assert torch.equal(z.grad, up)


# ---------------------------------------------------------------------------------- VQ
@pytest.mark.parametrize("normalize", [True, False])
def test_vq_picks_nearest_code(normalize):
    vq = make("vq", codebook_size=2048, dim=8, normalize=normalize)  # 2048 codes -> lookup in chunks of 8192 rows
    z = torch.randn(20000, 8)
    _, codes, _ = vq(z)
    C = vq.codebook.detach()
    if normalize:  # brute force: nearest unit vector by euclidean distance == highest cosine
        dist = torch.cdist(F.normalize(z, dim=-1), F.normalize(C, dim=-1))
    else:
        dist = torch.cdist(z, C)
    best = dist.argmin(-1)
    # identical picks except possible float near-ties, which must then be equally good
    assert (codes == best).float().mean().item() > 0.999
    torch.testing.assert_close(dist.gather(1, codes[:, None])[:, 0], dist.min(-1).values, rtol=0, atol=1e-4)


@pytest.mark.parametrize("normalize", [True, False])
def test_vq_losses_and_straight_through(normalize):
    beta = 0.4
    vq = make("vq", codebook_size=64, dim=6, beta=beta, normalize=normalize)
    z = torch.randn(B, K, 6, requires_grad=True)
    z_q, codes, aux = vq(z)
    zn = F.normalize(z, dim=-1) if normalize else z
    C = F.normalize(vq.codebook, dim=-1) if normalize else vq.codebook
    q = C[codes]
    torch.testing.assert_close(aux["vq_codebook"], ((q - zn.detach()) ** 2).mean())
    torch.testing.assert_close(aux["vq_commit"], beta * ((q.detach() - zn) ** 2).mean())
    assert torch.equal(z_q, q.detach())

    # codebook loss trains only the codebook, commitment only the encoder
    g_cb = torch.autograd.grad(aux["vq_codebook"], [vq.codebook, z], allow_unused=True, retain_graph=True)
    assert g_cb[0].abs().sum() > 0 and g_cb[1] is None
    g_cm = torch.autograd.grad(aux["vq_commit"], [vq.codebook, z], allow_unused=True, retain_graph=True)
    assert g_cm[0] is None and g_cm[1].abs().sum() > 0

    # straight-through: decoder gradient reaches z as through (normalised) identity, not the codebook
    up = torch.randn(B, K, 6)
    g = torch.autograd.grad((z_q * up).sum(), [vq.codebook, z], allow_unused=True)
    assert g[0] is None and g[1].abs().sum() > 0
    (expected,) = torch.autograd.grad((zn * up).sum(), z)
    torch.testing.assert_close(g[1], expected)


def _collapsed_vq(restart_every: int) -> tuple[VectorQuantizer, torch.Tensor]:
    """A 32-code VQ whose first 4 codes point at the data and the other 28 point away (never used)."""
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=32, dim=8, restart_every=restart_every, restart_threshold=0.1, usage_decay=0.5)
    dirs = F.normalize(torch.randn(4, 8), dim=-1)
    with torch.no_grad():
        vq.codebook[:4] = dirs
        vq.codebook[4:] = -dirs.sum(0) / dirs.sum(0).norm() + 0.01 * torch.randn(28, 8)
    return vq, dirs


def _data(dirs: torch.Tensor, n: int = 256) -> torch.Tensor:
    # tokens clustered around the 4 used directions; restarted codes are drawn from them, so they find takers
    return (dirs[torch.randint(0, 4, (n,))] + 0.2 * torch.randn(n, 8)).reshape(8, n // 8, 8)


def test_vq_dead_code_restart_revives_unused_codes():
    vq, dirs = _collapsed_vq(restart_every=2)
    vq.train()
    before = vq.codebook.detach().clone()
    used_before = vq(_data(dirs))[1].unique().numel()
    assert used_before <= 4
    vq.usage_ema.fill_(1 / 32)  # that probe forward counted as step 1; restart the bookkeeping cleanly
    vq.train_calls.zero_()
    for _ in range(8):  # unused share decays 0.5 per step: dead (< 0.1 / 32) after 4 steps, restart at 4 / 6 / 8
        vq(_data(dirs))
    after = vq.codebook.detach()
    moved = (after - before).norm(dim=-1) > 1e-4
    assert moved[4:].sum() >= 20, "dead codes should have been replaced"
    assert not moved[:4].any(), "live codes must not be touched by restart (no optimizer step ran)"
    torch.testing.assert_close(after.norm(dim=-1), torch.ones(32))  # new rows are normalised
    vq.eval()
    used_after = vq(_data(dirs))[1].unique().numel()
    assert used_after > used_before + 5
    assert vq.train_calls.item() == 8


def test_vq_restart_off_is_noop():
    vq, dirs = _collapsed_vq(restart_every=0)
    vq.train()
    before = vq.codebook.detach().clone()
    for _ in range(10):
        vq(_data(dirs))
    assert torch.equal(vq.codebook.detach(), before)
    assert vq.usage_ema[4:].max() < 0.1 / 32  # they are dead, but nobody restarts them


def test_vq_state_dict_round_trip():
    vq = make("vq", codebook_size=64, dim=6, restart_every=5)
    other = VectorQuantizer(codebook_size=64, dim=6, restart_every=5)
    other.load_state_dict(vq.state_dict())
    z = torch.randn(B, K, 6)
    assert torch.equal(vq.eval()(z)[1], other.eval()(z)[1])
    assert set(vq.state_dict()) == {"codebook", "usage_ema", "train_calls"}
    assert FSQ().state_dict() == {} and BinaryQuantizer().state_dict() == {}


# ---------------------------------------------------------------------------------- stats
def test_stats_on_known_histograms():
    fsq = FSQ([4, 4])  # 16 codes
    s = fsq.stats(torch.tensor([[0, 5, 9, 15] * 10]))
    assert s["usage"] == pytest.approx(0.25) and s["perplexity"] == pytest.approx(4.0)
    s = fsq.stats(torch.full((2, 8), 3))
    assert s["usage"] == pytest.approx(1 / 16) and s["perplexity"] == pytest.approx(1.0)
    # skewed: p = (1/2, 1/4, 1/4) -> perplexity 2 ** 1.5
    s = VectorQuantizer(codebook_size=16, dim=4).stats(torch.tensor([1, 1, 2, 3]))
    assert s["perplexity"] == pytest.approx(2**1.5) and s["usage"] == pytest.approx(3 / 16)


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kind", ["fsq", "vq", "binary", "identity"])
def test_wrong_dim_raises(kind):
    q = make(kind)
    with pytest.raises(ValueError) as e:
        q(torch.randn(2, 3, 99))
    assert "(2, 3, 99)" in str(e.value) and str(q.dim) in str(e.value)


@pytest.mark.parametrize("levels", [[8, 1], [], [2.5, 3], "888", [True, 3]])
def test_bad_levels_raise(levels):
    with pytest.raises(ValueError, match="levels"):
        FSQ(levels)


def test_bad_level_value_named():
    with pytest.raises(ValueError, match=r"\[1\]"):
        FSQ([8, 1, 5])


@pytest.mark.parametrize("kind", ["fsq", "vq", "binary"])
def test_out_of_range_codes_raise(kind):
    q = make(kind)
    top = q.codebook_size
    with pytest.raises(ValueError, match=rf"\[-1, 3\].*\[0, {top - 1}\]"):
        q.codes_to_latents(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match=rf"{top}"):
        q.codes_to_latents(torch.tensor([[0, top]]))
    with pytest.raises(ValueError, match="integer"):
        q.codes_to_latents(torch.zeros(1, 2))


def test_factory_and_config_errors():
    with pytest.raises(ValueError, match=r"'lfq'.*fsq.*vq.*binary.*identity"):
        build_quantizer("lfq")
    with pytest.raises(ValueError, match=r"len\(levels\)") as e:
        build_quantizer("fsq", dim=5)
    assert "dim=5" in str(e.value) and "6" in str(e.value)
    with pytest.raises(ValueError, match="63"):
        BinaryQuantizer(dim=63)
    with pytest.raises(ValueError, match="'clip'"):
        IdentityQuantizer(bound="clip")
    with pytest.raises(ValueError, match="levels"):
        build_quantizer("vq", levels=[4, 4])
    with pytest.raises(ValueError, match="'nope'"):
        QuantizerConfig(kind="nope").token_dim
    identity = IdentityQuantizer(dim=4)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        identity.codes_to_latents(torch.randn(2, 3))


# ---------------------------------------------------------------------------------- factory / config
def test_config_token_dim_and_build():
    assert QuantizerConfig().token_dim == 6
    assert QuantizerConfig(kind="fsq", levels=[4, 4, 4]).token_dim == 3
    assert QuantizerConfig(kind="fsq", dim=3, levels=[4, 4, 4]).token_dim == 3
    assert QuantizerConfig(kind="vq").token_dim == 12
    assert QuantizerConfig(kind="binary").token_dim == 16
    assert QuantizerConfig(kind="identity").token_dim == 12
    assert QuantizerConfig(kind="vq", dim=32).token_dim == 32
    for kind, cls in [("fsq", FSQ), ("vq", VectorQuantizer), ("binary", BinaryQuantizer), ("identity", IdentityQuantizer)]:
        cfg = QuantizerConfig(kind=kind)
        q = cfg.build()
        assert isinstance(q, cls) and q.dim == cfg.token_dim
    vq = QuantizerConfig(kind="vq", codebook_size=128, dim=4, beta=0.1, normalize=False, restart_every=7, restart_threshold=0.01).build()
    assert (vq.codebook_size, vq.dim, vq.beta, vq.normalize, vq.restart_every, vq.restart_threshold) == (128, 4, 0.1, False, 7, 0.01)
    assert QuantizerConfig(kind="identity", bound="tanh").build().bound == "tanh"
    assert FSQ().levels == [8, 8, 8, 5, 5, 5] and FSQ().codebook_size == 64000


def test_config_parses_with_jsonargparse():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--quantizer", type=QuantizerConfig, default=QuantizerConfig())
    cfg = parser.parse_args(["--quantizer", '{"kind": "fsq", "levels": [4, 4, 3]}'])
    qc = parser.instantiate_classes(cfg).quantizer
    assert isinstance(qc, QuantizerConfig) and qc.levels == [4, 4, 3] and qc.build().codebook_size == 48


# ---------------------------------------------------------------------------------- group quantization
GROUPED = [
    ("fsq", {"levels": [8, 5, 5, 5], "groups": 4}),
    ("vq", {"codebook_size": 64, "dim": 4, "groups": 3}),
    ("binary", {"dim": 5, "groups": 2}),
]


@pytest.mark.parametrize("kind,kw", GROUPED, ids=[k for k, _ in GROUPED])
def test_group_codes_round_trip(kind, kw):
    """codes (B, K, G) in the inner codebook; codes_to_latents(codes) is exactly forward's z_q; every group is
    the inner quantizer applied to its own chunk of channels."""
    q = make(kind, **kw).eval()
    G = kw["groups"]
    assert isinstance(q, GroupQuantizer) and q.codes_per_token == G and q.dim == G * q.inner.dim
    assert q.codebook_size == q.inner.codebook_size
    z = torch.randn(B, K, q.dim)
    z_q, codes, _ = q(z)
    assert z_q.shape == (B, K, q.dim) and codes.shape == (B, K, G) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < q.codebook_size
    assert torch.equal(q.codes_to_latents(codes), z_q)
    for g in range(G):
        chunk = slice(g * q.inner.dim, (g + 1) * q.inner.dim)
        inner_zq, inner_codes, _ = q.inner(z[..., chunk])
        assert torch.equal(codes[..., g], inner_codes) and torch.equal(z_q[..., chunk], inner_zq)


def test_group_fsq_groups_are_distinct_and_independent():
    """Changing one group's channels changes only that group's code; distinct chunks give distinct codes."""
    q = build_quantizer("fsq", levels=[8, 5, 5, 5], groups=4)
    assert q.dim == 16 and q.codebook_size == 1000
    z = torch.zeros(1, 1, 16)
    z[..., 4:8] = torch.tensor([2.0, -2.0, 2.0, -2.0])
    z[..., 12:16] = torch.tensor([-2.0, 2.0, -2.0, 2.0])
    _, codes, _ = q(z)
    c = codes[0, 0].tolist()
    assert c[0] == c[2] and len({c[0], c[1], c[3]}) == 3  # equal chunks -> equal codes, others differ
    z2 = z.clone()
    z2[..., 8:12] = 1.5
    _, codes2, _ = q(z2)
    changed = (codes2 != codes)[0, 0].tolist()
    assert changed == [False, False, True, False]
    # one code per group decodes to that group's chunk only
    lat = q.codes_to_latents(torch.tensor([[0, 999, 0, 0]]))
    assert lat.shape == (1, 16)
    assert torch.equal(lat[0, 4:8], torch.ones(4)) and torch.equal(lat[0, :4], -torch.ones(4))
    # gradients reach every channel (straight-through per group)
    zg = torch.randn(2, 3, 16, requires_grad=True)
    q(zg)[0].sum().backward()
    assert (zg.grad != 0).all()


def test_group_vq_aux_losses_do_not_grow_with_groups():
    torch.manual_seed(0)
    q = build_quantizer("vq", codebook_size=32, dim=4, groups=3).train()
    z = torch.randn(5, 2, 12)
    _, codes, aux = q(z)
    flat = F.normalize(z.view(5, 2, 3, 4), dim=-1)
    want = F.mse_loss(F.embedding(codes, q.inner.get_codebook()), flat)
    assert torch.allclose(aux["vq_codebook"], want)


def test_group_config_and_errors():
    cfg = QuantizerConfig(kind="fsq", levels=[8, 5, 5, 5], groups=4)
    assert cfg.token_dim == 16 and cfg.build().dim == 16
    assert QuantizerConfig(kind="vq", dim=8, groups=2).token_dim == 16
    assert isinstance(QuantizerConfig(kind="fsq", groups=1).build(), FSQ)  # one group: the plain quantizer
    with pytest.raises(ValueError, match=r"groups=2.*identity"):
        QuantizerConfig(kind="identity", groups=2).token_dim
    with pytest.raises(ValueError, match=r"groups.*>= 1.*0"):
        build_quantizer("fsq", groups=0)
    with pytest.raises(ValueError, match="discrete"):
        GroupQuantizer(IdentityQuantizer(dim=4), 2)
    with pytest.raises(ValueError, match="nest"):
        GroupQuantizer(build_quantizer("fsq", levels=[3, 3], groups=2), 2)
    q = build_quantizer("fsq", levels=[4, 4], groups=3)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\).*\(2, 2\)"):
        q.codes_to_latents(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        q.codes_to_latents(torch.tensor([[0, 16, 1]]))
    with pytest.raises(ValueError, match=r"\(B, K, 6\).*\(2, 4\)"):
        q(torch.randn(2, 4))


# ---------------------------------------------------------------------------------- distributed restart
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_restart_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        vq, dirs = _collapsed_vq(restart_every=2)  # same seed -> same initial weights on both ranks
        initial = vq.codebook.detach().clone()
        torch.manual_seed(100 + rank)  # different data and different RNG streams per rank
        vq.train()
        for _ in range(8):
            vq(_data(dirs))
        torch.save({"initial": initial, "codebook": vq.codebook.detach(), "usage": vq.usage_ema},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_vq_restart_keeps_ranks_identical_gloo(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_restart_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert torch.equal(r0["initial"], r1["initial"])
    assert ((r0["codebook"] - r0["initial"]).norm(dim=-1) > 1e-4).sum() >= 20  # restart happened
    assert torch.equal(r0["codebook"], r1["codebook"])
    assert torch.equal(r0["usage"], r1["usage"])

"""The GPU speed levers (tokgen.lit.speed, ``model.init_args.speed`` in the recipes), each checked on CPU.

torch.compile runs with backend="aot_eager" here: it traces each block with dynamo and AOTAutograd (graph breaks,
functionalisation, the joint forward/backward graph, input mutation of the static KV cache) without inductor's
code generation, which takes tens of seconds per graph on this CPU; inductor itself (the default of the recipes)
is exercised by benchmarks/gpu_check.py on a GPU.
"""
import copy
import glob
import os

import pytest
import torch
import yaml

from conftest import ROOT, build_on_meta
from tokgen.generator import GPT, GPTConfig, generate
from tokgen.lit.ema import ema_update
from tokgen.lit.speed import SpeedConfig, apply_speed, build_adamw, enable_tf32, transformer_blocks
from tokgen.tokenizers import Tokenizer1D, TokenizerConfig
from tokgen.tokenizers.flow import FlowTokenizer, FlowTokenizerConfig

TINY_TOK = dict(image_size=16, patch_size=4, width=32, encoder_depth=2, decoder_depth=2, num_heads=2, num_tokens=8,
                quantizer={"kind": "fsq", "levels": [5, 5, 5]})
TINY_GPT = dict(vocab_size=64, block_size=16, num_classes=4, dim=64, n_layer=2, n_head=4, n_kv_head=2)
COMPILE = SpeedConfig(compile=True, compile_backend="aot_eager")
GPU_RECIPES = sorted(glob.glob("configs/tokenizer/imagenet_*.yaml", root_dir=ROOT)
                     + glob.glob("configs/generator/imagenet_*.yaml", root_dir=ROOT)
                     + ["configs/tokenizer/shapes_halting_gpu.yaml"])


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread (a second only adds synchronisation to these shapes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def models():
    """(name, model, loss function) of a tokenizer with causal registers, a flow tokenizer and a GPT."""
    torch.manual_seed(0)
    tok = Tokenizer1D(TokenizerConfig.from_dict(TINY_TOK))
    flow = FlowTokenizer(FlowTokenizerConfig.from_dict({**TINY_TOK, "decoder_depth": 2}))
    gpt = GPT(GPTConfig(**TINY_GPT, class_dropout=0.0))
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    codes, labels = torch.randint(64, (3, 16)), torch.tensor([0, 1, 3])

    def tok_loss(m):
        return (m(images)[0] - images).square().mean()

    def flow_loss(m):
        z = m.quantize(m.encode_registers(images))[0]
        return m.flow.loss(images, z, generator=torch.Generator().manual_seed(0))["flow"]

    def gpt_loss(m):
        return m.loss(codes, labels)[0]

    return [("tokenizer", tok, tok_loss), ("flow", flow, flow_loss), ("gpt", gpt, gpt_loss)]


def loss_and_grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("index", range(3), ids=["tokenizer", "flow", "gpt"])
def test_compiled_blocks_equal_eager_and_keep_the_state_dict_keys(index):
    name, model, loss_fn = models()[index]
    eager = copy.deepcopy(model)
    keys = list(model.state_dict())
    n = apply_speed(model, COMPILE)
    assert n == len(transformer_blocks(model)) and n >= 2
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in transformer_blocks(model))
    loss_c, grads_c = loss_and_grads(model, loss_fn)
    loss_e, grads_e = loss_and_grads(eager, loss_fn)
    assert list(model.state_dict()) == keys  # compiled in place: no _orig_mod prefix in checkpoints
    assert torch.allclose(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    assert grads_c.keys() == grads_e.keys() and grads_c
    for key in grads_e:
        assert torch.allclose(grads_c[key], grads_e[key], rtol=1e-4, atol=1e-6), key


@pytest.mark.parametrize("index", range(3), ids=["tokenizer", "flow", "gpt"])
def test_activation_checkpointing_gives_the_plain_gradients_and_recomputes(index):
    name, model, loss_fn = models()[index]
    plain = copy.deepcopy(model)
    apply_speed(model, SpeedConfig(activation_checkpointing=True))
    calls = []
    for block in transformer_blocks(model):
        block.register_forward_pre_hook(lambda *a: calls.append(1))
    loss_a, grads_a = loss_and_grads(model, loss_fn)
    blocks = len(transformer_blocks(model))
    assert len(calls) == 2 * blocks  # every block's forward ran again in backward
    loss_p, grads_p = loss_and_grads(plain, loss_fn)
    assert torch.equal(loss_a, loss_p)
    for key in grads_p:
        assert torch.allclose(grads_a[key], grads_p[key], rtol=1e-5, atol=1e-7), key
    calls.clear()
    with torch.no_grad():  # evaluation never recomputes
        loss_fn(model)
    assert len(calls) == blocks


def test_checkpointing_and_compile_together_match_plain_gradients():
    _, model, loss_fn = models()[0]
    plain = copy.deepcopy(model)
    apply_speed(model, SpeedConfig(compile=True, compile_backend="aot_eager", activation_checkpointing=True))
    loss_a, grads_a = loss_and_grads(model, loss_fn)
    loss_p, grads_p = loss_and_grads(plain, loss_fn)
    assert torch.allclose(loss_a, loss_p, rtol=1e-5, atol=1e-6)
    for key in grads_p:
        assert torch.allclose(grads_a[key], grads_p[key], rtol=1e-4, atol=1e-6), key


@pytest.mark.parametrize("factors,cfg", [(None, 1.0), ([8, 8], 3.0)], ids=["plain", "factorized-cfg"])
def test_compiled_decode_step_equals_eager_decoding(factors, cfg):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY_GPT, "vocab_factors": factors})).eval()
    model.compile_decode(backend="aot_eager")
    labels = torch.tensor([0, 1, 2, 3])
    u = torch.rand(4, 32)
    eager, _ = generate(model, labels, 12, cfg_scale=cfg, uniforms=u)
    compiled, lengths = generate(model, labels, 12, cfg_scale=cfg, uniforms=u, compile=True)
    assert torch.equal(compiled, eager) and lengths.tolist() == [12] * 4
    shorter, _ = generate(model, labels, 5, cfg_scale=cfg, uniforms=u, compile=True)  # same graph, reused cache
    assert torch.equal(shorter, eager[:, :5])
    # the static step's logits equal the cached forward's at every position
    x = model.embed(torch.randint(64, (2, 6)), torch.tensor([1, 2]))  # (2, 7, dim)
    caches = model.new_cache(2, 7)
    kvs = model.static_cache(2)
    for t in range(7):
        ref, _ = model.forward_cached(x[:, t:t + 1], t, caches)
        got, _ = model.decode_step(x[:, t:t + 1], torch.tensor(t), kvs)
        assert torch.allclose(got, ref, atol=1e-5), t


def test_compiled_decode_is_refused_with_stop_at_eos():
    model = GPT(GPTConfig(**TINY_GPT, use_eos=True)).eval()
    with pytest.raises(ValueError, match="compile=True decodes fixed budgets.*stop_at_eos=False"):
        generate(model, torch.tensor([0, 1]), 4, stop_at_eos=True, compile=True)
    codes, lengths = generate(model, torch.tensor([0, 1]), 4, stop_at_eos=True)  # the EOS path stays uncompiled
    assert codes.shape == (2, 4) and ((lengths >= 1) & (lengths <= 4)).all()


def test_foreach_ema_equals_the_per_tensor_loop():
    torch.manual_seed(0)
    model = Tokenizer1D(TokenizerConfig.from_dict(TINY_TOK))
    model.register_buffer("counter", torch.tensor([3, 4]))
    ema, loop = copy.deepcopy(model), copy.deepcopy(model)
    for step in range(1, 4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model.counter += step
        d = ema_update(ema, model, 0.99, step)
        assert d == min(0.99, (1 + step) / (10 + step))
        with torch.no_grad():  # the reference: one tensor at a time
            for e, m in zip(loop.parameters(), model.parameters()):
                e.mul_(d).add_(m, alpha=1 - d)
            for e, m in zip(loop.buffers(), model.buffers()):
                e.copy_(m)
    for (name, a), b in zip(ema.state_dict().items(), loop.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), name
    assert ema.counter.tolist() == [9, 10]


def test_adamw_is_multi_tensor_on_cpu_and_tf32_only_on_cuda():
    params = [torch.nn.Parameter(torch.randn(3, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = build_adamw([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}], SpeedConfig(), lr=1e-3)
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]
    before = torch.get_float32_matmul_precision()
    assert enable_tf32(torch.device("cpu"), SpeedConfig()) is False
    assert torch.get_float32_matmul_precision() == before


def test_speed_config_refuses_non_boolean_switches():
    with pytest.raises(ValueError, match=r"speed.compile='yes' must be true or false"):
        SpeedConfig(compile="yes")
    with pytest.raises(ValueError, match=r"speed.compile_backend='' must be a torch.compile backend"):
        SpeedConfig(compile_backend="")


@pytest.mark.parametrize("recipe", GPU_RECIPES)
def test_gpu_recipes_build_on_meta_with_the_levers_on(recipe, tmp_path):
    cli = build_on_meta(recipe, tmp_path)
    module = cli.model
    speed = module.speed
    assert speed.compile and speed.fused_adamw and speed.tf32
    large = any(s in recipe for s in ("titok_l32", "gpt_l"))  # ViT-L / GPT-L blocks
    assert speed.activation_checkpointing == large
    model = module.generator if hasattr(module, "generator") else module.tokenizer
    keys = list(model.state_dict())
    module.configure_model()  # what the Trainer calls before wrapping the model: compiles lazily, no trace yet
    blocks = transformer_blocks(model)
    c = getattr(module, "generator_config", None) or module.tokenizer_config
    expected = c.n_layer if hasattr(c, "n_layer") else c.encoder_depth + c.decoder_depth
    assert len(blocks) == expected
    assert all(b.activation_checkpointing == large and b._compiled_call_impl is not None for b in blocks)
    assert list(model.state_dict()) == keys and next(model.parameters()).is_meta
    with open(os.path.join(ROOT, recipe)) as f:  # DataLoader workers for the GPU input pipeline
        assert yaml.safe_load(f)["data"]["init_args"]["num_workers"] >= 8


@pytest.mark.parametrize("recipe", ["configs/tokenizer/fmnist_small.yaml", "configs/generator/fmnist_small.yaml",
                                    "configs/tokenizer/shapes_halting.yaml"])
def test_cpu_recipes_keep_the_levers_off(recipe, tmp_path):
    speed = build_on_meta(recipe, tmp_path).model.speed
    assert not speed.compile and not speed.activation_checkpointing


def test_sdpa_without_masks_takes_the_flash_kernel():
    """Where no mask is needed the attention passes none (the GPT's causal training forward uses is_causal, the
    tokenizer decoder and bidirectional encoder attend fully), so SDPA can dispatch to a flash kernel; checked
    on CPU's flash kernel here (on CUDA, bool masks such as the causal-register encoder's are eligible for the
    memory-efficient kernel; benchmarks/gpu_check.py records the kernels used on the device)."""
    from torch.profiler import ProfilerActivity, profile

    def kernels(fn):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        return {e.key for e in prof.key_averages() if e.key.startswith("aten::_scaled_dot_product")}

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(**TINY_GPT, dropout=0.0)).train()
    tok = Tokenizer1D(TokenizerConfig.from_dict({**TINY_TOK, "register_attention": "bidirectional"}))
    for fn in (lambda: gpt.loss(torch.randint(64, (2, 16)), torch.tensor([0, 1])),
               lambda: tok(torch.rand(2, 3, 16, 16))):
        assert kernels(fn) == {"aten::_scaled_dot_product_flash_attention_for_cpu"}


class RecordingFusedAdamW(torch.optim.AdamW):
    """Fused AdamW (the GPU recipes' optimizer; torch also runs it on CPU) that records the total gradient norm it
    is handed at every step."""

    norms: list = []

    def __init__(self, groups, **kwargs):
        kwargs.pop("foreach", None)
        super().__init__(groups, fused=True, **kwargs)

    def step(self, closure=None):
        loss = None
        if closure is not None:  # automatic optimization: forward, backward and clipping run in the closure
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        RecordingFusedAdamW.norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g.float()) for g in grads]))))
        super().step()
        return loss


@pytest.mark.parametrize("kind", ["tokenizer", "generator"])
def test_fused_adamw_with_bf16_mixed_clips_the_gradient_norm(kind, tmp_path, monkeypatch):
    """The GPU recipes train in bf16-mixed with fused AdamW and clip the gradient norm. Lightning's mixed-precision
    plugin refuses to clip for a fused optimizer (it could unscale inside its step, which needs a GradScaler that
    bf16 does not use); tokgen clips itself. Both optimisation paths: the tokenizer's manual one and the generator's
    automatic one. A tiny clip makes every step's norm equal the clip."""
    import lightning as L

    from tokgen.data.synthetic import SyntheticImageDataModule, SyntheticTokenDataModule
    from tokgen.lit import GeneratorModule, OptimConfig, TokenizerModule

    monkeypatch.setattr("tokgen.lit.base.build_adamw", lambda groups, speed, **kw: RecordingFusedAdamW(groups, **kw))
    RecordingFusedAdamW.norms = []
    clip = 1e-3
    optim = OptimConfig(lr=1e-3, warmup_steps=1, grad_clip=clip)
    speed = SpeedConfig(compile=False, tf32=False)
    if kind == "tokenizer":
        module = TokenizerModule(tokenizer=TokenizerConfig.from_dict(TINY_TOK), optim=optim, speed=speed)
        data = SyntheticImageDataModule(image_size=16, batch_size=4, num_examples=8)
    else:
        module = GeneratorModule(generator=GPTConfig(**TINY_GPT), optim=optim, speed=speed)
        data = SyntheticTokenDataModule(codebook_size=64, num_tokens=16, num_classes=4, batch_size=4, num_examples=8)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", max_steps=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=data)
    assert len(RecordingFusedAdamW.norms) == 2
    assert all(n == pytest.approx(clip, rel=1e-2) for n in RecordingFusedAdamW.norms), RecordingFusedAdamW.norms

"""Smoke checks of the benchmark scripts' workloads and arithmetic (no timings are asserted)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

from _common import throughput  # noqa: E402
from run_all import last_json, markdown, targets  # noqa: E402
from tokenizer_throughput import TokSmallV1  # noqa: E402


def test_tok_small_v1_matches_the_workload_sizes():
    """BENCHMARK_WORKLOADS tok-small-v1: ~6.53 M parameters (encoder ~3.24 M, decoder ~3.24 M, codebook 49k),
    forward ~1.23 GFLOP per image (2 x parameters in blocks x 97 tokens, both halves)."""
    model = TokSmallV1()
    total = sum(p.numel() for p in model.parameters())
    assert total == 6_532_128
    assert model.quantizer.codebook.shape == (4096, 12) and model.quantizer.normalize
    decoder = sum(p.numel() for m in (model.from_token, model.token_pos, model.decoder, model.to_pixels, model.conv_out)
                  for p in m.parameters()) + model.dec_class.numel() + model.mask_token.numel() + model.dec_pos.weight.numel()
    assert abs(decoder - 3.24e6) < 0.01e6 and abs(total - decoder - 49_152 - 3.24e6) < 0.01e6
    assert model.seq_len == 97
    assert model.flops_forward() == 2 * 2 * 4 * 789_760 * 97  # 2 halves x 2 x (4 blocks of 789,760) x 97 tokens
    assert abs(model.flops_forward() / 1e9 - 1.23) < 0.01


def test_tok_small_v1_round_trip_shapes_and_vq_loss():
    torch.manual_seed(0)
    model = TokSmallV1()
    images = torch.rand(2, 3, 64, 64)
    recon, codes, aux = model(images)
    assert recon.shape == images.shape and codes.shape == (2, 32) and codes.dtype == torch.long
    assert set(aux) == {"vq_codebook", "vq_commit"}
    with torch.no_grad():
        z = torch.nn.functional.normalize(model.encode_latents(images), dim=-1)
        q = model.quantizer.codes_to_latents(codes)
    assert torch.allclose(aux["vq_codebook"], ((q - z) ** 2).mean(), atol=1e-6)
    assert torch.allclose(aux["vq_commit"], 0.25 * ((q - z) ** 2).mean(), atol=1e-6)
    model.eval()
    with torch.inference_mode():
        assert torch.equal(model.encode(images), codes)
        assert model.decode(codes).shape == images.shape


def test_scaling_variants_build():
    assert TokSmallV1(num_tokens=16).seq_len == 81
    assert TokSmallV1(image_size=128).seq_len == 16 * 16 + 1 + 32


def test_throughput_and_mfu_arithmetic():
    t = throughput(flops_per_item=3 * 1.2e9, items=32, seconds=2.0, peak_gflop_per_s=100.0)
    assert t["items_per_s"] == 16.0
    assert t["model_gflop_per_s"] == pytest.approx(57.6)
    assert t["mfu"] == pytest.approx(0.576)


def test_run_all_targets_and_table():
    runs = {
        "tokenizer_throughput": {"status": "ok", "result": {"training": {"mfu": 0.72}}},
        "generation_cost": {"status": "ok", "result": {
            "nocfg": {"cache": {"256": {"ms_per_token": 6.5}}, "cache_t256_over_t32": 8.7},
            "cfg2": {"cache": {}, "cache_t256_over_t32": 9.5}}},
    }
    rows = {r["target"]: r for r in targets(runs, total_s=300.0)}
    assert rows["tok-small-v1 training MFU"]["pass"] is True and rows["tok-small-v1 training MFU"]["measured"] == 72.0
    assert rows["ar-small-v1 decode ms/token, k=256, no CFG"]["pass"] is True
    assert rows["t(256)/t(32), no CFG"]["pass"] is False
    assert rows["t(256)/t(32) with KV cache, no CFG (issue 4)"]["pass"] is True
    assert rows["t(256)/t(32), CFG 2.0"]["pass"] is False
    assert rows["run_all.py wall time"]["pass"] is True
    assert targets({}, 1.0)[0]["pass"] is None  # not measured -> n/a, not a failure
    table = markdown({"date": "d", "machine": "m", "threads": 2, "torch": "t", "total_s": 300.0,
                      "targets": list(rows.values()), "benchmarks": runs})
    assert "| tok-small-v1 training MFU | 8 | 72.0 % | >= 70 % |" in table and "**no**" in table


def test_last_json_takes_the_last_json_line():
    assert last_json('progress\n{"a": 1}\n{"b": 2}\n') == {"b": 2}
    assert last_json("no json here") is None


def test_gpu_check_tiny_runs_every_kind_of_recipe_through_the_trainer(tmp_path, capsys):
    """benchmarks/gpu_check.py --tiny: the GPU check's code path on CPU (tiny sizes, 3 fp32 steps, compile with
    aot_eager): a VQ tokenizer with LPIPS and a discriminator, the flow tokenizer (random VAE), the halting recipe
    a generator recipe and an FSDP one (unsharded on CPU, training only), each trained through the Lightning
    Trainer and measured."""
    import json

    from gpu_check import main

    names = ["imagenet_titok_l32", "imagenet_flextok_d18_flow", "shapes_halting_gpu", "imagenet_gpt_l",
             "imagenet_gpt_b_fsdp"]
    out = tmp_path / "gpu_check.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny shapes: a second thread only adds synchronisation (2-3x slower on 2 cores)
    try:
        result = main(["--tiny", "--only", ",".join(names), "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == result == json.loads(out.read_text())
    assert list(result["recipes"]) == names and result["matmul_peak"]["tflops"] > 0
    for name, r in result["recipes"].items():
        assert "error" not in r, (name, r.get("traceback"))
        assert r["steps"] == 3 and len(r["step_times_s"]) == 3 and r["loss_finite"], name
        assert r["speed"]["compile"] and r["speed"]["compile_backend"] == "aot_eager", name
        assert 0 < r["mfu"] < 1 and r["train_gflops_per_step"] > 0, name
        assert r[("tokens_per_s" if r["kind"] == "generator" else "images_per_s")] > 0, name
    titok, flow = result["recipes"]["imagenet_titok_l32"], result["recipes"]["imagenet_flextok_d18_flow"]
    for r in (titok, flow):
        assert r["codec"]["batch"] == 4 and r["codec"]["encode_images_per_s"] > 0 and r["codec"]["decode_images_per_s"] > 0
        assert r["codec"]["sdpa_kernels"] and all(k.startswith("_scaled_dot_product") for k in r["codec"]["sdpa_kernels"])
    assert titok["speed"]["activation_checkpointing"] and not flow["speed"]["activation_checkpointing"]
    assert result["recipes"]["shapes_halting_gpu"]["speedup_vs_45ms"] > 0
    assert "generation" not in result["recipes"]["imagenet_gpt_b_fsdp"]  # the DDP recipe's model decodes
    gen = result["recipes"]["imagenet_gpt_l"]["generation"]
    assert set(gen["compiled"]) == {"nocfg_k16", "cfg_k16"} and set(gen["eager"]) == {"nocfg_k16", "cfg_k16"}
    assert all(v["tokens_per_s"] > 0 for v in gen["compiled"].values())
    assert gen["sdpa_kernels_decode"] == ["_scaled_dot_product_flash_attention_for_cpu"]
    assert gen["sdpa_kernels_training"] == ["_scaled_dot_product_flash_attention_for_cpu"]  # is_causal, no mask


@pytest.mark.parametrize("argv,message", [
    (["--tiny", "--only", "imagenet_gpt_xl"], "--only: unknown recipe(s) imagenet_gpt_xl; accepted: imagenet_titok_l32"),
    (["--tiny", "--set", "model.init_args.speed.compile"], "--set 'model.init_args.speed.compile': expected KEY=VALUE"),
    (["--tiny", "--steps", "1"], "--steps 1: needs at least 2"),
])
def test_gpu_check_refuses_bad_options(argv, message, capsys):
    from gpu_check import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_adaptive_generation_benchmark_runs_on_the_random_stand_in(capsys):
    """benchmarks/adaptive_generation.py --random (random-weight stand-in): the four settings generate the same
    samples, the adaptive token count is the sum of the sampled lengths, and each batch-max budget covers its
    batch's longest sample (no timing is asserted)."""
    from adaptive_generation import main as adaptive_main

    r = adaptive_main(["--random", "--num", "24", "--batch-size", "8", "--repeats", "1", "--block-size", "8"])
    lengths = r["lengths"]
    assert sum(lengths["histogram"]) == 24 and lengths["histogram"][0] == 0  # every sample has >= 1 code
    assert r["settings"]["adaptive"]["tokens"] == sum(k * n for k, n in enumerate(lengths["histogram"]))
    assert r["settings"]["fixed_at_K"]["tokens"] == 8 * 24
    assert r["settings"]["adaptive"]["tokens"] <= r["settings"]["fixed_at_batch_max"]["tokens"] <= 8 * 24
    assert set(r["ratios"]) == {"adaptive/fixed_at_mean", "adaptive/fixed_at_batch_max", "adaptive/fixed_at_K"}



@pytest.fixture
def restore_tokgen_modules():
    """tree_ab imports tokgen afresh from the trees it compares: put this session's tokgen modules and sys.path back."""
    modules = {m: mod for m, mod in sys.modules.items() if m == "tokgen" or m.startswith("tokgen.")}
    path = list(sys.path)
    yield
    for m in [m for m in sys.modules if m == "tokgen" or m.startswith("tokgen.")]:
        del sys.modules[m]
    sys.modules.update(modules)
    sys.path[:] = path


def test_tree_ab_compares_a_tree_with_itself(tmp_path, restore_tokgen_modules):
    """benchmarks/tree_ab.py on this checkout against itself, one round and two call-by-call pairs: every
    measurement is reported with positive times and ratios (no timing asserted)."""
    from tree_ab import main

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = main(["--a", root, "--b", root, "--reps", "1", "--fine-reps", "2", "--threads", "1",
                   "--json", str(tmp_path / "ab.json")])
    assert set(result["rounds"]) == {"tokenizer_train_step_ms", "tokenizer_round_trip_ms", "gpt_train_step_ms",
                                     "generate_k32_ms_per_token", "generate_k128_ms_per_token", "lit_tokenizer_step_ms"}
    assert set(result["call_by_call"]) == {"tokenizer_train_step", "tokenizer_round_trip"}
    for entry in [*result["rounds"].values(), *result["call_by_call"].values()]:
        assert entry["a_median"] > 0 and entry["b_median"] > 0 and entry["ratio_b_over_a_median"] > 0
    assert (tmp_path / "ab.json").is_file()


def test_tree_ab_refuses_a_folder_without_tokgen(tmp_path, restore_tokgen_modules):
    from tree_ab import main

    with pytest.raises(SystemExit, match="has no tokgen package of its own"):
        main(["--a", str(tmp_path), "--b", str(tmp_path), "--reps", "1"])

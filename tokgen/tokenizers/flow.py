"""A 1D tokenizer whose decoder is a rectified flow (FlexTok style), in pixel space or in a VAE's latent space.

Encoder and quantizer are those of ``Tokenizer1D`` (causal registers, any quantizer); the direct decoder is
replaced by ``FlowDecoder`` (``tokgen.tokenizers.flow_decoder``), which samples an image given any token prefix.

Latent mode (``space: latent``). Encoder and flow both work on ``z = (mean of the VAE posterior - shift_factor) *
scaling_factor`` of a frozen diffusers ``AutoencoderKL``, and decoding ends with the VAE's decoder. The VAE is
read from ``vae_path`` (a local diffusers folder, or a hub repo id already in the Hugging Face cache) with
``local_files_only=True`` on first use, shared by every tokenizer that names the same path, and held outside the
module tree: it is not in ``state_dict()``, ``parameters()``, EMA copies or DDP, and it never trains.
``latent_channels`` and ``vae_downsample`` fix the encoder's geometry without loading the VAE (recipes build on
the meta device); they are checked against the VAE when it loads.

Sampling. ``decode(codes, steps=, cfg=, seed=)`` integrates the flow with diffusers'
``FlowMatchEulerDiscreteScheduler``; the defaults come from the config (``sample_steps``, ``cfg_scale``,
``time_shift``, ``sample_seed``) and can be changed for a whole run with ``configure_sampling`` (what
``tokgen eval --flow-steps`` does). Without an explicit ``generator``, the starting noise of each image is drawn
from a generator seeded by (seed, its kept tokens): decoding is a deterministic function of the tokens, the same
for any batch size, batch position or number of processes, and different images get independent noise.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..weights import error_summary
from .flow_decoder import FlowDecoder
from .tokenizer1d import Tokenizer1D, TokenizerConfig

SPACES = ("pixel", "latent")


@dataclass
class FlowTokenizerConfig(TokenizerConfig):
    """Tokenizer1D's encoder settings (``decoder_depth`` = depth of the flow decoder) plus the flow's own
    (saved with every checkpoint). In latent mode ``patch_size`` applies to the latent grid."""

    config_name = "flow tokenizer"

    space: str = "pixel"  # "pixel" or "latent" (AutoencoderKL latents)
    vae_path: str | None = None  # latent: local diffusers AutoencoderKL folder, or a hub repo id in the HF cache
    vae_subfolder: str | None = None  # e.g. "vae" inside a pipeline repo
    latent_channels: int = 4  # latent: the VAE's latent channels (checked when the VAE loads)
    vae_downsample: int = 8  # latent: the VAE's spatial downsampling factor (checked when the VAE loads)
    sample_steps: int = 25  # default Euler steps of decode()
    cfg_scale: float = 1.0  # default token guidance scale of decode() (1 = none)
    time_shift: float = 1.0  # the scheduler's shift of the sampling grid (1 = uniform in t)
    sample_seed: int = 0  # default seed of decode()
    repa_depth: int = 0  # REPA: align the patch features after this decoder block (0 = off)
    repa_dim: int = 0  # REPA: channels of the frozen feature network's features

    def __post_init__(self):
        super().__post_init__()
        if self.space not in SPACES:
            raise ValueError(f"space={self.space!r} is not supported; use one of {SPACES}")
        if self.space == "latent":
            if not self.vae_path:
                raise ValueError("space='latent' needs vae_path: a local diffusers AutoencoderKL folder or a hub repo "
                                 "id in the Hugging Face cache (e.g. EPFL-VILAB/flextok_vae_c16)")
            for name in ("latent_channels", "vae_downsample"):
                if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                    raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
            if self.image_size % self.vae_downsample or (self.image_size // self.vae_downsample) % self.patch_size:
                raise ValueError(
                    f"image_size={self.image_size} / vae_downsample={self.vae_downsample} must give a latent grid "
                    f"divisible by patch_size={self.patch_size}")
        SamplingOptions(self.sample_steps, self.cfg_scale, self.sample_seed, self.time_shift)  # validates
        if not 0 <= self.repa_depth <= self.decoder_depth:
            raise ValueError(f"repa_depth={self.repa_depth} must be in 0..decoder_depth={self.decoder_depth} (0 = off)")
        if (self.repa_depth > 0) != (self.repa_dim > 0):
            raise ValueError(f"set repa_depth and repa_dim together (got repa_depth={self.repa_depth}, "
                             f"repa_dim={self.repa_dim}); both 0 switch REPA off")


@dataclass(frozen=True)
class SamplingOptions:
    """How ``FlowTokenizer.decode`` samples: Euler steps, token guidance scale, noise seed, time-grid shift."""

    steps: int = 25
    cfg: float = 1.0
    seed: int = 0
    shift: float = 1.0

    def __post_init__(self):
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"flow sampling steps={self.steps!r} must be a positive integer")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"flow sampling seed={self.seed!r} must be a non-negative integer")
        if not self.shift > 0:
            raise ValueError(f"flow time shift={self.shift!r} must be > 0")

    def replace(self, **overrides) -> "SamplingOptions":
        """A copy with the given values (None = keep)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


class FrozenVAE:
    """A frozen diffusers AutoencoderKL: images (B, 3, H, W) in [-1, 1] <-> scaled latents (B, C, H/f, W/f)."""

    def __init__(self, vae, source: str):
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.source = source
        self.scaling_factor = float(cfg.scaling_factor)
        self.shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)
        self.latent_channels = int(cfg.latent_channels)
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)

    def _on(self, x: torch.Tensor):
        return self.vae.to(x.device)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Posterior mean, shifted and scaled to about unit variance (the VAE's shift_factor, scaling_factor)."""
        z = self._on(images).encode(images).latent_dist.mean.float()  # the flow's targets stay float32 under autocast
        return (z - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._on(latents).decode(latents / self.scaling_factor + self.shift_factor).sample


@functools.lru_cache(maxsize=4)
def load_vae(path: str, subfolder: str | None = None) -> FrozenVAE:
    """AutoencoderKL from a local folder or the hub cache (never the network); one shared instance per path."""
    from diffusers import AutoencoderKL

    where = f"{path!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
    try:
        vae = AutoencoderKL.from_pretrained(path, subfolder=subfolder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"AutoencoderKL not found at vae_path={where}: put a diffusers AutoencoderKL folder there (config.json + "
            f"diffusion_pytorch_model.safetensors), or the hub repo in the Hugging Face cache "
            f"(`huggingface-cli download {path}` on a machine with network); tokgen never downloads at run time "
            f"({error_summary(err, 160)})") from None
    return FrozenVAE(vae, where)


def token_noise(z_q: torch.Tensor, keep: torch.Tensor | None, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Starting noise (B, *shape) float32 on the CPU; image b's is seeded by (seed, its kept tokens
    z_q[b, :keep[b]])."""
    B, k = z_q.shape[:2]
    lengths = [k] * B if keep is None else keep.clamp(max=k).tolist()
    z = z_q.detach().float().cpu()
    rows = []
    for b in range(B):
        digest = hashlib.sha256(f"{seed}:{lengths[b]}:".encode() + z[b, : lengths[b]].numpy().tobytes()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        rows.append(torch.randn(shape, generator=generator))
    return torch.stack(rows)


ENCODER_FIELDS = ("image_size", "channels", "patch_size", "width", "encoder_depth", "num_heads", "mlp_ratio",
                  "num_tokens", "register_attention", "token_mixing", "pos_emb", "qk_norm")


def load_encoder_from(flow_tok: "FlowTokenizer", path: str) -> list[str]:
    """Copy the encoder and quantizer of a trained direct tokenizer (``Tokenizer1D`` checkpoint, EMA weights when
    saved) into ``flow_tok``: every parameter and buffer outside ``flow.``. The encoder settings and the quantizer
    must match; returns the names copied. Pixel mode only (a direct tokenizer reads pixels, not VAE latents)."""
    from . import load_tokenizer

    if flow_tok.config.space != "pixel":
        raise ValueError(f"init_encoder needs space='pixel' (a direct tokenizer encodes pixels), got "
                         f"space={flow_tok.config.space!r}")
    source = load_tokenizer(path)
    if type(source) is not Tokenizer1D:  # a flow or halting tokenizer has another encoder input / decoder
        raise ValueError(f"init_encoder={path} is a {type(source).__name__} checkpoint; expected a direct tokenizer "
                         f"(tokgen.lit.TokenizerModule, e.g. configs/tokenizer/fmnist_small.yaml)")
    mismatched = {f: (getattr(source.config, f), getattr(flow_tok.config, f)) for f in ENCODER_FIELDS
                  if getattr(source.config, f) != getattr(flow_tok.config, f)}
    if source.config.quantizer != flow_tok.config.quantizer:
        mismatched["quantizer"] = (source.config.quantizer, flow_tok.config.quantizer)
    if mismatched:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs recipe {b!r}" for k, (a, b) in mismatched.items())
        raise ValueError(f"init_encoder={path} does not match this flow tokenizer's encoder ({detail}); set the "
                         f"recipe's tokenizer fields to the checkpoint's")
    have, want = source.state_dict(), flow_tok.state_dict()
    names = [n for n in want if not n.startswith("flow.")]
    missing = [n for n in names if n not in have or have[n].shape != want[n].shape]
    if missing:
        raise ValueError(f"init_encoder={path} lacks (or has other shapes for) {missing[:5]}")
    flow_tok.load_state_dict({n: have[n] for n in names}, strict=False)
    return names


class FlowTokenizer(Tokenizer1D):
    """Tokenizer1D's encoder and quantizer with a rectified-flow decoder, in pixel or AutoencoderKL latent space."""

    config_class = FlowTokenizerConfig
    kind = "flow_tokenizer"
    description = "flow tokenizer"
    hint = "train one with tokgen.lit.FlowModule, e.g. configs/tokenizer/fmnist_flow_small.yaml"

    def __init__(self, config: FlowTokenizerConfig | dict | None = None):
        super().__init__(config)
        c = self.config
        self.flow.zero_init_()  # the shared truncated-normal init also reached the AdaLN-Zero layers
        self.sampling = SamplingOptions(c.sample_steps, c.cfg_scale, c.sample_seed, c.time_shift)

    def encoder_input(self, config: FlowTokenizerConfig) -> tuple[int, int]:
        if config.space == "latent":
            return config.latent_channels, config.image_size // config.vae_downsample
        return config.channels, config.image_size

    def build_decoder(self, config: FlowTokenizerConfig, token_dim: int) -> None:
        channels, size = self.encoder_input(config)
        self.flow = FlowDecoder(size, channels, config.patch_size, config.width, config.decoder_depth,
                                config.num_heads, config.num_tokens, token_dim, config.mlp_ratio, config.pos_emb,
                                config.qk_norm, config.repa_depth, config.repa_dim)

    # ------------------------------------------------------------------ space: pixels or VAE latents
    @property
    def vae(self) -> FrozenVAE | None:
        """The frozen AutoencoderKL (latent mode; loaded on first use), None in pixel mode."""
        c = self.config
        if c.space != "latent":
            return None
        vae = load_vae(c.vae_path, c.vae_subfolder)
        if (vae.latent_channels, vae.downsample) != (c.latent_channels, c.vae_downsample):
            raise ValueError(
                f"the AutoencoderKL at {vae.source} has latent_channels={vae.latent_channels}, downsampling "
                f"{vae.downsample}, but the tokenizer config says latent_channels={c.latent_channels}, "
                f"vae_downsample={c.vae_downsample}; set those to the VAE's values")
        return vae

    def to_space(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [-1, 1] -> what encoder and flow read: the images, or scaled VAE latents."""
        return images if self.config.space == "pixel" else self.vae.encode(images)

    def from_space(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.config.space == "pixel" else self.vae.decode(x)

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        self.check_images(images)
        return self.encode_registers(self.to_space(images))

    # ------------------------------------------------------------------ decoding = sampling
    def configure_sampling(self, steps: int | None = None, cfg: float | None = None, seed: int | None = None,
                           shift: float | None = None) -> SamplingOptions:
        """Change the defaults of decode() (None = keep); returns the new options."""
        self.sampling = self.sampling.replace(steps=steps, cfg=cfg, seed=seed, shift=shift)
        return self.sampling

    @contextmanager
    def sampling_options(self, **overrides):
        """``with tok.sampling_options(steps=4): ...`` changes decode()'s defaults inside the block only."""
        previous = self.sampling
        self.sampling = previous.replace(**overrides)
        try:
            yield self.sampling
        finally:
            self.sampling = previous

    @torch.no_grad()
    def decode_latents(self, z_q: torch.Tensor, keep: torch.Tensor | None = None, *, steps: int | None = None,
                       cfg: float | None = None, seed: int | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample images (B, C, H, W) in about [-1, 1] given z_q (B, k, token_dim), 1 <= k <= K, and optional
        per-example prefix lengths keep (B,). ``generator`` draws the whole batch's noise from it instead of the
        per-image seeds."""
        s = self.sampling.replace(steps=steps, cfg=cfg, seed=seed)
        shape = self.flow.input_shape
        if generator is not None:
            noise = torch.randn((z_q.shape[0], *shape), generator=generator, device=generator.device)
        else:
            noise = token_noise(z_q, keep, shape, s.seed)
        x = self.flow.sample(z_q, noise.to(z_q.device), keep, steps=s.steps, cfg=s.cfg, shift=s.shift)
        return self.from_space(x)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, **sampling) -> torch.Tensor:
        """codes (B, k) prefix, 1 <= k <= K -> sampled images (B, C, H, W); ``sampling``: steps, cfg, seed,
        generator (see decode_latents)."""
        self.check_prefix(codes)
        return self.decode_latents(self.quantizer.codes_to_latents(codes), **sampling)

    # ------------------------------------------------------------------ loading
    def check_loaded(self) -> None:
        """Latent mode: fail now, naming the path, when the VAE is missing."""
        self.vae  # noqa: B018

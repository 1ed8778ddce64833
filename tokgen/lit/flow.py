"""LightningModule that trains a flow tokenizer (``tokgen.tokenizers.flow``): encoder, quantizer and rectified-flow
decoder end to end.

Training step: map the images to the flow's space (pixels, or frozen-VAE latents), encode and quantize once, keep a
nested-dropout prefix per example (``pow2_dual``: every example twice, all K tokens and a pow2 prefix), drop all
tokens of an example with probability ``token_drop_prob`` (token guidance), and minimise the flow-matching loss
at logit-normal times + the quantizer's aux losses (+ ``repa_weight`` x the REPA alignment with a frozen
feature network, when configured).

Validation: the per-budget PSNR and the PNG grid of ``TokenizerModule``, from images *sampled* with ``val_steps``
Euler steps (guidance ``val_cfg``, seed ``val_seed``), plus ``val/flow_loss`` at fixed times and noise (comparable
from one validation to the next). Optimizer, LR schedule, EMA and checkpoints come from ``TokenizerModule``; the
checkpoint's kind is ``FlowTokenizer.kind``, so ``load_tokenizer`` returns a ``FlowTokenizer``.
"""
from __future__ import annotations

import torch

from ..metrics import to_unit
from ..metrics.features import load_feature_network
from ..tokenizers.flow import FlowTokenizer, FlowTokenizerConfig, SamplingOptions, load_encoder_from
from ..tokenizers.nested_dropout import sample_keep_lengths
from .speed import SpeedConfig
from .tokenizer import OptimConfig, TokenizerModule


def load_repa_network(path: str, trust_torchscript: bool = False) -> torch.nn.Module:
    """A frozen feature network for REPA: forward(x (B, C, H, W) in [0, 1]) -> (B, D), (B, M, D) or (B, D, h, w).
    A tokgen extractor file (``tokgen train-features``); a TorchScript file only with ``trust_torchscript``."""
    net = load_feature_network(path, trust_torchscript=trust_torchscript, trust_hint="model.trust_torchscript: true",
                               what="REPA feature network (repa_features)")[0]
    for p in net.parameters():  # ScriptModules have no requires_grad_()
        p.requires_grad_(False)
    return net


class FlowModule(TokenizerModule):
    model_class = FlowTokenizer

    def __init__(
        self,
        tokenizer: FlowTokenizerConfig | None = None,
        optim: OptimConfig | None = None,
        nested_dropout: str = "pow2",
        nested_full_fraction: float = 0.5,
        ema_decay: float = 0.999,
        val_budgets: list[int] | None = None,
        grid_images: int = 8,
        token_drop_prob: float = 0.1,
        time_mean: float = 0.0,
        time_std: float = 1.0,
        endpoint_prob: float = 0.0,
        init_encoder: str | None = None,
        freeze_encoder: bool = False,
        repa_weight: float = 0.0,
        repa_features: str | None = None,
        trust_torchscript: bool = False,
        val_steps: int = 8,
        val_cfg: float = 1.0,
        val_seed: int = 0,
        speed: SpeedConfig | None = None,
    ):
        """
        Args (besides TokenizerModule's; the flow has no pixel / perceptual / GAN loss settings):
            tokenizer: a FlowTokenizerConfig (Tokenizer1D's settings + space, VAE, sampling defaults, REPA head).
            token_drop_prob: probability that an example's tokens are all replaced by the mask token (token CFG).
            time_mean, time_std: logit-normal time sampling, t = sigmoid(time_mean + time_std * N(0, 1)).
            endpoint_prob: fraction of examples at t = 1 (pure noise: a direct regression of the image from the
                tokens, which keeps the encoder's tokens informative; see tokgen.tokenizers.flow_decoder).
            init_encoder: a direct tokenizer checkpoint whose encoder and quantizer start this one (pixel mode;
                the encoder settings and quantizer must match).
            freeze_encoder: keep the encoder and quantizer fixed (needs init_encoder): only the flow decoder
                trains, on the tokens of an already trained encoder.
            repa_weight: weight of the REPA alignment loss (0 = off); needs repa_features and tokenizer.repa_depth > 0.
            repa_features: feature network file for REPA (images in [0, 1] -> features): safetensors weights of a
                tokgen class (``tokgen train-features``); loaded in ``setup``.
            trust_torchscript: also accept a TorchScript repa_features file (deprecated). TorchScript runs code
                stored in the file: only for files you trust.
            val_steps, val_cfg, val_seed: how validation samples its reconstructions.
            speed: compile / activation checkpointing / fused AdamW / TF32 (:class:`tokgen.lit.speed.SpeedConfig`).
        """
        tokenizer = tokenizer or FlowTokenizerConfig()
        if not isinstance(tokenizer, FlowTokenizerConfig):
            raise ValueError(f"FlowModule needs model.tokenizer to be a FlowTokenizerConfig, "
                             f"got {type(tokenizer).__name__}")
        if not 0.0 <= token_drop_prob < 1.0:
            raise ValueError(f"token_drop_prob={token_drop_prob} must be in [0, 1)")
        if time_std <= 0:
            raise ValueError(f"time_std={time_std} must be > 0")
        if not 0.0 <= endpoint_prob < 1.0:
            raise ValueError(f"endpoint_prob={endpoint_prob} must be in [0, 1)")
        if freeze_encoder and not init_encoder:
            raise ValueError("freeze_encoder=True needs init_encoder (a trained direct tokenizer checkpoint): a frozen "
                             "random encoder gives tokens that carry nothing")
        if repa_weight < 0:
            raise ValueError(f"repa_weight={repa_weight} must be >= 0")
        if repa_weight > 0 and (not repa_features or tokenizer.repa_depth == 0):
            raise ValueError(f"repa_weight={repa_weight} needs repa_features (a feature network file) and "
                             f"tokenizer.repa_depth > 0 with tokenizer.repa_dim = its feature channels; got "
                             f"repa_features={repa_features!r}, repa_depth={tokenizer.repa_depth}")
        super().__init__(tokenizer=tokenizer, optim=optim, nested_dropout=nested_dropout,
                         nested_full_fraction=nested_full_fraction, ema_decay=ema_decay, val_budgets=val_budgets,
                         grid_images=grid_images, speed=speed)
        SamplingOptions(steps=val_steps, cfg=val_cfg, seed=val_seed)  # validates the validation sampling
        self.token_drop_prob, self.time_mean, self.time_std = token_drop_prob, time_mean, time_std
        self.endpoint_prob = endpoint_prob
        self.init_encoder, self.freeze_encoder = init_encoder, freeze_encoder
        if init_encoder:
            names = load_encoder_from(self.tokenizer, init_encoder)
            if self.ema_tokenizer is not None:
                self.ema_tokenizer.load_state_dict(self.tokenizer.state_dict())
            if freeze_encoder:
                params = dict(self.tokenizer.named_parameters())
                for name in names:
                    if name in params:
                        params[name].requires_grad_(False)
        self.repa_weight, self.repa_features = repa_weight, repa_features
        self.val_steps, self.val_cfg, self.val_seed = val_steps, val_cfg, val_seed
        self.trust_torchscript = trust_torchscript
        self._repa_net: list = []  # kept out of the state dict (frozen); loaded in setup

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.tokenizer.vae  # noqa: B018 -- latent mode: load the frozen VAE now (clear error naming a missing path)
        if self.repa_weight > 0 and not self._repa_net:  # here, not in __init__: the CLI reports this error in one line
            self._repa_net.append(load_repa_network(self.repa_features, self.trust_torchscript))

    def repa_target(self, images: torch.Tensor) -> torch.Tensor | None:
        if not self._repa_net:
            return None
        net = self._repa_net[0].to(images.device)
        with torch.no_grad():
            return net(to_unit(images).float()).float()

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx):
        images = batch["image"]
        tok = self.tokenizer
        B, K = images.shape[0], tok.num_tokens
        keep = sample_keep_lengths(B, K, self.nested_dropout, device=images.device,
                                   full_fraction=self.nested_full_fraction)
        x = tok.to_space(images)  # (B, C, S, S): pixels or scaled VAE latents
        z_q, codes, aux = tok.quantize(tok.encode_registers(x))
        target = self.repa_target(images)
        if self.nested_dropout == "pow2_dual":  # one encoding, two flow examples each: all K tokens and a prefix
            keep = torch.cat([torch.full_like(keep, K), keep])
            x, z_q = torch.cat([x, x]), torch.cat([z_q, z_q])
            target = None if target is None else torch.cat([target, target])
        losses = tok.flow.loss(x, z_q, keep, drop_prob=self.token_drop_prob, time_mean=self.time_mean,
                               time_std=self.time_std, endpoint_prob=self.endpoint_prob, repa_target=target)
        loss = losses["flow"] + sum(aux.values(), torch.zeros((), device=images.device))
        if "repa" in losses:
            loss = loss + self.repa_weight * losses["repa"]
        lr = self.generator_step(loss)

        logs = {f"train/{k}": v.detach() for k, v in {**losses, **aux}.items()}
        logs.update({"train/loss": loss.detach(), "train/lr": torch.tensor(lr)})
        if codes.dtype == torch.long:
            for k, v in tok.quantizer.stats(codes).items():
                logs[f"train/{k}"] = torch.tensor(float(v))
        self.log_dict(logs, prog_bar=False)
        self.log("loss", loss.detach(), prog_bar=True, logger=False)
        return loss.detach()

    # ------------------------------------------------------------------ validation
    def eval_step(self, batch, batch_idx, stage: str):
        model = self.eval_model()
        with model.sampling_options(steps=self.val_steps, cfg=self.val_cfg, seed=self.val_seed):
            super().eval_step(batch, batch_idx, stage)  # PSNR per budget and the grid, from sampled images
        images = batch["image"]
        x = model.to_space(images)
        z_q = model.quantize(model.encode_registers(x))[0]
        generator = torch.Generator().manual_seed(self.val_seed + batch_idx)
        flow = model.flow.loss(x, z_q, time_mean=self.time_mean, time_std=self.time_std, generator=generator)["flow"]
        self.log(f"{stage}/flow_loss", flow, sync_dist=True, batch_size=images.shape[0])

    # ------------------------------------------------------------------ checkpoint metadata
    def checkpoint_metadata(self) -> dict:
        meta = super().checkpoint_metadata()
        meta.pop("loss_config")  # the flow's losses are below
        return {**meta, "flow": {"token_drop_prob": self.token_drop_prob, "time_mean": self.time_mean,
                                 "time_std": self.time_std, "endpoint_prob": self.endpoint_prob,
                                 "init_encoder": self.init_encoder, "freeze_encoder": self.freeze_encoder,
                                 "repa_weight": self.repa_weight, "repa_features": self.repa_features,
                                 "nested_dropout": self.nested_dropout}}

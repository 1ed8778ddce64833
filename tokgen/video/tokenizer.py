"""What the two video tokenizers share, and the one place where a stored config picks its class.

tokgen has two video tokenizers with one interface, so both are trained and scored by the same code:

- :class:`tokgen.video.trajectory_tokenizer.TrajectoryTokenizer` (config ``kind: trajectory``): one token per
  tracked trajectory of the clip, decoded by spatial broadcast and softmax compositing;
- :class:`tokgen.video.patch_tokenizer.PatchVideoTokenizer` (config ``kind: patch``): the space-time patch
  baseline, one token per tubelet.

Their checkpoints and ``save_pretrained`` folders all record the model kind ``video_tokenizer`` (as they did when
one class held both) and the config's ``kind`` field names the class. :class:`VideoTokenizer` is the family's
loader: ``VideoTokenizer.from_checkpoint`` / ``from_pretrained`` / ``VideoTokenizerConfig.from_dict`` give the class
that the saved ``kind`` names (:meth:`VideoTokenizer.variant`). Configs saved before the split hold the fields of
both kinds; the other kind's fields never affected the model and are dropped when such a config is read.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

import torch

from ..config import DictConfig
from ..model import TokgenModel
from ..quantize import QuantizerConfig

DEFAULT_KIND = "trajectory"  # the config kind of checkpoints that record none (the pre-split default)


def config_kind(config_class: type) -> str:
    """The ``kind`` a video tokenizer config class stands for: the default of its ``kind`` field."""
    return config_class.__dataclass_fields__["kind"].default


@dataclass
class VideoTokenizerConfig(DictConfig):
    """The fields both video tokenizers have (base of their configs, saved with every checkpoint).

    ``kind`` names the tokenizer; each subclass accepts only its own. ``VideoTokenizerConfig.from_dict`` builds
    the subclass that the dict's ``kind`` names (``trajectory`` when absent)."""

    config_name = "video tokenizer"
    positive_fields: ClassVar[tuple[str, ...]] = (
        "image_size", "num_frames", "channels", "width", "num_heads", "encoder_depth", "decoder_depth")

    kind: str = ""  # set by each subclass: "trajectory" or "patch"
    image_size: int = 64
    num_frames: int = 8
    channels: int = 3
    width: int = 128  # transformer width
    num_heads: int = 4
    encoder_depth: int = 2
    decoder_depth: int = 2
    quantizer: QuantizerConfig = field(default_factory=lambda: QuantizerConfig(kind="identity", dim=16, bound="tanh"))

    def __post_init__(self):
        own = config_kind(type(self))
        if not own:
            raise TypeError("VideoTokenizerConfig holds the fields both video tokenizers share; build a "
                            "TrajectoryTokenizerConfig or a PatchVideoTokenizerConfig, or call "
                            "VideoTokenizerConfig.from_dict with the kind")
        if self.kind != own:
            raise ValueError(f"{type(self).__name__} kind={self.kind!r}: its kind is {own!r} (each video tokenizer "
                             f"kind, {sorted(VideoTokenizer.variants)}, has its own config)")
        if isinstance(self.quantizer, dict):
            self.quantizer = QuantizerConfig(**self.quantizer)
        for name in self.positive_fields:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"video tokenizer {name}={value!r} must be a positive int")
        if self.width % self.num_heads:
            raise ValueError(f"width={self.width} must be divisible by num_heads={self.num_heads}")

    @classmethod
    def from_dict(cls, values: dict):
        """``values`` (a saved config) -> the config of the kind it names, checked field by field. Fields of the
        other kinds are dropped: configs written before the split hold every field of both."""
        kind = values.get("kind", DEFAULT_KIND)
        target = VideoTokenizer.variant(kind).config_class
        if not issubclass(target, cls):
            raise ValueError(f"a {kind!r} video tokenizer config is not a {cls.__name__}; load it with "
                             f"{VideoTokenizer.variant(kind).__name__} (or VideoTokenizer, which picks the class "
                             f"from the kind)")
        own = {f.name for f in fields(target)}
        others = {f.name for model in VideoTokenizer.variants.values() for f in fields(model.config_class)} - own
        return super(VideoTokenizerConfig, target).from_dict(
            {"kind": kind, **{k: v for k, v in values.items() if k not in others}})

    @property
    def num_tokens(self) -> int:
        """Token slots per clip."""
        raise NotImplementedError


class VideoTokenizer(TokgenModel):
    """Base of the video tokenizers, and the loader of any video tokenizer file (see the module docstring).

    One interface: ``forward(video, ids=None) -> (recon (B, T, C, H, W), extras)`` with ``extras`` holding
    ``tokens`` (B, K, d), ``token_mask`` (B, K) bool, ``codes``, ``aux`` (quantizer losses), ``alpha_logits``
    (B, K, T, H, W) and ``geometry`` (B, K, T, 4) (the predicted mask moments (cy, cx, sy, sx)), the last two None
    for a tokenizer without per-token masks. ``ids`` is the clip's trajectory id map (B, T, H, W); tokenizers with
    ``needs_trajectories`` require it, the others ignore it.

    A subclass sets ``config_class`` (a :class:`VideoTokenizerConfig` subclass, whose ``kind`` it is registered
    under), ``needs_trajectories``, and implements :meth:`encode_latents` and :meth:`decode_outputs`.
    """

    config_class = VideoTokenizerConfig
    kind = "video_tokenizer"
    config_key = "video_tokenizer_config"
    metadata = {"extraction": "extraction"}  # the trajectory extraction settings of its training data
    description = "video tokenizer"
    hint = "was it written by a video recipe?"
    needs_trajectories: ClassVar[bool]
    variants: ClassVar[dict[str, type["VideoTokenizer"]]] = {}  # every video tokenizer class by its config kind

    config: VideoTokenizerConfig

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        kind = config_kind(cls.config_class)
        other = VideoTokenizer.variants.get(kind)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise TypeError(f"video tokenizer kind {kind!r} of {cls.__qualname__} is already {other.__qualname__}'s")
        VideoTokenizer.variants[kind] = cls

    @classmethod
    def variant(cls, kind: str) -> type["VideoTokenizer"]:
        """The video tokenizer class of config kind ``kind``."""
        from . import patch_tokenizer, trajectory_tokenizer  # noqa: F401  (their classes register themselves)

        found = VideoTokenizer.variants.get(kind)
        if found is None:
            raise ValueError(f"video tokenizer kind={kind!r} is not supported; use one of "
                             f"{tuple(VideoTokenizer.variants)}")
        return found

    @classmethod
    def class_for_config(cls, config: VideoTokenizerConfig) -> type["VideoTokenizer"]:
        """The class that ``config``'s kind names (``cls`` or one of its subclasses)."""
        found = VideoTokenizer.variant(config.kind)
        if not issubclass(found, cls):
            raise ValueError(f"a {config.kind!r} video tokenizer config builds a {found.__name__}, not a "
                             f"{cls.__name__}")
        return found

    def __init__(self, config: VideoTokenizerConfig | dict | None = None):
        if type(self) is VideoTokenizer:
            raise TypeError("VideoTokenizer is the base of the video tokenizers: build a TrajectoryTokenizer or a "
                            "PatchVideoTokenizer (VideoTokenizer.class_for_config(config) picks it)")
        super().__init__()
        self.config = self.make_config(config)
        self.extraction: dict | None = None  # extraction settings of its training data (restored on loading)
        self.quantizer = self.config.quantizer.build()

    @property
    def extraction(self) -> dict | None:
        """The trajectory extraction settings of its training data, every :class:`ExtractionConfig` field (None:
        unknown). Set from a partial dict, the missing fields take the current defaults."""
        return self._extraction

    @extraction.setter
    def extraction(self, value: dict | None) -> None:
        from .extract import ExtractionConfig

        self._extraction = None if value is None else ExtractionConfig.from_dict(dict(value)).to_dict()

    def restore_metadata(self, meta: dict, source: str) -> None:
        """The saved metadata; extraction settings saved partially by an earlier tokgen are completed with the
        defaults it trained with (:func:`tokgen.video.extract.complete_legacy`), not today's."""
        if isinstance(meta.get("extraction"), dict):
            from .extract import complete_legacy

            meta = {**meta, "extraction": complete_legacy(meta["extraction"])}
        super().restore_metadata(meta, source)

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    def check_video(self, video: torch.Tensor) -> None:
        c = self.config
        want = (c.num_frames, c.channels, c.image_size, c.image_size)
        if video.ndim != 5 or tuple(video.shape[1:]) != want:
            raise ValueError(
                f"this video tokenizer was trained for clips of {c.num_frames} frames, {c.channels} channels at "
                f"{c.image_size}x{c.image_size} (B, T, C, H, W) = (B, {', '.join(map(str, want))}); got shape "
                f"{tuple(video.shape)}. Resample the clip to that length and resolution."
            )

    # ------------------------------------------------------------------ what a subclass implements
    def encode_latents(self, video: torch.Tensor, ids: torch.Tensor | None):
        """A checked clip (and its id map) -> (unquantized latents (B, K, d), token_mask (B, K) bool)."""
        raise NotImplementedError

    def decode_outputs(self, z_q: torch.Tensor, token_mask: torch.Tensor):
        """Tokens (B, K, d) with ``token_mask`` (B, K) -> (clip (B, T, C, H, W), alpha logits or None,
        geometry or None)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ public API
    def encode(self, video: torch.Tensor, ids: torch.Tensor | None = None):
        """video (B, T, C, H, W) in [-1, 1] (+ ids for trajectories) -> (z_q (B, K, d), codes, token_mask (B, K),
        aux losses); padding slots of z_q are 0."""
        self.check_video(video)
        latents, token_mask = self.encode_latents(video, ids)
        z_q, codes, aux = self.quantizer(latents)
        return z_q * token_mask[..., None], codes, token_mask, aux

    def decode(self, z_q: torch.Tensor, token_mask: torch.Tensor | None = None):
        """Tokens (B, K, d) -> (clip (B, T, C, H, W), alpha logits (B, K, T, H, W) or None). ``token_mask``
        (B, K) marks real tokens; any subset decodes (e.g. the first k trajectories: the coarse clip)."""
        if token_mask is None:
            token_mask = torch.ones(z_q.shape[:2], dtype=torch.bool, device=z_q.device)
        return self.decode_outputs(z_q, token_mask)[:2]

    def forward(self, video: torch.Tensor, ids: torch.Tensor | None = None):
        z_q, codes, token_mask, aux = self.encode(video, ids)
        recon, alpha, geometry = self.decode_outputs(z_q, token_mask)
        return recon, {"tokens": z_q, "codes": codes, "token_mask": token_mask, "aux": aux, "alpha_logits": alpha,
                       "geometry": geometry}

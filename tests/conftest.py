import os

import pytest
import torch

torch.set_num_threads(2)
os.environ.setdefault("TOKGEN_TEST", "1")

FMNIST_RAW = "/usr/share/datasets/fashion-mnist"


@pytest.fixture
def tiny_config():
    from tokgen.tokenizers import TokenizerConfig

    def make(**overrides):
        values = dict(image_size=16, patch_size=4, width=32, encoder_depth=1, decoder_depth=1, num_heads=2,
                      num_tokens=8, quantizer={"kind": "fsq", "levels": [5, 5, 5]})
        values.update(overrides)
        return TokenizerConfig.from_dict(values)

    return make

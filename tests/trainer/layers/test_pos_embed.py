import math

import torch

from trainer.layers.pixel_decoder import PixelDecoder
from trainer.layers.pos_embed import sincos_pos_embed_2d
from trainer.methods.vit_encoder import MaskedViTEncoder


def test_shape_and_zero_cls_row():
    emb = sincos_pos_embed_2d(64, (3, 5), cls_token=True)
    assert emb.shape == (1 + 15, 64)
    assert torch.equal(emb[0], torch.zeros(64))
    assert sincos_pos_embed_2d(64, (3, 5), cls_token=False).shape == (15, 64)


def test_rows_are_distinct():
    emb = sincos_pos_embed_2d(32, (14, 14), cls_token=False)
    distances = torch.cdist(emb, emb)
    off_diagonal = distances[~torch.eye(len(emb), dtype=torch.bool)]
    assert off_diagonal.min() > 1e-3


def test_first_half_encodes_the_column_and_second_half_the_row():
    d, h, w = 16, 3, 4
    emb = sincos_pos_embed_2d(d, (h, w), cls_token=False).reshape(h, w, d)
    omega = [1 / 10000 ** (i / (d / 4)) for i in range(d // 4)]
    for i in range(h):
        for j in range(w):
            col = [math.sin(j * o) for o in omega] + [math.cos(j * o) for o in omega]
            row = [math.sin(i * o) for o in omega] + [math.cos(i * o) for o in omega]
            assert torch.allclose(emb[i, j], torch.tensor(col + row), atol=1e-6)


def test_encoder_and_decoder_positions_are_fixed_buffers():
    encoder = MaskedViTEncoder(img_size=32, in_chans=1, patch_size=16, embed_dim=32, depth=1, num_heads=2)
    decoder = PixelDecoder(embed_dim=32, depth=1, num_heads=2, grid_size=(4, 4), patch_size=16, out_chans=1)
    for module in (encoder, decoder):
        assert "pos_embed" not in dict(module.named_parameters())
        assert "pos_embed" in module.state_dict()
        assert not module.pos_embed.requires_grad
    assert torch.equal(encoder.pos_embed[0], sincos_pos_embed_2d(32, (2, 2)))
    assert torch.equal(decoder.pos_embed[0], sincos_pos_embed_2d(32, (4, 4)))

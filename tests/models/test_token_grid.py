"""The vectorised token grids equal mmdet's bit for bit, without host reads."""
import pytest
import torch

from mmdet.models.detectors import DeformableDETR
from mmdet.models.layers import DeformableDetrTransformerEncoder

from tbx11k.benchmark.op_count import OpCounter
from tbx11k.models.compiled_dino import make_attention_traceable
from tbx11k.models.token_grid import (
    TokenGridDeformableDetrTransformerEncoder,
    encoder_output_proposals,
    encoder_reference_points,
    token_grid,
)
from tbx11k.testing import build_tiny_dino

SHAPES = [[(12, 9), (6, 5), (3, 3), (2, 2)], [(1, 1)], [(7, 1), (1, 6), (4, 4)],
          [(80, 64), (40, 32), (20, 16), (10, 8)]]


def _mask(shapes, batch, seed):
    """Padding masks as DeformableDETR makes them: each image valid in a top-left block."""
    g = torch.Generator().manual_seed(seed)
    masks, ratios = [], []
    for h, w in shapes:
        level = torch.ones(batch, h, w, dtype=torch.bool)
        level_ratios = []
        for b in range(batch):
            vh = h if b == 0 else int(torch.randint(1, h + 1, (1, ), generator=g))
            vw = w if b == 0 else int(torch.randint(1, w + 1, (1, ), generator=g))
            level[b, :vh, :vw] = False
            level_ratios.append((vw / w, vh / h))
        masks.append(level.flatten(1))
        ratios.append(level_ratios)
    return torch.cat(masks, 1), torch.tensor(ratios).transpose(0, 1).float()


def test_token_grid():
    level, row, col = token_grid(torch.tensor([[2, 3], [1, 2]]), 8)
    assert level.tolist() == [0] * 6 + [1] * 2
    assert row.tolist() == [0, 0, 0, 1, 1, 1, 0, 0]
    assert col.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]


@pytest.mark.parametrize('shapes', SHAPES, ids=lambda s: f'{len(s)}levels_{s[0][0]}x{s[0][1]}')
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_encoder_reference_points_equal_mmdets(shapes, dtype):
    """Also for the low-precision valid ratios DeformableDETR makes under AMP."""
    spatial_shapes = torch.tensor(shapes)
    num_tokens = int(spatial_shapes.prod(1).sum())
    _, valid_ratios = _mask(shapes, 3, seed=len(shapes))
    valid_ratios = valid_ratios.to(dtype)
    expected = DeformableDetrTransformerEncoder.get_encoder_reference_points(
        spatial_shapes, valid_ratios, device='cpu')
    with OpCounter() as counted:
        got = encoder_reference_points(spatial_shapes, valid_ratios, num_tokens)
    assert got.dtype == expected.dtype and torch.equal(got, expected)
    assert counted.total_syncs() == 0 and counted.total_ops() < 40


@pytest.mark.parametrize('shapes', SHAPES, ids=lambda s: f'{len(s)}levels_{s[0][0]}x{s[0][1]}')
@pytest.mark.parametrize('masked', [True, False])
def test_output_proposals_equal_mmdets(shapes, masked):
    torch.manual_seed(0)
    model = build_tiny_dino()
    spatial_shapes = torch.tensor(shapes)
    num_tokens = int(spatial_shapes.prod(1).sum())
    mask = _mask(shapes, 3, seed=len(shapes))[0] if masked else None
    memory = torch.randn(3, num_tokens, model.embed_dims)
    expected = DeformableDETR.gen_encoder_output_proposals(model, memory, mask, spatial_shapes)
    with OpCounter() as counted:
        got = model.gen_encoder_output_proposals(memory, mask, spatial_shapes)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape and torch.equal(g, e)
    assert counted.total_syncs() == 0 and counted.total_ops() < 70
    raw = encoder_output_proposals(mask, spatial_shapes, 3, num_tokens)
    assert raw.shape == (3, num_tokens, 4) and raw.dtype == torch.float32


def _encoder_inputs(model, seed: int) -> dict:
    """Keyword arguments of the tiny model's encoder: 2 padded images, one shape per level."""
    shapes = [(6, 5), (3, 3), (2, 2), (1, 1)][:model.encoder.layers[0].self_attn.num_levels]
    spatial_shapes = torch.tensor(shapes)
    num_tokens = int(spatial_shapes.prod(1).sum())
    mask, valid_ratios = _mask(shapes, 2, seed=seed)
    start = torch.cat([torch.zeros(1, dtype=torch.long), spatial_shapes.prod(1).cumsum(0)[:-1]])
    return dict(query=torch.randn(2, num_tokens, model.embed_dims),
                query_pos=torch.randn(2, num_tokens, model.embed_dims), key_padding_mask=mask,
                spatial_shapes=spatial_shapes, level_start_index=start, valid_ratios=valid_ratios)


def test_encoder_equals_mmdets():
    model = build_tiny_dino()
    assert type(model.encoder) is TokenGridDeformableDetrTransformerEncoder
    args = _encoder_inputs(model, seed=3)
    with torch.no_grad():
        got = model.encoder(**args)
        expected = DeformableDetrTransformerEncoder.forward(model.encoder, **args)
    assert torch.equal(got, expected)


def test_encoder_traces_as_one_graph():
    """What lets model.torch_compile compile the encoder whole: no graph break (mmdet's encoder
    breaks on the level shapes it reads on the host)."""
    model = build_tiny_dino()
    make_attention_traceable(model.encoder)
    args = _encoder_inputs(model, seed=4)
    with torch.no_grad():
        traced = torch.compile(type(model.encoder).forward, fullgraph=True, backend='eager')
        assert torch.equal(traced(model.encoder, **args), model.encoder(**args))
        with pytest.raises(torch._dynamo.exc.UserError, match='data-dependent'):  # mmdet's
            torch.compile(DeformableDetrTransformerEncoder.forward, fullgraph=True,
                          backend='eager')(model.encoder, **args)


@pytest.mark.parametrize('masked', [True, False])
def test_compiled_proposals_stay_bit_identical(masked):
    """model.torch_compile part 'proposals' compiles the masking and the grid: the masked memory,
    which the top-k query selection's scores come from, stays bit-identical to eager (that
    selection would turn last-bit differences into other queries), the proposals' coordinates
    (not selected on) within float32 eps (inductor's vectorised log on AVX-512 CPUs), with the same
    padded / invalid positions; the memory transform (Linear, LayerNorm) stays eager."""
    model = build_tiny_dino()
    shapes = [(12, 9), (6, 5), (3, 3), (2, 2)]
    spatial_shapes = torch.tensor(shapes)
    num_tokens = int(spatial_shapes.prod(1).sum())
    mask = _mask(shapes, 2, seed=5)[0] if masked else None
    memory = torch.randn(2, num_tokens, model.embed_dims)
    compiled = torch.compile(type(model).masked_memory_and_proposals, fullgraph=True)
    (memory_c, proposals_c), (memory_e, proposals_e) = (
        compiled(model, memory, mask, spatial_shapes),
        model.masked_memory_and_proposals(memory, mask, spatial_shapes))
    assert torch.equal(memory_c, memory_e)
    finite = torch.isfinite(proposals_e)
    assert torch.equal(torch.isfinite(proposals_c), finite) and (~finite).any() == masked
    assert torch.equal(proposals_c[~finite], proposals_e[~finite])
    ulp = torch.finfo(torch.float32).eps * proposals_e[finite].abs().clamp(min=1.0)
    assert ((proposals_c[finite] - proposals_e[finite]).abs() <= ulp).all()

"""GPU self-check of the mmcv kernel fallback: the PyTorch paths against mmcv's CUDA kernels."""
from typing import Dict

import torch

from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

from ..compat import mmcv_cuda_fallback as fb
from ..models.compiled_dino import ms_deform_attn


def compare_with_kernels(device='cuda', seed: int = 0, force: bool = False) -> Dict:
    """On a GPU with working kernels: the PyTorch fallbacks against mmcv's kernels, forward and
    backward, at DINO's sizes (8 heads x 32, 4 levels, 4 points, 900 queries), and the bf16 path
    against fp32; also the custom op of the ``torch.compile`` path
    (:func:`tbx11k.models.compiled_dino.ms_deform_attn`, fp32 and bf16) against the kernel.
    Returns max relative differences (``max|a - b| / max|b|``) and ``ok`` (fp32 <= 1e-4, bf16
    <= 5e-2). ``force``: skip the device/kernel checks (tests with fake kernels)."""
    device = torch.device(device)
    if not force:
        if device.type != 'cuda' or fb._State.mode == 'off':
            return dict(skipped='needs a GPU with the kernels on')
        usable = fb.check_kernels(device)
        if not all(ok for ok, _ in usable.values()):
            return dict(skipped='kernels not usable: ' + '; '.join(
                f'{k}: {r}' for k, (ok, r) in usable.items() if not ok))
    g = torch.Generator(device='cpu').manual_seed(seed)
    shapes = torch.tensor([[64, 64], [32, 32], [16, 16], [8, 8]])
    start = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    num_value, heads, dim, queries = int((shapes[:, 0] * shapes[:, 1]).sum()), 8, 32, 900
    cpu = dict(value=torch.randn(1, num_value, heads, dim, generator=g),
               loc=torch.rand(1, queries, heads, 4, 4, 2, generator=g),
               weights=torch.rand(1, queries, heads, 4, 4, generator=g).softmax(-1))
    grad_out = torch.randn(1, queries, heads * dim, generator=g).to(device)
    shapes, start = shapes.to(device), start.to(device)

    def msda(path: str):
        x = {k: v.to(device).clone().requires_grad_() for k, v in cpu.items()}
        if path == 'kernel':
            out = fb._ORIGINAL_MSDA_FUNCTION.apply(x['value'], shapes, start, x['loc'],
                                                x['weights'], 64)
        elif path == 'pytorch':
            out = multi_scale_deformable_attn_pytorch(x['value'], shapes, x['loc'],
                                                                   x['weights'])
        elif path in ('op', 'op_bf16'):
            value = x['value'].bfloat16() if path == 'op_bf16' else x['value']
            out = ms_deform_attn(value, shapes, start, x['loc'], x['weights'], 64)
        else:  # the dispatcher's bf16 route to the kernel
            out = fb.MultiScaleDeformableAttnDispatch.apply(x['value'].bfloat16(), shapes, start,
                                                         x['loc'], x['weights'], 64)
        out.float().backward(grad_out)
        return [out.detach().float()] + [x[k].grad for k in ('value', 'loc', 'weights')]

    def rel(a, b):
        return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))

    names = ('out', 'grad_value', 'grad_loc', 'grad_weights')
    kernel = msda('kernel')
    result = {f'msda_{n}': rel(f, k) for n, f, k in zip(names, msda('pytorch'), kernel)}
    result.update({f'msda_bf16_{n}': rel(b, k) for n, b, k in zip(names, msda('bf16'), kernel)})
    for path in ('op', 'op_bf16'):
        result.update({f'msda_{path}_{n}': rel(o, k)
                       for n, o, k in zip(names, msda(path), kernel)})
    pred = torch.randn(2000, 2, generator=g).to(device)
    target = torch.randint(0, 3, (2000,), generator=g).to(device)
    weight = torch.rand(2000, generator=g).to(device)
    focal = []
    for fn in (fb._ORIGINAL_SIGMOID_FOCAL_LOSS, fb.sigmoid_focal_loss_pytorch):
        p = pred.clone().requires_grad_()
        loss = fn(p, target, weight, gamma=2.0, alpha=0.75, reduction='mean', avg_factor=37.0)
        loss.backward()
        focal.append((loss.detach(), p.grad))
    result['focal_loss'] = rel(focal[1][0], focal[0][0])
    result['focal_grad'] = rel(focal[1][1], focal[0][1])
    result['ok'] = all(v <= (5e-2 if 'bf16' in k else 1e-4) for k, v in result.items())
    return result

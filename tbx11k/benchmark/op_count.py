"""Dispatched aten ops and host syncs of one training micro-batch, per phase (load-independent).

On a GPU the host cost of a DINO micro-batch is set by how many ops Python dispatches and how
often the host waits for the device. Both can be counted on the CPU, where timings are noisy:
:class:`OpCounter` (a ``TorchDispatchMode``) counts every aten op by phase (backbone, neck,
encoder, decoder, head loss, other forward, parse, backward) and the ops that read device data on
the host on a GPU:

- ``_local_scalar_dense`` (``.item()``, ``float(t)``, ``bool(t)``, python ``max(t, 1)``),
- ``nonzero`` / ``unique`` / ``masked_select`` (output size depends on the data),
- ``to_cpu``: ``Tensor.cpu()`` calls (a no-op on the CPU, so counted at the Python level),
- ``from_host``: tensors made from host data (``torch.tensor``, ``new_tensor``, ``from_numpy``;
  ``aten.lift_fresh``): a blocking host-to-device copy on a GPU unless pinned and non-blocking.

Used by ``tools/analysis_tools/count_ops.py`` and by tests that bound the ops of the project's
model parts.
"""
import collections
import contextlib
import traceback
from typing import Dict, Iterator, List

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: aten ops whose result the host must wait for on a GPU
SYNC_OPS = {'_local_scalar_dense': '_local_scalar_dense', 'nonzero': 'nonzero',
            '_unique2': 'unique', 'unique_dim': 'unique', 'unique_consecutive': 'unique',
            'masked_select': 'nonzero'}
SYNC_KINDS = ('_local_scalar_dense', 'nonzero', 'unique', 'to_cpu', 'from_host')
PHASES = ('backbone', 'neck', 'encoder', 'decoder', 'head_loss', 'other', 'parse', 'backward')


class OpCounter(TorchDispatchMode):
    """Count aten ops and host syncs by phase (``self.phase``, set by :meth:`in_phase`)."""

    def __init__(self, where: bool = False) -> None:
        super().__init__()
        self.phase = 'other'
        self.ops: Dict[str, int] = collections.Counter()
        self.names: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.syncs: Dict[str, collections.Counter] = collections.defaultdict(
            collections.Counter)
        self.where_counts: collections.Counter = collections.Counter()
        self.assignments = 0  # linear_sum_assignment calls (see counting_assignments)
        self._where = where

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[self.phase] += 1
        self.names[self.phase][name] += 1
        kind = SYNC_OPS.get(name) or ('from_host' if name == 'lift_fresh' else None)
        if kind:
            self._sync(kind)
        return func(*args, **(kwargs or {}))

    def _sync(self, kind: str) -> None:
        self.syncs[self.phase][kind] += 1
        if self._where:
            frames = [f for f in traceback.extract_stack()[:-2]
                      if 'torch/' not in f.filename and 'op_count' not in f.filename]
            site = ' <- '.join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}:{f.name}"
                               for f in reversed(frames[-3:]))
            self.where_counts[f'{kind} {site}'] += 1

    @contextlib.contextmanager
    def in_phase(self, phase: str) -> Iterator[None]:
        previous, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = previous

    @contextlib.contextmanager
    def counting_cpu_calls(self) -> Iterator[None]:
        """Count ``Tensor.cpu()`` calls as ``to_cpu`` syncs (they dispatch nothing on the CPU)."""
        original = torch.Tensor.cpu

        def cpu(tensor, *args, **kwargs):
            self._sync('to_cpu')
            return original(tensor, *args, **kwargs)

        torch.Tensor.cpu = cpu
        try:
            yield
        finally:
            torch.Tensor.cpu = original

    def total_ops(self) -> int:
        return sum(self.ops.values())

    def total_launching_ops(self) -> int:
        """Ops that launch a kernel on a GPU: all but views and metadata (:data:`NO_LAUNCH_OPS`)."""
        return sum(n for names in self.names.values() for name, n in names.items()
                   if name not in NO_LAUNCH_OPS)

    def total_syncs(self) -> int:
        return sum(sum(c.values()) for c in self.syncs.values())

    def summary(self) -> Dict:
        phases = [p for p in PHASES if p in self.ops] + sorted(set(self.ops) - set(PHASES))
        return dict(
            ops={p: self.ops[p] for p in phases},
            total_ops=self.total_ops(),
            linear_sum_assignment=self.assignments,
            syncs={p: {k: self.syncs[p][k] for k in SYNC_KINDS} for p in phases},
            total_syncs={k: sum(self.syncs[p][k] for p in phases) for k in SYNC_KINDS})


def _phase_hooks(module: torch.nn.Module, counter: OpCounter, phase: str) -> List:
    stack = []

    def pre(_module, _args):
        stack.append(counter.phase)
        counter.phase = phase

    def post(_module, _args, _output):
        counter.phase = stack.pop()

    return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]


@contextlib.contextmanager
def counting_assignments(counter: OpCounter) -> Iterator[None]:
    """Count ``linear_sum_assignment`` calls (mmdet's HungarianAssigner and the batched head)."""
    import mmdet.models.task_modules.assigners.hungarian_assigner as hungarian

    from ..models import batched_loss_dino_head as batched
    modules = [m for m in (hungarian, batched) if getattr(m, 'linear_sum_assignment', None)]
    originals = [m.linear_sum_assignment for m in modules]

    def wrap(original):
        def linear_sum_assignment(*args, **kwargs):
            counter.assignments += 1
            return original(*args, **kwargs)
        return linear_sum_assignment

    for module, original in zip(modules, originals):
        module.linear_sum_assignment = wrap(original)
    try:
        yield
    finally:
        for module, original in zip(modules, originals):
            module.linear_sum_assignment = original


def count_micro_batch(model: torch.nn.Module, data: Dict, where: bool = False,
                      backward: bool = True) -> OpCounter:
    """Count the ops of ``model.loss`` on preprocessed ``data``, ``parse_losses`` and backward.

    Phases: the detector's ``backbone``, ``neck``, ``encoder``, ``decoder`` modules (when the
    model has them), ``head_loss`` (``bbox_head.loss``: head forward + losses), ``other`` (the
    rest of the forward), ``parse`` (summing the loss dict) and ``backward``.
    """
    counter = OpCounter(where=where)
    handles = []
    for phase in ('backbone', 'neck', 'encoder', 'decoder'):
        module = getattr(model, phase, None)
        if isinstance(module, torch.nn.Module):
            handles += _phase_hooks(module, counter, phase)
    head = getattr(model, 'bbox_head', None)
    original_loss = head.loss if head is not None else None

    def head_loss(*args, **kwargs):
        with counter.in_phase('head_loss'):
            return original_loss(*args, **kwargs)

    if head is not None:
        head.loss = head_loss
    try:
        with counter, counter.counting_cpu_calls(), counting_assignments(counter):
            losses = model.loss(data['inputs'], data['data_samples'])
            with counter.in_phase('parse'):
                loss, _ = model.parse_losses(losses)
            if backward:
                with counter.in_phase('backward'):
                    loss.backward()
    finally:
        if head is not None:
            del head.loss
        for handle in handles:
            handle.remove()
    return counter


#: aten ops that launch no kernel on a GPU (views, metadata, allocation without fill, host reads
#: counted as syncs above)
NO_LAUNCH_OPS = frozenset({
    'view', 'reshape', 'as_strided', 'expand', 'expand_as', 'permute', 'transpose', 't',
    'unsqueeze', 'squeeze', 'select', 'slice', 'detach', 'alias', '_unsafe_view', 'split',
    'split_with_sizes', 'unbind', 'chunk', 'narrow', 'view_as', 'flatten', 'unflatten',
    'movedim', 'swapaxes', 'lift_fresh', 'empty', 'empty_like', 'empty_strided', 'new_empty',
    'new_empty_strided', 'resize_', 'set_', 'result_type', 'is_nonzero', 'item',
    '_local_scalar_dense', 'size', 'stride', 'numpy_T', 'as_strided_', 'squeeze_', 'unsqueeze_'})
#: launches of mmcv's CUDA deformable attention per call of the compiled path's custom op
#: (batch <= im2col_step): forward a zero-filled output + the kernel; backward 3 zero-filled
#: gradients + the kernel
MSDA_OP_LAUNCHES = {'tbx11k::ms_deform_attn': 2, 'tbx11k::ms_deform_attn_backward': 4}
_COMPILED_REGION_MARKS = ('Torch-Compiled Region', 'CompiledFunction')


def count_launches(model: torch.nn.Module, data: Dict) -> Dict[str, int]:
    """Kernel launches a GPU would see for ``model.loss`` + ``parse_losses`` + backward, counted
    with the CPU profiler: top-level aten ops that launch a kernel (not views / metadata), split
    into eager ones and those called by ``torch.compile``-d code (extern kernels: convolutions,
    matmuls), inductor's fused kernels (visible when ``torch._inductor.config.cpp.
    enable_kernel_profile`` was set before compiling), and the ``tbx11k::ms_deform_attn`` custom
    op counted as mmcv's CUDA kernel (see :data:`MSDA_OP_LAUNCHES`; its CPU internals are not).
    An estimate: on a GPU some aten ops launch more than one kernel, and CPU-only paths differ."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        losses = model.loss(data['inputs'], data['data_samples'])
        loss, _ = model.parse_losses(losses)
        loss.backward()
    counts = collections.Counter(eager_ops=0, compiled_region_ops=0, fused_kernels=0,
                                 msda_kernels=0)
    for event in prof.events():
        name, parent, compiled = event.name, event.cpu_parent, False
        nested = False
        while parent is not None:
            nested = nested or parent.name.startswith(('aten::', 'tbx11k::'))
            compiled = compiled or parent.name.startswith(_COMPILED_REGION_MARKS)
            parent = parent.cpu_parent
        if name in MSDA_OP_LAUNCHES:
            counts['msda_kernels'] += MSDA_OP_LAUNCHES[name]
        elif 'cpp_fused' in name:
            counts['fused_kernels'] += 1
        elif name.startswith('aten::') and not nested and name[6:] not in NO_LAUNCH_OPS:
            counts['compiled_region_ops' if compiled else 'eager_ops'] += 1
    counts['total'] = sum(counts.values())
    return dict(counts)

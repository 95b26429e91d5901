"""tbx11k.compat.install: every upstream patch applied from one place, idempotently."""
from mmengine.fileio import LocalBackend, get_file_backend, register_backend
from mmengine.runner import checkpoint as mmengine_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

import mmcv.ops.multi_scale_deform_attn as msda_module
import mmdet.models.losses.focal_loss as focal_module

from tbx11k import compat
from tbx11k.compat import mmcv_cuda_fallback
from tbx11k.compat.file_backend import AtomicLocalBackend
from tbx11k.compat.torch_load import load_from_http, load_from_local


def patched(tmp_path) -> dict:
    return dict(torch_load=(CheckpointLoader._schemes[''] is load_from_local
                            and CheckpointLoader._schemes['http://'] is load_from_http),
                file_backend=type(get_file_backend(str(tmp_path / 'a.pth'))) is AtomicLocalBackend,
                mmcv_cuda_fallback=mmcv_cuda_fallback.installed() and (
                    focal_module.sigmoid_focal_loss is
                    mmcv_cuda_fallback.sigmoid_focal_loss_dispatch))


def test_import_tbx11k_applies_every_patch(tmp_path):
    assert patched(tmp_path) == dict(torch_load=True, file_backend=True, mmcv_cuda_fallback=True)


def test_install_applies_them_all_again_after_upstream_reregistered_its_own(tmp_path):
    try:
        CheckpointLoader.register_scheme(prefixes='', loader=mmengine_checkpoint.load_from_local,
                                         force=True)
        register_backend('local', LocalBackend, force=True, prefixes='')
        mmcv_cuda_fallback.uninstall()
        assert not any(patched(tmp_path).values())
        assert msda_module.MultiScaleDeformableAttnFunction is not \
            mmcv_cuda_fallback.MultiScaleDeformableAttnDispatch
    finally:
        compat.install()
    assert all(patched(tmp_path).values())
    compat.install()  # idempotent
    assert all(patched(tmp_path).values())

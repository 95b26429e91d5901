"""Helpers to run the real tools in subprocesses and compare their results (tests, benchmarks)."""
import json
import os
import os.path as osp
import socket
import subprocess
import sys
from typing import Dict, Iterable, List, Optional, Sequence

import torch

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TINY_1GPU = osp.join(REPO_ROOT, 'configs', 'dino_tbx11k_tiny_1gpu.py')
TINY_2GPU = osp.join(REPO_ROOT, 'configs', 'dino_tbx11k_tiny_2gpu.py')
#: effective batch 4 on any split (accumulative_counts='auto'): 1 x 4, 2 x 2, 4 x 1
TINY_EB4 = osp.join(REPO_ROOT, 'configs', 'dino_tbx11k_tiny_eb4.py')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def cfg_options(options: Dict) -> List[str]:
    """``--cfg-options`` arguments from a dict."""
    return ['--cfg-options'] + [f'{k}={v}' for k, v in options.items()] if options else []


def train_command(config: str, work_dir: str, nproc: int = 1, data_root: Optional[str] = None,
                  options: Optional[Dict] = None, extra: Sequence[str] = ()) -> List[str]:
    """The command line of tools/train.py, through torch.distributed.run when ``nproc > 1``."""
    args = [config, '--work-dir', work_dir]
    if data_root:
        args += ['--data-root', data_root]
    args += list(extra) + cfg_options(options or {})
    train = osp.join(REPO_ROOT, 'tools', 'train.py')
    if nproc == 1:
        return [sys.executable, train] + args
    return [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}',
            f'--master_port={free_port()}', train] + args + ['--launcher', 'pytorch']


def subprocess_env(extra: Optional[Dict] = None) -> Dict[str, str]:
    """This environment for a tool: the repo on PYTHONPATH, one thread per process, unbuffered
    output; ``extra`` on top."""
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [REPO_ROOT, env.get('PYTHONPATH')]))
    env.update(extra or {})
    return env


def run(cmd: Sequence[str], timeout: float = 600, check: bool = True,
        env: Optional[Dict] = None) -> subprocess.CompletedProcess:
    """Run a command with the repo on PYTHONPATH and one thread per process; raise with its log.

    ``python tools/X.py ...`` runs in a fork of a process that has imported torch, mmengine and
    mmdet already (:mod:`.tool_server`; ``TBX11K_TEST_FRESH_PROCESSES=1``: a fresh interpreter).
    """
    full_env = subprocess_env(env)
    from .tool_server import through_server  # python tools/X.py: a fork of a preloaded process
    launch, launch_env = through_server(cmd, full_env, REPO_ROOT)
    proc = subprocess.run(launch, capture_output=True, text=True, timeout=timeout, env=launch_env,
                          cwd=REPO_ROOT)
    proc.args = list(cmd)
    if check and proc.returncode != 0:
        raise AssertionError(f'{" ".join(cmd)} exited {proc.returncode}\n--- stdout\n'
                             f'{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}')
    return proc


def load_checkpoint(path: str) -> Dict:
    """A checkpoint on the CPU, loaded as the tools load it (weights-only, the allowlist)."""
    from ..utils.safe_checkpoint import load_checkpoint_safely
    return load_checkpoint_safely(path, map_location='cpu')


def raw_weights(checkpoint: Dict) -> Dict[str, torch.Tensor]:
    """The training (non-EMA) weights: mmengine's EMAHook swaps them into ``ema_state_dict``."""
    from ..apis.inference import select_weights
    return select_weights(checkpoint, 'raw')[0]


def ema_weights(checkpoint: Dict) -> Dict[str, torch.Tensor]:
    return checkpoint['state_dict']


def relative_difference(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor],
                        keys: Optional[Iterable[str]] = None) -> float:
    """max over tensors of ||a - b|| / max(||a||, tiny), float tensors only."""
    assert set(a) == set(b), set(a) ^ set(b)
    worst = 0.0
    for k in keys or a:
        x, y = a[k], b[k]
        if not torch.is_floating_point(x):
            assert torch.equal(x, y), k
            continue
        x, y = x.double(), y.double()
        worst = max(worst, float((x - y).norm() / x.norm().clamp_min(1e-12)))
    return worst


def global_relative_difference(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||a|| over all float tensors together."""
    num = den = 0.0
    for k, x in a.items():
        if torch.is_floating_point(x):
            num += float((x.double() - b[k].double()).pow(2).sum())
            den += float(x.double().pow(2).sum())
    return (num / den) ** 0.5


def scalars(work_dir: str) -> List[Dict]:
    """The train records of the newest run's vis_data/scalars.json."""
    runs = sorted(d for d in os.listdir(work_dir) if osp.isdir(osp.join(work_dir, d, 'vis_data')))
    path = osp.join(work_dir, runs[-1], 'vis_data', 'scalars.json')
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if 'lr' in r]


def lr_by_step(work_dir: str) -> Dict[int, float]:
    return {int(r['step']): float(r['lr']) for r in scalars(work_dir)}


def save_jpeg_with_orientation(path: str, orientation: int, source: Optional[str] = None,
                               size: Sequence[int] = (16, 16)) -> str:
    """Write a JPEG carrying EXIF orientation ``orientation``: the image ``source`` (converted to
    RGB), else a grey ``size`` (width, height) one. Returns ``path``."""
    from PIL import Image
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = Image.open(source).convert('RGB') if source else Image.new('RGB', tuple(size),
                                                                          (90, 90, 90))
    image.save(path, exif=exif)
    return str(path)


def json_entries_as_oriented_jpegs(root, data: Dict, orientations: Dict[int, int]) -> None:
    """Replace the PNG of ``data['images'][k]`` (under ``root/imgs``) by a JPEG of EXIF
    orientation ``orientations[k]`` and point the entry at it (``data`` is changed in place)."""
    for k, orientation in orientations.items():
        img = data['images'][k]
        png = osp.join(str(root), 'imgs', img['file_name'])
        save_jpeg_with_orientation(osp.splitext(png)[0] + '.jpg', orientation, source=png)
        img['file_name'] = osp.splitext(img['file_name'])[0] + '.jpg'


def register_oracle_detector():
    """Register ``GTOracleDetector``: predicts the ground truth (tests of the evaluation path)."""
    from mmengine.structures import InstanceData

    from mmdet.models.detectors.base import BaseDetector
    from mmdet.registry import MODELS

    if MODELS.get('GTOracleDetector') is not None:
        return

    @MODELS.register_module()
    class GTOracleDetector(BaseDetector):
        """Returns each image's GT boxes (score 1), except for the files whose name contains one of
        ``skip_files``: those get no prediction. mmdet's test pipelines load annotations after the
        resize, so the GT boxes are in original pixels, as predictions must be."""

        def __init__(self, skip_files=(), data_preprocessor=None, **kwargs):
            super().__init__(data_preprocessor=data_preprocessor)
            self.skip_files = tuple(skip_files)
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def predict(self, batch_inputs, batch_data_samples, rescale=True):
            for sample in batch_data_samples:
                gt = sample.gt_instances
                keep = not any(s in sample.img_path for s in self.skip_files)
                pred = InstanceData()
                pred.bboxes = gt.bboxes.clone() if keep else gt.bboxes[:0]
                pred.scores = torch.ones(len(pred.bboxes))
                pred.labels = gt.labels.clone() if keep else gt.labels[:0]
                sample.pred_instances = pred
            return batch_data_samples

        def loss(self, batch_inputs, batch_data_samples):
            raise NotImplementedError

        def _forward(self, batch_inputs, batch_data_samples=None):
            raise NotImplementedError

        def extract_feat(self, batch_inputs):
            return batch_inputs

"""Test-time drawings (``tools/test.py --show-dir``) named by the image's path in the data set."""
import os.path as osp
from typing import Sequence

import mmcv
from mmengine.fileio import get
from mmengine.utils import mkdir_or_exist

from mmdet.engine.hooks import DetVisualizationHook
from mmdet.registry import HOOKS
from mmdet.structures import DetDataSample


@HOOKS.register_module()
class TBX11KVisualizationHook(DetVisualizationHook):
    """mmdet's ``DetVisualizationHook`` whose test drawings keep each image's path under the data
    set's image folder (``tb/tb0001.png``, ``extra/da/x.png``).

    mmdet names them by the file's basename: films of the same name in two folders overwrote each
    other without a word (the drawings of a 10-image set were 9).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._out_dir_ready = False

    @staticmethod
    def drawing_name(runner, img_path: str) -> str:
        """``img_path`` relative to the test set's image folder; its basename outside it."""
        dataset = getattr(runner.test_dataloader, 'dataset', None)
        prefix = (getattr(dataset, 'data_prefix', None) or {}).get('img')
        if prefix:
            relative = osp.relpath(osp.abspath(img_path), osp.abspath(prefix))
            if not relative.startswith(osp.pardir + osp.sep) and relative != osp.pardir:
                return relative
        return osp.basename(img_path)

    def after_test_iter(self, runner, batch_idx: int, data_batch: dict,
                        outputs: Sequence[DetDataSample]) -> None:
        if self.draw is False:
            return
        if self.test_out_dir is not None and not self._out_dir_ready:
            self.test_out_dir = osp.join(runner.work_dir, runner.timestamp, self.test_out_dir)
            mkdir_or_exist(self.test_out_dir)
            self._out_dir_ready = True
        for data_sample in outputs:
            self._test_index += 1
            img_path = data_sample.img_path
            img = mmcv.imfrombytes(get(img_path, backend_args=self.backend_args),
                                   channel_order='rgb')
            out_file = None
            if self.test_out_dir is not None:
                out_file = osp.join(self.test_out_dir, self.drawing_name(runner, img_path))
                mkdir_or_exist(osp.dirname(out_file))
            self._visualizer.add_datasample(
                osp.basename(img_path) if self.show else 'test_img',
                img,
                data_sample=data_sample,
                show=self.show,
                wait_time=self.wait_time,
                pred_score_thr=self.score_thr,
                out_file=out_file,
                step=self._test_index)

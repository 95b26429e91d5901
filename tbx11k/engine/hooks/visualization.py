"""Test-time drawings (``tools/test.py --show-dir``) named by the image's path in the data set."""
import os.path as osp
from typing import Optional, Sequence

from mmdet.engine.hooks import DetVisualizationHook
from mmdet.registry import HOOKS
from mmdet.structures import DetDataSample


@HOOKS.register_module()
class TBX11KVisualizationHook(DetVisualizationHook):
    """mmdet's ``DetVisualizationHook`` whose test drawings keep each image's path under the data
    set's image folder (``tb/tb0001.png``, ``extra/da/x.png``).

    mmdet names them by the file's basename: films of the same name in two folders overwrote each
    other without a word (the drawings of a 10-image set were 9). Here mmdet's own
    ``after_test_iter`` draws each sample with its output folder pointed at the image's
    sub-folder.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._out_root: Optional[str] = None

    @staticmethod
    def relative_folder(runner, img_path: str) -> str:
        """The folder of ``img_path`` relative to the test set's image folder.

        Args:
            runner (Runner): The runner (its test dataloader gives the image folder).
            img_path (str): An image's path.

        Returns:
            str: The relative folder, '' for an image outside the image folder.
        """
        dataset = getattr(runner.test_dataloader, 'dataset', None)
        prefix = (getattr(dataset, 'data_prefix', None) or {}).get('img')
        if not prefix:
            return ''
        relative = osp.relpath(osp.dirname(osp.abspath(img_path)), osp.abspath(prefix))
        return '' if relative == osp.curdir or relative.split(osp.sep)[0] == osp.pardir \
            else relative

    def after_test_iter(self, runner, batch_idx: int, data_batch: dict,
                        outputs: Sequence[DetDataSample]) -> None:
        if self.draw is False or self.test_out_dir is None:
            return super().after_test_iter(runner, batch_idx, data_batch, outputs)
        if self._out_root is None:  # mmdet joins work_dir/timestamp to it: an absolute path
            self._out_root = osp.join(runner.work_dir, runner.timestamp, self.test_out_dir)
        for data_sample in outputs:
            self.test_out_dir = osp.join(self._out_root,
                                         self.relative_folder(runner, data_sample.img_path))
            super().after_test_iter(runner, batch_idx, data_batch, [data_sample])
        self.test_out_dir = self._out_root

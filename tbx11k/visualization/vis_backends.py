"""TensorBoard logging as a one-option switch, beside mmengine's json logs.

mmengine's ``--cfg-options`` cannot append a dict to a list (``visualizer.vis_backends=[dict(...),
...]`` arrives as a list of strings), but it can change a list element's field. So this backend
is mmengine's ``LocalVisBackend`` (``vis_data/scalars.json``, which
``tools/analysis_tools/plot_logs.py``
reads) that also writes TensorBoard event files into the same ``vis_data/`` folder::

    python tools/train.py CONFIG \
        --cfg-options visualizer.vis_backends.0.type=LocalAndTensorboardVisBackend
    tensorboard --logdir work_dirs/

It needs ``pip install tensorboard`` (not a dependency of this project); without it the run stops
when the visualizer is built, before training, with that hint.
"""
from mmengine.visualization import LocalVisBackend, TensorboardVisBackend

from mmdet.registry import VISBACKENDS


@VISBACKENDS.register_module()
class LocalAndTensorboardVisBackend(LocalVisBackend):
    """``LocalVisBackend`` + ``TensorboardVisBackend`` writing to the same ``save_dir``.

    Args:
        save_dir (str): The folder of both backends' files.
        **kwargs: As ``LocalVisBackend``.

    Raises:
        ImportError: When TensorBoard is not installed, with what to do.
    """

    def __init__(self, save_dir: str, **kwargs) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError as error:
            raise ImportError(
                'LocalAndTensorboardVisBackend needs TensorBoard: pip install tensorboard '
                f'(or drop the option to log to vis_data/scalars.json only). ({error})') from None
        super().__init__(save_dir, **kwargs)
        self._tensorboard_backend = TensorboardVisBackend(save_dir)

    def add_config(self, config, **kwargs) -> None:
        super().add_config(config, **kwargs)
        self._tensorboard_backend.add_config(config, **kwargs)

    def add_image(self, name, image, step: int = 0, **kwargs) -> None:
        super().add_image(name, image, step, **kwargs)
        self._tensorboard_backend.add_image(name, image, step, **kwargs)

    def add_scalar(self, name, value, step: int = 0, **kwargs) -> None:
        super().add_scalar(name, value, step, **kwargs)
        self._tensorboard_backend.add_scalar(name, value, step, **kwargs)

    def add_scalars(self, scalar_dict: dict, step: int = 0, file_path=None, **kwargs) -> None:
        super().add_scalars(scalar_dict, step, file_path, **kwargs)
        self._tensorboard_backend.add_scalars(scalar_dict, step, file_path, **kwargs)

    def close(self) -> None:
        super().close()
        self._tensorboard_backend.close()

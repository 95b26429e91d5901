from .vis_backends import LocalAndTensorboardVisBackend

__all__ = ['LocalAndTensorboardVisBackend']

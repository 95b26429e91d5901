from .cli import check_data_root, set_data_root
from .dist import init_cpu_process_group
from .torch_load_compat import load_local_checkpoint

__all__ = ['check_data_root', 'set_data_root', 'init_cpu_process_group', 'load_local_checkpoint']

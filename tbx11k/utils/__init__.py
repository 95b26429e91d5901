from . import atomic_io  # noqa: F401  (registers atomic writes for local paths)
from .atomic_io import AtomicLocalBackend, atomic_write_bytes, atomic_write_text
from .cli import (KeyValueDictAction, check_amp_device, check_classes_fit_the_json,
                  check_data_root, check_evaluators_read_their_loaders_json,
                  check_launcher_environment, check_num_classes, check_output_paths,
                  merge_cli_options, metric_configs, read_config, set_classes, set_data_root)
from .dist import init_cpu_process_group
from .log_level import current_logger_level
from .torch_load_compat import load_local_checkpoint

__all__ = ['AtomicLocalBackend', 'KeyValueDictAction', 'atomic_write_bytes', 'atomic_write_text',
           'check_amp_device', 'check_classes_fit_the_json', 'check_data_root',
           'check_evaluators_read_their_loaders_json', 'check_launcher_environment',
           'check_num_classes', 'check_output_paths', 'current_logger_level', 'merge_cli_options',
           'metric_configs', 'read_config', 'set_classes', 'set_data_root',
           'init_cpu_process_group', 'load_local_checkpoint']

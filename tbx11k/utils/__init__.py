from .atomic_io import atomic_write_bytes, atomic_write_text
from .cli import (
                  KeyValueDictAction,
                  check_amp_device,
                  check_classes_fit_the_json,
                  check_data_root,
                  check_evaluators_read_their_loaders_json,
                  check_launcher_environment,
                  check_num_classes,
                  check_output_paths,
                  merge_cli_options,
                  metric_configs,
                  read_config,
                  set_classes,
                  set_data_root,
)
from .dist import init_cpu_process_group
from .log_level import current_logger_level

__all__ = ['KeyValueDictAction', 'atomic_write_bytes', 'atomic_write_text',
           'check_amp_device', 'check_classes_fit_the_json', 'check_data_root',
           'check_evaluators_read_their_loaders_json', 'check_launcher_environment',
           'check_num_classes', 'check_output_paths', 'current_logger_level', 'merge_cli_options',
           'metric_configs', 'read_config', 'set_classes', 'set_data_root',
           'init_cpu_process_group']

"""The start of a training log: what is held back, what goes to DEBUG, what BatchNorm means
under gradient accumulation."""
import logging

import pytest
import torch

from tbx11k.engine.startup_log import StartupLogFilter, batch_norm_accumulation_note


class Records(logging.Handler):
    def __init__(self, level):
        super().__init__(level)
        self.records = []

    def emit(self, record):
        self.records.append((record.levelname, record.getMessage()))


@pytest.mark.parametrize('level', [logging.INFO, logging.DEBUG])
def test_filter_holds_the_config_dump_and_demotes_per_tensor_lines(level):
    logger = logging.getLogger(f'startup_log_test_{level}')
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = Records(level)
    logger.addHandler(handler)
    startup = StartupLogFilter(logger)
    logger.addFilter(startup)
    logger.info('Config:\nmodel = dict()')
    logger.info('Hooks will be executed in the following order:\n...')
    logger.warning('backbone.conv1.weight is skipped since its requires_grad=False')
    logger.info('paramwise_options -- backbone.layer2.0.conv1.weight:lr_mult=0.1')
    logger.warning('Gradient accumulative may slightly decrease performance because the model '
                   'has BatchNorm layers.')
    logger.info('Effective batch size: 2')
    startup.release()
    logger.info('Config:\nlater')  # nothing is held after the release
    messages = [(lvl, msg.split('\n')[0]) for lvl, msg in handler.records]
    per_tensor = [('DEBUG', 'backbone.conv1.weight is skipped since its requires_grad=False'),
                  ('DEBUG', 'paramwise_options -- backbone.layer2.0.conv1.weight:lr_mult=0.1')]
    assert messages == (per_tensor if level == logging.DEBUG else []) + [
        ('INFO', 'Effective batch size: 2'), ('INFO', 'Config:'),
        ('INFO', 'Hooks will be executed in the following order:'), ('INFO', 'Config:')]


def resnet(norm_eval: bool):
    from mmdet.models.backbones import ResNet
    return ResNet(depth=18, num_stages=4, out_indices=(3, ), frozen_stages=1,
                  norm_cfg=dict(type='BN', requires_grad=False), norm_eval=norm_eval)


def test_frozen_batch_norms_make_accumulation_exact():
    model = resnet(norm_eval=True)
    model.train(False)
    level, message = batch_norm_accumulation_note(model, 2, 1)
    assert level == logging.INFO
    assert message.startswith('Gradient accumulation is exact here: the 20 BatchNorm layers')
    assert not model.training  # the modules' modes are left as they were
    assert batch_norm_accumulation_note(model, 1, 2) is None  # no accumulation: nothing to say
    assert batch_norm_accumulation_note(torch.nn.Linear(2, 2), 2, 1) is None


def test_batch_norms_that_train_are_a_warning_saying_why():
    """Frozen stages alone keep the stem and stage 1 in eval mode; the later stages' batch norms
    train (norm_eval=False), whatever their requires_grad: they use batch statistics."""
    level, message = batch_norm_accumulation_note(resnet(norm_eval=False), 4, 1)
    assert level == logging.WARNING
    assert message.startswith('15 of the 20 BatchNorm layers train in batch-statistics mode '
                              '(layer2.0.bn1, layer2.0.bn2, layer2.0.downsample.1, ...)')
    assert 'accumulating 4 micro-batches is not the same training as one batch of 4 images' \
        in message and 'norm_eval=True' in message

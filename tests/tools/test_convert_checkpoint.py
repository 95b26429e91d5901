"""tools/model_converters/convert_coco_checkpoint.py: COCO DINO checkpoint -> TBX11K classes, and
backbone weights from a local file.

No download is possible here: "COCO checkpoints" are built locally with mmdet's DINO of the same
structure (80 classes, the release's key names: ``bbox_head.cls_branches.{0..L-1}``,
``dn_query_generator.label_embedding``), for the full R50 model and for the tiny one.
Documented key differences after conversion: none (the converted state dict matches the TBX11K
model key for key and shape for shape).
"""
import math
import os.path as osp
import re
import socket

import pytest
import torch

from tbx11k.apis.checkpoint_conversion import (
    LABEL_EMBEDDING,
    TBX11K_CLASSES,
    NotADINOCheckpoint,
    check_fits_model,
    convert_dino_checkpoint,
)
from tbx11k.testing import REPO_ROOT, TINY_1GPU, load_checkpoint, raw_weights
from tbx11k.testing.tools import CONVERT, RUN_EPOCHS, build_model, coco_like_checkpoint, load_tool

FULL_1GPU = osp.join(REPO_ROOT, 'configs', 'dino_tbx11k_1gpu.py')
PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)  # mmengine's bias_init_with_prob(0.01)


def class_keys(num_layers):
    return ([f'bbox_head.cls_branches.{i}.{p}' for i in range(num_layers)
             for p in ('weight', 'bias')] + [LABEL_EMBEDDING])


@pytest.fixture(scope='module')
def full_size():
    """The full DINO-4scale R50 (6 decoder layers, 900 queries): a COCO-like 80-class state dict
    and the TBX11K model of configs/dino_tbx11k_1gpu.py (built, not initialised: < 2 s)."""
    coco = dict(meta=dict(dataset_meta=dict(classes=tuple(f'c{i}' for i in range(80)))),
                state_dict=build_model(FULL_1GPU, **{'model.bbox_head.num_classes': 80})
                .state_dict(), optimizer={}, message_hub={})
    return coco, build_model(FULL_1GPU)


def test_full_r50_checkpoint_converts_and_fits_the_tbx11k_model(full_size):
    coco, model = full_size
    rng = torch.get_rng_state()
    converted, report = convert_dino_checkpoint(coco, TBX11K_CLASSES)
    assert torch.equal(rng, torch.get_rng_state()), 'the global RNG must not be touched'
    state = converted['state_dict']

    # 7 classification branches (6 decoder layers + encoder) + the labelbook, nothing else
    assert report.num_pred_layers == 7 and report.embed_dims == 256
    assert [k for k, *_ in report.changed] == class_keys(7)
    assert report.kept == len(state) - 15
    assert check_fits_model(state, model) == []
    assert not model.load_state_dict(state, strict=True).missing_keys
    for key, value in coco['state_dict'].items():
        if key not in class_keys(7):
            assert state[key] is value or torch.equal(state[key], value), key

    # mmdet's initialisation of a new DINO head: one Linear copied into every branch (deepcopy),
    # bias = bias_init_with_prob(0.01), label embedding N(0, 1)
    from mmengine.model import bias_init_with_prob
    assert abs(PRIOR_BIAS - bias_init_with_prob(0.01)) < 1e-6
    w0 = state['bbox_head.cls_branches.0.weight']
    assert w0.shape == (2, 256)
    for i in range(7):
        assert torch.equal(state[f'bbox_head.cls_branches.{i}.weight'], w0)
        assert torch.allclose(state[f'bbox_head.cls_branches.{i}.bias'],
                              torch.full((2,), PRIOR_BIAS))
    assert w0.abs().max() <= 1 / math.sqrt(256) + 1e-6  # nn.Linear's kaiming-uniform bound
    assert state[LABEL_EMBEDDING].shape == (2, 256)
    assert 0.7 < state[LABEL_EMBEDDING].std() < 1.3

    assert converted['meta']['dataset_meta']['classes'] == TBX11K_CLASSES
    assert set(converted) == {'meta', 'state_dict'}
    assert report.dropped_entries == ['optimizer', 'message_hub']
    text = '\n'.join(report.lines())
    assert 'bbox_head.cls_branches.6.weight: (80, 256) -> (2, 256)  (encoder classifier' in text
    assert f'{LABEL_EMBEDDING}: (80, 256) -> (2, 256)' in text


def test_seeded_and_three_class_conversion(full_size):
    coco, _ = full_size
    a = convert_dino_checkpoint(coco, seed=1)[0]['state_dict']
    b = convert_dino_checkpoint(coco, seed=1)[0]['state_dict']
    c = convert_dino_checkpoint(coco, seed=2)[0]['state_dict']
    assert torch.equal(a[LABEL_EMBEDDING], b[LABEL_EMBEDDING])
    assert not torch.equal(a[LABEL_EMBEDDING], c[LABEL_EMBEDDING])
    three = TBX11K_CLASSES + ('PulmonaryTuberculosis',)
    model3 = build_model(FULL_1GPU, **{'model.bbox_head.num_classes': 3})
    assert check_fits_model(convert_dino_checkpoint(coco, three)[0]['state_dict'], model3) == []


def test_class_map_copies_rows(full_size):
    coco, _ = full_size
    src = coco['state_dict']
    state = convert_dino_checkpoint(coco, class_map={'ObsoletePulmonaryTuberculosis': 'c7'}
                                    )[0]['state_dict']
    for key in class_keys(7):
        assert torch.equal(state[key][1], src[key][7]), key
        assert not torch.equal(state[key][0], src[key][0]), key
    with pytest.raises(ValueError, match='not a class of the checkpoint'):
        convert_dino_checkpoint(coco, class_map={'ActiveTuberculosis': 'zebra'})


@pytest.mark.parametrize('breakage, message', [
    ('no_labelbook', 'no denoising queries'),
    ('resnet', 'not a DETR-family head'),
    ('labelbook_rows', 'expected (80, 256)'),
    ('missing_branch', 'decoder layers'),
])
def test_refuses_checkpoints_that_are_not_dino(full_size, breakage, message):
    coco, _ = full_size
    state = dict(coco['state_dict'])
    if breakage == 'no_labelbook':  # Deformable DETR has the same head but no denoising
        del state[LABEL_EMBEDDING]
    elif breakage == 'resnet':
        state = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    elif breakage == 'labelbook_rows':  # IDEA-DINO style 81/92-row label_enc
        state[LABEL_EMBEDDING] = torch.zeros(81, 256)
    else:
        for p in ('weight', 'bias'):
            del state[f'bbox_head.cls_branches.6.{p}']
    with pytest.raises(NotADINOCheckpoint, match=re.escape(message)):
        convert_dino_checkpoint(dict(state_dict=state))


def test_cli_refuses_a_non_dino_checkpoint(tmp_path, capsys):
    path = tmp_path / 'resnet.pth'
    torch.save({'conv1.weight': torch.zeros(64, 3, 7, 7), 'fc.weight': torch.zeros(10, 512)},
               str(path))
    out = tmp_path / 'out.pth'
    assert load_tool('model_converters/convert_coco_checkpoint').main([str(path), str(out)]) == 2
    assert 'not an mmdet DINO checkpoint' in capsys.readouterr().err
    assert not out.exists()


def test_cli_refuses_a_file_that_is_no_checkpoint_and_converting_in_place(tmp_path, capsys):
    tool = load_tool('model_converters/convert_coco_checkpoint')
    text = tmp_path / 'notes.pth'
    text.write_text('not a checkpoint')
    assert tool.main([str(text), str(tmp_path / 'out.pth')]) == 2
    assert f'error: cannot load {text} as a checkpoint' in capsys.readouterr().err
    # output = input would replace the COCO weights with the converted ones
    source = tmp_path / 'coco.pth'
    torch.save({'state_dict': {'a': torch.zeros(1)}}, str(source))
    before = source.read_bytes()
    assert tool.main([str(source), str(tmp_path / '.' / 'coco.pth')]) == 2
    assert 'is the input' in capsys.readouterr().err
    assert source.read_bytes() == before


def test_cli_refuses_a_folder_output_and_bad_values_before_writing(tmp_path, capsys):
    """An existing folder as output failed after the conversion with IsADirectoryError, leaving a
    stray OUTPUT.tmp; --prior-prob 0 was a ZeroDivisionError traceback, 1.5 a 'math domain
    error'; --classes '' was accepted as a class name."""
    tool = load_tool('model_converters/convert_coco_checkpoint')
    source = tmp_path / 'coco.pth'
    torch.save({'state_dict': {'a': torch.zeros(1)}}, str(source))
    out_dir = tmp_path / 'out'
    out_dir.mkdir()
    assert tool.main([str(source), str(out_dir)]) == 2
    assert f'the output {out_dir} is a folder' in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['coco.pth', 'out']
    for value in ('0', '1.5', 'x'):
        with pytest.raises(SystemExit) as exit:
            tool.main([str(source), str(tmp_path / 'x.pth'), '--prior-prob', value])
        assert exit.value.code == 2
        assert 'argument --prior-prob: must be a probability strictly between 0 and 1' in \
            capsys.readouterr().err
    from tbx11k.apis.checkpoint_conversion import convert_dino_checkpoint
    with pytest.raises(ValueError, match='distinct, non-empty names'):
        convert_dino_checkpoint({'state_dict': {}}, ('A', ' '))


def test_cli_converts_the_tiny_model(converted_tiny):
    path, stdout = converted_tiny
    # tiny: 2 decoder layers -> 3 branches, the encoder's is index 2
    assert 'changed bbox_head.cls_branches.2.weight: (80, 256) -> (2, 256)  (encoder' in stdout
    assert f'changed {LABEL_EMBEDDING}: (80, 256) -> (2, 256)' in stdout
    assert 'dropped (training state of the source run): optimizer, message_hub' in stdout
    assert f'fits {TINY_1GPU}: no missing, unexpected or reshaped keys' in stdout
    checkpoint = load_checkpoint(path)
    assert checkpoint['meta']['dataset_meta']['classes'] == TBX11K_CLASSES
    assert check_fits_model(checkpoint['state_dict'], build_model(TINY_1GPU)) == []


def test_converted_checkpoint_loads_cleanly_and_trains(tiny_run):
    log = tiny_run['log']
    assert f"Load checkpoint from {tiny_run['load_from']}" in log
    # mmengine reports any missing / unexpected / reshaped key when loading load_from
    for complaint in ('do not match exactly', 'missing keys', 'unexpected key',
                      'size mismatch'):
        assert complaint not in log
    start = load_checkpoint(tiny_run['load_from'])['state_dict']
    end = raw_weights(load_checkpoint(tiny_run['checkpoint']))
    assert load_checkpoint(tiny_run['checkpoint'])['meta']['epoch'] == RUN_EPOCHS
    # frozen stem (frozen_stages=1): still the converted weights, so training started from them
    assert torch.equal(start['backbone.conv1.weight'], end['backbone.conv1.weight'])
    # trained: the new classifiers and the kept transformer moved
    for key in ('bbox_head.cls_branches.0.weight', 'decoder.layers.0.ffn.layers.1.weight'):
        assert not torch.equal(start[key], end[key]), key
        assert torch.isfinite(end[key]).all()



def test_cli_refuses_a_checkpoint_that_already_has_the_target_classes(tiny_run, tmp_path,
                                                                      capsys):
    """A trained TBX11K checkpoint given again to the converter had all its trained classifiers
    and its label embedding re-initialised, listed as changed, and exit status 0."""
    tool = load_tool('model_converters/convert_coco_checkpoint')
    out = tmp_path / 'again.pth'
    assert tool.main([tiny_run['checkpoint'], str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: {tiny_run['checkpoint']}: its classes are already the target classes" in err
    assert 'would re-initialise its trained classifiers' in err and '--force' in err
    assert not out.exists()
    assert tool.main([tiny_run['checkpoint'], str(out), '--force']) == 0
    forced = capsys.readouterr().out
    assert 'changed bbox_head.cls_branches.0.weight: (2, 256) -> (2, 256)' in forced
    assert out.exists()


def test_refuses_target_classes_known_by_name_or_by_count(converted_tiny):
    """Class names from meta.dataset_meta; without names, a source with as many classes as the
    target is taken for one already converted (a COCO checkpoint has 80)."""
    from tbx11k.apis.checkpoint_conversion import AlreadyConverted
    checkpoint = load_checkpoint(converted_tiny[0])
    with pytest.raises(AlreadyConverted, match='already the target classes'):
        convert_dino_checkpoint(checkpoint, TBX11K_CLASSES)
    bare = dict(checkpoint['state_dict'])
    with pytest.raises(AlreadyConverted, match='already has 2 classes'):
        convert_dino_checkpoint(bare, ('a', 'b'))
    # forced, or other classes: converted
    assert convert_dino_checkpoint(checkpoint, TBX11K_CLASSES, force=True)[1].changed
    assert convert_dino_checkpoint(checkpoint, ('a', 'b'))[1].changed
    three = TBX11K_CLASSES + ('PulmonaryTuberculosis',)
    assert convert_dino_checkpoint(bare, three)[1].changed

# ---- backbone-only ImageNet weights from a local file ------------------------------------------
def torchvision_style_resnet50() -> dict:
    """A ResNet-50 state dict with torchvision's key names (conv1, bn1, layerN.M..., fc), as
    ``torchvision.models.resnet50(weights=...).state_dict()`` saved to a file."""
    from mmdet.models.backbones import ResNet
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        net = ResNet(depth=50)
        state = {k: v + 0.01 for k, v in net.state_dict().items()
                 if not k.endswith('num_batches_tracked')}
    state['fc.weight'] = torch.zeros(1000, 2048)
    state['fc.bias'] = torch.zeros(1000)
    return state


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError('network access attempted in a test')
    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)


def test_backbone_weights_from_a_local_file(tmp_path, no_network):
    """The full config with ``--cfg-options model.backbone.init_cfg.checkpoint=FILE`` instead of
    torchvision://resnet50: loaded at init_weights, nothing downloaded."""
    weights = torchvision_style_resnet50()
    path = tmp_path / 'resnet50_imagenet.pth'
    torch.save(weights, str(path))
    model = build_model(FULL_1GPU, **{'model.backbone.init_cfg.checkpoint': str(path)})
    model.init_weights()
    own = model.backbone.state_dict()
    for key in ('conv1.weight', 'layer1.0.conv1.weight', 'layer4.2.bn3.running_var'):
        assert torch.equal(own[key], weights[key]), key


def test_backbone_weights_missing_file_is_a_clear_error(tmp_path, no_network):
    missing = str(tmp_path / 'nowhere' / 'resnet50.pth')
    model = build_model(FULL_1GPU, **{'model.backbone.init_cfg.checkpoint': missing})
    with pytest.raises(FileNotFoundError, match='nowhere/resnet50.pth can not be found'):
        model.backbone.init_weights()  # what model.init_weights() runs first


def test_coco_like_fixture_matches_the_release_layout():
    """The key names the conversion relies on are those of mmdet's DINO (what the COCO release
    holds): checked on a freshly built 80-class tiny model."""
    state = coco_like_checkpoint(TINY_1GPU)['state_dict']
    assert set(class_keys(3)) <= set(state)
    assert state[LABEL_EMBEDDING].shape == (80, 256)
    assert osp.isfile(CONVERT)

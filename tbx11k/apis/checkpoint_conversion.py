"""Adapt an mmdet 3.x DINO checkpoint trained on COCO (80 classes) to other classes (TBX11K).

What depends on the number of classes C in mmdet 3.3.0's DINO (``DINO`` + ``DINOHead`` +
``CdnQueryGenerator``), and therefore on the checkpoint:

- ``bbox_head.cls_branches.{0..L-1}.weight`` (C, 256) and ``.bias`` (C,): one linear classifier per
  decoder layer plus one for the encoder's two-stage proposals, L = decoder layers + 1 (7 for the
  6-layer R50 model; index L-1 = ``decoder.num_layers`` is the encoder's, used in
  ``DINO.pre_decoder``). ``share_pred_layer`` is False for DINO: L separate tensors.
- ``dn_query_generator.label_embedding.weight`` (C, 256): the denoising "labelbook" that embeds
  the (noised) GT labels of the denoising queries. mmdet uses exactly C rows (the IDEA original has
  C+1 = 92 for COCO with an unused "unknown" row; mmdet checkpoints do not).
- not tensors, so not in the checkpoint: ``bbox_head.num_classes`` (top-k over Q x C at test time),
  ``dn_query_generator.num_classes`` (range of the random label noise), the focal loss; all come
  from the config's ``num_classes``. No buffer depends on C.
- ``meta['dataset_meta']['classes']``: mmdet's ``init_detector`` names the labels from it, so it is
  rewritten to the new classes.

Everything else (backbone, neck, encoder, decoder, regression branches, query embedding, ...) is
class-agnostic and kept bit for bit.

The class tensors are **re-initialised the way mmdet initialises a new DINO** (mapping COCO
classes onto tuberculosis lesions means nothing): one ``nn.Linear(256, C)`` with PyTorch's default
weight init (kaiming-uniform, a=sqrt(5)), copied into every branch as mmdet's ``deepcopy`` does,
bias = ``bias_init_with_prob(0.01)`` = -4.595 (``DeformableDETRHead.init_weights``; sigmoid focal
loss starts at a 1 % foreground prior), and the label embedding drawn from N(0, 1) like
``nn.Embedding`` (DINO's ``init_weights`` leaves it alone). The draw is seeded (``seed``) and does
not touch the global RNG. For other target data sets, ``class_map`` copies the rows of chosen
source classes instead (``{'target': 'source'}``).
"""
import math
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

TBX11K_CLASSES = ('ActiveTuberculosis', 'ObsoletePulmonaryTuberculosis')

CLS_BRANCH = re.compile(r'^bbox_head\.cls_branches\.(\d+)\.(weight|bias)$')
REG_BRANCH = re.compile(r'^bbox_head\.reg_branches\.(\d+)\.')
DECODER_LAYER = re.compile(r'^decoder\.layers\.(\d+)\.')
LABEL_EMBEDDING = 'dn_query_generator.label_embedding.weight'
#: keys every mmdet DINO state dict has besides the class tensors (two-stage, box refinement)
REQUIRED_KEYS = ('query_embedding.weight', 'memory_trans_fc.weight', 'level_embed')
#: top-level checkpoint entries that only make sense for resuming the source training
DROPPED_ENTRIES = ('optimizer', 'param_schedulers', 'message_hub', 'ema_state_dict', 'scheduler')


class NotADINOCheckpoint(ValueError):
    """The checkpoint does not have the structure of an mmdet 3.x DINO detector."""


class AlreadyConverted(ValueError):
    """The checkpoint already has the target classes: converting it would re-initialise trained
    class tensors (``force=True`` converts anyway)."""


@dataclass
class ConversionReport:
    """What :func:`convert_dino_checkpoint` did, for printing and tests."""
    source_classes: Tuple[str, ...]
    target_classes: Tuple[str, ...]
    num_pred_layers: int
    embed_dims: int
    changed: List[Tuple[str, Tuple[int, ...], Tuple[int, ...], str]] = field(default_factory=list)
    kept: int = 0
    dropped_entries: List[str] = field(default_factory=list)
    class_map: Dict[str, str] = field(default_factory=dict)
    seed: int = 0
    prior_prob: float = 0.01

    def lines(self) -> List[str]:
        src, dst = len(self.source_classes), len(self.target_classes)
        out = [f'DINO checkpoint: {self.num_pred_layers} classification branches '
               f'({self.num_pred_layers - 1} decoder layers + encoder), embed_dims '
               f'{self.embed_dims}, {src} -> {dst} classes {list(self.target_classes)}']
        for key, old, new, how in self.changed:
            out.append(f'  changed {key}: {tuple(old)} -> {tuple(new)}  ({how})')
        mapped = ', '.join(f'{t} <- {s}' for t, s in self.class_map.items())
        if mapped:
            out.append(f'  rows copied from source classes: {mapped}')
        out.append(f'  kept {self.kept} other tensors unchanged')
        if self.dropped_entries:
            out.append('  dropped (training state of the source run): '
                       + ', '.join(self.dropped_entries))
        out.append(f"  meta['dataset_meta']['classes'] = {list(self.target_classes)}")
        return out


def _state_dict(checkpoint: Mapping) -> Dict[str, torch.Tensor]:
    if 'state_dict' in checkpoint:
        state = checkpoint['state_dict']
    elif checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        state = checkpoint  # a bare state dict
    else:
        raise NotADINOCheckpoint('no state_dict in the checkpoint (top-level keys: '
                                 f'{sorted(checkpoint)[:10]})')
    # DataParallel / DDP prefixes, as mmengine's load_checkpoint strips them
    return {re.sub(r'^module\.', '', k): v for k, v in state.items()}


def inspect_dino_state_dict(state: Mapping[str, torch.Tensor]) -> Tuple[int, int, int]:
    """Check that ``state`` is shaped like an mmdet DINO.

    Args:
        state (Mapping[str, torch.Tensor]): A state dict.

    Returns:
        Tuple[int, int, int]: ``(num_classes, embed_dims, L)``, L the classification branches.

    Raises:
        NotADINOCheckpoint: Saying what is missing or inconsistent.
    """
    problems: List[str] = []
    branches: Dict[int, Dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = CLS_BRANCH.match(key)
        if m:
            branches.setdefault(int(m.group(1)), {})[m.group(2)] = value
    regs = {int(m.group(1)) for m in map(REG_BRANCH.match, state) if m}
    decoder_layers = {int(m.group(1)) for m in map(DECODER_LAYER.match, state) if m}
    if not branches:
        problems.append('no bbox_head.cls_branches.N.weight/bias (not a DETR-family head)')
    if LABEL_EMBEDDING not in state:
        problems.append(f'no {LABEL_EMBEDDING} (no denoising queries: Deformable DETR or DETR, '
                        'not DINO)')
    problems += [f'no {k}' for k in REQUIRED_KEYS if k not in state]
    if problems:
        raise NotADINOCheckpoint('not an mmdet DINO checkpoint: ' + '; '.join(problems))

    num_layers = len(branches)
    if sorted(branches) != list(range(num_layers)):
        problems.append(f'classification branches are not numbered 0..{num_layers - 1}: '
                        f'{sorted(branches)}')
    if regs != set(branches):
        problems.append(f'regression branches {sorted(regs)} do not match the classification '
                        f'branches {sorted(branches)}')
    if num_layers != len(decoder_layers) + 1:
        problems.append(f'{num_layers} classification branches for {len(decoder_layers)} decoder '
                        'layers (DINO has decoder layers + 1, the last for the encoder)')
    shapes = set()
    for i, parts in sorted(branches.items()):
        w, b = parts.get('weight'), parts.get('bias')
        if w is None or b is None or w.dim() != 2 or b.dim() != 1 or b.shape[0] != w.shape[0]:
            problems.append(f'cls_branches.{i} is not a Linear (weight (C, D), bias (C,))')
        else:
            shapes.add(tuple(w.shape))
    if len(shapes) > 1:
        problems.append(f'classification branches of different shapes: {sorted(shapes)}')
    label = state[LABEL_EMBEDDING]
    if shapes and len(shapes) == 1 and not problems:
        (num_classes, embed_dims), = shapes
        if tuple(label.shape) != (num_classes, embed_dims):
            problems.append(f'{LABEL_EMBEDDING} has shape {tuple(label.shape)}, expected '
                            f'({num_classes}, {embed_dims}) like the classifiers (an IDEA-DINO '
                            'checkpoint converted by hand? mmdet uses num_classes rows)')
    if problems:
        raise NotADINOCheckpoint('not an mmdet DINO checkpoint: ' + '; '.join(problems))
    return num_classes, embed_dims, num_layers


def _recorded_class_names(checkpoint: Mapping, num_classes: int) -> Optional[Tuple[str, ...]]:
    """The class names the checkpoint's meta records, if they fit its ``num_classes``."""
    meta = checkpoint.get('meta') or {}
    dataset_meta = meta.get('dataset_meta') or {}
    classes = dataset_meta.get('classes') or meta.get('CLASSES')
    if classes is not None and len(classes) == num_classes:
        return tuple(classes)
    return None


def _source_class_names(checkpoint: Mapping, num_classes: int) -> Tuple[str, ...]:
    classes = _recorded_class_names(checkpoint, num_classes)
    if classes is not None:
        return classes
    if num_classes == 80:
        from mmdet.datasets import CocoDataset
        return tuple(CocoDataset.METAINFO['classes'])
    return tuple(f'class_{i}' for i in range(num_classes))


def _refuse_target_classes(recorded: Optional[Tuple[str, ...]], num_classes: int,
                           classes: Tuple[str, ...], source: Optional[str] = None) -> None:
    """Raise :class:`AlreadyConverted` if the source classes are already ``classes``."""
    if recorded is not None:
        if recorded != classes:
            return
        what = f'its classes are already the target classes {list(classes)} (meta.dataset_meta)'
    elif num_classes == len(classes):
        what = (f'it already has {num_classes} classes like the target {list(classes)} (its '
                'class names are not recorded; a COCO checkpoint has 80)')
    else:
        return
    raise AlreadyConverted(
        f'{what}: it looks converted or trained already, and converting it again would '
        're-initialise its trained classifiers and denoising label embedding. Use it as it is '
        f"(--cfg-options load_from={source or 'PATH'}), or pass --force to re-initialise them "
        'anyway')


def new_class_tensors(num_classes: int, embed_dims: int, seed: int = 0,
                      prior_prob: float = 0.01,
                      dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor,
                                                                   torch.Tensor]:
    """(classifier weight, classifier bias, label embedding) initialised as mmdet does for a new
    DINO.

    ``nn.Linear`` default weight, bias ``bias_init_with_prob(prior_prob)``, ``nn.Embedding``
    default N(0, 1). Seeded; the global RNG is left as it was.

    Args:
        num_classes (int): The classes.
        embed_dims (int): The model's embedding width.
        seed (int): The seed. Defaults to 0.
        prior_prob (float): The bias's prior probability. Defaults to 0.01.
        dtype (torch.dtype): The tensors' dtype. Defaults to ``torch.float32``.

    Returns:
        Tuple[torch.Tensor, torch.Tensor, torch.Tensor]: Weight, bias and label embedding.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fc = nn.Linear(embed_dims, num_classes)
        embedding = nn.Embedding(num_classes, embed_dims)
    bias = torch.full((num_classes,), -math.log((1 - prior_prob) / prior_prob))
    return (fc.weight.detach().to(dtype), bias.to(dtype), embedding.weight.detach().to(dtype))


def convert_dino_checkpoint(checkpoint: Mapping,
                            classes: Sequence[str] = TBX11K_CLASSES,
                            class_map: Optional[Mapping[str, str]] = None,
                            seed: int = 0,
                            prior_prob: float = 0.01,
                            source: Optional[str] = None,
                            force: bool = False) -> Tuple[Dict, ConversionReport]:
    """Re-make the class tensors of a DINO checkpoint for ``classes``.

    The result holds ``meta`` and ``state_dict`` only: it is a starting point for ``load_from``,
    not something to resume.

    Args:
        checkpoint (Mapping): The loaded checkpoint.
        classes (Sequence[str]): The target classes. Defaults to ``TBX11K_CLASSES``.
        class_map (Mapping[str, str], optional): ``{target class: source class}``: copies rows
            instead of re-initialising them. Defaults to None (all re-initialised).
        seed (int): The seed of the new rows. Defaults to 0.
        prior_prob (float): The classifier bias's prior probability. Defaults to 0.01.
        source (str, optional): Where the checkpoint came from, for the report. Defaults to
            None.
        force (bool): Convert a checkpoint that already has the target classes. Defaults to
            False.

    Returns:
        Tuple[Dict, ConversionReport]: The new checkpoint and what was done.

    Raises:
        AlreadyConverted: When the checkpoint already has the target classes (its
            ``meta.dataset_meta.classes`` are ``classes``, or, without recorded names, its
            classifiers have ``len(classes)`` rows) and neither ``class_map`` nor ``force`` is
            given: a converted or TBX11K-trained checkpoint, whose trained classifiers would be
            lost.
        NotADINOCheckpoint: When it is not shaped like an mmdet DINO.
    """
    classes = tuple(classes)
    if not classes or len(set(classes)) != len(classes) or not all(
            isinstance(c, str) and c.strip() for c in classes):
        raise ValueError(f'classes must be distinct, non-empty names, got {classes}')
    state = _state_dict(checkpoint)
    src_num, embed_dims, num_layers = inspect_dino_state_dict(state)
    src_classes = _source_class_names(checkpoint, src_num)
    if not force and not class_map:  # a --map says which rows to keep
        _refuse_target_classes(_recorded_class_names(checkpoint, src_num), src_num, classes,
                               source)
    class_map = dict(class_map or {})
    for target, src in class_map.items():
        if target not in classes:
            raise ValueError(f'--map target {target!r} is not one of {classes}')
        if src not in src_classes:
            raise ValueError(f'--map source {src!r} is not a class of the checkpoint '
                             f'({len(src_classes)} classes, e.g. {src_classes[:5]})')

    dtype = state[LABEL_EMBEDDING].dtype
    weight, bias, embedding = new_class_tensors(len(classes), embed_dims, seed, prior_prob, dtype)
    rows = {classes.index(t): src_classes.index(s) for t, s in class_map.items()}
    how = ('re-initialised' if not rows else
           f're-initialised, {len(rows)} row(s) copied')

    def remake(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        new = new.clone()
        for dst, src in rows.items():
            new[dst] = old[src]
        return new

    report = ConversionReport(src_classes, classes, num_layers, embed_dims, class_map=class_map,
                              seed=seed, prior_prob=prior_prob)
    out_state: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = CLS_BRANCH.match(key)
        if m:
            kind = m.group(2)
            new = remake(weight if kind == 'weight' else bias, value)
            layer = int(m.group(1))
            role = 'encoder' if layer == num_layers - 1 else f'decoder layer {layer}'
            init = (f'prior prob {prior_prob}' if kind == 'bias' else 'nn.Linear default')
            report.changed.append((key, tuple(value.shape), tuple(new.shape),
                                   f'{role} classifier, {how}, {init}'))
        elif key == LABEL_EMBEDDING:
            new = remake(embedding, value)
            report.changed.append((key, tuple(value.shape), tuple(new.shape),
                                   f'denoising label embedding, {how}, N(0, 1)'))
        else:
            new = value
            report.kept += 1
        out_state[key] = new
    report.dropped_entries = [k for k in checkpoint if k not in ('meta', 'state_dict')
                              and 'state_dict' in checkpoint]

    old_meta = dict(checkpoint.get('meta') or {})
    meta = {k: old_meta[k] for k in ('mmdet_version', 'mmengine_version') if k in old_meta}
    meta['dataset_meta'] = dict(classes=classes)
    meta['converted_from'] = dict(
        checkpoint=osp.basename(source) if source else None,
        source_classes=len(src_classes), class_map=class_map, seed=seed, prior_prob=prior_prob,
        reinitialised=[k for k, *_ in report.changed])
    return dict(meta=meta, state_dict=out_state), report


def check_fits_model(state: Mapping[str, torch.Tensor], model: nn.Module) -> List[str]:
    """Differences between ``state`` and ``model.state_dict()``.

    Args:
        state (Mapping[str, torch.Tensor]): A state dict.
        model (nn.Module): The model.

    Returns:
        List[str]: The missing, unexpected and differently shaped keys (empty when it fits).
    """
    own = model.state_dict()
    problems = [f'missing in checkpoint: {k}' for k in own if k not in state]
    problems += [f'not in the model: {k}' for k in state if k not in own]
    problems += [f'shape {tuple(state[k].shape)} in checkpoint vs {tuple(v.shape)} in the model: '
                 f'{k}' for k, v in own.items() if k in state and state[k].shape != v.shape]
    return problems


def without_ddp_prefix(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``state`` with DDP's ``module.`` key prefix removed where present.

    Args:
        state (Mapping[str, torch.Tensor]): A state dict.

    Returns:
        Dict[str, torch.Tensor]: The state dict without the prefix.
    """
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}


def weights_misfit(state: Mapping[str, torch.Tensor], model: nn.Module, checkpoint: str,
                   config: str) -> Optional[str]:
    """Why ``state`` does not fit ``model``, if it does not.

    Args:
        state (Mapping[str, torch.Tensor]): A state dict (keys may carry DDP's ``module.``
            prefix).
        model (nn.Module): The model.
        checkpoint (str): The checkpoint's path, for the message.
        config (str): The config's path, for the message.

    Returns:
        str | None: None when it fits, else a message naming the checkpoint, the config and the
        first differences.
    """
    problems = check_fits_model(without_ddp_prefix(state), model)
    if not problems:
        return None
    return (f'{checkpoint} does not fit the model of {config} ({len(problems)} differences, '
            'e.g.:\n  ' + '\n  '.join(problems[:6]))


def build_model_from_config(config: str, cfg_options: Optional[Dict] = None) -> nn.Module:
    """The detector of a config, built without initialising or loading any weights.

    Args:
        config (str): The config file.
        cfg_options (Dict, optional): ``--cfg-options`` to merge. Defaults to None.

    Returns:
        nn.Module: The detector.
    """
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from mmdet.registry import MODELS
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    return MODELS.build(cfg.model)


def config_classes(config: str) -> Optional[Tuple[str, ...]]:
    """The class names a config trains (``train_dataloader.dataset.metainfo.classes``).

    Args:
        config (str): The config file.

    Returns:
        Tuple[str, ...] | None: The names, None when the config names none.
    """
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    dataset = cfg.get('train_dataloader', {}).get('dataset', {})
    while 'dataset' in dataset and 'metainfo' not in dataset:
        dataset = dataset['dataset']
    classes = (dataset.get('metainfo') or {}).get('classes') or cfg.get('classes')
    return tuple(classes) if classes else None

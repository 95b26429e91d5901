"""Predict with a trained detector on X-ray files, draw the boxes, write a json of detections.

No Runner: the model is built from the config, the weights are loaded strictly, and the config's
test pipeline (minus ``LoadAnnotations``) prepares each image, as mmdet's ``inference_detector``
does. Boxes come back in original image pixels (``rescale=True``).

Weights of checkpoints written with mmengine's ``EMAHook``: ``state_dict`` holds the EMA weights
(the hook swaps them in before saving; the raw training weights sit in ``ema_state_dict``).
``weights='ema'`` (the default, what ``tools/test.py`` evaluates too) uses ``state_dict``;
``weights='raw'`` the training weights.

JSON written by :func:`write_detections` (and read back by :func:`load_detections`)::

    {"config": ..., "checkpoint": ..., "weights": "ema", "score_thr": 0.3,
     "classes": ["ActiveTuberculosis", "ObsoletePulmonaryTuberculosis"],
     "images": [{"file_name": "tb/tb0001.png", "path": "/data/TBX11K/imgs/tb/tb0001.png",
                 "width": 512, "height": 512, "vis": "vis/tb/tb0001.png",
                 "detections": [{"bbox": [x1, y1, x2, y2], "score": 0.87, "label": 0,
                                 "class_name": "ActiveTuberculosis"}, ...]}, ...]}

``file_name`` is the input's name (relative to its folder or list; two inputs may share one),
``path`` its absolute path, ``vis`` its drawing (one per input). ``bbox`` is x1, y1, x2, y2 in
original image pixels (2 decimals), ``label`` the 0-based index into
``classes``; detections are sorted by decreasing score.
"""
import codecs
import json
import logging
import math
import os
import os.path as osp
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')
#: short labels drawn on the image (the json keeps the full class names)
SHORT_NAMES = {
    'ActiveTuberculosis': 'ActiveTB',
    'ObsoletePulmonaryTuberculosis': 'LatentTB',
    'PulmonaryTuberculosis': 'UncertainTB',
}
#: BGR colours by label: red, amber, magenta, then cyan, green, blue, ...
PALETTE = [(40, 40, 230), (0, 170, 255), (200, 60, 200), (230, 200, 0), (60, 200, 60),
           (230, 120, 40), (120, 120, 255), (0, 230, 230)]
BBOX_DECIMALS = 2
SCORE_DECIMALS = 4


# ---- inputs ------------------------------------------------------------------------------------
def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _output_name(line: str) -> str:
    """A list line as a name under ``OUT/vis/``: absolute paths and leading ``..`` made relative,
    so that ``../imgs/tb/tb0001.png`` draws to ``OUT/vis/imgs/tb/tb0001.png``, never outside
    ``OUT/vis/`` (with ``--out`` at the data root it overwrote the X-ray itself)."""
    parts = [p for p in osp.normpath(osp.splitdrive(line)[1]).split(os.sep) if p not in ('', '.')]
    while parts and parts[0] == '..':
        parts.pop(0)
    return '/'.join(parts) or osp.basename(line)


def _read_list(list_file: str) -> List[Tuple[str, str]]:
    """Image paths of a list file, one per line. Relative lines are looked up next to the list,
    then under ``../imgs/`` (the TBX11K layout: ``lists/TBX11K_val.txt`` names files relative to
    ``imgs/``), then from the current directory."""
    base = osp.dirname(osp.abspath(list_file))
    out, missing = [], []
    kinds = f'neither an image ({", ".join(IMAGE_EXTENSIONS)}), a folder nor a text list of images'
    with open(list_file, 'rb') as f:
        raw = f.read()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # PowerShell's `>` writes these
        text = raw.decode('utf-16')
    elif b'\x00' in raw:
        raise FileNotFoundError(f'{list_file} is {kinds} (it is not text)')
    else:  # file names as the file system gives them (bytes that are not UTF-8 kept, as os does)
        text = raw.decode('utf-8', 'surrogateescape')
    # a byte-order mark (Notepad's UTF-8) made the first line a name that no file has
    lines = [line.strip() for line in text.lstrip('\ufeff').splitlines()]
    entries = [line for line in lines if line and not line.startswith('#')]
    if entries and not any(_is_image(line) for line in entries):
        raise FileNotFoundError(f'{list_file} is {kinds}: none of its {len(entries)} line(s) names '
                                f'an image file, e.g. {entries[0][:80]!r}')
    for line in entries:
        candidates = [line] if osp.isabs(line) else [
            osp.join(base, line), osp.join(base, '..', 'imgs', line), osp.abspath(line)]
        found = next((c for c in candidates if osp.isfile(c)), None)
        if found is None:
            missing.append(line)
        else:
            out.append((osp.normpath(found), _output_name(line)))
    if missing:
        raise FileNotFoundError(f'{len(missing)} image(s) of {list_file} not found (looked next '
                                f'to the list, in ../imgs/ and in the current directory), e.g. '
                                f'{missing[:3]}')
    return out


def collect_images(inputs: Sequence[str], skip: Optional[str] = None) -> List[Tuple[str, str]]:
    """(path, name) of every image in ``inputs``.

    ``name`` is the path relative to its folder or list (an image's file name); two inputs may
    have the same name (their drawings get distinct names, see :func:`drawing_names`).

    Args:
        inputs (Sequence[str]): Image files, folders (searched recursively, sorted) and list
            files (``.txt``, one path per line).
        skip (str, optional): A folder whose files are left out of folders searched (the output
            folder: its drawings are images too). Defaults to None.

    Returns:
        List[Tuple[str, str]]: ``(path, name)`` pairs.
    """
    found: List[Tuple[str, str]] = []
    skip = osp.realpath(skip) if skip else None
    for item in inputs:
        if osp.isdir(item):
            for root, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs
                                 if skip is None or osp.realpath(osp.join(root, d)) != skip)
                for name in sorted(files):
                    if _is_image(name):
                        path = osp.join(root, name)
                        found.append((path, osp.relpath(path, item)))
        elif osp.isfile(item) and _is_image(item):
            found.append((item, osp.basename(item)))
        elif osp.isfile(item):
            found.extend(_read_list(item))
        else:
            raise FileNotFoundError(f'{item} is neither an image, a folder nor a list file')
    if not found:
        raise FileNotFoundError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in {list(inputs)}')
    return [(path, name.replace(os.sep, '/')) for path, name in found]


def drawing_names(names: Sequence[str]) -> List[str]:
    """``vis/`` names (without extension) of the drawings of images named ``names``.

    A name whose drawing another image already takes (same name, or the same but for the
    extension: a.jpg and a.png both draw to a.png) gets ``_1``, ``_2``, ...

    Args:
        names (Sequence[str]): The images' names.

    Returns:
        List[str]: One drawing name per image.
    """
    drawn: set = set()
    out = []
    for name in names:
        stem = osp.splitext(name)[0]
        candidate, k = stem, 0
        while candidate in drawn:
            k += 1
            candidate = f'{stem}_{k}'
        drawn.add(candidate)
        out.append(candidate)
    return out


# ---- model -------------------------------------------------------------------------------------
def read_checkpoint(path: str) -> Dict:
    """Load a checkpoint with mmengine's loaders, on the CPU.

    Args:
        path (str): A local file, or ``https://``, ``s3://`` ... as mmdet's tools.

    Returns:
        Dict: The checkpoint; a bare state dict is returned as ``{'state_dict': it}``.

    Raises:
        FileNotFoundError: For a missing local file.
        ValueError: Naming ``path``, for a folder or a file that is not a torch checkpoint
            (truncated, another format).
        UntrustedCheckpointError: For a checkpoint holding Python objects besides weights and
            training state (nothing in it runs; see ``--trust-checkpoint``).
    """
    from mmengine.runner.checkpoint import CheckpointLoader

    import tbx11k  # noqa: F401  (tbx11k.compat: the local loader, fixed for torch >= 2.6)
    from tbx11k.engine.hooks.checkpoint_interchange import is_bare_state_dict
    from tbx11k.utils.safe_checkpoint import UntrustedCheckpointError
    if '://' not in path:
        path = osp.expanduser(path)
        if osp.isdir(path):
            inside = sorted(n for n in os.listdir(path) if n.endswith('.pth'))
            hint = f' (it holds {", ".join(inside[-3:])})' if inside else ''
            raise ValueError(f'checkpoint {path} is a folder: give a .pth file in it{hint}')
        if not osp.isfile(path):
            raise FileNotFoundError(f'checkpoint {path} does not exist')
    try:
        checkpoint = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    except UntrustedCheckpointError:
        raise
    except Exception as error:  # unpickling, zip, EOF, download errors: all name the file
        raise ValueError(f'cannot load checkpoint {path}: {type(error).__name__}: {error} (a '
                         'truncated file, or not a torch checkpoint)') from error
    if not isinstance(checkpoint, dict):
        raise ValueError(f'{path} is not a checkpoint: it holds a {type(checkpoint).__name__}, '
                         'not a dict of weights')
    if 'state_dict' not in checkpoint:
        if not is_bare_state_dict(checkpoint):
            raise ValueError(f'{path} is not a checkpoint: no state_dict, and not a dict of '
                             f'tensors (keys: {sorted(checkpoint)[:5]})')
        checkpoint = dict(state_dict=checkpoint)
    return checkpoint


def select_weights(checkpoint: Dict, weights: str = 'ema') -> Tuple[Dict, str]:
    """One set of weights of a checkpoint (see the module doc).

    Args:
        checkpoint (Dict): The loaded checkpoint.
        weights (str): ``'ema'`` or ``'raw'``; checkpoints without EMA have only one set.
            Defaults to 'ema'.

    Returns:
        Tuple[Dict, str]: The state dict and a description of it.
    """
    if weights not in ('ema', 'raw'):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    state = checkpoint.get('state_dict', checkpoint)
    ema = checkpoint.get('ema_state_dict')
    if ema is None:
        return state, 'model weights (the checkpoint has no EMA)'
    steps = int(ema['steps']) if 'steps' in ema else None
    if weights == 'ema':
        return state, f'EMA weights ({steps} EMA updates)'
    raw = {k[len('module.'):]: v for k, v in ema.items() if k.startswith('module.')}
    return raw, 'raw (non-EMA) training weights'


#: the EMA weights are worth using once the averaged training steps make up at least this share
#: of them (the rest being the weights the EMA started from)
EMA_MIN_TRAINED_SHARE = 0.5
#: EMA types whose decay is a fixed 1 - momentum (mmengine's and its multi-tensor version)
FIXED_DECAY_EMA_TYPES = ('ExponentialMovingAverage', 'ForeachExponentialMovingAverage')


@dataclass(frozen=True)
class EMASettings:
    """The EMA of a config's ``EMAHook``: weights are ``decay * ema + (1 - decay) * model`` every
    ``interval`` optimizer steps (mmengine's ``ExponentialMovingAverage``, decay = 1 - momentum).
    """
    momentum: float
    interval: int = 1

    @property
    def decay(self) -> float:
        return 1.0 - self.momentum


def ema_settings(cfg) -> Optional[EMASettings]:
    """The :class:`EMASettings` of the ``EMAHook`` in ``cfg.custom_hooks``, with mmengine's
    defaults for what it leaves out; None without an EMAHook or with an EMA of another kind
    (annealed momentum, stochastic weight averaging), whose decay is not fixed."""
    for hook in cfg.get('custom_hooks') or []:
        if str(hook.get('type', '')).split('.')[-1] != 'EMAHook':
            continue
        if str(hook.get('ema_type', 'ExponentialMovingAverage')).split('.')[-1] not in \
                FIXED_DECAY_EMA_TYPES:
            return None
        return EMASettings(float(hook.get('momentum', 0.0002)), int(hook.get('interval', 1)))
    return None


def young_ema_warning(checkpoint: Dict, ema: Optional[EMASettings]) -> Optional[str]:
    """One line saying that a checkpoint's EMA weights are still mostly their starting point.

    mmengine's EMA copies the model at its first update, then averages
    ``ema = decay * ema + (1 - decay) * model``; after ``n`` averaging updates the weights it
    started from still make up ``decay ** n`` of it. The rule: the EMA weights are too young
    while the trained steps make up less than half of them, ``1 - decay ** n <
    EMA_MIN_TRAINED_SHARE``; at decay 0.9998 that is the first 3465 updates. ``n`` comes from
    the checkpoint (``ema_state_dict['steps']``), the decay and interval from ``ema`` (the
    config's EMAHook). None when the EMA is old enough, or when there is nothing to judge (no
    EMA in the checkpoint, or an EMA whose decay is not fixed).
    """
    state = checkpoint.get('ema_state_dict')
    if ema is None or not state or 'steps' not in state or not 0.0 < ema.momentum < 1.0:
        return None
    steps = int(state['steps'])
    updates = max(steps - 1, 0) // max(ema.interval, 1)  # the first call copies the model
    start_share = ema.decay ** updates
    if 1.0 - start_share >= EMA_MIN_TRAINED_SHARE:
        return None
    needed = math.ceil(math.log(1.0 - EMA_MIN_TRAINED_SHARE) / math.log(ema.decay))
    return (f'the EMA weights have had {updates} update(s) at decay {ema.decay:g}: '
            f'{100.0 * start_share:.1f} % of them are still the weights the EMA started from '
            f'(its first optimizer step), so they predict much like the model did then; use the '
            f'training weights (--weights raw) until the EMA has had about {needed} updates '
            f'(1 - decay^updates >= {EMA_MIN_TRAINED_SHARE:g})')


@dataclass
class Detector:
    model: object
    pipeline: object
    classes: Tuple[str, ...]
    weights: str
    config: str
    checkpoint: str
    #: :func:`young_ema_warning` of the weights used (None: nothing to say)
    weights_warning: Optional[str] = None

    def predict(self, path: str) -> Dict:
        """Detections of one image file (all of them, sorted by score)."""
        import torch
        from mmengine.dataset import pseudo_collate
        data = pseudo_collate([self.pipeline(dict(img_path=path, img_id=0))])
        with torch.no_grad():
            sample = self.model.test_step(data)[0]
        height, width = sample.ori_shape[:2]
        pred = sample.pred_instances
        bboxes = pred.bboxes.cpu().numpy().astype(float)
        scores = pred.scores.cpu().numpy().astype(float)
        labels = pred.labels.cpu().numpy().astype(int)
        detections = []
        for i in np.argsort(-scores, kind='stable'):
            label = int(labels[i])
            detections.append(dict(
                bbox=[round(float(v), BBOX_DECIMALS) for v in bboxes[i]],
                score=round(float(scores[i]), SCORE_DECIMALS),
                label=label,
                class_name=self.classes[label]))
        return dict(width=int(width), height=int(height), detections=detections)


def _strip_annotations(pipeline: List[Dict]) -> List[Dict]:
    return [t for t in pipeline if t.get('type', '').split('.')[-1] != 'LoadAnnotations']


def load_detector(config: str, checkpoint: str, device: str = 'cpu', weights: str = 'ema',
                  cfg_options: Optional[Dict] = None) -> Detector:
    """Build the config's model, load a checkpoint's weights strictly, prepare the test pipeline.

    Class names: the checkpoint's ``meta['dataset_meta']['classes']`` (as mmdet does), else the
    config's.

    Args:
        config (str): The config file.
        checkpoint (str): The checkpoint (see :func:`read_checkpoint`).
        device (str): The device. Defaults to 'cpu'.
        weights (str): ``'ema'`` or ``'raw'`` (see :func:`select_weights`). Defaults to 'ema'.
        cfg_options (Dict, optional): ``--cfg-options`` to merge. Defaults to None.

    Returns:
        Detector: The model, its test pipeline and class names.

    Raises:
        ValueError: When the weights do not fit the model (e.g. an unconverted COCO
            checkpoint).
    """
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from mmcv.transforms import Compose
    from mmdet.registry import MODELS
    from mmdet.utils import get_test_pipeline_cfg

    from .checkpoint_conversion import config_classes, weights_misfit, without_ddp_prefix

    cfg = Config.fromfile(config)  # imports custom_imports (tbx11k: WindowNormalizedDINO)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.model.get('backbone', {}).get('init_cfg') is not None:
        cfg.model.backbone.init_cfg = None  # weights come from the checkpoint: no download
    ckpt = read_checkpoint(checkpoint)  # before building anything: a refused file stops here
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model)

    state, description = select_weights(ckpt, weights)
    state = without_ddp_prefix(state)
    misfit = weights_misfit(state, model, checkpoint, config)
    if misfit:
        raise ValueError(misfit + '\nA COCO checkpoint must be converted first '
                         '(tools/model_converters/convert_coco_checkpoint.py) and trained.')
    model.load_state_dict(state, strict=True)
    model.to(device).eval()

    meta_classes = ((ckpt.get('meta') or {}).get('dataset_meta') or {}).get('classes')
    classes = tuple(meta_classes or config_classes(config) or ())
    num_classes = model.bbox_head.num_classes
    if len(classes) != num_classes:
        raise ValueError(f'{len(classes)} class names {classes} for a model with {num_classes} '
                         'classes')
    pipeline = Compose(_strip_annotations(get_test_pipeline_cfg(cfg)))
    warning = young_ema_warning(ckpt, ema_settings(cfg)) if weights == 'ema' else None
    return Detector(model, pipeline, classes, description, config, checkpoint, warning)


# ---- drawing -----------------------------------------------------------------------------------
def class_color(label: int) -> Tuple[int, int, int]:
    """The drawing colour of class ``label``.

    Args:
        label (int): The class index.

    Returns:
        Tuple[int, int, int]: A BGR colour.
    """
    return PALETTE[label % len(PALETTE)]


def draw_detections(image: np.ndarray, detections: Iterable[Dict],
                    thickness: Optional[int] = None) -> np.ndarray:
    """A copy of a BGR image with each detection's box (class colour) and a label
    ``<short class name> <score>`` drawn on it; higher scores are drawn last (on top).

    Args:
        image (np.ndarray): The BGR image.
        detections (Iterable[Dict]): Detections as in ``detections.json``.
        thickness (int, optional): The box line width. Defaults to None (from the image
            size).

    Returns:
        np.ndarray: The drawing.
    """
    import cv2
    out = np.ascontiguousarray(image.copy())
    height, width = out.shape[:2]
    side = min(height, width)
    thickness = thickness or max(1, int(round(side / 320)))
    font_scale = float(np.clip(side / 900, 0.3, 1.2))
    font_thick = max(1, int(round(font_scale * 1.5)))
    for det in sorted(detections, key=lambda d: d['score']):
        color = class_color(int(det['label']))
        x1, y1, x2, y2 = [int(round(v)) for v in det['bbox']]
        x1, x2 = np.clip([x1, x2], 0, width - 1)
        y1, y2 = np.clip([y1, y2], 0, height - 1)
        cv2.rectangle(out, (int(x1), int(y1)), (int(x2), int(y2)), color, thickness,
                      cv2.LINE_AA)
        text = f"{SHORT_NAMES.get(det['class_name'], det['class_name'])} {det['score']:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, font_thick)
        pad = 2
        box_h = th + base + 2 * pad
        # above the box when there is room, else just inside its top edge
        top = y1 - box_h if y1 - box_h >= 0 else y1
        left = int(min(x1, max(0, width - tw - 2 * pad)))
        cv2.rectangle(out, (left, int(top)), (left + tw + 2 * pad, int(top + box_h)), color,
                      cv2.FILLED)
        luminance = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
        ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
        cv2.putText(out, text, (left + pad, int(top + pad + th)), cv2.FONT_HERSHEY_SIMPLEX,
                    font_scale, ink, font_thick, cv2.LINE_AA)
    return out


# ---- json --------------------------------------------------------------------------------------
def write_detections(path: str, result: Dict) -> None:
    """Write the json atomically: the header keys one per line, then one line per image.

    Args:
        path (str): The json file.
        result (Dict): The content (see :func:`run_inference`).
    """
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fields = [f'{json.dumps(k)}: {json.dumps(v)}' for k, v in result.items() if k != 'images']
    if 'images' in result:
        images = ',\n  '.join(json.dumps(r) for r in result['images'])
        fields.append(f'"images": [\n  {images}\n ]' if images else '"images": []')
    with open(path + '.tmp', 'w') as f:
        f.write('{\n ' + ',\n '.join(fields) + '\n}\n')
    os.replace(path + '.tmp', path)


def load_detections(path: str) -> Dict:
    """Read a ``detections.json`` written by :func:`write_detections`.

    Args:
        path (str): The json file.

    Returns:
        Dict: Its content.
    """
    with open(path) as f:
        return json.load(f)


# ---- the whole tool ----------------------------------------------------------------------------
def check_input_images(images: Sequence[Tuple[str, str]]) -> List[str]:
    """Check the input images' headers before any inference.

    Warns once about input images of more than 8 bits per sample (mmcv loads them nearly black)
    and once about JPEGs with an EXIF orientation (mmcv decodes them rotated, so the drawings and
    boxes are in the rotated frame).

    Args:
        images (Sequence[Tuple[str, str]]): ``(path, name)`` pairs.

    Returns:
        List[str]: The deep images' paths.

    Raises:
        OSError: Listing every file whose header is not an image's (one bad file among
            thousands stopped the run halfway, with the drawings so far and no json).
    """
    from mmengine.logging import print_log

    from ..datasets.validation import (
        TBX11KDataError,
        deep_images_warning,
        exif_oriented_warning,
        read_image_header,
    )
    deep, oriented, unreadable = [], [], []
    for path, _ in images:
        try:
            header = read_image_header(path)
        except TBX11KDataError as error:
            unreadable.append(str(error))
            continue
        if header.bits_per_sample > 8:
            deep.append(path)
        if header.exif_orientation != 1:
            oriented.append(path)
    if unreadable:
        raise OSError(f'{len(unreadable)} of the {len(images)} inputs are not readable images; '
                      'remove them from the inputs: ' + '; '.join(unreadable[:5])
                      + (' ...' if len(unreadable) > 5 else ''))
    if deep:
        print_log(deep_images_warning('infer', deep), logger='current', level=logging.WARNING)
    if oriented:
        print_log(exif_oriented_warning('infer', oriented), logger='current',
                  level=logging.WARNING)
    return deep


def run_inference(detector: Detector, images: Sequence[Tuple[str, str]], out_dir: str,
                  score_thr: float = 0.3, draw: bool = True, progress: bool = False) -> Dict:
    """Predict on ``images``, draw the detections and write ``OUT/detections.json``.

    Args:
        detector (Detector): From :func:`load_detector`.
        images (Sequence[Tuple[str, str]]): ``(path, name)`` pairs from :func:`collect_images`.
        out_dir (str): The output folder ``OUT``.
        score_thr (float): Detections scoring at least this are drawn onto
            ``OUT/vis/<name>.png`` (names made distinct by :func:`drawing_names`). Defaults to
            0.3.
        draw (bool): Write the drawings. Defaults to True.
        progress (bool): Show a progress bar. Defaults to False.

    Returns:
        Dict: The json's content.
    """
    import cv2
    check_input_images(images)
    drawings = drawing_names([name for _, name in images])
    records = []
    bar = None
    if progress:
        import sys

        from mmengine.utils import ProgressBar
        bar = ProgressBar(len(images), file=sys.stderr)
    for (path, name), drawing in zip(images, drawings):
        try:
            pred = detector.predict(path)
        except Exception as error:  # mmcv's loader only asserts on a file it cannot decode
            if cv2.imread(path, cv2.IMREAD_UNCHANGED) is None:
                raise OSError(f'{path}: not a readable image (empty, truncated or not an '
                              'image file); remove it from the inputs') from error
            raise
        kept = [d for d in pred['detections'] if d['score'] >= score_thr]
        record = dict(file_name=name, path=osp.abspath(path), width=pred['width'],
                      height=pred['height'])
        if draw:
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                raise OSError(f'cannot read {path}')
            vis_name = osp.join('vis', drawing + '.png')
            vis_path = osp.join(out_dir, vis_name)
            os.makedirs(osp.dirname(vis_path), exist_ok=True)
            if not cv2.imwrite(vis_path, draw_detections(image, kept),
                               [cv2.IMWRITE_PNG_COMPRESSION, 9]):
                raise OSError(f'cannot write {vis_path}')
            record['vis'] = vis_name.replace(os.sep, '/')
        record['detections'] = kept
        records.append(record)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.file.write('\n')
    result = dict(config=detector.config, checkpoint=detector.checkpoint,
                  weights=detector.weights, score_thr=score_thr,
                  classes=list(detector.classes), images=records)
    write_detections(osp.join(out_dir, 'detections.json'), result)
    return result

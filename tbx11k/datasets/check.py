"""Checks of a TBX11K-format data set (logic of ``tools/check_dataset.py``).

For every json file: the json/entry validation of :mod:`.validation` (with
all errors collected instead of raised), image files decoded with cv2 and
their size compared with the json, counts per class, empty images, clipped
boxes; byte-identical images (content hash) within a file and across splits
(train/val/test, as the real data has 38 train/val pairs in ``sick/``) are
reported as warnings.
"""
import glob
import hashlib
import os.path as osp
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from .tbx11k import EXTRA_FOLDER, TBX11KDataset, is_extra_image
from .validation import (
    BBOX_TOLERANCE,
    Issue,
    IssueCollector,
    TBX11KDataError,
    background_only_warning,
    check_bbox_tolerance,
    image_folder,
    image_ref,
    norm_file_name,
    read_image_header,
    read_json,
    resolve_class_ids,
    summarize_ids,
    validate_coco,
)

#: An annotation ``area`` outside [w*h / AREA_FACTOR, w*h * AREA_FACTOR] of its bbox (or above
#: MAX_AREA) is warned about: COCOeval takes the json's area for its area ranges.
AREA_FACTOR = 4.0
MAX_AREA = 1e10  # COCOeval's 'all' range ends here


@dataclass
class ImageCheck:
    """Result of reading and decoding one image file."""
    path: str
    ok: bool = True
    error: Optional[str] = None
    width: Optional[int] = None
    height: Optional[int] = None
    channels: Optional[int] = None
    dtype: Optional[str] = None
    max_value: Optional[int] = None  # decoded only
    digest: Optional[str] = None
    exif_orientation: int = 1  # a JPEG's EXIF orientation: mmcv (cv2) rotates/flips when != 1


@dataclass
class FileReport:
    """Counts and issues of one json file."""
    ann_file: str
    split: Optional[str] = None
    num_images: int = 0
    images_per_folder: Dict[str, int] = field(default_factory=dict)
    num_annotations: int = 0
    annotations_per_class: Dict[str, int] = field(default_factory=dict)
    num_empty_images: int = 0
    num_clipped: int = 0
    num_dropped_small: int = 0
    duplicate_groups: List[List[str]] = field(default_factory=list)
    errors: List[Issue] = field(default_factory=list)
    warnings: List[Issue] = field(default_factory=list)
    # file_name -> digest, for the cross-split check
    digests: Dict[str, str] = field(default_factory=dict, repr=False)


@dataclass
class CheckReport:
    """Everything :func:`check_dataset` found."""
    data_root: str
    files: List[FileReport] = field(default_factory=list)
    errors: List[Issue] = field(default_factory=list)  # not tied to a file
    warnings: List[Issue] = field(default_factory=list)
    split_overlaps: Dict[str, List[List[str]]] = field(default_factory=dict)

    @property
    def num_errors(self) -> int:
        return len(self.errors) + sum(len(f.errors) for f in self.files)

    @property
    def num_warnings(self) -> int:
        return len(self.warnings) + sum(len(f.warnings) for f in self.files)

    @property
    def ok(self) -> bool:
        return self.num_errors == 0

    def all_errors(self) -> List[Issue]:
        return self.errors + [e for f in self.files for e in f.errors]

    def all_warnings(self) -> List[Issue]:
        return self.warnings + [w for f in self.files for w in f.warnings]

    def format(self, max_list: int = 20) -> str:
        """The text report (:func:`format_report`).

        Args:
            max_list (int): Issues listed per kind. Defaults to 20.

        Returns:
            str: The report.
        """
        return format_report(self, max_list=max_list)


def split_of(ann_file: str) -> Optional[str]:
    """'train' / 'val' / 'test' from a TBX11K json name.

    Args:
        ann_file (str): The json's path.

    Returns:
        str | None: The split; None for trainval (a union of two splits) or names without a
        split.
    """
    stem = osp.splitext(osp.basename(ann_file))[0].lower()
    if 'trainval' in stem:
        return None
    for split in ('train', 'val', 'test'):
        if split in stem.replace('_only_tb', '').split('_'):
            return split
    return None


def check_image(path: str, decode: bool = True) -> ImageCheck:
    """Read one image: content hash, and (``decode``) size/channels.

    Args:
        path (str): The image file.
        decode (bool): Also decode it. Defaults to True.

    Returns:
        ImageCheck: What was found.
    """
    res = ImageCheck(path)
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except OSError as e:
        res.ok, res.error = False, f'cannot read image file {path}: {e}'
        return res
    res.digest = hashlib.md5(raw).hexdigest()
    try:  # the size as mmcv loads it (a JPEG's EXIF orientation counts), also without decoding
        header = read_image_header(path)
    except TBX11KDataError as e:
        res.ok, res.error = False, str(e)
        return res
    res.width, res.height = header.width, header.height
    res.exif_orientation = header.exif_orientation
    if not decode:
        return res
    arr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED) \
        if raw else None
    if arr is None:
        res.ok = False
        res.error = f'cannot decode image file {path} ({len(raw)} bytes)'
        return res
    res.channels = 1 if arr.ndim == 2 else arr.shape[2]
    res.dtype = str(arr.dtype)
    res.max_value = int(arr.max()) if arr.size else 0
    return res


def check_ann_file(ann_file: str,
                   img_prefix: str,
                   *,
                   decode: bool = True,
                   bbox_tolerance: float = BBOX_TOLERANCE,
                   cache: Optional[Dict[str, ImageCheck]] = None,
                   classes: Optional[Sequence[str]] = None
                   ) -> FileReport:
    """Check one json file and the images it lists.

    Args:
        ann_file (str): The json file.
        img_prefix (str): The folder its ``file_name`` entries are relative to.
        decode (bool): Decode every image. Defaults to True.
        bbox_tolerance (float): Pixels a box may reach outside its image. Defaults to
            ``BBOX_TOLERANCE``.
        cache (Dict[str, ImageCheck], optional): Image checks shared between files. Defaults
            to None.
        classes (Sequence[str], optional): The classes to train on, which must be categories of
            the file in its order, as training needs. Defaults to None (TBX11KDataset's, as the
            shipped configs).

    Returns:
        FileReport: The file's counts and issues.
    """
    classes = DEFAULT_CLASSES if classes is None else classes
    report = FileReport(ann_file=ann_file, split=split_of(ann_file))
    cache = {} if cache is None else cache
    try:
        data = read_json(ann_file)
    except TBX11KDataError as e:
        report.errors.append(Issue('error', 'bad_json', str(e)))
        return report
    val = validate_coco(
        data,
        ann_file,
        img_prefix=img_prefix,
        check_files=True,
        bbox_tolerance=bbox_tolerance,
        allow_missing_annotations=report.split == 'test',
        raise_errors=False)
    issues: IssueCollector = val.issues
    cat_name = {c['id']: c['name'] for c in val.categories}
    per_class = Counter({name: 0 for name in cat_name.values()})
    folders: Counter = Counter()
    by_digest: Dict[str, List[str]] = defaultdict(list)
    for img in val.images:
        fn = img['file_name']
        folders[image_folder(fn, img_prefix)] += 1
        anns = val.anns_by_image[img['id']]
        if not anns:
            report.num_empty_images += 1
        for a in anns:
            per_class[cat_name[a['category_id']]] += 1
        path = osp.join(img_prefix, fn)
        if path not in cache:
            cache[path] = check_image(path, decode=decode)
        chk = cache[path]
        entry = image_ref(img)
        if not chk.ok:
            issues.error('undecodable_image', entry, chk.error)
            continue
        if chk.digest:
            report.digests[norm_file_name(fn, img_prefix)] = chk.digest
            by_digest[chk.digest].append(fn)
        if chk.width is not None and (chk.width, chk.height) != (
                img['width'], img['height']):
            issues.error(
                'image_size_mismatch', entry,
                f'the file is {chk.width}x{chk.height} but the json says '
                f"{img['width']}x{img['height']}")
        if chk.channels is not None and (chk.channels != 3
                                         or chk.dtype != 'uint8'):
            msg = (f'{chk.channels}-channel {chk.dtype} image (TBX11K images '
                   'are 3-channel 8-bit)')
            if chk.dtype == 'uint16':
                msg += (f'; mmcv loads it as 8-bit by dividing by 256: its '
                        f'maximum {chk.max_value} becomes '
                        f'{chk.max_value // 256}'
                        + (' (nearly black)' if chk.max_value < 16384 else '')
                        + '; convert it to 8-bit, scaled to its own range')
            issues.warning('image_format', entry, msg)
        if chk.exif_orientation != 1:
            issues.warning(
                'exif_orientation', entry,
                f'JPEG with EXIF orientation {chk.exif_orientation}: mmcv decodes it rotated or '
                'flipped, so its boxes must be in that frame (the size check catches a '
                '90-degree turn of a non-square image only); save it upright without the tag')
    tb_empty = [
        img['file_name'] for img in val.images
        if norm_file_name(img['file_name'], img_prefix).startswith('tb/')
        and not val.anns_by_image[img['id']]
    ]
    if tb_empty:
        issues.warning(
            'tb_image_without_boxes', None,
            f'{len(tb_empty)} image(s) in tb/ without boxes (the real data '
            f'has tb/tb1199.png): {", ".join(tb_empty[:5])}')
    extra = [
        img['file_name'] for img in val.images
        if is_extra_image(img['file_name'], img_prefix) and not val.anns_by_image[img['id']]
    ]
    if extra:
        issues.warning(
            'extra_images_without_boxes', None,
            f'{len(extra)} image(s) in {EXTRA_FOLDER}/ without boxes (the DA, '
            'DB, Montgomery and Shenzhen sets of the all_* files have none, '
            f'even on TB films), e.g. {", ".join(extra[:3])}: trained on as '
            'negatives they teach that TB is background, and image-level '
            'metrics count them as non-TB')
    if val.top_level_ok and not val.num_raw_images:
        issues.error('no_images', None, "'images' is empty")
    if val.categories:  # (a json without categories is reported by validate_coco)
        resolve_class_ids(tuple(classes), val.categories, issues)
    _check_areas(val.anns_by_image, issues)
    if is_training_file(ann_file):
        background_only = background_only_warning(
            issues.source, tuple(classes), len(val.images),
            sum(1 for anns in val.anns_by_image.values() for a in anns
                if cat_name[a['category_id']] in classes
                and not a.get('ignore', False)))
        if background_only:
            issues.warnings.append(Issue('warning', 'no_training_boxes', background_only))
    report.duplicate_groups = [sorted(v) for v in by_digest.values()
                               if len(v) > 1]
    if report.duplicate_groups:
        n_img = sum(len(g) for g in report.duplicate_groups)
        issues.warning(
            'duplicate_content', None,
            f'{len(report.duplicate_groups)} group(s) of byte-identical '
            f'images ({n_img} images) within this file, e.g. '
            f'{" == ".join(report.duplicate_groups[0])}')
    report.num_images = len(val.images)
    report.images_per_folder = dict(sorted(folders.items()))
    report.num_annotations = val.num_annotations
    report.annotations_per_class = dict(per_class)
    report.num_clipped = len(val.clipped_ann_ids)
    report.num_dropped_small = len(val.dropped_small_ann_ids)
    report.errors = issues.errors
    report.warnings = issues.warnings
    return report


#: TBX11KDataset's default classes (the shipped configs), in label order.
DEFAULT_CLASSES = TBX11KDataset.METAINFO['classes']


def is_training_file(ann_file: str) -> bool:
    """Whether a json is trained on by its name: train or trainval.

    Args:
        ann_file (str): The json's path.

    Returns:
        bool: True for a training json.
    """
    stem = osp.splitext(osp.basename(ann_file))[0].lower()
    return split_of(ann_file) == 'train' or 'trainval' in stem


def _check_areas(anns_by_image: Dict[int, List[dict]], issues: IssueCollector) -> None:
    """Warn about annotations whose ``area`` is far from their (json) bbox's w*h."""
    bad = []
    for anns in anns_by_image.values():
        for a in anns:
            _, _, w, h = a.get('bbox_orig', a['bbox'])
            wh, area = float(w) * float(h), float(a['area'])
            if area > MAX_AREA or (wh >= 1 and not wh / AREA_FACTOR <= area
                                   <= wh * AREA_FACTOR):
                bad.append((a['id'], area, w, h))
    if not bad:
        return
    ann_id, area, w, h = bad[0]
    issues.warning(
        'area_mismatch', None,
        f"{len(bad)} annotation(s) have an 'area' outside [w*h/{AREA_FACTOR:g}, "
        f'{AREA_FACTOR:g}*w*h] of their bbox or above {MAX_AREA:g} (annotation ids '
        f'{summarize_ids([b[0] for b in bad])}; e.g. id={ann_id}: area {area:g}, bbox '
        f'{w:g}x{h:g}): COCO AP uses the json\'s area, not the box, for its area ranges '
        f'(a box of area > {MAX_AREA:g} is outside even "all", so its AP is n/a while the box is '
        'counted here); set area to w*h')


def default_ann_files(data_root: str) -> List[str]:
    """The TBX11K_*.json files under DATA_ROOT/annotations/json.

    Args:
        data_root (str): The TBX11K root.

    Returns:
        List[str]: Their paths, sorted.
    """
    return sorted(
        glob.glob(osp.join(data_root, 'annotations', 'json', 'TBX11K_*.json')))


def check_dataset(data_root: str,
                  ann_files: Optional[Sequence[str]] = None,
                  *,
                  img_dir: str = 'imgs',
                  decode: bool = True,
                  bbox_tolerance: float = BBOX_TOLERANCE,
                  classes: Optional[Sequence[str]] = None) -> CheckReport:
    """Check json files of a TBX11K root.

    Args:
        data_root (str): The TBX11K root.
        ann_files (Sequence[str], optional): The json files; a relative entry is
            ``data_root/entry`` when that exists, else taken as given (relative to the current
            folder). Defaults to None (:func:`default_ann_files`).
        img_dir (str): The image folder under ``data_root``. Defaults to 'imgs'.
        decode (bool): Decode every image. Defaults to True.
        bbox_tolerance (float): Pixels a box may reach outside its image. Defaults to
            ``BBOX_TOLERANCE``.
        classes (Sequence[str], optional): The classes to train on: a json that training with
            them would refuse is an error. Defaults to None (TBX11KDataset's, the shipped
            configs').

    Returns:
        CheckReport: Every file's counts and issues.
    """
    data_root = str(data_root)
    bbox_tolerance = check_bbox_tolerance(bbox_tolerance)
    report = CheckReport(data_root=data_root)
    if not osp.isdir(data_root):
        report.errors.append(
            Issue('error', 'missing_root',
                  f'{data_root}: data root is not a folder'))
        return report
    if not ann_files:
        ann_files = default_ann_files(data_root)
        if not ann_files:
            report.errors.append(
                Issue('error', 'no_json',
                      f'{data_root}: no annotations/json/TBX11K_*.json found'))
            return report
    resolved = []
    for f in ann_files:
        f = str(f)
        if not osp.isabs(f) and osp.exists(osp.join(data_root, f)):
            f = osp.join(data_root, f)
        resolved.append(osp.abspath(f))
    img_prefix = osp.join(data_root, img_dir)
    cache: Dict[str, ImageCheck] = {}
    for f in resolved:
        report.files.append(
            check_ann_file(f, img_prefix, decode=decode,
                           bbox_tolerance=bbox_tolerance, cache=cache,
                           classes=classes))
    _cross_split(report)
    return report


def _cross_split(report: CheckReport) -> None:
    """Warn about byte-identical images shared by different splits."""
    by_split: Dict[str, Dict[str, set]] = defaultdict(
        lambda: defaultdict(set))
    for fr in report.files:
        if fr.split is None:
            continue
        for fn, digest in fr.digests.items():
            by_split[fr.split][digest].add(fn)
    splits = [s for s in ('train', 'val', 'test') if s in by_split]
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            pairs = []
            for digest in set(by_split[a]) & set(by_split[b]):
                for fa in sorted(by_split[a][digest]):
                    for fb in sorted(by_split[b][digest]):
                        pairs.append([fa, fb])
            if not pairs:
                continue
            pairs.sort()
            report.split_overlaps[f'{a}/{b}'] = pairs
            folders = Counter(p[0].split('/')[0] for p in pairs)
            same = sum(1 for p in pairs if p[0] == p[1])
            msg = (f'{report.data_root}: {len(pairs)} byte-identical image '
                   f'pair(s) between {a} and {b} (' + ', '.join(
                       f'{k}: {v}' for k, v in sorted(folders.items())) +
                   f'), e.g. {pairs[0][0]} == {pairs[0][1]}')
            if same:
                msg += f'; {same} are the same file listed in both'
            report.warnings.append(Issue('warning', 'split_overlap', msg))


def format_report(report: CheckReport, max_list: int = 20) -> str:
    """Text report with counts per file, then errors and warnings.

    Args:
        report (CheckReport): The report.
        max_list (int): Issues listed per kind. Defaults to 20.

    Returns:
        str: The text.
    """
    root = report.data_root
    lines = [f'TBX11K data check: {root}']
    for fr in report.files:
        lines.append('')
        lines.append(osp.abspath(fr.ann_file) +
                     (f'  [{fr.split}]' if fr.split else ''))
        folders = ', '.join(f'{k} {v}'
                            for k, v in fr.images_per_folder.items())
        lines.append(f'  images: {fr.num_images}' +
                     (f' ({folders})' if folders else '') +
                     f'; without boxes: {fr.num_empty_images}')
        per_class = ', '.join(f'{k} {v}'
                              for k, v in fr.annotations_per_class.items())
        lines.append(f'  annotations: {fr.num_annotations}' +
                     (f' ({per_class})' if per_class else ''))
        lines.append(f'  boxes clipped to the image: {fr.num_clipped}; '
                     f'dropped (< 1 px after clipping): '
                     f'{fr.num_dropped_small}')
        lines.append(f'  byte-identical groups within the file: '
                     f'{len(fr.duplicate_groups)}')
        err_kinds = Counter(e.kind for e in fr.errors)
        lines.append(f'  errors: {len(fr.errors)}' + (
            ' (' + ', '.join(f'{k} {v}'
                             for k, v in sorted(err_kinds.items())) + ')'
            if err_kinds else '') + f'; warnings: {len(fr.warnings)}')
    for title, items in (('ERRORS', report.all_errors()),
                         ('WARNINGS', report.all_warnings())):
        if not items:
            continue
        lines.append('')
        lines.append(f'{title} ({len(items)}):')
        for it in items[:max_list]:
            lines.append(f'  - {it.message}')
        if len(items) > max_list:
            lines.append(f'  ... and {len(items) - max_list} more')
    lines.append('')
    if report.ok:
        lines.append(f'RESULT: OK ({report.num_warnings} warnings)')
    else:
        lines.append(f'RESULT: FAILED ({report.num_errors} errors, '
                     f'{report.num_warnings} warnings)')
    return '\n'.join(lines)


def _tolerance_arg(text: str) -> float:
    """argparse type of --bbox-tolerance: a finite number >= 0."""
    import argparse
    try:
        return check_bbox_tolerance(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'must be a finite number >= 0 (pixels), got {text!r}') from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point (tools/check_dataset.py).

    Args:
        argv (Sequence[str], optional): The arguments. Defaults to None (``sys.argv``).

    Returns:
        int: Exit status 1 on errors, 0 with warnings only.
    """
    import argparse
    p = argparse.ArgumentParser(
        description='Validate a TBX11K-format data set: files exist and '
        'decode, sizes match the json, boxes, categories, duplicate ids, '
        'byte-identical images within and across splits.')
    p.add_argument('data_root', help='TBX11K root (holds imgs/, annotations/)')
    p.add_argument('ann_files', nargs='*',
                   help='json files (default: annotations/json/TBX11K_*.json);'
                   ' a relative path is under DATA_ROOT when it exists there, '
                   'else relative to the current folder')
    p.add_argument('--img-dir', default='imgs',
                   help='image folder under DATA_ROOT that file_name is '
                   'relative to (default: imgs)')
    p.add_argument('--no-decode', action='store_true',
                   help='do not decode images (existence and hashes only)')
    p.add_argument('--bbox-tolerance', type=_tolerance_arg, default=BBOX_TOLERANCE,
                   help='pixels a box may reach outside the image before it '
                   'is an error (default: %(default)s)')
    p.add_argument('--max-list', type=int, default=20,
                   help='errors/warnings listed in full (default: 20)')
    p.add_argument('--classes', nargs='+', metavar='NAME',
                   help='the classes you will train on, as given to tools/train.py --classes '
                   '(default: the shipped configs\' '
                   f'{" ".join(DEFAULT_CLASSES)})')
    args = p.parse_args(argv)
    report = check_dataset(
        args.data_root,
        args.ann_files,
        img_dir=args.img_dir,
        decode=not args.no_decode,
        bbox_tolerance=args.bbox_tolerance,
        classes=args.classes)
    print(format_report(report, max_list=args.max_list))
    return 0 if report.ok else 1

"""TBX11K detection dataset for MMDetection 3.x."""
import logging
import os.path as osp
from collections import Counter
from typing import List, Optional, Union

from mmengine.logging import print_log

from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS

from .seeded import SeededSampleMixin
from .validation import (
    BBOX_TOLERANCE,
    MIN_BOX_SIZE,
    ImageHeader,
    IssueCollector,
    TBX11KDataError,
    background_only_warning,
    check_bbox_tolerance,
    deep_images_warning,
    exif_oriented_warning,
    image_folder,
    read_image_header,
    read_json,
    resolve_class_ids,
    summarize_ids,
    validate_coco,
)

ACTIVE_TB = 'ActiveTuberculosis'
LATENT_TB = 'ObsoletePulmonaryTuberculosis'
UNCERTAIN_TB = 'PulmonaryTuberculosis'

#: Colour per category name, used to build the palette of any class subset.
CLASS_COLORS = {
    ACTIVE_TB: (220, 20, 60),
    LATENT_TB: (0, 120, 255),
    UNCERTAIN_TB: (255, 170, 0),
}
_FALLBACK_COLOR = (128, 128, 128)


#: Top folder of ``file_name`` for the extra public sets of the ``all_*``
#: files (DA, DB, Montgomery, Shenzhen): no boxes, even on TB films.
EXTRA_FOLDER = 'extra'


def is_extra_image(file_name: str, img_prefix: Optional[str] = None) -> bool:
    """Whether a json ``file_name`` is in the extra sets.

    Args:
        file_name (str): Relative to ``imgs/``, or absolute under ``img_prefix``.
        img_prefix (str, optional): The image folder. Defaults to None.

    Returns:
        bool: True for an image of the extra sets.
    """
    return image_folder(file_name.replace('\\', '/'), img_prefix) == EXTRA_FOLDER


@DATASETS.register_module()
class TBX11KDataset(SeededSampleMixin, CocoDataset):
    """TBX11K chest X-ray tuberculosis detection (COCO-style json).

    Loads the official ``annotations/json/*.json`` files with every quirk of
    the real data (``info`` as a list, no ``segmentation``, boxes starting at
    -1, images without boxes, unused category 3) and validates them: bad data
    raises :class:`TBX11KDataError` whose message names the json file and the
    entry. Boxes clipped to the image, dropped as too small, or excluded
    because their category is not in ``classes`` are counted and logged.

    Classes default to the 2 used by the official detectors
    (:attr:`CLASSES_2`); pass ``metainfo=dict(classes=TBX11KDataset.
    CLASSES_3)`` for 3. Class names must be TBX11K categories of the json,
    listed in the json's category order (mmdet's ``CocoMetric`` maps labels
    to category ids in that order).

    Args:
        tb_only (bool): keep only the images with at least one box of any
            category of the json (the "TB-only" evaluation view, like the
            official ``*_only_tb.json`` files). Applied before ``filter_cfg``
            and also in ``test_mode``. Defaults to False.
        bbox_clip_tolerance (float): boxes reaching up to this many pixels
            outside the image are clipped to it (and counted); farther is an
            error. Defaults to 2.
        check_files (bool): check at load time that every image file exists.
            Defaults to True.
        check_image_size (bool, optional): read each image's header (26
            bytes of a PNG; Pillow for other formats; the whole file on a
            remote backend) and refuse a file that is empty, not an image, or
            whose size differs from the json's width/height: boxes are in the
            json's frame. Images of more than 8 bits per sample are counted
            and logged (mmcv loads them as 8-bit by dividing by 256). None
            (default): on for local files, off with ``backend_args`` (remote
            storage); always off with ``check_files=False``.
            ``tools/check_dataset.py`` also decodes every image.
        **kwargs: :class:`mmdet.datasets.CocoDataset` arguments. As there,
            ``filter_cfg=dict(filter_empty_gt=True)`` drops images without
            boxes of the selected classes (not in ``test_mode``); the default
            ``filter_cfg=None`` keeps them.
    """

    CLASSES_2 = (ACTIVE_TB, LATENT_TB)
    CLASSES_3 = (ACTIVE_TB, LATENT_TB, UNCERTAIN_TB)
    METAINFO = {
        'classes': CLASSES_2,
        'palette': [CLASS_COLORS[c] for c in CLASSES_2],
    }

    def __init__(self,
                 *args,
                 tb_only: bool = False,
                 bbox_clip_tolerance: float = BBOX_TOLERANCE,
                 check_files: bool = True,
                 check_image_size: Optional[bool] = None,
                 **kwargs) -> None:
        self.tb_only = tb_only
        self.bbox_clip_tolerance = check_bbox_tolerance(bbox_clip_tolerance,
                                                        'bbox_clip_tolerance')
        self.check_files = check_files
        self.check_image_size = check_image_size
        self.load_stats: dict = {}
        super().__init__(*args, **kwargs)

    @classmethod
    def _load_metainfo(cls, metainfo=None) -> dict:
        """Give a palette matching the classes when none was given."""
        user_palette = metainfo is not None and 'palette' in metainfo
        meta = super()._load_metainfo(metainfo)
        classes = meta.get('classes')
        if not user_palette and isinstance(classes, (list, tuple)):
            meta['palette'] = [
                CLASS_COLORS.get(c, _FALLBACK_COLOR) for c in classes
            ]
        return meta

    # ------------------------------------------------------------------
    def _resolve_classes(self, categories: List[dict]) -> List[int]:
        """Category ids of ``metainfo['classes']``, with clear errors
        (:func:`~tbx11k.datasets.validation.resolve_class_ids`)."""
        return resolve_class_ids(self.metainfo.get('classes'), categories,
                                 IssueCollector(self.ann_file, raise_errors=True))

    def load_data_list(self) -> List[dict]:
        """Load, validate and convert ``self.ann_file``."""
        src = self.ann_file
        data = read_json(src, backend_args=self.backend_args)
        val = validate_coco(
            data,
            src,
            img_prefix=self.data_prefix.get('img', ''),
            check_files=self.check_files,
            bbox_tolerance=self.bbox_clip_tolerance,
            allow_missing_annotations=self.test_mode,
            raise_errors=True,
            backend_args=self.backend_args)
        for w in val.issues.warnings:
            print_log(str(w), logger='current', level=logging.WARNING)

        self.cat_ids = self._resolve_classes(val.categories)
        self.cat2label = {cat_id: i for i, cat_id in enumerate(self.cat_ids)}
        cat_name = {c['id']: c['name'] for c in val.categories}
        self.cat_img_map = {c['id']: [] for c in val.categories}
        for img_id, anns in val.anns_by_image.items():
            for cid in sorted({a['category_id'] for a in anns}):
                self.cat_img_map[cid].append(img_id)

        if not val.images:
            raise TBX11KDataError(f"{src}: 'images' is empty: no image to "
                                  f"{'test' if self.test_mode else 'train'} on")
        excluded: Counter = Counter()
        ignored = 0
        crowd_ids = []
        not_tb = 0
        deep_images, oriented = [], []
        check_size = self.check_files and (
            self.backend_args is None if self.check_image_size is None else
            self.check_image_size)
        data_list = []
        for img in val.images:
            anns = val.anns_by_image[img['id']]
            if self.tb_only and not anns:
                not_tb += 1
                continue
            if check_size:
                header = self._check_image_header(img)
                if header.bits_per_sample > 8:
                    deep_images.append(img['file_name'])
                if header.exif_orientation != 1:
                    oriented.append(img['file_name'])
            for a in anns:
                if a['category_id'] not in self.cat2label:
                    excluded[cat_name[a['category_id']]] += 1
                elif a.get('ignore', False):
                    ignored += 1
                elif a.get('iscrowd', 0):
                    crowd_ids.append(a['id'])
            raw_img_info = dict(img, img_id=img['id'])
            data_list.append(
                self.parse_data_info({
                    'raw_img_info': raw_img_info,
                    'raw_ann_info': anns
                }))

        if not data_list:
            raise TBX11KDataError(
                f'{src}: tb_only=True left no image: none of the '
                f'{len(val.images)} images has a box')
        counts = Counter()
        for d in data_list:
            for inst in d['instances']:
                counts[self.metainfo['classes'][inst['bbox_label']]] += 1
        n_empty = sum(1 for d in data_list if not d['instances'])
        self.load_stats = dict(
            ann_file=src,
            num_images=len(data_list),
            num_images_without_boxes=n_empty,
            num_instances=sum(counts.values()),
            instances_per_class={
                c: counts.get(c, 0)
                for c in self.metainfo['classes']
            },
            num_clipped=len(val.clipped_ann_ids),
            num_dropped_small=len(val.dropped_small_ann_ids),
            num_excluded_not_in_classes=dict(excluded),
            num_ignored=ignored,
            num_crowd=len(crowd_ids),
            num_images_dropped_not_tb=not_tb,
        )
        self._log_load_stats(val, crowd_ids)
        self._warn_extra_images(data_list, labelled=bool(data.get('annotations')))
        if deep_images:
            print_log(deep_images_warning(f'TBX11KDataset {src}', deep_images),
                      logger='current', level=logging.WARNING)
        if oriented:
            print_log(exif_oriented_warning(f'TBX11KDataset {src}', oriented),
                      logger='current', level=logging.WARNING)
        return data_list

    def prepare_data(self, idx: int):
        """mmengine's ``prepare_data``; a failure while loading names the json entry too (mmcv's
        "failed to load image" names only the file, e.g. a truncated PNG whose header reads)."""
        try:
            return super().prepare_data(idx)
        except Exception as e:
            info = self.get_data_info(idx)
            raise TBX11KDataError(
                f"{self.ann_file}: image id={info.get('img_id')} file "
                f"{info.get('img_path')!r} could not be loaded through the pipeline: "
                f'{type(e).__name__}: {e}. tools/check_dataset.py decodes every image and '
                'lists the broken ones') from e

    def _check_image_header(self, img: dict) -> ImageHeader:
        """Refuse an image file whose header is unreadable or whose size
        differs from the json; return the header."""
        path = osp.join(self.data_prefix.get('img', ''), img['file_name'])
        where = (f"{self.ann_file}: image id={img['id']} "
                 f"file_name={img['file_name']!r}")
        try:
            header = read_image_header(path, backend_args=self.backend_args)
        except TBX11KDataError as e:
            raise type(e)(f'{where}: {e}') from e
        if (header.width, header.height) != (img['width'], img['height']):
            raise TBX11KDataError(
                f'{where}: the file is {header.width}x{header.height} but '
                f"the json says {img['width']}x{img['height']} (boxes are in "
                "the json's frame); fix the json or the image, or pass "
                'check_image_size=False to skip this check')
        return header

    def _warn_extra_images(self, data_list: List[dict], labelled: bool = True) -> None:
        """The ``all_*`` files' extra sets have no boxes, even on TB films.

        Nothing to say for an unlabelled json in test mode (``all_test.json``, whose labels the
        challenge server holds): nothing is evaluated against it, the submission files are
        written for its images."""
        if self.test_mode and not labelled:
            return
        img_dir = self.data_prefix.get('img', '')
        extra = [
            osp.relpath(d['img_path'], img_dir) for d in data_list
            if not d['instances']
            and is_extra_image(osp.relpath(d['img_path'], img_dir))
        ]
        if not extra:
            return
        if self.test_mode:
            effect = ('evaluated against this json, image-level metrics count '
                      'every one of them as non-TB (their TB labels are not in '
                      'it); evaluate on the TBX11K_*.json files')
        elif (self.filter_cfg or {}).get('filter_empty_gt', False):
            effect = ('filter_cfg.filter_empty_gt drops them, so they add '
                      'nothing to training')
        else:
            effect = ('kept as negatives they teach the detector that TB is '
                      'background; train on TBX11K_train.json or set '
                      'filter_cfg=dict(filter_empty_gt=True)')
        print_log(
            f'TBX11KDataset {self.ann_file}: {len(extra)} images from '
            f'{EXTRA_FOLDER}/ (the DA, DB, Montgomery and Shenzhen sets of the '
            f'all_* files, e.g. {extra[0]}) have no '
            f'boxes even where the film shows TB: {effect}',
            logger='current',
            level=logging.WARNING)

    def _log_load_stats(self, val, crowd_ids: List[int]) -> None:
        s = self.load_stats
        per_class = ', '.join(f'{k}: {v}'
                              for k, v in s['instances_per_class'].items())
        msg = (f'TBX11KDataset {s["ann_file"]}: {s["num_images"]} images '
               f'({s["num_images_without_boxes"]} without boxes), '
               f'{s["num_instances"]} boxes ({per_class})')
        if self.tb_only:
            msg += (f'; tb_only: {s["num_images_dropped_not_tb"]} images '
                    'without TB boxes left out')
        print_log(msg, logger='current', level=logging.INFO)
        background_only = None if self.test_mode else background_only_warning(
            f'TBX11KDataset {s["ann_file"]}', self.metainfo['classes'], s['num_images'],
            s['num_instances'])
        if background_only:
            print_log(background_only, logger='current', level=logging.WARNING)
        if val.clipped_ann_ids:
            print_log(
                f'TBX11KDataset {s["ann_file"]}: {s["num_clipped"]} boxes '
                f'reaching up to {self.bbox_clip_tolerance:g}px outside the '
                'image were clipped to it (annotation ids '
                f'{summarize_ids(val.clipped_ann_ids)})',
                logger='current',
                level=logging.INFO)
        if val.dropped_small_ann_ids:
            print_log(
                f'TBX11KDataset {s["ann_file"]}: {s["num_dropped_small"]} '
                f'boxes dropped, smaller than {MIN_BOX_SIZE:g}px after '
                'clipping (annotation ids '
                f'{summarize_ids(val.dropped_small_ann_ids)})',
                logger='current',
                level=logging.WARNING)
        if s['num_excluded_not_in_classes']:
            detail = ', '.join(
                f'{n} {name}'
                for name, n in s['num_excluded_not_in_classes'].items())
            print_log(
                f'TBX11KDataset {s["ann_file"]}: boxes excluded, not in '
                f'classes {tuple(self.metainfo["classes"])}: {detail}',
                logger='current',
                level=logging.WARNING)
        if s['num_ignored']:
            print_log(
                f'TBX11KDataset {s["ann_file"]}: {s["num_ignored"]} boxes '
                "skipped because of their 'ignore' flag",
                logger='current',
                level=logging.WARNING)
        if crowd_ids:
            print_log(
                f'TBX11KDataset {s["ann_file"]}: {len(crowd_ids)} boxes have '
                'iscrowd=1: kept as ignored regions (ignore_flag=1), not trained on as '
                f'objects (annotation ids {summarize_ids(crowd_ids)})',
                logger='current',
                level=logging.WARNING)

    def parse_data_info(self, raw_data_info: dict) -> Union[dict, List[dict]]:
        """Convert one validated image entry and its annotations.

        Boxes were validated and clipped by :func:`validate_coco`;
        annotations of categories outside ``classes`` and ones flagged
        ``ignore`` are skipped (and counted by :meth:`load_data_list`);
        ``iscrowd=1`` gives ``ignore_flag=1`` as in CocoDataset.
        """
        img_info = raw_data_info['raw_img_info']
        data_info = {
            'img_path': osp.join(self.data_prefix.get('img', ''),
                                 img_info['file_name']),
            'img_id': img_info['img_id'],
            'seg_map_path': None,
            'height': img_info['height'],
            'width': img_info['width'],
        }
        if self.return_classes:
            data_info['text'] = self.metainfo['classes']
            data_info['caption_prompt'] = self.caption_prompt
            data_info['custom_entities'] = True
        instances = []
        for ann in raw_data_info['raw_ann_info']:
            if ann.get('ignore', False):
                continue
            label = self.cat2label.get(ann['category_id'])
            if label is None:
                continue
            x, y, w, h = ann['bbox']
            instances.append({
                'bbox': [x, y, x + w, y + h],
                'bbox_label': label,
                'ignore_flag': 1 if ann.get('iscrowd', 0) else 0,
            })
        data_info['instances'] = instances
        return data_info

    def filter_data(self) -> List[dict]:
        """``filter_empty_gt`` drops images without boxes of the selected
        classes; ``min_size`` drops small images. Counts are logged."""
        if self.test_mode or self.filter_cfg is None:
            return self.data_list
        filter_empty_gt = self.filter_cfg.get('filter_empty_gt', False)
        min_size = self.filter_cfg.get('min_size', 0)
        kept, n_empty, n_small = [], 0, 0
        for d in self.data_list:
            if filter_empty_gt and not d['instances']:
                n_empty += 1
            elif min(d['width'], d['height']) < min_size:
                n_small += 1
            else:
                kept.append(d)
        if n_empty or n_small:
            print_log(
                f'TBX11KDataset {self.ann_file}: filter_cfg dropped '
                f'{n_empty} images without boxes of the classes and '
                f'{n_small} images smaller than {min_size}; '
                f'{len(kept)} left',
                logger='current',
                level=logging.INFO)
        if not kept:
            raise TBX11KDataError(
                f'{self.ann_file}: filter_cfg={dict(self.filter_cfg)} left no '
                f'image of {len(self.data_list)}: {n_empty} have no box of the '
                f'classes {tuple(self.metainfo["classes"])}, {n_small} are '
                f'smaller than {min_size}')
        self.load_stats['num_images_after_filter'] = len(kept)
        return kept

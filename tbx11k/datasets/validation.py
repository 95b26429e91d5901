"""Validation of TBX11K (COCO-style) detection json files.

Shared by :class:`tbx11k.datasets.TBX11KDataset` (which raises on the first
error) and ``tools/check_dataset.py`` (which collects every problem into a
report). Every message names the json file and the offending entry
(image id / file_name / annotation id).

Accepted TBX11K quirks (see docs/tbx11k-format.md):

- ``info`` may be a list (or a dict, or missing);
- annotations have no ``segmentation`` key and carry ``width``/``height``;
- boxes may start up to ``bbox_tolerance`` pixels outside the image (the
  official converter shifts every box by -1, so a box on the edge starts at
  -1): such boxes are clipped to the image and counted;
- images with no annotations.
"""
import json
import math
import os
import os.path as osp
import posixpath
import stat
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Dict, List, Optional, Sequence

#: Largest distance (pixels) a box may reach outside the image before it is
#: an error rather than clipped.
BBOX_TOLERANCE = 2.0

#: Boxes narrower or lower than this after clipping are dropped (and counted),
#: as mmdet's CocoDataset (silently) does and the official converter did.
MIN_BOX_SIZE = 1.0


class TBX11KDataError(ValueError):
    """Malformed TBX11K / COCO data. The message names file and entry."""


class TBX11KMissingFileError(TBX11KDataError, FileNotFoundError):
    """An annotation file or an image file referenced by it is missing."""


@dataclass
class Issue:
    """One problem found in a json file."""
    level: str  # 'error' or 'warning'
    kind: str  # short machine-readable code, e.g. 'bbox_nonfinite'
    message: str  # full message, starting with the json file

    def __str__(self) -> str:
        return self.message


class IssueCollector:
    """Raises (``raise_errors=True``) or collects errors; collects warnings.

    Args:
        source (str): The file the issues are about, at the start of every message.
        raise_errors (bool): Raise at the first error instead of collecting it. Defaults to
            True.
    """

    def __init__(self, source: str, raise_errors: bool = True) -> None:
        self.source = str(source)
        self.raise_errors = raise_errors
        self.errors: List[Issue] = []
        self.warnings: List[Issue] = []

    def _format(self, entry: Optional[str], msg: str) -> str:
        if entry:
            return f'{self.source}: {entry}: {msg}'
        return f'{self.source}: {msg}'

    def error(self, kind: str, entry: Optional[str], msg: str,
              exc_type: type = TBX11KDataError) -> None:
        """Report an error: raise it, or collect it.

        Args:
            kind (str): The kind of issue, for counts.
            entry (str, optional): The entry it is about (see :func:`image_ref`, :func:`ann_ref`).
            msg (str): What is wrong.
            exc_type (type): The exception raised. Defaults to ``TBX11KDataError``.
        """
        text = self._format(entry, msg)
        if self.raise_errors:
            raise exc_type(text)
        self.errors.append(Issue('error', kind, text))

    def warning(self, kind: str, entry: Optional[str], msg: str) -> None:
        """Collect a warning.

        Args:
            kind (str): The kind of issue, for counts.
            entry (str, optional): The entry it is about.
            msg (str): What is wrong.
        """
        self.warnings.append(Issue('warning', kind,
                                   self._format(entry, msg)))

    def count(self, level: str = 'error') -> Dict[str, int]:
        """Issues per kind.

        Args:
            level (str): 'error' or 'warning'. Defaults to 'error'.

        Returns:
            Dict[str, int]: Kind -> count.
        """
        out: Dict[str, int] = {}
        for issue in (self.errors if level == 'error' else self.warnings):
            out[issue.kind] = out.get(issue.kind, 0) + 1
        return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _as_positive_int(v: Any) -> Optional[int]:
    """512 or 512.0 -> 512; anything else (incl. <= 0, True, '512') -> None."""
    if _is_int(v):
        return v if v > 0 else None
    if _is_number(v) and math.isfinite(v) and float(v).is_integer() and v > 0:
        return int(v)
    return None


def check_bbox_tolerance(value: Any, name: str = 'bbox_tolerance') -> float:
    """``value`` as a float, checked.

    NaN would clip a box lying wholly outside the image to nothing and drop it silently; a
    negative value flags boxes inside the image.

    Args:
        value (Any): The tolerance.
        name (str): The option's name, for the message. Defaults to 'bbox_tolerance'.

    Returns:
        float: The tolerance.

    Raises:
        ValueError: Naming ``name`` unless it is a finite number >= 0.
    """
    if _is_number(value) and math.isfinite(value) and value >= 0:
        return float(value)
    raise ValueError(f'{name} must be a finite number >= 0 (pixels a box may reach outside the '
                     f'image), got {value!r}')


def norm_file_name(file_name: str, img_prefix: Optional[str] = None) -> str:
    """A json ``file_name`` normalised for comparisons and folder counts.

    ``./tb/x.png`` and ``tb//x.png`` -> ``tb/x.png``; an absolute one under ``img_prefix`` ->
    relative to it. The path used to read the file stays ``img_prefix/file_name``.

    Args:
        file_name (str): The json ``file_name``.
        img_prefix (str, optional): The image folder. Defaults to None.

    Returns:
        str: The normalised name.
    """
    name = posixpath.normpath(file_name)
    if posixpath.isabs(name) and img_prefix:
        prefix = posixpath.normpath(osp.abspath(img_prefix))
        if name.startswith(prefix.rstrip('/') + '/'):
            name = posixpath.relpath(name, prefix)
    return name


def image_folder(file_name: str, img_prefix: Optional[str] = None) -> str:
    """Top folder of a json ``file_name`` under the image root (see :func:`norm_file_name`).

    Args:
        file_name (str): The json ``file_name``.
        img_prefix (str, optional): The image folder. Defaults to None.

    Returns:
        str: 'tb' for ``./tb/x.png``; '.' for a file directly in it; the folder of an absolute
        ``file_name`` outside it.
    """
    name = norm_file_name(file_name, img_prefix)
    if posixpath.isabs(name):
        return posixpath.dirname(name)
    return name.split('/')[0] if '/' in name else '.'


def image_ref(img: Any, index: Optional[int] = None) -> str:
    """Human-readable reference to an image entry.

    Args:
        img (Any): The entry.
        index (int, optional): Its position in ``images``. Defaults to None.

    Returns:
        str: The reference.
    """
    if not isinstance(img, dict):
        return f'images[{index}]'
    parts = []
    if 'id' in img:
        parts.append(f'id={img["id"]!r}')
    if 'file_name' in img:
        parts.append(f'file_name={img["file_name"]!r}')
    if not parts:
        return f'images[{index}]'
    return 'image ' + ' '.join(parts)


def ann_ref(ann: Any, index: Optional[int] = None,
            images_by_id: Optional[Dict[int, dict]] = None) -> str:
    """Human-readable reference to an annotation entry.

    Args:
        ann (Any): The entry.
        index (int, optional): Its position in ``annotations``. Defaults to None.
        images_by_id (Dict[int, dict], optional): The image entries by id, to name the image.
            Defaults to None.

    Returns:
        str: The reference.
    """
    if not isinstance(ann, dict) or 'id' not in ann:
        ref = f'annotations[{index}]'
    else:
        ref = f'annotation id={ann["id"]!r}'
    if isinstance(ann, dict) and 'image_id' in ann:
        ref += f' (image_id={ann["image_id"]!r}'
        img = (images_by_id or {}).get(ann['image_id']) if _is_int(
            ann['image_id']) else None
        if img is not None:
            ref += f', file_name={img["file_name"]!r}'
        ref += ')'
    return ref


def read_json(path: str, backend_args: Optional[dict] = None) -> Any:
    """Read a json file.

    Args:
        path (str): The file.
        backend_args (dict, optional): mmengine file backend arguments. Defaults to None.

    Returns:
        Any: The parsed content.

    Raises:
        TBX11KDataError: Naming the file if it is missing, unreadable or not valid JSON (e.g.
            truncated).
    """
    path = str(path)
    try:
        if backend_args is None:
            with open(path, 'rb') as f:
                raw = f.read()
        else:
            from mmengine.fileio import get
            raw = get(path, backend_args=backend_args)
    except FileNotFoundError as e:
        raise TBX11KMissingFileError(
            f'{path}: annotation file not found') from e
    except OSError as e:
        raise TBX11KDataError(f'{path}: cannot read annotation file: {e}') \
            from e
    try:
        return json.loads(raw)
    except UnicodeDecodeError as e:
        raise TBX11KDataError(
            f'{path}: annotation file is not UTF-8 text: {e}') from e
    except json.JSONDecodeError as e:
        hint = ' (the file looks truncated)' if e.pos >= len(raw.rstrip()) \
            else ''
        raise TBX11KDataError(
            f'{path}: not valid JSON: {e.msg} at line {e.lineno} column '
            f'{e.colno}{hint}') from e


@dataclass
class ValidatedCoco:
    """Result of :func:`validate_coco`.

    ``anns_by_image`` holds copies of the valid annotations, with ``bbox``
    clipped to the image ([x, y, w, h] floats) and the original box in
    ``bbox_orig`` when it was clipped. Boxes dropped as smaller than
    ``MIN_BOX_SIZE`` after clipping are not in it.
    """
    source: str
    images: List[dict] = field(default_factory=list)
    categories: List[dict] = field(default_factory=list)
    anns_by_image: Dict[int, List[dict]] = field(default_factory=dict)
    num_raw_images: int = 0
    num_raw_annotations: int = 0
    clipped_ann_ids: List[Any] = field(default_factory=list)
    dropped_small_ann_ids: List[Any] = field(default_factory=list)
    issues: Optional[IssueCollector] = None
    top_level_ok: bool = True

    @property
    def cat_by_id(self) -> Dict[int, dict]:
        return {c['id']: c for c in self.categories}

    @property
    def num_annotations(self) -> int:
        return sum(len(v) for v in self.anns_by_image.values())


def _file_checker(img_prefix: str, backend_args: Optional[dict]):
    """``check(path) -> (kind, message)`` of a missing or empty image file,
    or None. Local files cost one ``stat``; other backends are only asked
    whether the file exists."""
    if backend_args is None:

        def check_local(path: str):
            try:
                st = os.stat(path)
            except OSError:
                return 'missing_image', f'image file not found: {path}'
            if not stat.S_ISREG(st.st_mode):
                return 'missing_image', f'not a file: {path}'
            if st.st_size == 0:
                return 'empty_image', f'image file is empty (0 bytes): {path}'
            return None

        return check_local
    from mmengine.fileio import get_file_backend
    backend = get_file_backend(img_prefix, backend_args=backend_args)

    def check_backend(path: str):
        if not backend.isfile(path):
            return 'missing_image', f'image file not found: {path}'
        return None

    return check_backend


def _missing_folder(img_prefix: Optional[str], backend_args: Optional[dict]) -> bool:
    """Whether a local image folder is given and does not exist."""
    return backend_args is None and bool(img_prefix) and not osp.isdir(img_prefix)


@dataclass
class ImageHeader:
    """What an image file's header says (see :func:`read_image_header`)."""
    width: int
    height: int
    bits_per_sample: int  # 8 for TBX11K; 16 for 16-bit PNG/TIFF
    exif_orientation: int = 1  # a JPEG's EXIF orientation tag: cv2 rotates/flips when != 1


_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def read_image_header(path: str,
                      backend_args: Optional[dict] = None) -> ImageHeader:
    """Size (as the image loads) and sample depth of an image file, from its header.

    PNG (the TBX11K format): its first 26 bytes. Other formats: Pillow, which reads the header
    only; a JPEG's EXIF orientation 5-8 swaps width and height, as cv2 (mmcv's loader) rotates
    such images when decoding.

    Args:
        path (str): The image file.
        backend_args (dict, optional): mmengine file backend arguments. Defaults to None.

    Returns:
        ImageHeader: Width, height, bit depth and EXIF orientation.

    Raises:
        TBX11KDataError: Naming ``path`` when the file is empty or not an image Pillow knows.
        TBX11KMissingFileError: When it is missing.
    """
    import io
    path = str(path)
    try:
        if backend_args is None:
            stream = open(path, 'rb')
        else:  # remote backends read the whole file
            from mmengine.fileio import get
            stream = io.BytesIO(get(path, backend_args=backend_args))
    except FileNotFoundError as e:
        raise TBX11KMissingFileError(f'image file not found: {path}') from e
    except OSError as e:
        raise TBX11KDataError(f'cannot read image file {path}: {e}') from e
    with stream:
        head = stream.read(26)
        if not head:
            raise TBX11KDataError(f'image file is empty (0 bytes): {path}')
        if head.startswith(_PNG_SIGNATURE):
            if len(head) < 26 or head[12:16] != b'IHDR':
                raise TBX11KDataError(
                    f'not a readable PNG (truncated header): {path}')
            return ImageHeader(
                width=int.from_bytes(head[16:20], 'big'),
                height=int.from_bytes(head[20:24], 'big'),
                bits_per_sample=head[24])
        stream.seek(0)
        from PIL import Image, UnidentifiedImageError
        try:
            with Image.open(stream) as im:
                width, height = im.size
                mode = im.mode
                orientation = im.getexif().get(0x0112, 1) if im.format == 'JPEG' else 1
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise TBX11KDataError(
                f'not an image file (or an unknown format): {path}: {e}') from e
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees when decoded
        width, height = height, width
    bits = 8
    if mode.startswith('I;16') or mode in ('I', 'F'):
        bits = 16 if mode.startswith('I;16') else 32
    return ImageHeader(width=width, height=height, bits_per_sample=bits,
                       exif_orientation=int(orientation))


def exif_oriented_warning(where: str, oriented: Sequence[str]) -> str:
    """The warning for JPEGs whose EXIF orientation makes cv2 (mmcv) rotate or flip them.

    Args:
        where (str): The json or folder, for the message.
        oriented (Sequence[str]): The files.

    Returns:
        str: The warning.
    """
    return (f'{where}: {len(oriented)} JPEG images carry an EXIF orientation other than 1 (e.g. '
            f'{oriented[0]}): mmcv decodes them rotated or flipped accordingly, so their boxes '
            'must be in that frame. The size check catches a 90-degree turn of a non-square '
            'image only: check a few by eye, or save the images upright without the tag.')


def deep_images_warning(where: str, deep_images: Sequence[str]) -> str:
    """The warning for images of more than 8 bits per sample (dataset, check tool, infer).

    Args:
        where (str): The json or folder, for the message.
        deep_images (Sequence[str]): The files.

    Returns:
        str: The warning.
    """
    return (f'{where}: {len(deep_images)} images have more than 8 bits per sample (e.g. '
            f'{deep_images[0]}): mmcv loads them as 8-bit by dividing by 256, so a 12-bit film '
            'stored in 16 bits loads nearly black. Convert them to 8-bit, scaled to their own '
            'value range, before training or testing.')


#: how to set other classes, in the refusals of :func:`resolve_class_ids`
CLASSES_HINT = ('use TBX11KDataset.CLASSES_2 or CLASSES_3, or name the categories of another '
                'data set with --classes NAME ... (tools/train.py, test.py, check_dataset.py) or '
                'the config\'s `classes`')


def resolve_class_ids(classes: Any, categories: List[dict],
                      issues: IssueCollector) -> Optional[List[int]]:
    """The category ids of ``classes`` (label order) in a json's ``categories``.

    The rule of :class:`~tbx11k.datasets.TBX11KDataset` (which refuses the json otherwise) and of
    ``tools/check_dataset.py`` (which reports it with the same words): a tuple of distinct
    category names of the file, listed in the file's category order (mmdet's ``CocoMetric`` maps
    label i to the i-th matching category id in file order).

    Args:
        classes (Any): the dataset's ``metainfo['classes']``.
        categories (list[dict]): the json's ``categories`` (``id``, ``name``).
        issues (IssueCollector): raises or collects the refusal (kind ``'classes'``).

    Returns:
        list[int] | None: the category ids, or None when ``issues`` collected a refusal.
    """
    if isinstance(classes, str) or not isinstance(classes, (list, tuple)):
        issues.error('classes', None, "metainfo['classes'] must be a tuple of category names, "
                     f'got {classes!r}')
        return None
    if not classes:
        issues.error('classes', None, "metainfo['classes'] is empty")
        return None
    duplicates = [c for c in dict.fromkeys(classes) if list(classes).count(c) > 1]
    if duplicates:
        issues.error('classes', None,
                     f"metainfo['classes'] lists {duplicates} more than once")
        return None
    name2id = {c['name']: c['id'] for c in categories}
    unknown = [c for c in classes if c not in name2id]
    if unknown:
        issues.error('classes', None,
                     f"metainfo['classes'] names {unknown}, which "
                     f'{"is" if len(unknown) == 1 else "are"} not a category of this file '
                     f'(categories: {list(name2id)}); {CLASSES_HINT}')
        return None
    cat_ids = [name2id[c] for c in classes]
    json_order = [c['id'] for c in categories if c['id'] in cat_ids]
    if cat_ids != json_order:
        expected = tuple(c['name'] for c in categories if c['id'] in cat_ids)
        issues.error('classes', None,
                     f"metainfo['classes'] {tuple(classes)} must follow the file's category "
                     f"order {expected}: mmdet's CocoMetric maps label i to the i-th matching "
                     'category id in file order, so any other order evaluates the wrong class')
        return None
    return cat_ids


def background_only_warning(where: str, classes: Sequence[str], num_images: int,
                            num_boxes: int) -> Optional[str]:
    """The warning for a training set with images but no box of ``classes`` (dataset, check
    tool).

    Args:
        where (str): The json, for the message.
        classes (Sequence[str]): The classes trained.
        num_images (int): Images in the set.
        num_boxes (int): Boxes of ``classes`` in the set.

    Returns:
        str | None: The warning, None when there is a box or no image.
    """
    if not num_images or num_boxes:
        return None
    return (f'{where}: no box of the classes {tuple(classes)} in this training set: the detector '
            'would learn background only (an image-info or extra-set json?)')


def validate_coco(data: Any,
                  source: str,
                  *,
                  img_prefix: Optional[str] = None,
                  check_files: bool = True,
                  bbox_tolerance: float = BBOX_TOLERANCE,
                  allow_missing_annotations: bool = False,
                  raise_errors: bool = True,
                  backend_args: Optional[dict] = None) -> ValidatedCoco:
    """Validate a parsed COCO-style detection json (TBX11K flavour).

    Args:
        data (Any): The parsed json.
        source (str): The json's path, used in every message.
        img_prefix (str, optional): Folder that ``file_name`` is relative to (``imgs/``);
            needed for ``check_files``.
        check_files (bool): Check that every image file exists (and, for local
            files, is not empty).
        bbox_tolerance (float): Boxes reaching up to this many pixels outside the
            image are clipped (and counted); farther is an error.
        allow_missing_annotations (bool): Accept a json without an 'annotations'
            key (image-info files for testing); otherwise it is an error.
        raise_errors (bool): Raise :class:`TBX11KDataError` on the first error
            (dataset loading) or collect all of them in ``result.issues``
            (check tool).
        backend_args (dict, optional): mmengine file backend arguments for the file checks.
    """
    tol = check_bbox_tolerance(bbox_tolerance)
    issues = IssueCollector(source, raise_errors=raise_errors)
    result = ValidatedCoco(source=str(source), issues=issues)

    # ---- top level ------------------------------------------------------
    if not isinstance(data, dict):
        issues.error('not_coco', None,
                     'not a COCO detection file: the top level must be a '
                     "JSON object with 'images', 'annotations' and "
                     f"'categories', got {type(data).__name__}")
        result.top_level_ok = False
        return result
    required = ['images', 'categories']
    if not allow_missing_annotations or 'annotations' in data:
        required.insert(1, 'annotations')
    for key in required:
        if key not in data:
            issues.error('not_coco', None,
                         f'not a COCO detection file: missing key {key!r} '
                         f'(keys present: {sorted(data)})')
            result.top_level_ok = False
        elif not isinstance(data[key], list):
            issues.error('not_coco', None,
                         f'{key!r} must be a list, got '
                         f'{type(data[key]).__name__}')
            result.top_level_ok = False
    if not result.top_level_ok:
        return result
    info = data.get('info')
    if info is not None and not isinstance(info, (list, dict)):
        issues.warning('info_type', None,
                       f"'info' is a {type(info).__name__}, expected a list "
                       '(TBX11K) or a dict (COCO)')
    raw_images = data['images']
    raw_anns = data.get('annotations', [])
    raw_cats = data['categories']
    result.num_raw_images = len(raw_images)
    result.num_raw_annotations = len(raw_anns)

    # ---- categories -----------------------------------------------------
    cat_ids: Dict[int, dict] = {}
    cat_names: Dict[str, int] = {}
    for i, cat in enumerate(raw_cats):
        entry = f'categories[{i}]'
        if not isinstance(cat, dict):
            issues.error('bad_category', entry,
                         f'must be an object, got {type(cat).__name__}')
            continue
        if not _is_int(cat.get('id')):
            issues.error('bad_category', entry,
                         f"'id' must be an integer, got {cat.get('id')!r}")
            continue
        name = cat.get('name')
        entry = f'category id={cat["id"]} name={name!r}'
        if not isinstance(name, str) or not name:
            issues.error('bad_category', entry,
                         "'name' must be a non-empty string")
            continue
        if cat['id'] in cat_ids:
            issues.error('duplicate_category_id', entry,
                         f'duplicate category id {cat["id"]} (also '
                         f'{cat_ids[cat["id"]]["name"]!r})')
            continue
        if name in cat_names:
            issues.error('duplicate_category_name', entry,
                         f'duplicate category name {name!r} (also id '
                         f'{cat_names[name]})')
            continue
        cat_ids[cat['id']] = cat
        cat_names[name] = cat['id']
        result.categories.append(cat)
    cat_desc = ', '.join(f'{c["id"]}={c["name"]}' for c in result.categories)

    # ---- images ---------------------------------------------------------
    check_file = None
    if check_files:
        if img_prefix is None:
            raise ValueError('validate_coco: check_files needs img_prefix')
        check_file = _file_checker(img_prefix, backend_args)
    images_by_id: Dict[int, dict] = {}
    raw_image_ids = set()  # every id of 'images', also of entries refused below
    file_names: Dict[str, Any] = {}
    num_checked = num_missing = 0
    for i, img in enumerate(raw_images):
        entry = image_ref(img, i)
        if not isinstance(img, dict):
            issues.error('bad_image', entry,
                         f'must be an object, got {type(img).__name__}')
            continue
        img_id = img.get('id')
        try:
            raw_image_ids.add(img_id)
        except TypeError:  # unhashable, refused below
            pass
        if not _is_int(img_id):
            issues.error('bad_image', entry,
                         f"'id' must be an integer, got {img_id!r}")
            continue
        if img_id in images_by_id:
            issues.error('duplicate_image_id', entry,
                         f'duplicate image id {img_id} (also file_name '
                         f'{images_by_id[img_id]["file_name"]!r})')
            continue
        file_name = img.get('file_name')
        if not isinstance(file_name, str) or not file_name:
            issues.error('bad_image', entry,
                         "'file_name' must be a non-empty string, got "
                         f'{file_name!r}')
            continue
        size_ok = True
        for key in ('width', 'height'):
            if _as_positive_int(img.get(key)) is None:
                issues.error('bad_image_size', entry,
                             f'{key!r} must be a positive integer, got '
                             f'{img.get(key)!r}')
                size_ok = False
        if not size_ok:
            continue
        name_key = norm_file_name(file_name, img_prefix)
        if name_key in file_names:
            issues.warning('duplicate_file_name', entry,
                           f'file_name also used by image id '
                           f'{file_names[name_key]}'
                           + (f' (both are {name_key})' if name_key != file_name else ''))
        if check_file is not None:
            problem = check_file(osp.join(img_prefix, file_name))
            num_checked += 1
            if problem is not None:
                kind, msg = problem
                if kind == 'missing_image':
                    num_missing += 1
                    if raise_errors and _missing_folder(img_prefix, backend_args):
                        msg += f' (the image folder {img_prefix} does not exist)'
                issues.error(kind, entry, msg,
                             exc_type=TBX11KMissingFileError
                             if kind == 'missing_image' else TBX11KDataError)
                continue
        img = dict(img)
        img['width'] = _as_positive_int(img['width'])
        img['height'] = _as_positive_int(img['height'])
        images_by_id[img_id] = img
        file_names[name_key] = img_id
        result.images.append(img)
        result.anns_by_image[img_id] = []
    if num_missing > 1 and _missing_folder(img_prefix, backend_args):
        issues.errors.insert(0, Issue('error', 'missing_image_folder', issues._format(
            None, f'image folder {img_prefix} does not exist: none of the {num_missing} '
            'images below can be found')))
    elif num_missing == num_checked > 1:
        issues.errors.insert(0, Issue('error', 'no_image_found', issues._format(
            None, f'none of the {num_missing} images exists under {img_prefix} (a wrong image '
            'folder?)')))

    # ---- annotations ----------------------------------------------------
    ann_ids: Dict[Any, int] = {}
    for i, ann in enumerate(raw_anns):
        entry = ann_ref(ann, i, images_by_id)
        if not isinstance(ann, dict):
            issues.error('bad_annotation', entry,
                         f'must be an object, got {type(ann).__name__}')
            continue
        ann_id = ann.get('id')
        if not _is_int(ann_id):
            issues.error('bad_annotation', entry,
                         f"'id' must be an integer, got {ann_id!r}")
            continue
        if ann_id in ann_ids:
            issues.error('duplicate_annotation_id', entry,
                         f'duplicate annotation id {ann_id} (also '
                         f'annotations[{ann_ids[ann_id]}])')
            continue
        ann_ids[ann_id] = i
        image_id = ann.get('image_id')
        if not _is_int(image_id):
            issues.error('bad_annotation', entry,
                         f"'image_id' must be an integer, got {image_id!r}")
            continue
        img = images_by_id.get(image_id)
        if img is None:
            if image_id in raw_image_ids:
                continue  # the image itself was reported already
            issues.error('unknown_image_id', entry,
                         f"refers to image_id={image_id}, which is not in "
                         "'images'")
            continue
        cat_id = ann.get('category_id')
        if not _is_int(cat_id) or cat_id not in cat_ids:
            issues.error('unknown_category', entry,
                         f'unknown category_id={cat_id!r} (categories: '
                         f'{cat_desc})')
            continue
        bbox = ann.get('bbox')
        if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                or not all(_is_number(v) for v in bbox)):
            issues.error('bad_bbox', entry,
                         'bbox must be a list of 4 numbers [x, y, w, h], '
                         f'got {bbox!r}')
            continue
        x, y, w, h = (float(v) for v in bbox)
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            issues.error('bbox_nonfinite', entry,
                         f'bbox has a non-finite value: {list(bbox)}')
            continue
        if w <= 0 or h <= 0:
            what = 'width' if w <= 0 else 'height'
            issues.error('bbox_nonpositive', entry,
                         f'bbox {what} must be positive, got bbox '
                         f'{list(bbox)}')
            continue
        W, H = img['width'], img['height']
        x2, y2 = x + w, y + h
        if x < -tol or y < -tol or x2 > W + tol or y2 > H + tol:
            issues.error('bbox_outside', entry,
                         f'bbox {list(bbox)} (x1,y1,x2,y2 = {x:g},{y:g},'
                         f'{x2:g},{y2:g}) lies outside the {W}x{H} image by '
                         f'more than the {tol:g}px tolerance')
            continue
        iscrowd = ann.get('iscrowd', 0)
        if iscrowd not in (0, 1):  # True/False compare equal to 1/0
            issues.error('bad_annotation', entry,
                         f"'iscrowd' must be 0 or 1, got {iscrowd!r}")
            continue
        area = ann.get('area')
        if area is None:
            issues.error('bad_area', entry,
                         "missing 'area' (COCO evaluation needs it)")
            continue
        if not _is_number(area) or not math.isfinite(area) or area < 0:
            issues.error('bad_area', entry,
                         f"'area' must be a finite number >= 0, got "
                         f'{area!r}')
            continue
        for key in ('width', 'height'):
            if key in ann and ann[key] != img[key]:
                issues.warning('ann_size_mismatch', entry,
                               f'annotation {key}={ann[key]!r} differs from '
                               f'the image {key} {img[key]}')
        cx1, cy1 = min(max(x, 0.0), W), min(max(y, 0.0), H)
        cx2, cy2 = min(max(x2, 0.0), W), min(max(y2, 0.0), H)
        new = dict(ann)
        if (cx1, cy1, cx2, cy2) != (x, y, x2, y2):
            new['bbox_orig'] = list(bbox)
            result.clipped_ann_ids.append(ann_id)
        if cx2 - cx1 < MIN_BOX_SIZE or cy2 - cy1 < MIN_BOX_SIZE:
            result.dropped_small_ann_ids.append(ann_id)
            continue
        new['bbox'] = [cx1, cy1, cx2 - cx1, cy2 - cy1]
        result.anns_by_image[image_id].append(new)
    return result


def summarize_ids(ids: List[Any], limit: int = 5) -> str:
    """'3, 7, 9 and 12 more' style list for log messages.

    Args:
        ids (List[Any]): The ids.
        limit (int): Ids named before "and N more". Defaults to 5.

    Returns:
        str: The list.
    """
    shown = ', '.join(str(i) for i in ids[:limit])
    if len(ids) > limit:
        shown += f' and {len(ids) - limit} more'
    return shown

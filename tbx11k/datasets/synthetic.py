"""Synthetic TBX11K: the official layout, json quirks and chest-film-like
images with learnable lesions, deterministic for a seed.

Layout written under ``root`` (see docs/tbx11k-format.md)::

    imgs/{health,sick,tb,test}/*.png   imgs/extra/{da,db,montgomery,shenzhen}/
    annotations/xml/tbNNNN.xml         (Pascal VOC, original-resolution ints)
    annotations/json/TBX11K_{train,val,trainval}[_only_tb].json
                     all_{train,val,trainval,test}.json
    lists/TBX11K_{train,val,trainval}.txt  all_{train,val,trainval,test}.txt

The json files are produced from the XML files and lists exactly as the
official ``code/make_json_anno.py`` does: boxes rescaled from the original
resolution to ``image_size`` and shifted by -1 (so a box on the edge starts at
-1), float32 boxes, integer ``area``, ``difficult`` boxes and boxes under
1 px or 20 px² dropped, ``info`` as a list, no ``segmentation``, image ids
renumbered from 1 in every file, category 3 declared but unused.

Lesions: ``ActiveTuberculosis`` are fluffy, textured, soft-edged clouds of
varied size; ``ObsoletePulmonaryTuberculosis`` are small compact very bright
calcified nodules with sharp edges and fibrotic strands. Sick non-TB images
carry other, box-less findings (effusion, big heart, reticular texture,
basal haze).
"""
import json
import os
import os.path as osp
import shutil
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

ACTIVE = 'ActiveTuberculosis'
LATENT = 'ObsoletePulmonaryTuberculosis'
UNCERTAIN = 'PulmonaryTuberculosis'

CATEGORIES = [
    {'id': 1, 'name': ACTIVE, 'supercategory': 'Tuberculosis'},
    {'id': 2, 'name': LATENT, 'supercategory': 'Tuberculosis'},
    {'id': 3, 'name': UNCERTAIN, 'supercategory': 'Tuberculosis'},
]
CAT2LABEL = {c['name']: c['id'] for c in CATEGORIES}
INFO = [{
    'contributor': 'Yun Liu, Yu-Huan Wu, Yunfeng Ban, Huifang Wang, '
                   'Ming-Ming Cheng',
    'date_created': '2020/06/22',
    'description': 'TBX11K Dataset (synthetic stand-in)',
    'url': 'http://mmcheng.net/tb',
    'version': '1.0',
    'year': 2020,
}]
LICENSES = [{
    'id': 1,
    'name': 'Attribution-NonCommercial-ShareAlike License',
    'url': 'http://creativecommons.org/licenses/by-nc-sa/2.0/',
}]
#: make_json_anno.py stamps every image with the time the script started.
DATE_CAPTURED = '2020-06-22 15:04:05.123456'
EXTRA_SOURCES = ('da', 'db', 'montgomery', 'shenzhen')

# TB image types, cycled so that every split gets each of them.
_TB_TYPES = ('active1', 'latent', 'both', 'active_multi')
_SICK_FINDINGS = ('effusion', 'cardiomegaly', 'reticular', 'haze')


# ---------------------------------------------------------------------------
# conversion, mirroring code/make_json_anno.py
# ---------------------------------------------------------------------------
def xml_box_to_json(xml_box: Sequence[int], orig_w: int, orig_h: int,
                    size: int) -> Tuple[Optional[List[float]], int]:
    """One VOC box (original resolution) -> COCO [x, y, w, h] and area, as
    make_json_anno.py computes them: /ratio, -1, float32, int area.

    Args:
        xml_box (Sequence[int]): ``(xmin, ymin, xmax, ymax)`` at the original resolution.
        orig_w (int): The original width.
        orig_h (int): The original height.
        size (int): The released images' side.

    Returns:
        Tuple[Optional[List[float]], int]: The box and its area; ``(None, 0)`` when the
        converter drops it (under 1 px).
    """
    rw, rh = orig_w / size, orig_h / size
    b = [xml_box[0] / rw, xml_box[1] / rh, xml_box[2] / rw, xml_box[3] / rh]
    if b[2] - b[0] < 1 or b[3] - b[1] < 1:
        return None, 0
    box = (np.array(b, ndmin=2) - 1).astype(np.float32)[0]
    box[2] = box[2] - box[0]
    box[3] = box[3] - box[1]
    area = int(np.array(box[2] * box[3], dtype=int))
    return box.tolist(), area


def _load_xml(path: str, size: int):
    """load_annotation() of make_json_anno.py: (boxes, labels) or None."""
    if not osp.exists(path):
        return None
    root = ET.parse(path).getroot()
    w = int(root.find('size').find('width').text)
    h = int(root.find('size').find('height').text)
    out = []
    for obj in root.findall('object'):
        if int(obj.find('difficult').text):
            continue
        bb = obj.find('bndbox')
        xml_box = [int(bb.find(k).text) for k in ('xmin', 'ymin', 'xmax',
                                                   'ymax')]
        box, area = xml_box_to_json(xml_box, w, h, size)
        if box is not None:
            out.append((box, area, CAT2LABEL[obj.find('name').text]))
    return out or None


def convert_list(file_names: Sequence[str], xml_dir: str, size: int,
                 tb_only: bool = False) -> dict:
    """Build the COCO dict of one list like make_json_anno.py does.

    Args:
        file_names (Sequence[str]): The list's images.
        xml_dir (str): The folder of their VOC xml files.
        size (int): The released images' side.
        tb_only (bool): Leave out the images without TB boxes (the TB-only jsons). Defaults
            to False.

    Returns:
        dict: The COCO dict.
    """
    coco = {
        'info': INFO,
        'licenses': LICENSES,
        'categories': CATEGORIES,
        'images': [],
        'annotations': []
    }
    img_id, ann_id = 1, 1
    for file in file_names:
        info = {
            'id': img_id,
            'file_name': file,
            'width': size,
            'height': size,
            'date_captured': DATE_CAPTURED,
            'license': 1,
            'coco_url': '',
            'flickr_url': '',
        }
        stem = osp.splitext(osp.basename(file))[0]
        boxes = _load_xml(osp.join(xml_dir, stem + '.xml'), size)
        if boxes is not None:
            for box, area, label in boxes:
                if area < 20:
                    continue
                coco['annotations'].append({
                    'id': ann_id,
                    'image_id': img_id,
                    'category_id': label,
                    'iscrowd': 0,
                    'area': area,
                    'bbox': box,
                    'width': size,
                    'height': size,
                })
                ann_id += 1
            coco['images'].append(info)
            img_id += 1
        elif not tb_only:
            coco['images'].append(info)
            img_id += 1
    return coco


# ---------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------
def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _ellipse(X, Y, cx, cy, ax, ay, angle=0.0, soft=0.12):
    """Soft filled ellipse (1 inside, 0 outside), vectorised on a grid."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = X - cx, Y - cy
    u = (dx * c + dy * s) / ax
    v = (-dx * s + dy * c) / ay
    r = np.sqrt(u * u + v * v)
    return 1.0 - _smoothstep(1.0 - soft, 1.0, r)


def _lowfreq_noise(rng, shape, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a small random grid upsampled bicubically."""
    h, w = shape
    g = rng.random((cells + 3, cells + 3)).astype(np.float32)
    up = cv2.resize(g, (max(w, 1), max(h, 1)), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(up.min()), float(up.max())
    return (up - lo) / (hi - lo + 1e-6)


def _anatomy(rng) -> dict:
    cx = 0.5 + rng.normal(0, 0.012)
    a = {
        'cx': cx,
        'body': (cx, 0.56, rng.uniform(0.46, 0.52), rng.uniform(0.58, 0.64)),
        'lung_dx': rng.uniform(0.185, 0.215),
        'lung_cy': rng.uniform(0.43, 0.47),
        'lung_ax': rng.uniform(0.13, 0.155),
        'lung_ay': rng.uniform(0.26, 0.3),
        'lung_tilt': rng.uniform(0.05, 0.14),
        'heart': (cx + rng.uniform(0.03, 0.06), rng.uniform(0.62, 0.66),
                  rng.uniform(0.12, 0.15), rng.uniform(0.1, 0.13)),
        'tissue': rng.uniform(95, 125),
        'bg': rng.uniform(6, 24),
        'lung_dark': rng.uniform(0.5, 0.62),
        'rib': rng.uniform(18, 32),
        'medi': rng.uniform(45, 70),
        'noise': rng.uniform(2.0, 4.0),
        'gamma': rng.uniform(0.85, 1.15),
    }
    return a


def _lungs(a: dict) -> List[Tuple[float, float, float, float, float]]:
    """(cx, cy, ax, ay, angle) of the two lungs, normalised units."""
    cx, dx = a['cx'], a['lung_dx']
    return [(cx - dx, a['lung_cy'], a['lung_ax'], a['lung_ay'],
             a['lung_tilt']),
            (cx + dx, a['lung_cy'], a['lung_ax'], a['lung_ay'],
             -a['lung_tilt'])]


def _sample_in_lung(rng, lung, margin: float = 0.75) -> Tuple[float, float]:
    """Random point inside the inner ``margin`` of a lung ellipse, biased to
    the upper zones where TB usually sits."""
    cx, cy, ax, ay, ang = lung
    r = margin * np.sqrt(rng.random())
    t = rng.uniform(0, 2 * np.pi)
    u, v = r * np.cos(t), r * np.sin(t)
    v = -abs(v) if rng.random() < 0.65 else v  # upper zones more often
    c, s = np.cos(ang), np.sin(ang)
    x = cx + u * ax * c - v * ay * s
    y = cy + u * ax * s + v * ay * c
    return x, y


def _draw_active(rng, img, box, strength: float = 1.0) -> None:
    """Fluffy textured consolidation filling the box (x, y, w, h)."""
    _draw_patch(rng, img, box, 'active', strength)


def _draw_latent(rng, img, box, strength: float = 1.0) -> None:
    """Compact calcified nodules with sharp edges filling the box."""
    _draw_patch(rng, img, box, 'latent', strength)


def _draw_patch(rng, img, box, kind, strength) -> None:
    S = img.shape[0]
    x, y, w, h = box
    x0, y0 = int(np.floor(max(x, 0))), int(np.floor(max(y, 0)))
    x1, y1 = int(np.ceil(min(x + w, S))), int(np.ceil(min(y + h, S)))
    if x1 <= x0 or y1 <= y0:
        return
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    u = (xs - (x + w / 2)) / (w / 2)  # -1..1 across the box
    v = (ys - (y + h / 2)) / (h / 2)
    ph, pw = y1 - y0, x1 - x0
    if kind == 'active':
        env = 1.0 - _smoothstep(0.55, 1.0, np.sqrt(u * u + v * v))
        blobs = np.zeros_like(u)
        for _ in range(int(rng.integers(4, 9))):
            bu, bv = rng.uniform(-0.5, 0.5, 2)
            sg = rng.uniform(0.25, 0.5)
            blobs += np.exp(-((u - bu)**2 + (v - bv)**2) / (2 * sg * sg))
        blobs /= blobs.max() + 1e-6
        tex = 0.45 + 0.55 * _lowfreq_noise(rng, (ph, pw), 5)
        mottle = cv2.GaussianBlur(
            rng.normal(0, 1, (ph, pw)).astype(np.float32), (0, 0),
            max(0.8, 0.02 * S))
        mottle = mottle / (np.abs(mottle).max() + 1e-6)
        val = env * blobs * (tex + 0.25 * mottle)
        img[y0:y1, x0:x1] += strength * rng.uniform(60, 95) * np.clip(
            val, 0, None)
    else:
        layer = np.zeros((ph, pw), np.float32)
        n = int(rng.integers(1, 4))
        for i in range(n):
            rad = rng.uniform(0.28, 0.45) if i == 0 else rng.uniform(0.12,
                                                                     0.25)
            bu = rng.uniform(-(1 - rad) * 0.9, (1 - rad) * 0.9)
            bv = rng.uniform(-(1 - rad) * 0.9, (1 - rad) * 0.9)
            d = np.sqrt((u - bu)**2 + (v - bv)**2)
            # sharp edge: about 1 px ramp
            edge = 2.0 / max(min(w, h), 2.0)
            layer = np.maximum(layer, 1.0 - _smoothstep(rad - edge, rad, d))
        # fibrotic strands radiating from the nodule
        strands = np.zeros((ph, pw), np.float32)
        for _ in range(int(rng.integers(1, 4))):
            p0 = (int(pw / 2), int(ph / 2))
            p1 = (int(rng.uniform(0, pw)), int(rng.uniform(0, ph)))
            cv2.line(strands, p0, p1, 1.0, 1, cv2.LINE_AA)
        halo = 1.0 - _smoothstep(0.3, 1.0, np.sqrt(u * u + v * v))
        val = layer + 0.35 * strands * halo + 0.15 * halo
        img[y0:y1, x0:x1] += strength * rng.uniform(95, 140) * val


def _render(rng, S: int, a: dict, lesions=(), finding: Optional[str] = None,
            extra_style: bool = False) -> np.ndarray:
    """One synthetic chest film as an SxSx3 uint8 array."""
    X, Y = np.meshgrid(
        (np.arange(S, dtype=np.float32) + 0.5) / S,
        (np.arange(S, dtype=np.float32) + 0.5) / S)
    img = np.full((S, S), a['bg'], np.float32)
    bx, by, bax, bay = a['body']
    body = _ellipse(X, Y, bx, by, bax, bay, soft=0.08)
    # shoulders / neck: widen the top of the body
    body = np.maximum(body, 0.8 * _ellipse(X, Y, bx, 0.1, bax * 0.95, 0.1,
                                           soft=0.5))
    img += body * a['tissue']
    # lungs: darker (air), slightly brighter at the periphery and bases
    lung_masks = [
        _ellipse(X, Y, lcx, lcy, lax, lay, ang, soft=0.18)
        for lcx, lcy, lax, lay, ang in _lungs(a)
    ]
    lung = np.maximum(*lung_masks)
    vessels = _lowfreq_noise(rng, (S, S), 14)
    img *= 1.0 - lung * a['lung_dark'] * (0.85 + 0.15 * vessels)
    # ribs: upward-convex arcs on each side, drawn then blurred
    ribs = np.zeros((S, S), np.float32)
    th = max(1, int(round(0.017 * S)))
    top = (a['lung_cy'] - a['lung_ay']) * S
    spacing = 0.055 * S
    for i in range(10):
        yc = top + i * spacing + rng.normal(0, 0.004 * S)
        axes = (int((0.27 + 0.006 * i) * S), int((0.11 + 0.004 * i) * S))
        center = (int(a['cx'] * S), int(yc + axes[1]))
        for start, end in ((195, 262), (278, 345)):
            cv2.ellipse(ribs, center, axes, 0, start, end, 1.0, th,
                        cv2.LINE_AA)
    # clavicles
    for sgn in (-1, 1):
        p0 = (int((a['cx'] + sgn * 0.04) * S), int(0.19 * S))
        p1 = (int((a['cx'] + sgn * 0.3) * S), int(0.13 * S))
        cv2.line(ribs, p0, p1, 1.3, max(1, int(0.024 * S)), cv2.LINE_AA)
    ribs = cv2.GaussianBlur(ribs, (0, 0), max(0.6, 0.004 * S))
    img += ribs * a['rib'] * body
    # mediastinum, spine and heart
    medi = _ellipse(X, Y, a['cx'], 0.5, 0.065, 0.36, soft=0.3)
    hx, hy, hax, hay = a['heart']
    if finding == 'cardiomegaly':
        hax, hay = hax * 1.45, hay * 1.3
    heart = _ellipse(X, Y, hx, hy, hax, hay, soft=0.25)
    spine = np.exp(-((X - a['cx']) / 0.022)**2) * (
        0.8 + 0.2 * np.cos(Y * 2 * np.pi / 0.045))
    img += a['medi'] * np.maximum(np.maximum(medi, heart), 0.7 * spine) * body
    # sick non-TB findings (no boxes)
    if finding == 'effusion':
        k = int(rng.integers(0, 2))
        lcx, lcy, lax, lay, ang = _lungs(a)[k]
        base = _smoothstep(lcy + 0.2 * lay, lcy + 0.8 * lay, Y)
        img += 50 * base * lung_masks[k]
    elif finding == 'reticular':
        net = cv2.GaussianBlur(
            rng.normal(0, 1, (S, S)).astype(np.float32), (0, 0),
            max(0.7, 0.004 * S))
        img += 3 * lung * net / (net.std() + 1e-6)
    elif finding == 'haze':
        lcx, lcy, lax, lay, _ = _lungs(a)[int(rng.integers(0, 2))]
        img += 28 * np.exp(-(((X - lcx) / (lax * 0.9))**2 +
                             ((Y - (lcy + 0.45 * lay)) / (lay * 0.5))**2))
    for kind, box, strength in lesions:
        if kind == ACTIVE:
            _draw_active(rng, img, box, strength)
        else:
            _draw_latent(rng, img, box, strength)
    if extra_style:  # other scanners: flatter contrast, a collimation frame
        img = 0.8 * img + 25
        m = int(0.03 * S)
        img[:m, :] = img[-m:, :] = 235
    img = cv2.GaussianBlur(img, (0, 0), max(0.5, 0.0012 * S))
    img += rng.normal(0, a['noise'], (S, S)).astype(np.float32)
    img = 255.0 * (np.clip(img, 0, 255) / 255.0)**a['gamma']
    g = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return np.dstack([g, g, g])


# ---------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------
def _iou(a, b) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter + 1e-9)


def _plan_lesions(rng, a: dict, S: int, classes: List[str],
                  edge: bool,
                  scale: float = 1.0) -> List[Tuple[str, List[float]]]:
    """Desired boxes (x, y, w, h) in image pixels for the given classes.

    With ``edge`` the first box touches the left image edge (so that its
    xml xmin is 0 and its json x is -1). ``scale`` multiplies the sides."""
    out: List[Tuple[str, List[float]]] = []
    lungs = _lungs(a)
    for i, cls in enumerate(classes):
        for _ in range(30):
            if cls == ACTIVE:
                w = rng.uniform(0.06, 0.2) * S * scale
                h = w * rng.uniform(0.7, 1.4)
            else:
                w = rng.uniform(0.035, 0.08) * S * scale
                h = w * rng.uniform(0.8, 1.25)
            if edge and i == 0:
                lung = lungs[0]
                cy = (lung[1] - 0.3 * lung[3]) * S
                x, y = 0.0, cy - h / 2
            else:
                cx, cy = _sample_in_lung(rng, lungs[int(rng.integers(0, 2))])
                x, y = cx * S - w / 2, cy * S - h / 2
            x = float(np.clip(x, 0, S - 1 - w))
            y = float(np.clip(y, 0, S - 1 - h))
            box = [x, y, w, h]
            if all(_iou(box, o[1]) < 0.05 for o in out):
                out.append((cls, box))
                break
    return out


def _tb_classes(rng, tb_type: str) -> List[str]:
    if tb_type == 'active1':
        return [ACTIVE]
    if tb_type == 'latent':
        return [LATENT] * int(rng.integers(1, 3))
    if tb_type == 'active_multi':
        return [ACTIVE] * int(rng.integers(2, 6))
    n_a = int(rng.integers(1, 4))
    return [ACTIVE] * n_a + [LATENT] * int(rng.integers(1, 6 - n_a))


def _write_voc(path: str, file_name: str, orig: Tuple[int, int],
               objects: List[Tuple[str, List[int], int]]) -> None:
    ann = ET.Element('annotation')
    ET.SubElement(ann, 'folder').text = 'tb'
    ET.SubElement(ann, 'filename').text = osp.basename(file_name)
    src = ET.SubElement(ann, 'source')
    ET.SubElement(src, 'database').text = 'TBX11K (synthetic)'
    size = ET.SubElement(ann, 'size')
    ET.SubElement(size, 'width').text = str(orig[0])
    ET.SubElement(size, 'height').text = str(orig[1])
    ET.SubElement(size, 'depth').text = '3'
    ET.SubElement(ann, 'segmented').text = '0'
    for name, box, difficult in objects:
        obj = ET.SubElement(ann, 'object')
        ET.SubElement(obj, 'name').text = name
        ET.SubElement(obj, 'pose').text = 'Unspecified'
        ET.SubElement(obj, 'truncated').text = '0'
        ET.SubElement(obj, 'difficult').text = str(difficult)
        bb = ET.SubElement(obj, 'bndbox')
        for k, v in zip(('xmin', 'ymin', 'xmax', 'ymax'), box):
            ET.SubElement(bb, k).text = str(int(v))
    ET.indent(ann)
    ET.ElementTree(ann).write(path, encoding='utf-8', xml_declaration=False)


def _to_xml_box(box: List[float], orig: Tuple[int, int], S: int) -> List[int]:
    """Desired json box (x, y, w, h) → VOC ints in the original resolution
    (inverse of the converter's /ratio and -1)."""
    rw, rh = orig[0] / S, orig[1] / S
    x, y, w, h = box
    xmin = 0 if x <= 0 else int(round((x + 1) * rw))
    ymin = 0 if y <= 0 else int(round((y + 1) * rh))
    xmax = int(round((x + w + 1) * rw))
    ymax = int(round((y + h + 1) * rh))
    return [
        min(max(xmin, 0), orig[0]),
        min(max(ymin, 0), orig[1]),
        min(max(xmax, 0), orig[0]),
        min(max(ymax, 0), orig[1])
    ]


def _counts(total: int, fracs: Sequence[float]) -> List[int]:
    """Split ``total`` into len(fracs) parts (largest remainder)."""
    raw = [total * f for f in fracs]
    out = [int(np.floor(r)) for r in raw]
    order = np.argsort([-(r - o) for r, o in zip(raw, out)], kind='stable')
    for i in order[:total - sum(out)]:
        out[int(i)] += 1
    return out


def _save_png(path: str, img: np.ndarray) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, img, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f'cannot write {path}')


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------
def make_synthetic_tbx11k(root: str,
                          *,
                          num_train: int = 24,
                          num_val: int = 12,
                          num_test: int = 8,
                          num_extra: int = 8,
                          seed: int = 0,
                          image_size: int = 512,
                          tb_fraction: float = 0.5,
                          healthy_fraction: float = 0.25,
                          num_duplicate_pairs: Optional[int] = None,
                          lesion_scale: float = 1.0,
                          lesion_contrast: float = 1.0,
                          max_lesions: Optional[int] = None,
                          overwrite: bool = False) -> dict:
    """Write a synthetic TBX11K under ``root`` and return a summary.

    Args:
        root (str): Output folder (created). If it already holds ``imgs``,
            ``annotations`` or ``lists``, ``overwrite=True`` is needed; they
            are then removed first.
        num_train, num_val, num_test (int): Images per TBX11K split (defaults 24, 12, 8). Each split
            gets healthy (``healthy_fraction``), sick non-TB and TB
            (``tb_fraction``) images; TB images cycle through 1 active box,
            1-2 latent boxes, both classes (2-5 boxes) and 2-5 active boxes.
            The first TB image of train and val has a box on the left edge
            (json x = -1); the last TB image of train has no box at all
            (like ``tb/tb1199.png``); about one TB image in six also has an
            unannotated faint ``difficult`` lesion (dropped by the converter).
        num_extra (int): Images of the extra public sets (``imgs/extra/``), shared
            out to all_train / all_val / all_test (half, quarter, quarter);
            half of them show lesions although they never have boxes.
        seed (int): Everything is a function of the seed and these arguments. Defaults to 0.
        image_size (int): Square image side (the real data is 512). Defaults to 512.
        tb_fraction (float): Fraction of TB images per split. Defaults to 0.5.
        healthy_fraction (float): Fraction of healthy images per split. Defaults to 0.25.
        num_duplicate_pairs (int, optional): Val sick images that are byte-identical copies
            of train sick images (the real data has 38). Default: about 5 %
            of the val sick images, at least 1 when both splits have some.
        lesion_scale: multiplies the side of every lesion box (1 = sizes
            like the real data's; larger is easier to learn).
        lesion_contrast: multiplies the brightness every lesion adds (1 =
            the default look; larger is easier to learn).
        max_lesions: at most this many boxed lesions per TB image (None: 1
            to 5 as the image type draws them).

        overwrite (bool): Replace existing ``imgs``, ``annotations`` and ``lists`` folders.
            Defaults to False.

    Returns:
        dict: 'root', 'seed', 'image_size', per-split counts in
        'splits' (images, health, sick, tb, tb_without_boxes, boxes per
        class, edge_boxes, difficult_dropped), 'extra', 'duplicate_pairs'
        and per-json 'json_files' counts.
    """
    S = int(image_size)
    if S < 32:
        raise ValueError(f'image_size must be >= 32, got {image_size}')
    if not 0 < lesion_scale <= 4:
        raise ValueError(f'lesion_scale must be in (0, 4], got {lesion_scale}')
    if not 0 < lesion_contrast <= 4:
        raise ValueError(
            f'lesion_contrast must be in (0, 4], got {lesion_contrast}')
    if max_lesions is not None and int(max_lesions) < 1:
        raise ValueError(f'max_lesions must be >= 1, got {max_lesions}')
    for name, n in (('num_train', num_train), ('num_val', num_val),
                    ('num_test', num_test), ('num_extra', num_extra)):
        if int(n) < 0:
            raise ValueError(f'{name} must be >= 0, got {n}')
    if not (0 <= healthy_fraction and 0 <= tb_fraction
            and healthy_fraction + tb_fraction <= 1):
        raise ValueError('need 0 <= healthy_fraction, tb_fraction and '
                         'healthy_fraction + tb_fraction <= 1')
    root = str(root)
    subdirs = [osp.join(root, d) for d in ('imgs', 'annotations', 'lists')]
    if any(osp.exists(d) for d in subdirs):
        if not overwrite:
            raise FileExistsError(
                f'{root} already holds a dataset (imgs/, annotations/ or '
                'lists/); pass overwrite=True (--overwrite) to replace it')
        for d in subdirs:
            shutil.rmtree(d, ignore_errors=True)
    img_root = osp.join(root, 'imgs')
    xml_dir = osp.join(root, 'annotations', 'xml')
    json_dir = osp.join(root, 'annotations', 'json')
    list_dir = osp.join(root, 'lists')
    for d in (img_root, xml_dir, json_dir, list_dir):
        os.makedirs(d, exist_ok=True)

    seq = np.random.SeedSequence(int(seed))
    plan_rng = np.random.default_rng(seq.spawn(1)[0])
    counter = {'health': 0, 'sick': 0, 'tb': 0, 'test': 0}
    prefix = {'health': 'h', 'sick': 's', 'tb': 'tb', 'test': 'test'}
    image_seq = 0
    lists: Dict[str, List[str]] = {}
    summary_splits: Dict[str, dict] = {}
    sick_files: Dict[str, List[str]] = {'train': [], 'val': []}

    def image_rng():
        nonlocal image_seq
        image_seq += 1
        return np.random.default_rng([int(seed), image_seq, 7919])

    def next_name(folder: str) -> str:
        counter[folder] += 1
        return f'{folder}/{prefix[folder]}{counter[folder]:04d}.png'

    for split, n in (('train', num_train), ('val', num_val),
                     ('test', num_test)):
        n_health, n_sick, n_tb = _counts(
            int(n), [healthy_fraction, 1 - healthy_fraction - tb_fraction,
                     tb_fraction])
        st = {'images': int(n), 'health': n_health, 'sick': n_sick,
              'tb': n_tb, 'tb_without_boxes': 0, 'edge_boxes': 0,
              'difficult_dropped': 0}
        files: List[str] = []
        for i in range(n_health):
            rng = image_rng()
            name = next_name('test' if split == 'test' else 'health')
            _save_png(osp.join(img_root, name), _render(rng, S, _anatomy(rng)))
            files.append(name)
        for i in range(n_sick):
            rng = image_rng()
            name = next_name('test' if split == 'test' else 'sick')
            finding = _SICK_FINDINGS[i % len(_SICK_FINDINGS)]
            _save_png(osp.join(img_root, name),
                      _render(rng, S, _anatomy(rng), finding=finding))
            files.append(name)
            if split in sick_files:
                sick_files[split].append(name)
        for i in range(n_tb):
            rng = image_rng()
            name = next_name('test' if split == 'test' else 'tb')
            no_box = split == 'train' and i == n_tb - 1 and n_tb >= 2
            edge = split != 'test' and i == 0
            a = _anatomy(rng)
            if edge:  # patient shifted left: the left lung meets the edge
                a['cx'] = a['lung_dx'] + a['lung_ax'] - 0.01
                a['body'] = (a['cx'], ) + a['body'][1:]
                a['heart'] = (a['cx'] + 0.045, ) + a['heart'][1:]
            classes = [] if no_box else _tb_classes(
                rng, _TB_TYPES[i % len(_TB_TYPES)])
            if max_lesions is not None:
                classes = classes[:int(max_lesions)]
            want_difficult = (not no_box and split != 'test'
                              and i % 6 == 5)
            planned = _plan_lesions(
                rng, a, S, classes + ([ACTIVE] if want_difficult else []),
                edge, lesion_scale)
            difficult = []
            if want_difficult and len(planned) > len(classes):
                difficult = [planned.pop()]
            orig = (int(rng.integers(1800, 3001)), int(rng.integers(1800,
                                                                    3001)))
            objects, lesions = [], []
            for cls, box in planned:
                xml_box = _to_xml_box(box, orig, S)
                jbox, _ = xml_box_to_json(xml_box, orig[0], orig[1], S)
                if jbox is None:
                    continue
                objects.append((cls, xml_box, 0))
                lesions.append((cls, jbox, lesion_contrast))
            for cls, box in difficult:
                objects.append((cls, _to_xml_box(box, orig, S), 1))
                lesions.append((cls, box, 0.45 * lesion_contrast))
                st['difficult_dropped'] += 1
            _save_png(osp.join(img_root, name), _render(rng, S, a, lesions))
            if split != 'test' and objects:
                stem = osp.splitext(osp.basename(name))[0]
                _write_voc(osp.join(xml_dir, stem + '.xml'), name, orig,
                           objects)
            if no_box:
                st['tb_without_boxes'] += 1
            files.append(name)
        order = plan_rng.permutation(len(files))
        lists[split] = [files[int(k)] for k in order]
        summary_splits[split] = st

    # byte-identical sick images between train and val (like the real data)
    n_train_sick, n_val_sick = len(sick_files['train']), len(
        sick_files['val'])
    if num_duplicate_pairs is None:
        n_dup = max(1, int(round(0.05 * n_val_sick))) if (
            n_train_sick and n_val_sick) else 0
    else:
        n_dup = int(num_duplicate_pairs)
    n_dup = min(n_dup, n_train_sick, n_val_sick)
    dup_pairs = []
    for k in range(n_dup):
        src = sick_files['train'][k]
        dst = sick_files['val'][-1 - k]
        shutil.copyfile(osp.join(img_root, src), osp.join(img_root, dst))
        dup_pairs.append([src, dst])

    # extra public sets: no boxes ever, some TB-positive-looking
    n_ex = _counts(int(num_extra), [0.5, 0.25, 0.25])
    extra_lists: Dict[str, List[str]] = {}
    extra_num = {s: 0 for s in EXTRA_SOURCES}
    k_all = 0
    for split, n in zip(('train', 'val', 'test'), n_ex):
        extra_lists[split] = []
        for _ in range(n):
            rng = image_rng()
            src = EXTRA_SOURCES[k_all % len(EXTRA_SOURCES)]
            positive = k_all % 2 == 1
            k_all += 1
            extra_num[src] += 1
            j = extra_num[src]
            fname = {
                'da': f'da{j:04d}.png',
                'db': f'db{j:04d}.png',
                'montgomery': f'MCUCXR_{j:04d}_{int(positive)}.png',
                'shenzhen': f'CHNCXR_{j:04d}_{int(positive)}.png',
            }[src]
            name = f'extra/{src}/{fname}'
            a = _anatomy(rng)
            lesions = []
            if positive:
                cls = [ACTIVE, ACTIVE] if k_all % 4 == 2 else [ACTIVE, LATENT]
                lesions = [(c, b, 1.0)
                           for c, b in _plan_lesions(rng, a, S, cls, False)]
            _save_png(osp.join(img_root, name),
                      _render(rng, S, a, lesions, extra_style=True))
            extra_lists[split].append(name)

    # lists and json files
    all_lists = {
        'TBX11K_train': lists['train'],
        'TBX11K_val': lists['val'],
        'TBX11K_trainval': lists['train'] + lists['val'],
        'all_train': lists['train'] + extra_lists['train'],
        'all_val': lists['val'] + extra_lists['val'],
        'all_trainval': lists['train'] + extra_lists['train'] +
        lists['val'] + extra_lists['val'],
        'all_test': lists['test'] + extra_lists['test'],
    }
    json_counts = {}

    def dump(name: str, coco: dict) -> None:
        with open(osp.join(json_dir, name), 'w') as f:
            json.dump(coco, f)
        json_counts[name] = {
            'images': len(coco['images']),
            'annotations': len(coco['annotations'])
        }

    for name, files in all_lists.items():
        with open(osp.join(list_dir, name + '.txt'), 'w') as f:
            f.write(''.join(fn + '\n' for fn in files))
        coco = convert_list(files, xml_dir + '/', S)
        if name == 'all_test':
            # test labels are held by the challenge server
            coco['annotations'] = []
        dump(name + '.json', coco)
        if name.startswith('TBX11K_'):
            dump(name + '_only_tb.json',
                 convert_list(files, xml_dir + '/', S, tb_only=True))

    # per-split box counts from the json actually written
    for split in ('train', 'val'):
        with open(osp.join(json_dir, f'TBX11K_{split}.json')) as f:
            coco = json.load(f)
        names = {c['id']: c['name'] for c in coco['categories']}
        boxes = {ACTIVE: 0, LATENT: 0}
        with_boxes = set()
        for ann in coco['annotations']:
            boxes[names[ann['category_id']]] = boxes.get(
                names[ann['category_id']], 0) + 1
            with_boxes.add(ann['image_id'])
            if ann['bbox'][0] < 0 or ann['bbox'][1] < 0:
                summary_splits[split]['edge_boxes'] += 1
        summary_splits[split]['boxes'] = boxes
        summary_splits[split]['images_with_boxes'] = len(with_boxes)
    return {
        'root': root,
        'seed': int(seed),
        'image_size': S,
        'splits': summary_splits,
        'extra': {s: len(v) for s, v in extra_lists.items()},
        'duplicate_pairs': dup_pairs,
        'json_files': json_counts,
    }


def format_summary(summary: dict) -> str:
    """Human-readable table of :func:`make_synthetic_tbx11k`'s summary.

    Args:
        summary (dict): The summary.

    Returns:
        str: The table.
    """
    lines = [
        f"synthetic TBX11K in {summary['root']} (seed {summary['seed']}, "
        f"{summary['image_size']}x{summary['image_size']})"
    ]
    for split, st in summary['splits'].items():
        line = (f"  {split:5s}: {st['images']:4d} images (health "
                f"{st['health']}, sick {st['sick']}, tb {st['tb']})")
        if 'boxes' in st:
            line += (f", {st['images_with_boxes']} with boxes, boxes: " +
                     ', '.join(f'{k} {v}' for k, v in st['boxes'].items()) +
                     f"; {st['edge_boxes']} at the edge (-1), "
                     f"{st['tb_without_boxes']} tb image(s) without boxes, "
                     f"{st['difficult_dropped']} difficult dropped")
        else:
            line += ', no annotations'
        lines.append(line)
    lines.append('  extra: ' + ', '.join(
        f'{k} {v}' for k, v in summary['extra'].items()))
    lines.append(f"  byte-identical train/val sick pairs: "
                 f"{len(summary['duplicate_pairs'])}")
    for name, c in summary['json_files'].items():
        lines.append(f"  annotations/json/{name}: {c['images']} images, "
                     f"{c['annotations']} annotations")
    return '\n'.join(lines)

"""Training / inference speed of a config beside stock mmdet DINO (synthetic TBX11K, one process).

    python tools/analysis_tools/benchmark.py configs/dino_tbx11k_1gpu.py --batch2 --infer \\
        --json bench.json
    python tools/analysis_tools/benchmark.py configs/dino_tbx11k_tiny_1gpu.py --device cpu \\
        --steps 3 --warmup 2

Prints img/s, seconds per optimizer step and per micro-batch, peak memory and the ratio to stock
mmdet for every case; --json writes every figure. See tbx11k/benchmark/.
"""
import os
import os.path as osp
import sys
import warnings

if __name__ == '__main__':
    argv = sys.argv[1:]
    if '--device=cpu' in argv or any(a == '--device' and argv[i + 1:i + 2] == ['cpu']
                                     for i, a in enumerate(argv)):
        os.environ['CUDA_VISIBLE_DEVICES'] = ''  # before torch is imported
    # this repo's tbx11k: tools/<folder>/<tool>.py is three levels below the repo root
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    # setuptools deprecates pkg_resources, which mmengine imports to look packages up: a
    # warning at every start that no user of these tools can act on
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated as an API',
                            category=UserWarning)
    from tbx11k.benchmark.cli import main
    sys.exit(main(argv))

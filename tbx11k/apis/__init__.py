"""Library code behind the user tools (thin CLIs in ``tools/``).

- :mod:`tbx11k.apis.checkpoint_conversion`: adapt an mmdet DINO COCO checkpoint to TBX11K classes
  (``tools/model_converters/convert_coco_checkpoint.py``).
- :mod:`tbx11k.apis.inference`: predict on images, draw boxes, write a json
  (``tools/infer.py``).
- :mod:`tbx11k.apis.log_plots`: PNG plots of mmengine's ``scalars.json`` logs
  (``tools/analysis_tools/plot_logs.py``).

The submodules are imported on demand (``import tbx11k`` does not import them): inference pulls in
mmdet's model code, the plots matplotlib.
"""

"""Inference at batch N equals batch 1 on equal-size films (TBX11K's are all 512 x 512).

What makes ``--cfg-options test_dataloader.batch_size=8`` (and ``tools/analysis_tools/benchmark.py
--infer-batch-size``) safe for TBX11K: with no padding the batched forward is the same
computation per image, so every query's scores and boxes agree to float rounding.
"""
import torch

from tbx11k.testing import build_tiny_dino, random_batch


def _head_outputs(model, inputs, samples):
    with torch.no_grad():
        cls_scores, boxes = model(inputs, samples, mode='tensor')
    return cls_scores, boxes


def test_batch_of_equal_size_films_predicts_as_one_by_one():
    model = build_tiny_dino('BatchedLossDINOHead').eval()
    inputs, samples = random_batch((1, 2, 3), seed=3)
    for sample in samples:  # equal-size films: no padding
        sample.set_metainfo(dict(img_shape=(96, 96)))
    batched = _head_outputs(model, inputs, samples)
    for i in range(len(samples)):
        single = _head_outputs(model, inputs[i:i + 1], samples[i:i + 1])
        for got, expected in zip(batched, single):
            assert got.shape[1] == len(samples) and expected.shape[1] == 1
            torch.testing.assert_close(got[:, i], expected[:, 0], rtol=1e-4, atol=1e-5)
    # the detections too (same top-k of the same scores)
    with torch.no_grad():
        results = model.predict(inputs, samples, rescale=False)
        for i in range(len(samples)):
            one = model.predict(inputs[i:i + 1], samples[i:i + 1], rescale=False)[0]
            torch.testing.assert_close(results[i].pred_instances.scores,
                                       one.pred_instances.scores, rtol=1e-4, atol=1e-5)

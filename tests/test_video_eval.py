"""Multi-view evaluation: softmax probabilities averaged per video, padding rows not counted."""
import jax
import ml_collections
import numpy as np
import optax

from stvit_jax.train import evaluate, optim
from stvit_jax.runtime import sharding


def _mesh():
  cfg = ml_collections.ConfigDict({'mesh': {'data': -1, 'fsdp': 1}})
  return sharding.make_mesh(cfg, devices=jax.devices()[:1])


def test_views_are_averaged_as_probabilities_and_padding_is_ignored():
  rng = np.random.default_rng(0)
  b, v, classes = 4, 3, 5
  logits = rng.normal(0, 3, (b, v, classes)).astype(np.float32)
  # video 0: one confident wrong view outvotes two mild right ones in logit space but
  # not in probability space, so averaging logits would score it differently
  logits[0] = [[0.0, 9.0, 0, 0, 0], [2.0, 0, 0, 0, 0], [2.0, 0, 0, 0, 0]]
  labels = np.array([0, 2, 4, 1], np.int32)
  mask = np.array([1, 1, 1, 0], np.float32)  # the last row pads the batch
  # the "model" reads its logits from the input clip: (b * v, T=1, H=1, W=1, classes)
  videos = logits.reshape(b, v, 1, 1, 1, classes)
  apply_fn = lambda variables, x: x[:, 0, 0, 0, :]  # pylint: disable=unnecessary-lambda-assignment
  step = evaluate.make_eval_step(apply_fn, num_classes=classes, mesh=_mesh(),
                                 variable_shardings={})
  batch = {'video': videos, 'label': labels, 'mask': mask}
  out = evaluate.evaluate(step, {}, [batch], _mesh(), expected_count=3)

  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  mean = probs.mean(1)[:3]
  want_top1 = np.mean(mean.argmax(-1) == labels[:3])
  assert mean[0].argmax() == 0 and logits[0].mean(0).argmax() == 1  # the case above
  np.testing.assert_allclose(out['top1'], want_top1)
  np.testing.assert_allclose(out['loss'], np.mean(-np.log(mean[np.arange(3), labels[:3]])),
                             rtol=1e-5)
  assert out['num_examples'] == 3


def test_backbone_lr_mult_scales_all_but_the_head():
  cfg = ml_collections.ConfigDict({'optim': dict(
      b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip_norm=0.0,
      backbone_lr_mult=0.1)})
  params = {'head': {'kernel': np.ones((2, 2), np.float32)},
            'layers': {'w': np.ones((2, 2), np.float32)}}
  tx = optim.make(cfg, optax.constant_schedule(1.0))
  grads = jax.tree.map(np.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['head']['kernel'], -1.0, rtol=1e-5)
  np.testing.assert_allclose(updates['layers']['w'], -0.1, rtol=1e-5)

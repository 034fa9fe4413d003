"""STViT per frame on Video Swin: costs against Video Swin, the option
combinations, per-frame reuse of the image stage, gradients and errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from numpy_reference import apply, randomize
from stvit_jax.tools import flops
from stvit_jax import models
from stvit_jax.models import stvit_swin, stvit_video_swin

TINY = dict(embed_dim=16, depths=(2, 2, 6, 2), num_heads=(1, 2, 2, 4),
            window_size=(2, 7, 7), num_classes=5)
CLIP = (2, 4, 224, 224, 3)  # 2 temporal tokens, the 14x14 stage-3 grid


def gmacs(name, **kw):
  model = nnx.eval_shape(lambda: models.create(name, **kw))
  return flops.model_macs(model, 224, num_frames=32) / 1e9


@pytest.mark.slow
@pytest.mark.parametrize('size', ['tiny', 'small'])
def test_default_costs_are_the_papers_minus_27_percent(size):
  dense = gmacs(f'video_swin_{size}')
  saving = 1 - gmacs(f'stvit_video_swin_{size}') / dense
  assert 0.24 <= saving <= 0.30, f'{size}: {saving:.1%}'


def test_stage_three_roles():
  stage = nnx.eval_shape(lambda: models.create('stvit_video_swin_small')).layers[2]
  roles = [stage.role(i) for i in range(18)]
  assert roles[:11] == ['swin'] * 9 + ['stgm1', 'stgm2']
  assert roles[11:] == ['local', 'global'] * 3 + ['local']
  shifts = [stage.blocks[i].shift for i in range(9)]
  assert shifts == [(0, 0, 0), (4, 3, 3)] * 4 + [(0, 0, 0)]  # as the Video Swin blocks


@pytest.fixture(scope='module')
def model():
  m = models.create('stvit_video_swin_tiny', stgm_after=2, **TINY)
  randomize(m, seed=11)
  return m


def test_shapes_and_per_frame_aux(model):
  clips = jax.random.normal(jax.random.key(0), CLIP)
  logits, aux = apply(model, clips, train=False)
  assert logits.shape == (2, 5) and bool(jnp.isfinite(logits).all())
  assert [f.shape[1:] for f in aux['stage_features']] == [
      (2, 56, 56, 16), (2, 28, 28, 32), (2, 8, 8, 64), (2, 4, 4, 128)]
  assert aux['semantic_tokens'][0].shape == (2, 2, 64, 64)  # (B, D, 8x8 tokens, C)


def test_semantic_stage_is_the_image_stage_per_frame(model):
  """With time folded, the STGM and semantic blocks are the image stage's code:
  stage 3 from its STGM on equals the image SemanticStage applied per frame."""
  stage = model.layers[2]
  x = jax.random.normal(jax.random.key(1), (2, 2, 14, 14, 64))
  # Run the image stage's STGM + semantic blocks frame by frame.
  image_stage = nnx.eval_shape(lambda: stvit_swin.SemanticStage(
      64, 6, 2, (14, 14), window=7, drop_paths=[0.0] * 6, downsample=True,
      tokens_per_window=16, recovery=False, stgm_after=2, dtype=jnp.float32,
      rngs=nnx.Rngs(0)))
  graphdef, _ = nnx.split(image_stage)
  image_stage = nnx.merge(graphdef, nnx.state(stage))
  skip = lambda block, x, **kw: x  # the two 3D Swin blocks are checked elsewhere
  for s in (stage, image_stage):
    object.__setattr__(s, 'swin_step', skip)
  try:
    got, _ = stage(x, train=False, aux={})
    for t in range(2):
      want, _ = image_stage(x[:, t].reshape(2, 196, 64), train=False, aux={})
      np.testing.assert_allclose(got[:, t].reshape(want.shape), want, rtol=1e-5, atol=1e-5)
  finally:
    for s in (stage, image_stage):
      object.__delattr__(s, 'swin_step')


def test_clip_scope_attends_across_frames(model):
  clip_model = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: models.create(
      'stvit_video_swin_tiny', stgm_after=2, semantic_scope='clip', **TINY))),
      nnx.state(model))
  clips = jax.random.normal(jax.random.key(2), CLIP)
  frame, frame_aux = apply(model, clips, train=False)
  clip, clip_aux = apply(clip_model, clips, train=False)
  assert float(jnp.abs(frame - clip).max()) > 1e-5
  a, b = frame_aux['stage_features'][2], clip_aux['stage_features'][2]  # the semantic grid
  assert float(jnp.abs(a - b).max()) > 1e-3 * float(jnp.abs(a).max())


def test_every_parameter_gets_a_gradient(model):
  clips = jax.random.normal(jax.random.key(3), CLIP[:1] + CLIP[1:])
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(p, rest):
    logits, _ = nnx.merge(graphdef, p, rest, copy=True)(clips, train=False)
    return jnp.sum(logits ** 2)

  grads = jax.jit(jax.grad(loss))(params, rest)
  dead = ['.'.join(map(str, path)) for path, g in nnx.to_flat_state(grads)
          if not np.any(np.asarray(g.get_value()) != 0)]
  assert not dead, f'parameters without gradient: {dead}'


@pytest.mark.slow
def test_recovery_gradients_and_bfloat16():
  m = models.create('stvit_r_video_swin_tiny', **TINY)
  randomize(m, seed=12)
  assert [m.layers[2].role(i) for i in range(6)] == [
      'swin', 'stgm1', 'stgm2', 'local', 'global', 'recovery']
  clips = jax.random.normal(jax.random.key(4), (1, 4, 224, 224, 3))
  graphdef, params, rest = nnx.split(m, nnx.Param, ...)

  def loss(p, rest):
    logits, _ = nnx.merge(graphdef, p, rest, copy=True)(clips, train=False)
    return jnp.sum(logits ** 2)

  grads = jax.jit(jax.grad(loss))(params, rest)
  dead = ['.'.join(map(str, path)) for path, g in nnx.to_flat_state(grads)
          if not np.any(np.asarray(g.get_value()) != 0)]
  assert not dead, f'parameters without gradient: {dead}'
  logits, aux = apply(m, clips, train=False)
  assert aux['stage_features'][3].shape[1:] == (2, 7, 7, 128)  # stage 4 untouched
  bf16 = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: models.create(
      'stvit_r_video_swin_tiny', dtype='bfloat16', **TINY))), nnx.state(m))
  low, _ = apply(bf16, clips, train=False)
  assert float(jnp.abs(low - logits).max()) < 0.05 * float(jnp.abs(logits).max())


@pytest.mark.parametrize('kw,message', [
    (dict(tokens_per_window=8), r'tokens_per_window=8 is not valid; choose one of \[9, 16\]'),
    (dict(stgm_after=5), r'stgm_after=5 is beyond the stage depth.*1\.\.4'),
    (dict(semantic_scope='video'), r"semantic_scope='video' is not valid"),
    (dict(img_size=160), r'img_size=224'),
])
def test_bad_options_name_the_field(kw, message):
  with pytest.raises(ValueError, match=message):
    nnx.eval_shape(lambda: models.create('stvit_video_swin_tiny', **{**TINY, **kw}))


def test_wrong_clip_size_and_image_batch(model):
  with pytest.raises(ValueError, match=r'takes clips \(B, T, 224, 224, 3\).*img_size=224'):
    model(jnp.zeros((1, 4, 160, 160, 3)))
  with pytest.raises(ValueError, match='image batch'):
    model(jnp.zeros((1, 224, 224, 3)))


def test_visualize_draws_a_strip_per_temporal_token(model, tmp_path):
  from stvit_jax.tools import visualize
  clips = jax.random.normal(jax.random.key(5), (1, 4, 224, 224, 3))
  for layer in (1, 2):
    maps, patch = visualize.semantic_maps(model, clips, layer=layer)
    assert maps.shape == (2, 64, 14, 14) and patch == 16  # D = 2 temporal tokens
    np.testing.assert_allclose(maps.sum((2, 3)), 1.0, rtol=1e-4)
  frames = np.zeros((2, 224, 224, 3), np.uint8)
  sheet, overlays = visualize.render_strip(frames, visualize.hard_assignment(maps), patch)
  assert sheet.width > 2 * 224 and len(overlays) == 2

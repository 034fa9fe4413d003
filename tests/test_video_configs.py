"""Kinetics configs: variants pick the model, the Video Swin recipe, runlocal shrinks."""
import importlib

import pytest


from stvit_jax import models  # noqa: E402
from stvit_jax.train import functional

CONFIGS = {
    'video_swin_t': {'': 'stvit_video_swin_tiny', 'baseline': 'video_swin_tiny'},
    'video_swin_s': {'': 'stvit_video_swin_small', 'baseline': 'video_swin_small'},
}


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_variants_and_the_video_swin_recipe(name):
  module = importlib.import_module(f'configs.{name}')
  for variant, model in CONFIGS[name].items():
    config = module.get_config(variant)
    assert config.model.name == model and functional.input_kind(config) == 'video'
    assert set(config.model) - {'name', 'dtype'} == set(models.options(model)) - {'dtype'}
    assert (config.batch_size, config.total_epochs, config.warmup_epochs) == (64, 30, 2.5)
    o = config.optim
    assert (o.lr, o.lr_base_batch, o.backbone_lr_mult, o.weight_decay) == (1e-3, 64, 0.1, 0.02)
    assert o.warmup_lr == 0.1 * o.lr and config.mixup.prob == 0
    assert config.model.drop_path_rate == 0.1
    d = config.data
    assert (d.name, d.num_frames, d.frame_stride, d.image_size) == ('kinetics400', 32, 2, 224)
    assert (d.eval_clips, d.eval_crops) == (4, 3) and config.model.num_frames == 32
    small = module.get_config(','.join(filter(None, [variant, 'runlocal'])))
    assert small.model.name == model and small.batch_size == 8
    assert small.data.num_frames == small.model.num_frames == 8
  doc = module.__doc__
  assert f'--config=configs/{name}.py' in doc and 'top-1' in doc
  assert 'python -m stvit_jax.data.builders.kinetics --name kinetics400' in doc

"""predict and visualize on inputs that are not all good: a folder with an empty, a
truncated and a non-image file among images in every mode that must work (grey,
CMYK, alpha PNG, WebP) is predicted but for those, one line each and exit 2; a
bad visualize input is one line, exit 2. Weights of a tiny STViT-DeiT written by
the weights store (no downloads). A training run's directory as --init_from: its
model, the weights its evaluation used, --model / --set checked against it."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from stvit_jax import cli, models, names
from stvit_jax.tools import predict, visualize
from stvit_jax.train import run_weights
from stvit_jax.weights import store

TINY = dict(num_classes=10, img_size=32, patch_size=4, embed_dim=16, num_heads=2, depth=4,
            num_base_layers=1, num_semantic=16)
GOOD = ('a_rgb.jpg', 'b_grey.png', 'c_cmyk.jpg', 'd_alpha.png', 'e_photo.webp')
BAD = {'f_empty.jpg': 'empty file', 'g_truncated.jpg': 'truncated JPEG',
       'h_text.png': 'not an image Pillow can read', 'i_truncated.png': 'cannot decode it'}


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
  d = tmp_path_factory.mktemp('weights')
  store.save_weights(d, models.create('stvit_deit_tiny', **TINY),
                     {'model': 'stvit_deit_tiny', 'options': TINY, 'num_classes': 10})
  return str(d)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  d = tmp_path_factory.mktemp('images')
  rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8))
  rgb.save(d / 'a_rgb.jpg')
  rgb.convert('L').save(d / 'b_grey.png')
  rgb.convert('CMYK').save(d / 'c_cmyk.jpg')
  rgb.convert('RGBA').save(d / 'd_alpha.png')
  rgb.save(d / 'e_photo.webp')
  (d / 'f_empty.jpg').write_bytes(b'')
  jpeg = (d / 'a_rgb.jpg').read_bytes()
  (d / 'g_truncated.jpg').write_bytes(jpeg[:len(jpeg) // 2])
  (d / 'h_text.png').write_text('not an image at all\n')
  png = (d / 'd_alpha.png').read_bytes()
  (d / 'i_truncated.png').write_bytes(png[:len(png) // 2])
  return d


def test_predict_goes_on_past_unreadable_files(weights, folder, capsys):
  code = predict.main(['--model', 'stvit_deit_tiny', '--init_from', weights, '--image',
                       str(folder), '--top', '2'])
  out, err = capsys.readouterr()
  assert code == cli.USAGE, err
  predicted = [line for line in out.splitlines() if not line.startswith(' ')]
  assert predicted == [str(folder / name) for name in GOOD], out
  assert out.count('%') == 2 * len(GOOD)
  lines = err.strip().splitlines()
  assert len(lines) == len(BAD) + 1 and all(line.startswith('error: ') for line in lines), err
  for line, (name, what) in zip(lines, sorted(BAD.items())):
    assert line.startswith(f'error: {folder / name}: ') and what in line, line
    for internal in ('{{', 'function_node', '[Op:', 'BytesIO', 'Traceback'):
      assert internal not in line, line
  assert lines[-1] == f'error: {len(BAD)} of {len(GOOD) + len(BAD)} files could not be ' \
                      f'read (listed above); {len(GOOD)} predicted'


def test_predict_of_good_files_only_exits_0(weights, folder, capsys):
  files = [str(folder / name) for name in GOOD]
  assert predict.main(['--model', 'stvit_deit_tiny', '--init_from', weights,
                       '--image', *files]) == 0
  assert capsys.readouterr().err.count('error:') == 0


@pytest.mark.parametrize('name', sorted(BAD))
def test_visualize_names_its_bad_input_in_one_line(weights, folder, name, tmp_path, capsys):
  args = ['--model', 'stvit_deit_tiny', '--init_from', weights, '--image', str(folder / name),
          '--out', str(tmp_path / 'maps.png')] + [f'--set={k}={v}' for k, v in TINY.items()]
  assert visualize.main(args) == cli.USAGE
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith(f'error: --image {folder / name}: '), err
  assert BAD[name] in err and '{{' not in err and 'see --help' not in err, err
  assert not (tmp_path / 'maps.png').exists()


# --- a training run's directory as --init_from ----------------------------------------

@pytest.fixture(scope='module')
def run(tmp_path_factory, data_dir):
  """A finished 3-step run of a tiny STViT-DeiT with EMA (checkpoints 1, 2, 3)."""
  from stvit_jax.configs import quickstart  # pylint: disable=g-import-not-at-top
  from stvit_jax.train import loop  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config()
  for k in ('embed_dim', 'num_heads', 'depth', 'num_base_layers', 'num_semantic'):
    config.model[k] = TINY[k]
  config.data.data_dir, config.data.prefetch = data_dir, 1
  config.batch_size, config.eval_batch_size, config.ema_decay = 16, 120, 0.5
  config.total_steps, config.warmup_steps = 3, 1
  config.checkpoint_every_steps, config.eval_every_steps = 1, 3
  workdir = str(tmp_path_factory.mktemp('run') / 'quickstart')
  loop.train_and_evaluate(config, workdir)
  return workdir


def saved(workdir, step, item):
  from stvit_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  tree = checkpoint.restore_on_host(f'{workdir}/checkpoints/{step}/{item}')
  return {k: np.asarray(v) for k, v in names.flatten(tree['ema'] if item == 'train'
                                                    else tree['params'], sep='.').items()}


def params(model):
  return {k[len('params/'):]: np.asarray(v[...]) for k, v in
          names.weight_variables(model).items() if k.startswith('params/')}


def test_a_run_gives_the_weights_its_evaluation_used(run):
  model, provenance = run_weights.create(run)
  assert provenance['step'] == 3 and provenance['ema'], provenance
  ema, raw = saved(run, 3, 'train'), saved(run, 3, 'params')
  ours = params(model)
  assert set(ours) == set(ema) and all(np.array_equal(ours[k], ema[k]) for k in ema)
  assert not all(np.array_equal(ema[k], raw[k]) for k in raw)  # EMA 0.5: not the same
  raw_model, provenance = run_weights.create(run, raw=True)
  assert not provenance['ema'] and all(np.array_equal(params(raw_model)[k], raw[k]) for k in raw)


def test_an_unreadable_newest_step_gives_the_one_before_and_moves_nothing(run, tmp_path):
  copy = tmp_path / 'run'
  shutil.copytree(run, copy)
  shutil.rmtree(copy / 'checkpoints' / '3' / 'params')
  model, provenance = run_weights.create(str(copy))
  assert provenance['step'] == 2
  ema = saved(run, 2, 'train')
  assert all(np.array_equal(params(model)[k], ema[k]) for k in ema)
  assert sorted(os.listdir(copy / 'checkpoints')) == ['1', '2', '3']
  assert not (copy / 'checkpoints.corrupt').exists()


def test_predict_and_visualize_from_a_run_directory(run, folder, tmp_path, capsys):
  image = str(folder / 'a_rgb.jpg')
  assert predict.main(['--init_from', run, '--image', image, '--top', '3']) == 0
  out = capsys.readouterr().out
  assert out.splitlines()[0] == image and out.count('%  class ') == 3, out
  for extra in ([], ['--model', 'stvit_deit_tiny', '--set', 'embed_dim=16']):
    assert visualize.main(['--init_from', run, '--image', image, '--out',
                           str(tmp_path / 'maps.png'), *extra]) == 0
    assert 'stvit_deit_tiny' in capsys.readouterr().out
  assert (tmp_path / 'maps.png').stat().st_size > 0


@pytest.mark.parametrize('args,message', [
    (['--model', 'stvit_deit_small'], '--model stvit_deit_small but the run in {run} trained '
                                      'stvit_deit_tiny'),
    (['--set', 'embed_dim=32'], '--set embed_dim=32 but the run in {run} trained embed_dim=16'),
    (['--set', 'colour=1'], "--set colour=1: the run in {run} has no model option 'colour'"),
])
def test_a_mismatch_with_the_run_names_both(run, folder, args, message, tmp_path, capsys):
  for tool, extra in ((predict, []), (visualize, ['--out', str(tmp_path / 'maps.png')])):
    assert tool.main(['--init_from', run, '--image', str(folder / 'a_rgb.jpg'), *args,
                      *extra]) == cli.USAGE
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: '), err
    assert message.format(run=run) in err, err

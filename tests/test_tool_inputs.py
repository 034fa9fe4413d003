"""predict and visualize on inputs that are not all good: a folder with an empty, a
truncated and a non-image file among images in every mode that must work (grey,
CMYK, alpha PNG, WebP) is predicted but for those, one line each and exit 2; a
bad visualize input is one line, exit 2. Weights of a tiny STViT-DeiT written by
the weights store (no downloads)."""
import numpy as np
import pytest
from PIL import Image

from stvit_jax import cli, models
from stvit_jax.tools import predict, visualize
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

"""Bad inputs to every command line tool, as a table: each must exit 2 with one
`error:` line naming what to fix, print no traceback and write nothing.

The tools run in process (`cli.call(tool.main, argv)` / `main.run(argv)`); aot
defines the same absl flags as main, so its cases run in one subprocess (slow).
"""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from stvit_jax.tools import benchmark, flops, visualize  # noqa: E402
from stvit_jax import cli, main, models
from stvit_jax.tools import convert
from stvit_jax.weights import store
from stvit_jax.tools import predict  # noqa: E402
from stvit_jax.tools import pretrained
from stvit_jax.data.builders import kinetics  # noqa: E402

FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')
DEIT = os.path.join(FIXTURES, 'deit_tiny.npz')
QS = '--config=configs/quickstart.py'


def run_main(argv):
  return main.run(['main', *argv])


def tool(module):
  return lambda argv: cli.call(module.main, argv)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp('inputs')
  (d / 'garbage.pth').write_bytes(np.random.default_rng(0).bytes(5000))
  (d / 'weights.bin').write_bytes(b'\0' * 16)
  (d / 'not_an_image.jpg').write_text('hello')
  (d / 'occupied').mkdir()
  (d / 'occupied' / 'notes.txt').write_text('keep me')
  other = models.create('deit_tiny', img_size=32, patch_size=4, num_classes=10,
                        embed_dim=16, num_heads=2, depth=3)
  store.save_weights(d / 'deit_weights', other, {'model': 'deit_tiny'})
  return d


# (id, runner, argv with {d} for the inputs folder and {out} for the output, message)
CASES = [
    # main: flags and config fields
    ('main_no_workdir', run_main, [QS], '--workdir is required'),
    ('main_no_config', run_main, ['--workdir={out}'], '--config is required'),
    ('main_int_field_abc', run_main, [QS, '--workdir={out}', '--config.batch_size=abc'],
     '--config.batch_size=abc: expected int'),
    ('main_float_field_abc', run_main, [QS, '--workdir={out}', '--config.optim.lr=fast'],
     '--config.optim.lr=fast: expected float'),
    ('main_unknown_variant', run_main, ['--config=configs/deit_s.py:bogus', '--workdir={out}'],
     "unknown config variant(s) ['bogus']; valid: ['baseline', 'runlocal']"),
    ('main_unknown_field', run_main, [QS, '--workdir={out}', '--config.nope=1'],
     "unknown config field --config.nope: config has no 'nope'; valid fields there: batch_size"),
    ('main_unknown_nested_field', run_main, [QS, '--workdir={out}', '--config.model.nope=1'],
     "config.model has no 'nope'; valid fields there: attention, class_token"),
    ('main_missing_config_file', run_main, ['--config=configs/nope.py', '--workdir={out}'],
     "--config=configs/nope.py: no such file 'configs/nope.py'; config files in configs:"),
    ('main_positional', run_main, [QS, '--workdir={out}', 'extra'],
     "unexpected arguments ['extra']"),
    ('main_unknown_flag', run_main, [QS, '--workdir={out}', '--wokrdir=x'],
     "Unknown command line flag 'wokrdir'"),
    # main: settings the trainer rejects before writing anything
    ('main_unknown_model', run_main, [QS, '--workdir={out}', '--config.model.name=nope'],
     "unknown model 'nope'; valid names: deit_tiny"),
    ('main_num_semantic_15', run_main, [QS, '--workdir={out}', '--config.model.num_semantic=15'],
     'num_semantic=15 must be a square number'),
    ('main_grad_accum', run_main, [QS, '--workdir={out}', '--config.optim.grad_accum_steps=3'],
     'config.optim.grad_accum_steps=3: batch_size=32 must split into 3 micro-batches'),
    ('main_img_size', run_main, [QS, '--workdir={out}', '--config.model.img_size=48'],
     'config.model.img_size=48 differs from config.data.image_size=32'),
    ('main_num_classes', run_main, [QS, '--workdir={out}', '--config.model.num_classes=5'],
     "config.model.num_classes=5 but dataset 'stvit_digits' has 10 classes"),
    ('main_warmup', run_main, [QS, '--workdir={out}', '--config.warmup_steps=100000'],
     'warm-up (100000 steps) must be shorter than the run'),
    ('main_missing_dataset', run_main, ['--config=configs/deit_t.py:runlocal', '--workdir={out}',
                                        '--config.data.data_dir={d}/no_tfds'],
     "TFDS dataset 'imagenet2012' is not prepared in data.data_dir="),
    ('main_init_from_nowhere', run_main, [QS, '--workdir={out}', '--config.init_from={d}/none'],
     'none: neither converted weights'),
    ('main_init_from_other_model', run_main,
     [QS, '--workdir={out}', '--config.init_from={d}/deit_weights', '--config.model.embed_dim=16',
      '--config.model.num_heads=2', '--config.model.depth=3'],
     'it holds weights of deit_tiny (its provenance.json), not of stvit_deit_tiny'),
    # convert
    ('convert_unknown_model', tool(convert), ['--model', 'deit_huge', '--src', DEIT, '--out', '{out}'],
     "--model 'deit_huge' is not valid; choose one of"),
    ('convert_missing_src', tool(convert), ['--model', 'deit_tiny', '--src', '{d}/x.pth',
                                            '--out', '{out}'], "x.pth': no such file"),
    # (torch is an optional extra: without it, the message says how to install it)
    ('convert_garbage_pth', tool(convert), ['--model', 'deit_tiny', '--src', '{d}/garbage.pth',
                                            '--out', '{out}'],
     'not a readable PyTorch checkpoint' if importlib.util.find_spec('torch') else
     "reading .pth files needs PyTorch: pip install 'stvit_jax[torch]'"),
    ('convert_deit_as_swin', tool(convert), ['--model', 'swin_tiny', '--src', DEIT, '--out', '{out}'],
     'this is not a Swin checkpoint: it has no layers.N.* tensors (it looks like a DeiT'),
    ('convert_out_not_empty', tool(convert), ['--model', 'deit_tiny', '--src', DEIT,
                                              '--out', '{d}/occupied'],
     'occupied\' exists and is not an empty directory'),
    ('convert_unknown_format', tool(convert), ['--model', 'deit_tiny', '--src', '{d}/weights.bin',
                                               '--out', '{out}'], "unknown format '.bin'"),
    ('convert_bad_layout', tool(convert), ['--model', 'swin_tiny', '--src', DEIT, '--out', '{out}',
                                           '--layout', 'sideways'], "invalid choice: 'sideways'"),
    ('convert_no_out', tool(convert), ['--model', 'deit_tiny', '--src', DEIT],
     'the following arguments are required: --out'),
    ('convert_bad_set', tool(convert), ['--model', 'deit_tiny', '--src', DEIT, '--out', '{out}',
                                        '--set', 'depth'], 'expected KEY=VALUE'),
    # flops
    ('flops_unknown_model', tool(flops), ['nope', '--json', '{out}'], "unknown model 'nope'"),
    ('flops_image_size_abc', tool(flops), ['deit_tiny', '--image_size', 'abc'],
     "argument --image_size: invalid int value: 'abc'"),
    ('flops_stvit_r_at_384', tool(flops), ['stvit_r_swin_tiny', '--image_size', '384',
                                           '--json', '{out}'],
     'STViT-R key windows (10x10, stride 4) are defined for the 14x14 stage-3 grid'),
    # benchmark
    ('benchmark_unknown_model', tool(benchmark), ['--models', 'nope', '--json', '{out}'],
     "unknown model(s) ['nope']"),
    ('benchmark_batch_0', tool(benchmark), ['--batch', '0', '--json', '{out}'],
     'expected positive integers'),
    ('benchmark_img_size_set', tool(benchmark), ['--set', 'img_size=96', '--json', '{out}'],
     'set the input size and class count with --image_size'),
    ('benchmark_rounds_0', tool(benchmark), ['--rounds', '0', '--json', '{out}'],
     '--rounds must be >= 1'),
    # visualize
    ('visualize_missing_image', tool(visualize), ['--model', 'stvit_deit_tiny', '--image',
                                                  '{d}/none.jpg', '--out', '{out}'],
     'none.jpg: no such file'),
    ('visualize_not_an_image', tool(visualize), ['--model', 'stvit_deit_tiny', '--image',
                                                 '{d}/not_an_image.jpg', '--out', '{out}'],
     'not_an_image.jpg: not an image Pillow can read'),
    ('visualize_dense_model', tool(visualize), ['--model', 'deit_tiny', '--image',
                                                '{d}/not_an_image.jpg', '--out', '{out}'],
     "--model='deit_tiny' has no STGM to draw"),
    ('visualize_missing_weights', tool(visualize), ['--model', 'stvit_deit_tiny', '--image',
                                                    '{d}/not_an_image.jpg', '--out', '{out}',
                                                    '--init_from', '{d}/none'], 'no weights at'),
    # predict and pretrained
    ('predict_unknown_model', tool(predict), ['--model', 'nope', '--image', '{d}'],
     "--model 'nope' is not valid; choose one of"),
    ('predict_top_0', tool(predict), ['--model', 'deit_tiny', '--image', '{d}', '--top', '0'],
     '--top 0 must be >= 1'),
    ('pretrained_source_without_model', tool(pretrained), ['--source', 'hf://a/b/c.pth'],
     '--source needs exactly one --download MODEL'),
    # data.builders.kinetics (the conversion command)
    ('kinetics_bad_name', tool(kinetics), ['--name', 'k999', '--manual_dir', '{d}',
                                           '--data_dir', '{out}'], "invalid choice: 'k999'"),
    ('kinetics_workers_0', tool(kinetics), ['--name', 'kinetics400', '--manual_dir', '{d}',
                                            '--data_dir', '{out}', '--workers', '0'],
     '--workers=0: expected an int >= 1'),
]


def listing(d):
  return sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs)


@pytest.mark.parametrize('name,runner,argv,message', CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, runner, argv, message, files, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(ROOT)
  out = tmp_path / 'out'
  before = listing(files)
  code = runner([a.format(d=files, out=out) for a in argv])
  err = capsys.readouterr().err
  errors = [line for line in err.splitlines() if line.startswith('error:')]
  assert code == cli.USAGE, (name, code, err[-3000:])
  assert len(errors) == 1 and message in err, (name, err[-3000:])
  assert 'Traceback' not in err, err
  assert not out.exists(), f'{name} wrote {out}'
  assert listing(files) == before, f'{name} changed its inputs'


def test_enough_cases_across_the_tools():
  assert len(CASES) >= 30
  assert {c[0].split('_')[0] for c in CASES} >= {'main', 'convert', 'flops', 'benchmark',
                                                  'visualize'}


def test_verbose_adds_the_traceback(capsys, monkeypatch, tmp_path):
  monkeypatch.chdir(ROOT)
  code = run_main([QS, f'--workdir={tmp_path / "w"}', '--config.model.num_semantic=15',
                   '--verbose'])
  err = capsys.readouterr().err
  assert code == cli.USAGE and 'Traceback' in err and 'num_semantic=15' in err


def test_channels_first_input_is_named():
  model = models.create('deit_tiny', depth=1, embed_dim=16, num_heads=2)
  with pytest.raises(ValueError, match=r'channels-last .* looks channels-first .* '
                     r'images.transpose\(0, 2, 3, 1\)'):
    model(np.zeros((1, 3, 224, 224), np.float32), train=False)


AOT = """
import sys
from stvit_jax.tools import aot
for argv in (['--config=configs/quickstart.py'],
             ['--config=configs/quickstart.py', '--topology=v9z:1x1'],
             ['--config=configs/quickstart.py', '--topology=v5e:2x2', '--config.batch_size=abc']):
  print('rc', aot.run(['aot', *argv]), file=sys.stderr)
"""


@pytest.mark.slow
def test_aot_bad_inputs():
  proc = subprocess.run([sys.executable, '-c', AOT], cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu'), timeout=300)
  err = proc.stderr
  assert [line for line in err.splitlines() if line.startswith('rc ')] == ['rc 2'] * 3, err
  assert 'error: --topology is required' in err
  assert 'v9z' in err and 'error: --config.batch_size=abc: expected int' in err
  assert 'Traceback' not in err

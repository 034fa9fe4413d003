"""Command line: trains and evaluates a config in a workdir.

  python -m stvit_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
  python -m stvit_jax.main --config=configs/deit_s.py:baseline --workdir=gs://B/run \
      --config.batch_size=2048 --config.model.dtype=bfloat16

`--config.a.b=v` overrides any field of the config; unknown fields are an
error (the config is locked). Rerunning the same command resumes from the
workdir's latest checkpoint. Several cooperating processes (stvit_jax/runtime/distributed.py):
  python -m stvit_jax.main ... --coordinator_address=host0:1234 --num_processes=2 --process_id=0
(or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID); on multi-host TPU
pods STVIT_JAX_INIT=1 (the launch/ scripts set it) detects them.
"""
import sys

from absl import flags
from absl import logging
import jax

from stvit_jax import cli
from stvit_jax import configs
from stvit_jax.runtime import compile_cache, distributed, quiet_logs
from stvit_jax.train import loop

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and TensorBoard '
                    'summaries (local or gs://).')
cli.define_config_flag()
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for a '
                    'multi-process run (default: $JAX_COORDINATOR_ADDRESS).')
flags.DEFINE_integer('num_processes', None, 'Processes in the run (default: $JAX_NUM_PROCESSES).')
flags.DEFINE_integer('process_id', None, 'This process, in [0, num_processes) (default: '
                     '$JAX_PROCESS_ID).')


parse_flags = cli.flags_parser('config', 'workdir', config_dir=configs.DIRECTORY)


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f'unexpected arguments {argv[1:]}: every option is a --flag '
                        '(--config.a.b=v for config fields)')
  logging.get_absl_handler().addFilter(quiet_logs.QuietLibraries(cli.verbose()))
  cache = compile_cache.enable(FLAGS.config.get('compilation_cache_dir'),
                               FLAGS.config.get('compilation_cache_min_compile_secs',
                                                compile_cache.DEFAULT_MIN_COMPILE_SECS))
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  # Keep TensorFlow (the input pipeline) off the accelerators JAX uses.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')

  print(f'JAX {jax.__version__}: {distributed.layout(FLAGS.config)}', flush=True)
  logging.info('XLA compilation cache: %s', cache or 'off (config.compilation_cache_dir=\'\')')
  # The full config goes to WORKDIR/config.json once it is validated (train.py).
  logging.debug('config:\n%s', FLAGS.config)
  if FLAGS.config.get('mode', 'train') != 'train':
    summary = _evaluate_only(FLAGS.config, FLAGS.workdir)
  else:
    summary = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    summary.pop('state')
  print('summary:', ' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                             for k, v in summary.items()), flush=True)
  if summary.get('stopped_early'):
    print(f'stopped early at step {summary["final_step"]} after saving a checkpoint; rerun '
          f'the same command to resume (exit status {cli.PREEMPTED})', flush=True)
    return cli.PREEMPTED
  return cli.OK


def run(argv=None):
  """The command line, callable in-process (tests): returns the exit status."""
  return cli.run_absl(main, parse_flags, argv)


def _evaluate_only(config, workdir):
  """config.mode='eval' (stvit_jax/train/eval_only.py); a bad setting or unreachable weights
  are one message and exit 2."""
  from stvit_jax.train import eval_only  # pylint: disable=g-import-not-at-top
  from stvit_jax.weights import hub
  try:
    eval_only.check(config)  # before anything is downloaded or written
    record = eval_only.run(config, workdir)
  except (eval_only.ModeError, hub.PretrainedError) as e:
    cli.error_line(f'error: {e}')
    sys.exit(2)
  keys = ('model', 'init_from', 'eval_split', 'top1', 'top5', 'loss', 'num_examples',
          'expected_top1')
  return {k: record[k] for k in keys}


if __name__ == '__main__':
  jax.config.config_with_absl()
  sys.exit(run())

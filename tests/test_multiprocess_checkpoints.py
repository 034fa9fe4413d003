"""Checkpoints of a run of 2 processes (4 fake CPU devices each): a newest step that one
process cannot read makes both fall back to the same earlier step, and a kill of one
process during a save leaves a run that the same command resumes exactly."""
import glob
import os
import shutil
import signal
import sys
import time

import numpy as np
import pytest

from test_multiprocess import final_state, finish, launch, logs

EVERY = ['--config.checkpoint_every_steps=3']  # checkpoints 3 and 6 of the 6 steps

# The trainer with one host's restore of one step failing: on one machine both processes
# read the same files, so the one-sided failure (a host's flaky mount, its own damaged
# shard file) is injected, after orbax's read (whose barriers every process must reach;
# a failure inside them is orbax's to report).
ONE_SIDED = '''
import sys
import jax
from stvit_jax.train import checkpoint
bad_step = int(sys.argv.pop(1))
original = checkpoint.Checkpointer._restore_state

def fails_on_process_1(self, step, abstract_state, saved):
  state = original(self, step, abstract_state, saved)
  if step == bad_step and jax.process_index() == 1:
    raise OSError(f'injected: step {step} unreadable on this host only')
  return state

checkpoint.Checkpointer._restore_state = fails_on_process_1
from stvit_jax import main
sys.exit(main.run(['stvit_jax.main', *sys.argv[1:]]))
'''


@pytest.fixture(scope='module')
def uninterrupted(data_dir, tmp_path_factory):
  """A 2-process run of 6 steps with checkpoints 3 and 6: (workdir, final state)."""
  workdir = str(tmp_path_factory.mktemp('uninterrupted') / 'run')
  finish(launch(workdir, data_dir, *EVERY, processes=2, devices=4), workdir)
  return workdir, final_state(workdir)


def assert_same_state(got, want):
  assert got.keys() == want.keys() and len(got) > 10
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.slow
def test_one_sided_unreadable_step_makes_both_processes_fall_back(uninterrupted, data_dir,
                                                                  tmp_path):
  source, reference = uninterrupted
  workdir = str(tmp_path / 'run')
  shutil.copytree(source, workdir)
  script = tmp_path / 'one_sided.py'
  script.write_text(ONE_SIDED)
  out = finish(launch(workdir, data_dir, *EVERY, processes=2, devices=4,
                      program=(str(script), '6')), workdir)
  for i, log in enumerate(out):  # both set step 6 aside and restore step 3
    assert 'checkpoint step 6 in' in log and 'restoring step 3 instead' in log, (i, log[-3000:])
  assert 'unreadable on process(es) [1]' in out[0], out[0][-3000:]
  assert 'injected: step 6 unreadable on this host only' in out[1], out[1][-3000:]
  assert 'resuming from' in out[0] and 'at step 3' in out[0]
  assert len(glob.glob(os.path.join(workdir, 'checkpoints.corrupt', '6-*'))) == 1
  # steps 4-6 trained again from step 3: the same state as the uninterrupted run
  assert_same_state(final_state(workdir), reference)


@pytest.mark.slow
def test_kill_of_one_process_during_a_save_resumes_exactly(uninterrupted, data_dir, tmp_path):
  _, reference = uninterrupted
  workdir = str(tmp_path / 'run')
  procs = launch(workdir, data_dir, *EVERY, processes=2, devices=4)
  saving = os.path.join(workdir, 'checkpoints', '3.orbax-checkpoint-tmp*')
  deadline = time.time() + 600  # a hang guard: two compiles on a loaded 2-core machine
  while not glob.glob(saving):
    assert all(p.poll() is None for p in procs), logs(workdir, 2)
    assert time.time() < deadline, 'no save of step 3 began'
    time.sleep(0.002)
  procs[1].send_signal(signal.SIGKILL)  # during the save of step 3
  assert procs[0].wait(timeout=180) != 0  # the survivor stops (it cannot finish the save)
  kept = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  print('after the kill, checkpoints/ holds', kept, file=sys.stderr)
  assert '6' not in kept
  # The same command again: from the last complete step (none here, or 3), exactly.
  out = finish(launch(workdir, data_dir, *EVERY, processes=2, devices=4), workdir)
  resumed = 'resuming from' in out[0]
  assert resumed == ('3' in kept), (kept, out[0][-3000:])
  assert_same_state(final_state(workdir), reference)

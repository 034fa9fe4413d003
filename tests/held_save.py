"""`python tests/held_save.py ARGS` = `python -m stvit_jax.main ARGS` with step 20's save
held open (tests/test_faults.py): orbax writes `20.orbax-checkpoint-tmp` and never commits
it (renames it to `20`), so a kill once that directory is there lands in the save for
certain (a tiny model's save commits in milliseconds: by chance before or after a kill)."""
import asyncio
import runpy

from orbax.checkpoint._src.path import atomicity  # orbax 0.12: the local commit

commit = atomicity.AtomicRenameTemporaryPath.finalize


async def held(self):
  if self.get_final().name == '20':
    await asyncio.Event().wait()  # forever
  return await commit(self)


atomicity.AtomicRenameTemporaryPath.finalize = held
runpy.run_module('stvit_jax.main', run_name='__main__', alter_sys=True)

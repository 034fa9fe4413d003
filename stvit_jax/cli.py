"""One way for every command line tool to end: exit codes, user errors, --verbose.

    from stvit_jax import cli

    def main(argv=None):            # argparse tools
      parser = cli.ArgumentParser(prog='python -m stvit_jax.tools.NAME', description=__doc__)
      ...
      args = parser.parse_args(argv)
      if bad: raise cli.UserError('--x 3: must be even')   # or parser.error(...)

    if __name__ == '__main__':
      cli.run(main)                  # absl tools: cli.run_absl(main, flags_parser)

A user error -- an input the user has to fix -- prints one line `error: ...` on
stderr and exits with USAGE (2), without a traceback and before anything is
written. `--verbose` anywhere on the command line (or STVIT_JAX_VERBOSE=1)
shows the traceback as well. Anything else is a bug: traceback, exit 1.

Exit codes (documented in README.md; launch/ scripts rely on them):
  0  OK          finished
  1  ERROR       unexpected failure (a bug: traceback)
  2  USAGE       a user error: a flag, config field, file or dataset to fix
  3  DIVERGED    training hit a non-finite loss or gradient norm; nothing
                 non-finite was saved (the message names the first bad step
                 and the last good checkpoint)
  75 PREEMPTED   stopped early by SIGTERM / SIGINT / TPU preemption after saving
                 a checkpoint; rerunning the same command resumes (EX_TEMPFAIL)
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import traceback

OK, ERROR, USAGE, DIVERGED, PREEMPTED = 0, 1, 2, 3, 75
VERBOSE_FLAG = '--verbose'


class UserError(Exception):
  """An input the user must fix; the message names it and the valid values."""


class Diverged(Exception):
  """A non-finite loss or gradient norm; exit code DIVERGED."""


def key_value(text):
  """'KEY=VALUE' -> (KEY, VALUE), VALUE read as a Python literal (64, 0.5, True, None,
  (2, 2, 6, 2), 'avg') and otherwise kept as the string: the one parser of every tool's
  `--set KEY=VALUE` (usable as an argparse `type=`). Raises ArgumentTypeError."""
  key, sep, value = text.partition('=')
  if not sep or not key:
    raise argparse.ArgumentTypeError(f'{text!r}: expected KEY=VALUE, e.g. drop_path_rate=0.1')
  try:
    return key, ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return key, value


def key_values(pairs):
  """['embed_dim=64', 'pooling=avg'] -> {'embed_dim': 64, 'pooling': 'avg'} (`key_value`)."""
  return dict(key_value(text) for text in pairs)


# Exceptions that carry a message meant for the user. The project raises these
# for invalid configs, flags, files and datasets (they name the field to fix);
# `--verbose` shows where they came from when one turns out to be a bug.
USER_ERRORS = (UserError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError, ImportError)


def verbose(argv=None):
  argv = sys.argv if argv is None else argv
  return VERBOSE_FLAG in argv or os.environ.get('STVIT_JAX_VERBOSE', '') not in ('', '0')


def strip_verbose(argv):
  return [a for a in argv if a != VERBOSE_FLAG]


def message(exc):
  """One message for the user: the exception's own text (a KeyError's is quoted)."""
  text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
  return text.strip() or type(exc).__name__


def report(exc, *, show_traceback):
  if show_traceback:
    traceback.print_exception(exc, file=sys.stderr)
  hint = '' if show_traceback else f'  (add {VERBOSE_FLAG} for the traceback)'
  error_line(f'error: {message(exc)}{hint}')


def error_line(text):
  """Writes one line to stderr in a single write: print() writes the text and the
  newline separately, and a library thread (tensorstore, absl) writing between the
  two would split or join our line in a captured log."""
  sys.stderr.write(text + '\n')
  sys.stderr.flush()


def exit_code(exc):
  """The exit code for an exception leaving a CLI's main, or None for a bug."""
  if isinstance(exc, Diverged):
    return DIVERGED
  if isinstance(exc, USER_ERRORS):
    return USAGE
  return None


def call(main, argv=None):
  """Runs `main(argv)` (argv without the program name) and returns the exit code.

  For tests and `run`: user errors are reported in one line, SystemExit passes
  its code through, anything else prints its traceback and gives ERROR.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  show = verbose(argv)
  try:
    code = main(strip_verbose(argv))
  except SystemExit as e:
    if isinstance(e.code, str):  # sys.exit('message') prints it: keep it one line
      error_line(e.code if e.code.startswith('error:') else f'error: {e.code}')
      return USAGE
    return OK if e.code is None else e.code
  except KeyboardInterrupt:
    print('interrupted', file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except
    code = exit_code(e)
    if code is None:
      traceback.print_exception(e, file=sys.stderr)
      return ERROR
    report(e, show_traceback=show)
    return code
  return OK if code is None else int(code)


def run(main):
  """`if __name__ == '__main__': cli.run(main)` for a main(argv) taking sys.argv[1:]."""
  sys.exit(call(main))


class ArgumentParser(argparse.ArgumentParser):
  """argparse that reports errors in one `error:` line (exit USAGE) and knows --verbose."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault('formatter_class', argparse.RawDescriptionHelpFormatter)
    super().__init__(*args, **kwargs)
    self.add_argument(VERBOSE_FLAG, action='store_true',
                      help='on an error, also print the traceback')

  def error(self, message):  # argparse's own prints the whole usage first
    error_line(f'error: {self.prog}: {message} (see --help)')
    raise SystemExit(USAGE)


def run_absl(main, flags_parser, argv=None):
  """absl.app.run(main, flags_parser) with flag errors and user errors as one line.

  `flags_parser(argv)` parses absl flags (argv with the program name) and may
  raise flags.Error / UserError; `main(argv)` is the program. Returns the exit
  code (for tests); `__main__` does sys.exit(run_absl(...)).
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  argv = list(sys.argv if argv is None else argv)
  show = verbose(argv)
  argv = strip_verbose(argv)
  parsed = []

  def parse(args):
    try:
      parsed.append(flags_parser(args))
    except (flags.Error, UserError, ValueError, KeyError, AttributeError) as e:
      # flags.Error: missing/unknown/ill-typed flag; the others: a config file's own
      # error (an unknown variant) or an unknown --config.a.b field.
      report(e if not isinstance(e, flags.Error) else UserError(_flag_message(e)),
             show_traceback=show)
      raise SystemExit(USAGE) from None
    return parsed[-1]

  def body(args):
    return call(lambda _: main(args), [VERBOSE_FLAG] if show else [])

  try:
    app.run(lambda args: sys.exit(body(args)), argv=argv, flags_parser=parse)
  except SystemExit as e:
    return OK if e.code is None else e.code
  return OK


# absl + ml_collections flags (main, aot): --config=FILE[:variants] and --config.a.b=v.

def define_config_flag():
  """Defines the shared --config flag once per process.

  main and aot both take it; absl flags are global, so a process importing both
  (the test suite) must not define it twice. Required flags are checked by
  `parse_flags(required=...)` for the same reason: absl's own required-flag
  validators would make one tool demand the other's flags.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  if 'config' not in flags.FLAGS:
    config_flags.DEFINE_config_file('config', None, 'Training configuration file, with an '
                                    'optional :variant suffix.', lock_config=True)


def flags_parser(*required, config_dir=None):
  """A flags parser for `run_absl` that also requires the named flags; `config_dir`:
  where to look for a --config file that does not exist relative to the working
  directory (the configs bundled with the package)."""
  return lambda argv: parse_flags(argv, required=required, config_dir=config_dir)


def parse_flags(argv, required=(), config_dir=None):
  """FLAGS(argv); a bad flag raises UserError naming it and what is valid there.

  absl and ml_collections report an unknown `--config.a.b`, a value of the
  wrong type and a config file's own error (an unknown :variant) as flag errors
  carrying chained tracebacks; this names the field, the value and the choices.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  FLAGS = flags.FLAGS
  FLAGS.unparse_flags()  # in-process reuse (tests): forget the previous command's values
  for name in [n for n in FLAGS if n.startswith('config.')]:  # and its --config.* overrides,
    delattr(FLAGS, name)  # which ml_collections defines anew on each parse
  argv = list(argv)
  at = [i for i, a in enumerate(argv) if i and a.startswith('--config=')]
  spec = argv[at[-1]].split('=', 1)[1] if at else None
  if spec is not None:
    found = find_config(spec, config_dir)
    if found != spec:
      argv[at[-1]] = f'--config={found}'
      print(f'--config={spec}: not found in {os.getcwd()}; using the bundled config '
            f'{found.partition(":")[0]}', file=sys.stderr, flush=True)
      spec = found
  saved_argv = sys.argv
  sys.argv = list(argv)  # ml_collections reads the --config.* overrides from sys.argv
  try:
    rest = FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError):
    if spec is None:
      raise
    config = load_config(spec)
    _check_overrides(argv, config)
    raise
  finally:
    sys.argv = saved_argv
  for name in required:
    if FLAGS[name].value is None:
      raise UserError(f'--{name} is required')
  return rest


def find_config(spec, config_dir=None):
  """`spec` (PATH[:variants]) if PATH is a file, else the file of the same name in
  `config_dir` (same variants); UserError listing the config files there or beside PATH."""
  path, colon, arg = spec.partition(':')
  if os.path.isfile(path):
    return spec
  bundled = os.path.join(config_dir, os.path.basename(path)) if config_dir else None
  if bundled and os.path.isfile(bundled):
    return bundled + colon + arg
  here = os.path.dirname(path) or '.'
  where = here if os.path.isdir(here) else config_dir
  listed = sorted(f for f in os.listdir(where) if f.endswith('.py') and f != '__init__.py') \
      if where and os.path.isdir(where) else []
  raise UserError(f'--config={spec}: no such file {path!r}' + (
      f'; config files in {where}: {", ".join(listed)}' if listed else ''))


def load_config(spec, config_dir=None):
  """The ConfigDict of 'configs/deit_s.py:baseline' (its get_config(arg)), the file
  found as `find_config` finds it."""
  path, _, arg = find_config(spec, config_dir).partition(':')
  import importlib.util  # pylint: disable=g-import-not-at-top
  loader = importlib.util.spec_from_file_location('_stvit_jax_config', path)
  module = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(module)
  try:
    return module.get_config(arg) if arg else module.get_config()
  except ValueError as e:  # an unknown :variant names the valid ones
    raise UserError(f'--config={spec}: {e}') from None


def _check_overrides(argv, config):
  """Raises UserError for the first `--config.a.b=v` naming no field or a bad value."""
  for a in argv[1:]:
    if not a.startswith('--config.'):
      continue
    flag, _, value = a.partition('=')
    parts, node = flag[len('--config.'):].split('.'), config
    for i, key in enumerate(parts):
      if not hasattr(node, 'keys') or key not in node:
        where = '.'.join(['config'] + parts[:i])
        valid = ', '.join(sorted(node.keys())) if hasattr(node, 'keys') else 'none'
        raise UserError(f'unknown config field {flag}: {where} has no {key!r}; valid '
                            f'fields there: {valid}')
      parent, node = node, node[key]
    kind = parent.get_type(parts[-1]) if hasattr(parent, 'get_type') else type(node)
    if kind in (int, float, bool) and not _parses(value, kind):
      raise UserError(f'{flag}={value}: expected {kind.__name__} (now {node!r})')


def _parses(text, kind):
  if kind is bool:
    return text.lower() in ('true', 'false', '1', '0', '')
  try:
    kind(text) if kind is not int else int(text, 0)
  except ValueError:
    try:  # ml_collections accepts 1e3 for ints that are exact
      return kind is int and float(text).is_integer()
    except ValueError:
      return False
  return True


def _flag_message(e):
  """absl's flag error, without the chained config-file traceback it may carry."""
  text = str(e).strip()
  cause = e.__cause__ or e.__context__
  if cause is not None and str(cause) and str(cause) not in text:
    text = f'{text}: {cause}'
  return text

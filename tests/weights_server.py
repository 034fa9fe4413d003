"""A local HTTP server standing in for the Hugging Face Hub and a plain file host.

    /files/NAME                         a file; Range requests answered with 206
    /OWNER/REPO/resolve/REV/FILE        the Hub's download URL (HF_ENDPOINT=server.url):
                                        X-Repo-Commit, ETag (the sha256, as the Hub gives
                                        for LFS files) and Content-Length on HEAD and GET;
                                        404 + X-Error-Code RepoNotFound / EntryNotFound

`server.truncate[path] = n` cuts the next n GETs of `path` to half the file (the
connection closes mid-body); `server.requests` records (method, path, Range).
"""
import hashlib
import http.server
import threading

COMMIT = 'c0ffee' * 6 + 'c0ff'  # any 40 hex digits


class Server:

  def __init__(self):
    self.files, self.repos, self.truncate, self.requests = {}, {}, {}, []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def log_message(self, *args):  # quiet
        pass

      def do_HEAD(self):
        self.answer(body=False)

      def do_GET(self):
        self.answer(body=True)

      def answer(self, body):
        server.requests.append((self.command, self.path, self.headers.get('Range')))
        data, headers = server.lookup(self.path)
        if isinstance(data, int):  # an error status
          self.send_response(data)
          for k, v in headers.items():
            self.send_header(k, v)
          self.send_header('Content-Length', '0')
          self.end_headers()
          return
        start, status = 0, 200
        rng = self.headers.get('Range')
        if rng and rng.startswith('bytes=') and rng.endswith('-'):
          start, status = int(rng[len('bytes='):-1]), 206
          if start >= len(data):
            self.send_response(416)
            self.send_header('Content-Length', '0')
            self.end_headers()
            return
        self.send_response(status)
        for k, v in headers.items():
          self.send_header(k, v)
        self.send_header('Content-Length', str(len(data) - start))
        if status == 206:
          self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
        self.end_headers()
        if not body:
          return
        if body and server.truncate.get(self.path, 0) > 0:
          server.truncate[self.path] -= 1
          self.wfile.write(data[start:start + (len(data) - start) // 2])
          self.wfile.flush()
          self.close_connection = True
          return
        self.wfile.write(data[start:])

    self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

  def lookup(self, path):
    path = path.split('?')[0]
    if path.startswith('/files/'):
      name = path[len('/files/'):]
      return (self.files[name], {}) if name in self.files else (404, {})
    parts = path.strip('/').split('/')
    if len(parts) >= 5 and parts[2] == 'resolve':
      repo, filename = f'{parts[0]}/{parts[1]}', '/'.join(parts[4:])
      if repo not in self.repos:
        return 404, {'X-Error-Code': 'RepoNotFound', 'X-Error-Message': 'Repository not found'}
      if filename not in self.repos[repo]:
        return 404, {'X-Error-Code': 'EntryNotFound', 'X-Error-Message': 'Entry not found'}
      data = self.repos[repo][filename]
      return data, {'X-Repo-Commit': COMMIT,
                    'ETag': f'"{hashlib.sha256(data).hexdigest()}"'}
    return 404, {}

  def file_url(self, name):
    return f'{self.url}/files/{name}'

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.httpd.shutdown()
    self.httpd.server_close()


def source_state_dict(name, seed=0, **options):
  """Random weights for model `name` (+ constructor `options`) as the PyTorch checkpoint
  that the converter reads for its family would hold them (names and layouts)."""
  import numpy as np
  from flax import nnx
  from stvit_jax.weights import convert
  from stvit_jax.weights import store
  from stvit_jax import models
  abstract = nnx.eval_shape(lambda: models.create(name, **options))
  rules = convert.RULES[convert.rules_for(name, {'layers.0.downsample.x': 0})[0]]
  rng = np.random.default_rng(seed)
  out = {}
  for target, value in store.flat_variables(abstract).items():
    shape, leaf = tuple(value.shape), target.rsplit('.', 1)[-1]
    if leaf in ('scale', 'var'):
      array = rng.uniform(0.5, 1.5, shape)
    elif leaf in ('bias', 'mean'):
      array = 0.1 * rng.standard_normal(shape)
    else:
      array = 0.05 * rng.standard_normal(shape)
    if leaf == 'kernel' and len(shape) == 2:
      array = array.T                      # (in, out) -> Linear (out, in)
    elif leaf == 'kernel' and len(shape) == 4:
      array = array.transpose(3, 2, 0, 1)  # HWIO -> Conv OIHW
    out[convert.source_name(target, rules)] = np.ascontiguousarray(array, np.float32)
  return out

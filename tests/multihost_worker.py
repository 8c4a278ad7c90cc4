"""One process of a localhost multi-process test: `python tests/multihost_worker.py AUDIT_LOG
rewardlab-args...` runs `rewardlab <args>` and appends to AUDIT_LOG every file or folder this
Python process creates, writes, renames or removes (Python audit events), one
"event<TAB>path" line each, so a test can check which process wrote which run files.
TensorStore's own writes (orbax checkpoint shards, in C++) are not seen.
"""
import os
import runpy
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _install(log_path: str):
  fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)   # before the hook: not logged

  def record(event: str, path):
    if isinstance(path, (str, bytes, os.PathLike)):
      os.write(fd, f"{event}\t{os.path.abspath(os.fsdecode(path))}\n".encode())

  def hook(event, args):
    if event == "open" and args and args[0] is not None and not isinstance(args[0], int):
      mode, flags = args[1], args[2]
      if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & _WRITE_FLAGS:
        record("write", args[0])
    elif event in ("os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "shutil.rmtree",
                   "shutil.move", "os.symlink", "os.link"):
      record(event, args[0])
  sys.addaudithook(hook)


if __name__ == "__main__":
  _install(sys.argv[1])
  sys.argv = ["rewardlab"] + sys.argv[2:]
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  runpy.run_module("rewardlab", run_name="__main__", alter_sys=True)

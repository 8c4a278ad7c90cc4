"""Mutation testing of rewardlab's maths: does the test suite notice a wrong formula?

Small AST mutations (operators swapped, comparisons flipped, constants changed,
stop_gradient removed, min/max and sum/mean swapped, arguments swapped, sibling parameters
swapped such as clip_low <-> clip_high) are applied one at a time to the target functions;
for each mutant only the tests that execute the mutated lines run (a coverage map built
once per run, one coverage context per test, with JAX's trace caches cleared between tests
so a test that reuses a compiled function still counts as covering it), fastest first,
stopping at the first failure, under a timeout. A mutant is killed when a test fails or
times out, survives when they all pass, and is "uncovered" when no selected test runs it.

    python tools/mutation_test.py --rev bb1a0a7 --out runs/mutation/before.jsonl
    python tools/mutation_test.py --out runs/mutation/after.jsonl          # working tree
    python tools/mutation_test.py --list                                    # mutants only
    python tools/mutation_test.py --show 'rewardlab/ops/kl.py:12:cmp:0'     # one mutant's diff
    python tools/mutation_test.py --summary runs/mutation/after.jsonl

The code under test is copied (git archive of --rev, or the working tree's tracked and
untracked files) into a scratch directory and mutated there, never in place. Results are
appended one JSON line per mutant, so an interrupted run resumes where it stopped.
Why a script of our own (not mutmut / cosmic-ray): JAX-specific operators (stop_gradient
removal, sibling-argument swaps) and a per-line test map that survives JAX's trace caches.
"""
from __future__ import annotations

import argparse
import ast
import collections
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# file -> functions to mutate (qualified names; None = the whole module, module level included)
TARGETS = {
    "rewardlab/objectives/policy_gradient.py": None,
    "rewardlab/objectives/preference.py": None,
    "rewardlab/objectives/reward_model.py": None,
    "rewardlab/objectives/sft.py": None,
    "rewardlab/ops/kl.py": None,
    "rewardlab/ops/masked.py": None,
    "rewardlab/ops/logprobs.py": None,
    "rewardlab/rewards/verifiers.py": None,
    "rewardlab/rewards/self_rewards.py": None,
    "rewardlab/rewards/judge.py": ("score_from_logits", "Judge.prompt", "Judge.examples"),
    "rewardlab/sampling/sampler.py": ("SamplingParams.__post_init__", "SamplingParams.segment_ends",
                                      "nucleus_threshold", "process_logits", "_pick", "_sample_fn"),
    "rewardlab/train/step.py": ("model_params", "make_loss_and_grad", "make_update_step"),
}
# reachable only with a device mesh (tests/multidevice_check.py runs them, not per mutant)
SKIP_FUNCTIONS = ("_sample_fn.constrain", "_sample_fn.sample.constrain_cache")
# the fast unit tests that may kill them (end-to-end pipelines are too slow to run per mutant)
TEST_FILES = (
    "tests/test_policy_gradient.py", "tests/test_preference_objectives.py", "tests/test_ops.py",
    "tests/test_objectives_sft.py", "tests/test_reward_model.py", "tests/test_self_rewards.py",
    "tests/test_sampler.py", "tests/test_verifiers.py", "tests/test_update_step.py",
    "tests/test_conventions.py",
)
# hand-written mutants the AST operators cannot express: (file, function, old text, new text)
EXTRA_MUTANTS = (
    ("rewardlab/train/step.py", "make_update_step",
     "optimizer.update(grads, state.opt_state, state.params)",
     "optimizer.update(jax.tree.map(lambda g: 0.5 * g, grads), state.opt_state, state.params)"),
)

# Mutants judged equivalent (no input the function is documented to take tells them apart),
# matched by (file, function, text before, text after) so they survive line shifts. The summary
# scores killed / (total - equivalent) and lists them apart.
EQUIVALENT: tuple[tuple[str, str, str, str, str], ...] = ()

FUNCTION_SWAPS = {"minimum": "maximum", "maximum": "minimum", "min": "max", "max": "min",
                  "sum": "mean", "mean": "sum", "argmax": "argmin", "any": "all", "all": "any",
                  "log_sigmoid": "sigmoid", "softmax": "log_softmax", "log_softmax": "softmax"}
# calls whose argument order only sets up shapes/dtypes: a swap there crashes, which says
# nothing about the maths
SHAPE_CALLS = {"zeros", "ones", "full", "empty", "reshape", "broadcast_to", "arange", "astype",
               "zeros_like", "full_like", "ones_like", "PRNGKey", "fold_in", "isinstance", "getattr",
               "dynamic_update_index_in_dim", "dynamic_index_in_dim", "ShapeDtypeStruct"}
# control-flow and transformation calls: an argument swap there is a type error, not a formula
STRUCTURE_CALLS = {"scan", "while_loop", "fori_loop", "cond", "jit", "grad", "value_and_grad", "map",
                   "split", "merge", "vmap", "partial", "enumerate", "zip", "range", "Mutant"}
# calls where swapping a literal with an array is a plausible slip (inverted select, bounds)
LITERAL_SWAP_CALLS = {"where", "clip", "minimum", "maximum"}
DTYPES = {"float32", "float64", "int32", "int64", "bool_", "bfloat16", "uint32"}
BINOP_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
               ast.FloorDiv: ast.Div, ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv,
               ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd}
CMP_SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
             ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
SKIP_KEYWORDS = {"dtype", "preferred_element_type", "maxsize", "kind", "err_msg"}


@dataclasses.dataclass
class Mutant:
  id: str            # file:line:operator:index
  file: str
  function: str      # qualified name, or "<module>"
  line: int
  end_line: int
  operator: str
  before: str
  after: str
  start: int = 0     # character offsets of the replaced text in the source
  end: int = 0


# ----------------------------------------------------------------------------- generation
def _offsets(source: str):
  starts, pos = [], 0
  for line in source.splitlines(keepends=True):
    starts.append(pos)
    pos += len(line)
  starts.append(pos)
  return starts


def _char(starts, source_bytes_lines, line, col):
  """AST col offsets count UTF-8 bytes; convert to a character offset."""
  text = source_bytes_lines[line - 1]
  return starts[line - 1] + len(text.encode()[:col].decode())


class _Scopes:
  """Qualified scope names of every node, function parameters, and the nodes not to mutate
  (docstrings, f-strings, raise statements, decorators, annotations)."""

  def __init__(self, tree):
    self.qualname, self.skip, self.params = {}, set(), {}
    self._walk(tree, "<module>", ())

  def _skip_tree(self, node):
    self.skip.update(id(n) for n in ast.walk(node))

  def _body(self, body, scope, stack):
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
      self._skip_tree(body[0])      # docstring
    for child in body:
      self._walk(child, scope, stack)

  def _walk(self, node, scope, stack):
    self.qualname[id(node)] = scope
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      for d in node.decorator_list:
        self._skip_tree(d)
      inner = stack + (node.name,)
      if isinstance(node, ast.ClassDef):
        for b in node.bases + [k.value for k in node.keywords]:
          self._walk(b, scope, stack)
      else:
        args = node.args
        if node.returns is not None:
          self._skip_tree(node.returns)
        for a in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
          if a is not None and a.annotation is not None:
            self._skip_tree(a.annotation)
        # default values are evaluated at definition time, in the enclosing scope
        for d in args.defaults + [d for d in args.kw_defaults if d is not None]:
          self._walk(d, scope, stack)
        self.params[".".join(inner)] = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
      self._body(node.body, ".".join(inner), inner)
    elif isinstance(node, ast.Module):
      self._body(node.body, scope, stack)
    elif isinstance(node, (ast.Raise, ast.JoinedStr)):
      self._skip_tree(node)
    else:
      if isinstance(node, ast.AnnAssign):
        self._skip_tree(node.annotation)
      for child in ast.iter_child_nodes(node):
        self._walk(child, scope, stack)


def _in_targets(qualname: str, wanted) -> bool:
  if any(qualname == s or qualname.startswith(s + ".") for s in SKIP_FUNCTIONS):
    return False
  if wanted is None:
    return True
  return any(qualname == w or qualname.startswith(w + ".") for w in wanted)


def _is_dtype(node) -> bool:
  return (isinstance(node, ast.Attribute) and node.attr in DTYPES) or (
      isinstance(node, ast.Name) and node.id in ("bool", "int", "float"))


def _is_literal(node) -> bool:
  """A number or string (an axis, a mode name): swapping it with an array is a type error."""
  if isinstance(node, ast.UnaryOp):
    node = node.operand
  return isinstance(node, ast.Constant)


def _expr_mutations(node, params, parent):
  """Yield (operator, replacement node) for one AST node."""
  if isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAPS:
    yield "binop", ast.BinOp(node.left, BINOP_SWAPS[type(node.op)](), node.right)
  elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not, ast.Invert)):
    yield "unary", node.operand
  elif isinstance(node, ast.Compare):
    for i, op in enumerate(node.ops):
      if type(op) in CMP_SWAPS:
        ops = list(node.ops)
        ops[i] = CMP_SWAPS[type(op)]()
        yield "cmp", ast.Compare(node.left, ops, node.comparators)
  elif isinstance(node, ast.BoolOp):
    yield "boolop", ast.BoolOp(ast.Or() if isinstance(node.op, ast.And) else ast.And(), node.values)
  elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
    yield "const", ast.Constant(node.value + 1)
  elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
    yield "const", ast.Constant(not node.value)
  elif isinstance(node, ast.Call):
    fn = node.func
    fname = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else None
    if fname == "stop_gradient" and len(node.args) == 1:
      yield "stop_gradient", node.args[0]
    if fname in FUNCTION_SWAPS:
      new_fn = (ast.Attribute(fn.value, FUNCTION_SWAPS[fname], ast.Load()) if isinstance(fn, ast.Attribute)
                else ast.Name(FUNCTION_SWAPS[fname], ast.Load()))
      yield "fn_swap", ast.Call(new_fn, node.args, node.keywords)
    args = ([] if fname in SHAPE_CALLS | STRUCTURE_CALLS or any(map(_is_dtype, node.args))
            else node.args)
    for i in range(len(args) - 1):
      literal = _is_literal(args[i]) or _is_literal(args[i + 1])
      if (not isinstance(args[i], ast.Starred) and not isinstance(args[i + 1], ast.Starred)
          and ast.dump(args[i]) != ast.dump(args[i + 1])
          and (not literal or fname in LITERAL_SWAP_CALLS)):
        swapped = list(args)
        swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
        yield "arg_swap", ast.Call(fn, swapped, node.keywords)
    kws = [k for k in node.keywords if k.arg is not None]
    for i in range(len(kws) - 1):
      a, b = kws[i], kws[i + 1]
      if (a.arg not in SKIP_KEYWORDS and b.arg not in SKIP_KEYWORDS
          and not _is_literal(a.value) and not _is_literal(b.value)
          and ast.dump(a.value) != ast.dump(b.value)):
        new_kws = [ast.keyword(k.arg, b.value if k is a else a.value if k is b else k.value)
                   for k in node.keywords]
        yield "kwarg_swap", ast.Call(fn, node.args, new_kws)
  elif (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and params
        and not isinstance(parent, (ast.Call, ast.keyword))):   # call arguments: arg_swap
    head, _, tail = node.id.rpartition("_")
    if head and tail:
      for other in sorted(params):
        o_head, _, o_tail = other.rpartition("_")
        if other != node.id and o_head == head and o_tail:
          yield "sibling", ast.Name(other, ast.Load())


def _stmt_mutations(node):
  if isinstance(node, ast.AugAssign) and type(node.op) in BINOP_SWAPS:
    yield "augassign", ast.AugAssign(node.target, BINOP_SWAPS[type(node.op)](), node.value)


def generate(path: str, rel: str, wanted) -> list[Mutant]:
  source = open(path, encoding="utf-8").read()
  tree = ast.parse(source)
  scopes = _Scopes(tree)
  parents = {id(c): n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
  lines = source.splitlines(keepends=True)
  starts = _offsets(source)
  out, counter = [], collections.Counter()
  for node in ast.walk(tree):
    if id(node) in scopes.skip or not hasattr(node, "lineno"):
      continue
    qual = scopes.qualname.get(id(node), "<module>")
    if not _in_targets(qual, wanted):
      continue
    if isinstance(node, ast.keyword) or (isinstance(node, ast.Constant) and _is_skipped_kw_value(node, tree)):
      continue
    params = _visible_params(qual, scopes)
    muts = list(_stmt_mutations(node)) if isinstance(node, ast.stmt) else list(_expr_mutations(node, params, parents.get(id(node))))
    for op, new in muts:
      start = _char(starts, lines, node.lineno, node.col_offset)
      end = _char(starts, lines, node.end_lineno, node.end_col_offset)
      before = source[start:end]
      text = ast.unparse(ast.fix_missing_locations(new))
      after = text if isinstance(node, ast.stmt) or isinstance(new, ast.Name) else f"({text})"
      if after.strip("()") == before.strip("()"):
        continue
      key = f"{rel}:{node.lineno}:{op}"
      out.append(Mutant(f"{key}:{counter[key]}", rel, qual, node.lineno, node.end_lineno, op,
                        before, after, start, end))
      counter[key] += 1
  for file, function, old, new in EXTRA_MUTANTS:
    if file == rel and _in_targets(function, wanted):
      start = source.find(old)
      if start < 0:
        raise SystemExit(f"mutation_test: EXTRA_MUTANTS text not found in {rel}: {old!r}")
      line = source.count("\n", 0, start) + 1
      out.append(Mutant(f"{rel}:{line}:extra:0", rel, function, line, line + old.count("\n"), "extra",
                        old, new, start, start + len(old)))
  return sorted(out, key=lambda m: (m.line, m.id))


_KW_PARENTS: dict = {}


def _is_skipped_kw_value(node, tree) -> bool:
  """Constants passed as keyword arguments that only choose a representation (dtype=...)."""
  if id(tree) not in _KW_PARENTS:
    skipped = set()
    for n in ast.walk(tree):
      if isinstance(n, ast.keyword) and n.arg in SKIP_KEYWORDS:
        skipped.update(id(x) for x in ast.walk(n.value))
    _KW_PARENTS[id(tree)] = skipped
  return id(node) in _KW_PARENTS[id(tree)]


def _visible_params(qual: str, scopes: _Scopes) -> set:
  names, parts = set(), qual.split(".")
  for i in range(1, len(parts) + 1):
    names |= scopes.params.get(".".join(parts[:i]), set())
  return names


def apply(source: str, m: Mutant) -> str:
  return source[:m.start] + m.after + source[m.end:]


# ----------------------------------------------------------------------------- scratch copy
def make_scratch(rev: str | None, into: str) -> str:
  os.makedirs(into, exist_ok=True)
  if rev:
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
  else:
    files = subprocess.run(["git", "-C", ROOT, "ls-files", "-co", "--exclude-standard"], check=True,
                           capture_output=True, text=True).stdout.split()
    for f in files:
      src = os.path.join(ROOT, f)
      if os.path.isfile(src):
        os.makedirs(os.path.dirname(os.path.join(into, f)) or into, exist_ok=True)
        shutil.copy2(src, os.path.join(into, f))
  with open(os.path.join(into, "_mutation_plugin.py"), "w") as f:
    f.write(PLUGIN)
  return into


# A pytest plugin for the mapping run: one coverage context per test id, JAX caches cleared
# before each test (else a test that hits a cached trace never executes the traced lines),
# and each test's duration recorded.
PLUGIN = r'''
import json, os, sys, time
import pytest

_durations = {}

def _clear_caches():
  try:
    import jax
    jax.clear_caches()
  except Exception:
    pass
  for name, mod in list(sys.modules.items()):
    if name.startswith("rewardlab") and mod is not None:
      for value in list(vars(mod).values()):
        if callable(getattr(value, "cache_clear", None)):
          value.cache_clear()

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  import coverage
  cov = coverage.Coverage.current()
  _clear_caches()
  if cov is not None:
    cov.switch_context(item.nodeid)
  t = time.perf_counter()
  yield
  _durations[item.nodeid] = time.perf_counter() - t
  if cov is not None:
    cov.switch_context("")

def pytest_sessionfinish(session, exitstatus):
  with open(os.environ["MUTATION_DURATIONS"], "w") as f:
    json.dump(_durations, f)
'''


def _pytest_env(scratch):
  # a persistent compilation cache: a mutant changes the HLO of the functions it touches
  # only (those miss and compile), everything else (model forwards, references) is reused:
  # 4x faster sampler tests, and no mutant can hit another's executable (keyed by HLO)
  env = dict(os.environ, PYTHONPATH=scratch, PYTHONDONTWRITEBYTECODE="1", JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=os.path.join(scratch, ".jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env.pop("XLA_FLAGS", None)
  return env


def build_test_map(scratch: str, test_files, files, reuse: bool = False) -> tuple[dict, dict, list]:
  """Runs the selected tests once under coverage -> ({file: {line: [test ids]}}, {test id:
  seconds}, failing test ids). reuse: keep the scratch directory's map from an earlier run."""
  import coverage
  present = [t for t in test_files if os.path.exists(os.path.join(scratch, t))]
  data_file = os.path.join(scratch, ".mutation_coverage")
  durations = os.path.join(scratch, ".mutation_durations.json")
  include = ",".join(os.path.join(scratch, f) for f in files)
  cmd = [sys.executable, "-m", "coverage", "run", f"--data-file={data_file}", f"--include={include}",
         "-m", "pytest", "-q", "-p", "_mutation_plugin", "-p", "no:cacheprovider", "-m", "not slow",
         "-o", "addopts=", *present]
  failed_file = os.path.join(scratch, ".mutation_failed.json")
  key_file = os.path.join(scratch, ".mutation_map_key")
  digest = hashlib.sha256()
  for f in sorted(files) + sorted(present):   # the map is only valid for the same code and tests
    digest.update(f.encode() + open(os.path.join(scratch, f), "rb").read())
  key = digest.hexdigest()
  same = os.path.exists(key_file) and open(key_file).read() == key
  if not (reuse and same and os.path.exists(data_file) and os.path.exists(durations)):
    env = dict(_pytest_env(scratch), MUTATION_DURATIONS=durations)
    proc = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True)
    failed = [line.split(" ", 1)[1].split(" - ")[0] for line in proc.stdout.splitlines()
              if line.startswith("FAILED ")]
    if proc.returncode not in (0, 1):
      raise SystemExit(f"mutation_test: the mapping run failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}"
                       f"\n{proc.stderr[-3000:]}")
    json.dump(failed, open(failed_file, "w"))
    open(key_file, "w").write(key)
  failed = json.load(open(failed_file)) if os.path.exists(failed_file) else []
  data = coverage.CoverageData(data_file)
  data.read()
  test_map = {}
  measured = {m for m in data.measured_files()}
  for f in files:   # match by the path inside the tree: a reused map may come from another scratch
    path = next((m for m in measured if m.endswith(os.sep + f)), os.path.join(scratch, f))
    by_line = data.contexts_by_lineno(path)
    test_map[f] = {line: sorted(c for c in ctxs if c) for line, ctxs in by_line.items()}
  return test_map, json.load(open(durations)), failed


def tests_for(m: Mutant, test_map, durations, failed) -> list[str]:
  lines = test_map.get(m.file, {})
  if m.function == "<module>":     # definition-time code: every test that runs this file
    chosen = set().union(*lines.values()) if lines else set()
  else:
    chosen = set()
    for line in range(m.line, m.end_line + 1):
      chosen.update(lines.get(line, ()))
  return sorted((t for t in chosen if t not in failed), key=lambda t: durations.get(t, 60.0))


# third-party modules every test imports: loaded once in this process and inherited by each
# forked mutant run (a fresh interpreter per mutant spent more on imports than on tests).
# rewardlab itself is never imported here, so each child imports the mutated tree.
PRELOAD = ("numpy", "jax", "jax.numpy", "flax", "flax.nnx", "optax", "chex", "ml_collections", "pytest")
PYTEST_ARGS = ("-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--no-header", "-rf")


def preload(scratch: str) -> None:
  """Environment first (JAX reads it at import), then the heavy imports; no JAX backend is
  started here, so forking stays safe."""
  import importlib
  os.environ.update(_pytest_env(scratch))
  sys.dont_write_bytecode = True
  for name in PRELOAD:
    try:
      importlib.import_module(name)
    except ImportError:
      pass


def _run_forked(scratch: str, tests, budget: float) -> tuple[str, str]:
  """pytest.main in a forked child -> (status, output)."""
  import signal
  out_path = os.path.join(scratch, ".mutant_output.txt")
  sys.stdout.flush()
  sys.stderr.flush()
  pid = os.fork()
  if pid == 0:   # child: never returns
    rc = 3
    try:
      fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
      os.dup2(fd, 1)
      os.dup2(fd, 2)
      os.chdir(scratch)
      sys.path.insert(0, scratch)
      import pytest
      rc = int(pytest.main([*PYTEST_ARGS, *tests]))
    except BaseException:   # noqa: BLE001 - anything the mutant raised: report, exit non-zero
      import traceback
      traceback.print_exc()
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(rc)
  deadline = time.perf_counter() + budget
  while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
      rc = os.waitstatus_to_exitcode(status)
      break
    if time.perf_counter() > deadline:
      os.kill(pid, signal.SIGKILL)
      os.waitpid(pid, 0)
      return "timeout", ""
    time.sleep(0.1)
  out = open(out_path, encoding="utf-8", errors="replace").read()
  return ("survived" if rc == 0 else "killed" if rc == 1 else f"error_rc{rc}"), out


def _run_subprocess(scratch: str, tests, budget: float) -> tuple[str, str]:
  try:
    proc = subprocess.run([sys.executable, "-m", "pytest", *PYTEST_ARGS, *tests], cwd=scratch,
                          env=_pytest_env(scratch), capture_output=True, text=True, timeout=budget)
  except subprocess.TimeoutExpired:
    return "timeout", ""
  rc = proc.returncode
  return ("survived" if rc == 0 else "killed" if rc == 1 else f"error_rc{rc}"), proc.stdout


def run_mutant(scratch: str, m: Mutant, tests, durations, original: str, fork: bool = True) -> dict:
  path = os.path.join(scratch, m.file)
  # generous: a timeout counts as a kill, so it must mean a hang (a mutated loop bound), not a
  # busy machine (durations come from the mapping run, on a machine whose load varies 2x)
  budget = 120.0 + 5.0 * sum(durations.get(t, 60.0) for t in tests)
  with open(path, "w", encoding="utf-8") as f:
    f.write(apply(original, m))
  t0 = time.perf_counter()
  try:
    status, out = (_run_forked if fork else _run_subprocess)(scratch, tests, budget)
  finally:
    with open(path, "w", encoding="utf-8") as f:
      f.write(original)
  fails = [line.split(" ", 1)[1].split(" - ")[0] for line in out.splitlines() if line.startswith("FAILED ")]
  return dict(status=status, seconds=round(time.perf_counter() - t0, 1), tests=len(tests),
              killer=fails[0] if fails else "")


# ----------------------------------------------------------------------------- reporting
def module_of(file: str) -> str:
  return file.replace("rewardlab/", "").replace(".py", "")


def equivalent_reason(row) -> str | None:
  for file, function, before, after, reason in EQUIVALENT:
    if (row["file"], row["function"], row["before"], row["after"]) == (file, function, before, after):
      return reason
  return None


def summarize(rows) -> str:
  """Per module: killed (incl. timeouts and crashes) / total, and / (total - equivalent)."""
  per = collections.defaultdict(collections.Counter)
  for r in rows:
    status = "equivalent" if r["status"] in ("survived", "uncovered") and equivalent_reason(r) else r["status"]
    per[module_of(r["file"])][status] += 1
  lines = [f"{'module':30s} {'killed/total':>14s} {'killed/non-equiv':>18s}  survived uncovered equivalent timeout"]
  tot = collections.Counter()
  for mod in sorted(per) + ["TOTAL"]:
    c = tot if mod == "TOTAL" else per[mod]
    killed = c["killed"] + c["timeout"] + sum(v for k, v in c.items() if k.startswith("error"))
    total = sum(v for k, v in c.items() if k != "killed_all")
    if mod != "TOTAL":
      tot.update(c)
    if not total:
      continue
    live = total - c["equivalent"]
    lines.append(f"{mod:30s} {killed:5d}/{total:<4d}{100 * killed / total:5.1f}% {killed:5d}/{live:<4d}"
                 f"{100 * killed / max(live, 1):5.1f}%  {c['survived']:8d} {c['uncovered']:9d} "
                 f"{c['equivalent']:10d} {c['timeout']:7d}")
  return "\n".join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--rev", help="git revision to test (default: the working tree)")
  ap.add_argument("--out", default="runs/mutation/results.jsonl")
  ap.add_argument("--files", help="comma-separated subset of the target files")
  ap.add_argument("--ids", help="comma-separated mutant ids to (re)run")
  ap.add_argument("--rerun-survivors", metavar="FILE",
                  help="(re)run the mutants FILE has as survived or uncovered (after adding tests); "
                       "the new rows are appended to --out and win in the summary")
  ap.add_argument("--list", action="store_true", help="print the mutants and exit")
  ap.add_argument("--show", help="print one mutant's change and exit")
  ap.add_argument("--summary", help="summarize a results file and exit")
  ap.add_argument("--survivors", action="store_true", help="with --summary: list the survivors")
  ap.add_argument("--no-fork", action="store_true", help="a fresh interpreter per mutant (slower)")
  ap.add_argument("--scratch", help="scratch directory (default: a fresh temporary one); given, it is "
                  "kept, and a later run with the same --scratch reuses its test map")
  args = ap.parse_args(argv)

  if args.summary:
    rows = [json.loads(line) for line in open(args.summary)]
    rows = list({r["id"]: r for r in rows}.values())
    print(summarize(rows))
    if args.survivors:
      for r in rows:
        if r["status"] in ("survived", "uncovered"):
          reason = equivalent_reason(r)
          status = "equiv" if reason else r["status"]
          print(f"{status:9s} {r['id']:55s} {r['function']:28s} {r['before']!r} -> {r['after']!r}"
                + (f"  [{reason}]" if reason else ""))
    return

  scratch = make_scratch(args.rev, args.scratch or tempfile.mkdtemp(prefix="rewardlab-mutation-"))
  files = [f for f in TARGETS if not args.files or f in args.files.split(",")]
  mutants = [m for f in files if os.path.exists(os.path.join(scratch, f))
             for m in generate(os.path.join(scratch, f), f, TARGETS[f])]
  if args.rerun_survivors:
    last = {r["id"]: r for r in map(json.loads, open(args.rerun_survivors))}
    args.ids = ",".join(i for i, r in last.items() if r["status"] in ("survived", "uncovered"))
  if args.ids is not None:
    wanted = set(args.ids.split(","))
    mutants = [m for m in mutants if m.id in wanted]
  if args.list or args.show:
    for m in mutants:
      if not args.show or m.id == args.show:
        print(f"{m.id:55s} {m.function:28s} {m.before!r} -> {m.after!r}")
    print(f"{len(mutants)} mutants", file=sys.stderr)
    return

  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  done = set()
  if os.path.exists(args.out) and args.ids is None:
    done = {json.loads(line)["id"] for line in open(args.out)}
  todo = [m for m in mutants if m.id not in done]
  print(f"{len(mutants)} mutants, {len(todo)} to run; scratch {scratch}", flush=True)
  t0 = time.perf_counter()
  test_map, durations, failed = build_test_map(scratch, TEST_FILES, files, reuse=bool(args.scratch))
  print(f"test map in {time.perf_counter() - t0:.0f} s; {len(durations)} tests; failing before mutation: "
        f"{failed}", flush=True)
  originals = {f: open(os.path.join(scratch, f), encoding="utf-8").read() for f in files}
  if not args.no_fork:
    preload(scratch)
  with open(args.out, "a") as out:
    for i, m in enumerate(todo):
      tests = tests_for(m, test_map, durations, set(failed))
      row = dataclasses.asdict(m)
      del row["start"], row["end"]
      if not tests:
        row.update(status="uncovered", seconds=0.0, tests=0, killer="")
      else:
        row.update(run_mutant(scratch, m, tests, durations, originals[m.file], fork=not args.no_fork))
      out.write(json.dumps(row) + "\n")
      out.flush()
      print(f"[{i + 1}/{len(todo)}] {row['status']:9s} {row['seconds']:6.1f}s {m.id} "
            f"{m.before!r} -> {m.after!r}", flush=True)
  rows = list({r["id"]: r for r in map(json.loads, open(args.out))}.values())
  print(summarize(rows))
  if not args.scratch:
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
  main()

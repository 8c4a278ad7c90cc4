"""Math problems from files, checked by math-verify: GSM8K-style rows (`question`, `answer`
ending in `#### <final answer>`), MATH-style rows (`problem`, `solution` with a final
`\\boxed{...}`, or an explicit `answer`), and TRL prompt-only rows (`prompt`, `answer`).

`math_jsonl(path, ...)` is the RL task (`data.task="math_jsonl"`): it samples
`MathProblem`s whose `check` (and the task's `verify`) asks a `MathChecker`, so the
pipeline's accuracy (`exact_answer`) and evaluator use the math verifier too.

Why math-verify (HF's maintained checker, used by TRL / open-r1 / lighteval): it parses
LaTeX and plain expressions to sympy and compares numerically and symbolically (1/2 =
0.5 = \\frac{1}{2}, 1,000 = 1000, sets, intervals, matrices), where a string or regex
check marks right answers wrong. Its own timeouts are integer-second SIGALRMs that only
work in the main thread and are swallowed into "wrong", so checks run in a child process
(math_worker.py) under a float per-check timer, and the parent kills and restarts the
child if even that does not answer in time: a pathological answer costs at most
`timeout_s + grace` and is counted, never hangs a rollout.
"""
from __future__ import annotations

import atexit
import collections
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from typing import NamedTuple, Sequence

import numpy as np

from rewardlab.data.chat import chat_format
from rewardlab.data.formats import (RowError, answer_field, load_rows, prompt_text, render_prompt, require_object,
                                    string_field)
from rewardlab.data.tasks import Problem, _is_heldout

FORMATS = ("auto", "gsm8k", "math", "prompt")
DEFAULT_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
STATUSES = ("ok", "unparsable", "bad_gold", "timeout", "error")
_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "math_worker.py")


# --- final answers in reference fields and completions ---------------------------------------

def last_boxed(text: str) -> str | None:
  """Content of the last \\boxed{...} / \\fbox{...} (nested and escaped braces handled), or
  of `\\boxed x` without braces; None if there is none. Unbalanced braces: ValueError."""
  start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
  if start < 0:
    return None
  i = start + (6 if text.startswith("\\boxed", start) else 5)
  if i < len(text) and text[i] == " ":         # \boxed 5
    words = text[i + 1:].split("$", 1)[0].split()
    return words[0] if words else None
  if i >= len(text) or text[i] != "{":
    return None
  depth, j = 0, i
  while j < len(text):
    c = text[j]
    if c == "\\":
      j += 2                                    # \{ and \} are literal braces
      continue
    depth += (c == "{") - (c == "}")
    if depth == 0:
      return text[i + 1:j]
    j += 1
  raise ValueError(f"unbalanced braces after {text[start:start + 40]!r}")


def gsm8k_final_answer(answer: str) -> str | None:
  """The text after the last `####` (GSM8K's final-answer marker), stripped; None if absent."""
  if "####" not in answer:
    return None
  return answer.rsplit("####", 1)[1].strip().split("\n", 1)[0].strip() or None


def prediction_text(completion: str) -> str:
  """What the checker parses: the completion, with a GSM8K-style `#### x` final line turned
  into `\\boxed{x}` when the completion has no \\boxed of its own."""
  if "\\boxed" in completion or "\\fbox" in completion:
    return completion
  final = gsm8k_final_answer(completion)
  return completion if final is None else "\\boxed{" + final + "}"


# --- the checker -------------------------------------------------------------------------------

class Verdict(NamedTuple):
  correct: bool
  status: str      # one of STATUSES: ok | unparsable (no final answer found) | bad_gold | timeout | error


class _Child:
  """One checker process: spawned, sent one request at a time, read when its stdout is ready."""

  def __init__(self, argv: list[str]):
    self.argv, self.proc, self.stderr = argv, None, None

  def alive(self) -> bool:
    return self.proc is not None and self.proc.poll() is None

  def spawn(self):
    self.close()
    self.stderr = tempfile.TemporaryFile()
    self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr)

  def send(self, pred: str, gold: str) -> bool:
    try:
      self.proc.stdin.write((json.dumps({"pred": pred, "gold": gold}) + "\n").encode())
      self.proc.stdin.flush()
      return True
    except BrokenPipeError:
      return False

  def reply(self) -> dict | None:
    line = self.proc.stdout.readline()
    return json.loads(line) if line else None

  def stderr_tail(self) -> str:
    self.stderr.seek(0)
    return self.stderr.read().decode(errors="replace")[-2000:]

  def close(self):
    if self.proc is not None:
      self.proc.kill()
      self.proc.wait()
      for f in (self.proc.stdin, self.proc.stdout, self.stderr):
        f.close()
      self.proc = None


class MathChecker:
  """Math-verify in `workers` child processes with a per-check timeout; verdicts are cached
  by (completion, gold) so several rewards over one batch check each completion once.
  `counts` tallies statuses (and "checked") over the checker's life."""

  def __init__(self, timeout_s: float = 2.0, grace_s: float = 2.0, workers: int = 1, memory_mb: int = 2048,
               start_timeout_s: float = 120.0, cache_size: int = 16384, command: Sequence[str] | None = None):
    """grace_s: how much longer than timeout_s the parent waits before it kills a child;
    workers: checks run in parallel; memory_mb: each child's address-space limit;
    command: the child's argv (tests)."""
    if timeout_s <= 0 or workers < 1:
      raise ValueError(f"MathChecker: timeout_s={timeout_s} must be > 0 and workers={workers} >= 1")
    self.timeout_s, self.grace_s, self.memory_mb = float(timeout_s), float(grace_s), int(memory_mb)
    self.command = list(command or [sys.executable, _WORKER])
    self.start_timeout_s, self.cache_size = start_timeout_s, cache_size
    self.counts = collections.Counter()
    self._cache: collections.OrderedDict = collections.OrderedDict()
    argv = self.command + [str(self.timeout_s), str(self.memory_mb)]
    self._children = [_Child(argv) for _ in range(workers)]
    self._lock = threading.Lock()
    atexit.register(self.close)

  @property
  def workers(self) -> int:
    return len(self._children)

  def close(self):
    for c in self._children:
      c.close()

  def _start(self, children: list[_Child]):
    """Spawns `children` together and waits for each one's ready line."""
    for c in children:
      c.spawn()
    waiting = {c.proc.stdout: c for c in children}
    deadline = time.monotonic() + self.start_timeout_s
    while waiting:
      ready, _, _ = select.select(list(waiting), [], [], max(0.0, deadline - time.monotonic()))
      failed = None if ready else next(iter(waiting.values()))
      for f in ready:
        c = waiting.pop(f)
        if not (c.reply() or {}).get("ready"):
          failed = c
      if failed is not None:
        tail = failed.stderr_tail()
        self.close()
        raise RuntimeError(f"math verifier process ({' '.join(self.command)}) did not start:\n{tail}\n"
                           "(is math-verify installed? pip install math-verify)")

  def _run(self, items: list[tuple[str, str]]) -> list[Verdict]:
    """Checks (prediction text, gold) items on the children; each item has timeout_s +
    grace_s from when it was sent, after which its child is killed (restarted on demand)."""
    out: list = [None] * len(items)
    queue, busy = collections.deque(range(len(items))), {}     # busy: child -> (item, deadline)
    while queue or busy:
      idle = [c for c in self._children if c not in busy]
      if queue and idle:
        self._start([c for c in idle if not c.alive()])
        for c in idle[:len(queue)]:
          i = queue.popleft()
          if c.send(*items[i]):
            busy[c] = (i, time.monotonic() + self.timeout_s + self.grace_s)
          else:
            c.close()
            out[i] = Verdict(False, "error")
      if not busy:
        continue
      wait = max(0.0, min(d for _, d in busy.values()) - time.monotonic())
      by_file = {c.proc.stdout: c for c in busy}
      ready, _, _ = select.select(list(by_file), [], [], wait)
      for f in ready:
        c = by_file[f]
        i, _ = busy.pop(c)
        msg = c.reply()
        if msg is None:              # the child died (e.g. killed by the OS)
          c.close()
          out[i] = Verdict(False, "error")
        else:
          out[i] = Verdict(bool(msg["correct"]), msg["status"])
      now = time.monotonic()
      for c, (i, deadline) in list(busy.items()):
        if now >= deadline:          # stuck where the child's own timer cannot interrupt it
          busy.pop(c)
          c.close()
          out[i] = Verdict(False, "timeout")
    return out

  def check_many(self, completions: Sequence[str], golds: Sequence[str]) -> list[Verdict]:
    keys = list(zip(completions, golds))
    with self._lock:
      todo = list(dict.fromkeys(k for k in keys if k not in self._cache))
      for key, verdict in zip(todo, self._run([(prediction_text(c), g) for c, g in todo])):
        self.counts["checked"] += 1
        self.counts[verdict.status] += 1
        self._cache[key] = verdict
      out = []
      for key in keys:
        self._cache.move_to_end(key)
        out.append(self._cache[key])
      while len(self._cache) > self.cache_size:
        self._cache.popitem(last=False)
      return out

  def check(self, completion: str, gold: str) -> Verdict:
    return self.check_many([completion], [gold])[0]


_DEFAULT: dict = {}


def default_checker() -> MathChecker:
  """The process-wide checker the math rewards and MathProblem use (started on first use)."""
  if "checker" not in _DEFAULT:
    _DEFAULT["checker"] = MathChecker()
  return _DEFAULT["checker"]


def configure_checker(timeout_s: float = 2.0, **kwargs) -> MathChecker:
  """Replaces the process-wide checker (another timeout, more workers); the old children stop."""
  old = _DEFAULT.pop("checker", None)
  if old is not None:
    old.close()
  _DEFAULT["checker"] = MathChecker(timeout_s, **kwargs)
  return _DEFAULT["checker"]


class MathProblem(Problem):
  """A Problem whose answer is checked for mathematical equivalence (math-verify), not by
  exact match of the first line."""
  __slots__ = ()

  def check(self, completion: str) -> bool:
    return default_checker().check(completion, self.answer).correct


# --- loading -------------------------------------------------------------------------------------

class MathRow(NamedTuple):
  question: str         # the problem text (GSM8K question / MATH problem), or a ready prompt
  answer: str           # the final answer the checker compares against
  where: str            # file:line, for errors found later (e.g. an over-long prompt)
  is_prompt: bool = False   # True: `question` is a finished prompt (prompt-only rows): no template


def _row_format(row: dict, fmt: str, where: str) -> str:
  if fmt != "auto":
    return fmt
  for key, name in (("question", "gsm8k"), ("problem", "math"), ("prompt", "prompt")):
    if key in row:
      return name
  raise RowError(where, f"cannot tell the row's format: no 'question' (GSM8K), 'problem' (MATH) or 'prompt' "
                 f"field; fields: {sorted(row)}", "unknown row format")


def math_row(row, where: str, fmt: str = "auto", chat=None) -> MathRow:
  """One row in one of FORMATS -> MathRow; errors name where and the field."""
  row = require_object(row, where, ("question", "answer"))
  kind = _row_format(row, fmt, where)
  if kind == "gsm8k":
    question, answer = string_field(row, "question", where), string_field(row, "answer", where)
    final = gsm8k_final_answer(answer)
    if final is None:
      raise RowError(where, f"field 'answer' has no '#### <final answer>' line: {answer[-60:]!r}",
                     "no '####' final answer")
  elif kind == "math":
    question = string_field(row, "problem", where)
    final = answer_field(row, where)
    if final is None:
      solution = string_field(row, "solution", where)
      try:
        final = last_boxed(solution)
      except ValueError as e:
        raise RowError(where, f"field 'solution': {e}", "unbalanced braces in \\boxed") from None
      if final is None:
        raise RowError(where, "field 'solution' has no \\boxed{...} final answer (and no 'answer' field)",
                       "no \\boxed final answer")
  else:
    question = prompt_text(row, where, chat)
    final = answer_field(row, where)
    if final is None:
      raise RowError(where, "missing field 'answer' (RL prompts need a reference answer to check)",
                     "missing field 'answer'")
  if not question.strip():
    raise RowError(where, f"empty {'prompt' if kind == 'prompt' else 'question'}", "empty question")
  if not final.strip():
    raise RowError(where, "empty final answer", "empty final answer")
  return MathRow(question, final.strip(), where, kind == "prompt")


def load_math(path: str, format: str = "auto", skipped: dict | None = None, tokenizer=None) -> list[MathRow]:
  """GSM8K / MATH / prompt-only rows from JSONL or Parquet (see math_row). `tokenizer`
  renders conversational prompt-only rows with its chat template."""
  if format not in FORMATS:
    raise ValueError(f"math data format={format!r} is unknown; allowed: {list(FORMATS)}")
  chat = None if tokenizer is None else chat_format(tokenizer)
  return load_rows(path, lambda row, where: math_row(row, where, format, chat), skipped, "math")


# --- the RL task -----------------------------------------------------------------------------------

class MathTask:
  """Problems from files with a math-verify checker; the interface of data.tasks.Task.

  train: every row of `path` (or, without eval rows, those not held out by the crc32 rule
  of data.tasks); eval: the rows of `eval_path`. `sample_many` draws without replacement
  (train: reshuffled passes when n exceeds the rows; eval: at most all rows, a fixed subset
  per rng)."""

  name = "math_jsonl"

  def __init__(self, train: list[MathProblem], eval_: list[MathProblem], source: str,
               skipped: dict | None = None):
    if not train:
      raise ValueError(f"math_jsonl: no training problems in {source}")
    self.train, self.eval, self.source = train, eval_, source
    self.skipped = dict(skipped or {})

  def _rows(self, split: str) -> list[MathProblem]:
    if split not in ("train", "eval"):
      raise ValueError(f"task {self.name}: split must be 'train' or 'eval', got {split!r}")
    rows = self.train if split == "train" else self.eval
    if not rows:
      raise ValueError(f"task {self.name}: no eval problems ({self.source}): set data.task_kwargs.eval_path")
    return rows

  def sample(self, rng: np.random.Generator, split: str = "train") -> MathProblem:
    rows = self._rows(split)
    return rows[int(rng.integers(len(rows)))]

  def sample_many(self, rng: np.random.Generator, n: int, split: str = "train") -> list[MathProblem]:
    rows = self._rows(split)
    if split == "eval":
      return [rows[i] for i in np.sort(rng.permutation(len(rows))[:n])]
    order = np.concatenate([rng.permutation(len(rows)) for _ in range(-(-n // len(rows)))])
    return [rows[i] for i in order[:n]]

  @staticmethod
  def verify(completion: str, answer: str) -> bool:
    return default_checker().check(completion, answer).correct


def math_jsonl(path: str, eval_path: str = "", format: str = "auto", template: str = DEFAULT_TEMPLATE,
               system: str = "", chat: bool = False, tokenizer_path: str = "", max_prompt_tokens: int = 0,
               skip_bad_rows: bool = False, timeout_s: float = 2.0, verifier_workers: int = 1) -> MathTask:
  """The file-backed math RL task (data.task="math_jsonl", these are its task_kwargs).

  path / eval_path: JSONL or Parquet in a FORMATS format ("auto": by each row's fields).
  template: the user turn for GSM8K / MATH rows, with a {question} slot (prompt-only rows
    are used as given; a message-list prompt is rendered with the tokenizer's template).
  chat: render [system?, user] through the chat template of `tokenizer_path`'s tokenizer
    (the default template when tokenizer_path is ""); False: the templated text as is.
  max_prompt_tokens: > 0 checks every prompt's `BOS prompt` token count (tokenizer_path's
    tokenizer, or the byte tokenizer) against it (set it to eval.max_prompt_len).
  skip_bad_rows: count bad rows in `task.skipped` instead of raising on the first.
  timeout_s / verifier_workers: the per-answer check timeout and the number of checker
    processes of the process-wide checker."""
  if "{question}" not in template:
    raise ValueError(f"math_jsonl: template must contain '{{question}}', got {template!r}")
  try:
    template.format(question="")
  except (KeyError, IndexError, ValueError) as e:
    raise ValueError(f"math_jsonl: template {template!r} is not a format string with only {{question}} "
                     f"({type(e).__name__}: {e}); write literal braces doubled, e.g. \\boxed{{{{}}}}") from None
  from rewardlab.data.hf_tokenizer import load_tokenizer
  tokenizer = load_tokenizer(tokenizer_path or None)
  fmt = chat_format(tokenizer)
  if chat and fmt.template is None:
    raise ValueError(f"math_jsonl: chat=True but {fmt.source} has no chat_template")
  skipped = {} if skip_bad_rows else None
  checker = default_checker()
  if (checker.timeout_s, checker.workers) != (float(timeout_s), verifier_workers):
    configure_checker(timeout_s, workers=verifier_workers)

  def prompt_of(r: MathRow) -> str:
    if r.is_prompt:
      return r.question
    text = template.format(question=r.question)
    if not chat:
      return text
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return render_prompt(fmt, msgs, r.where)

  def problems(file: str) -> list[MathProblem]:
    out = []
    for r in load_math(file, format, skipped, tokenizer):
      try:
        p = MathProblem(prompt_of(r), r.answer)
        n = len(tokenizer.encode(p.prompt, bos=True)) if max_prompt_tokens > 0 else 0
        if n > max_prompt_tokens > 0:
          raise RowError(r.where, f"prompt has {n} tokens, over max_prompt_tokens={max_prompt_tokens} "
                         "(eval.max_prompt_len)", "prompt too long")
      except RowError as err:
        if skipped is None:
          raise
        skipped[err.reason] = skipped.get(err.reason, 0) + 1
        continue
      out.append(p)
    return out

  rows = problems(path)
  if eval_path:
    train, eval_ = rows, problems(eval_path)
  else:
    train = [p for p in rows if not _is_heldout(p.prompt)]
    eval_ = [p for p in rows if _is_heldout(p.prompt)]
  return MathTask(train, eval_, f"{path}" + (f" / {eval_path}" if eval_path else ""), skipped)

"""The child process behind rewardlab.data.math_tasks.MathChecker (run as a script, so it
imports math-verify and sympy but nothing of rewardlab or JAX).

Protocol, one JSON object per line: stdin {"pred": str, "gold": str} -> stdout
{"correct": bool, "status": "ok" | "unparsable" | "bad_gold" | "timeout" | "error"}
(unparsable / bad_gold: no final answer found, or none sympy can read); the
first line written is {"ready": true}. argv: timeout_s memory_mb.

Each check runs under a SIGALRM interval timer of timeout_s (math-verify's own integer-second
alarms are switched off); the parent kills this process if even that does not return in time.
"""
import functools
import json
import os
import resource
import signal
import sys


class Deadline(BaseException):
  """Raised by the alarm; a BaseException so math-verify's `except Exception` lets it through."""


def _on_alarm(signum, frame):
  raise Deadline()


def main():
  timeout_s, memory_mb = float(sys.argv[1]), int(sys.argv[2])
  if memory_mb > 0:   # a pathological answer fails with MemoryError instead of swapping the host
    limit = memory_mb * 2 ** 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
  sys.stdout = sys.stderr      # libraries that print must not corrupt the protocol
  import logging
  logging.getLogger("math_verify").setLevel(logging.CRITICAL)
  from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
  from sympy import Basic, MatrixBase

  # answers count only where anchored: \boxed{...} first, then "final answer is ..." phrases
  config = [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False),
            ExprExtractionConfig(try_extract_without_anchor=False)]

  @functools.lru_cache(maxsize=4096)
  def parse_gold(gold):
    return parse("\\boxed{" + gold + "}", config, parsing_timeout=None)

  def parsed(items):   # parse() falls back to the raw string when sympy cannot read it
    return any(isinstance(x, (Basic, MatrixBase)) for x in items)

  def check(pred, gold):
    g = parse_gold(gold)
    if not parsed(g):
      return False, "bad_gold"
    p = parse(pred, config, parsing_timeout=None)
    if not parsed(p):
      return False, "unparsable"
    return bool(verify(g, p, timeout_seconds=None)), "ok"

  signal.signal(signal.SIGALRM, _on_alarm)
  out.write(json.dumps({"ready": True}) + "\n")
  for line in sys.stdin:
    req = json.loads(line)
    try:
      signal.setitimer(signal.ITIMER_REAL, timeout_s)
      try:
        correct, status = check(req["pred"], req["gold"])
      finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    except Deadline:
      correct, status = False, "timeout"
    except Exception:   # noqa: BLE001 - MemoryError, RecursionError, sympy bugs: a failed check
      correct, status = False, "error"
    out.write(json.dumps({"correct": correct, "status": status}) + "\n")


if __name__ == "__main__":
  main()

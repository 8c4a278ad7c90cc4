"""Rule-based rewards by hand: exact answer, bare-answer format, length penalty, weighted sums."""
import numpy as np
import pytest

from rewardlab.data import Problem
from rewardlab.rewards import REWARDS, answer_format, combine, exact_answer, length_penalty

PROBLEMS = [Problem("12+7=", "19"), Problem("3+4=", "7"), Problem("50+50=", "100"), Problem("1+1=", "2")]


def test_exact_answer_reads_the_first_line_only():
  got = exact_answer(["19", " 7 \nsome reasoning", "1000", "two"], PROBLEMS)
  np.testing.assert_array_equal(got, [1.0, 1.0, 0.0, 0.0])
  assert got.dtype == np.float32


def test_answer_format_wants_digits_alone_on_one_line():
  got = answer_format(["19", "7 apples", "100\n", "", "x2"], PROBLEMS + PROBLEMS[:1])
  np.testing.assert_array_equal(got, [1.0, 0.0, 1.0, 0.0, 0.0])


def test_length_penalty_is_minus_length_over_the_batch_max():
  np.testing.assert_allclose(length_penalty([""] * 4, PROBLEMS, np.array([2, 4, 0, 1])), [-0.5, -1.0, 0.0, -0.25])
  # all-empty batch: no division by zero
  np.testing.assert_array_equal(length_penalty([""] * 2, PROBLEMS[:2], np.array([0, 0])), [0.0, 0.0])


def test_combine_weights_each_component_and_keeps_them():
  fn = combine({"exact_answer": 2.0, "format": 0.5, "length_penalty": 0.1})
  completions = ["19", "8 apples", "100", "2\n"]
  lengths = np.array([3, 9, 4, 2])
  got = fn(completions, PROBLEMS, lengths)
  exact, fmt, length = [1, 0, 1, 1], [1, 0, 1, 1], -lengths / 9
  np.testing.assert_allclose(got, 2.0 * np.array(exact) + 0.5 * np.array(fmt) + 0.1 * length, rtol=1e-6)
  np.testing.assert_array_equal(fn.components["exact_answer"], exact)
  np.testing.assert_allclose(fn.components["length_penalty"], length, rtol=1e-6)
  assert set(fn.components) == {"exact_answer", "format", "length_penalty"}
  # run-specific rewards join by name; unknown names fail listing what is allowed
  extra = combine({"exact_answer": 1.0, "judge": 3.0}, extra={"judge": lambda c, p, n: np.full(len(c), 0.5)})
  np.testing.assert_allclose(extra(completions, PROBLEMS, lengths), [2.5, 1.5, 2.5, 2.5])
  with pytest.raises(ValueError, match=r"unknown \['vibes'\]; allowed: \['exact_answer', 'format'"):
    combine({"vibes": 1.0})
  # the verifiers every run can name (math answers and the study's gold reward included)
  assert {"exact_answer", "format", "length_penalty", "math_answer", "gold"} <= set(REWARDS)

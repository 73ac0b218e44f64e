"""
spamtest, spamtestplus and virustest (RFC 5235), fed by the check
plugins' scores: a check records `(score, threshold)` with
L{mailplat.checks.record_score}, delivery hands the envelope's scores to
the run as `environment["scores"]`, {"spam" | "virus": (score, threshold)}.

The score is scaled as Pigeonhole does with `sieve_spamtest_max_value`
(here: the check's threshold): the ratio score / threshold, clamped to
0..1 (a negative score is 0), gives spamtest 1..10, virustest 1..5 and
`:percent` 0..100; "0" when no check scored the message (RFC 5235 3.1).
"""

from mailplat.sieve.core import MATCH_GROUP, MATCHING, _check_match, compare
from mailplat.sieve.engine import extension, test

for _name in ("spamtest", "spamtestplus", "virustest"):
    extension(_name)


def value(scores, kind, percent=False):
    """The test's value as a string (RFC 5235 3.2 / 3.3); "0" when untested."""
    entry = (scores or {}).get(kind)
    if entry is None:
        return "0"
    try:
        score, threshold = float(entry[0]), float(entry[1])
    except (TypeError, ValueError, IndexError):
        return "0"
    if threshold <= 0:
        ratio = 1.0 if score >= threshold else 0.0
    else:
        ratio = min(1.0, max(0.0, score / threshold))
    if percent:
        return str(int(ratio * 100 + 0.001))
    top = 4 if kind == "virus" else 9  # virustest 1..5, spamtest 1..10
    return str(int(ratio * top + 1.001))


def _check_percent(node, checker):
    if "percent" in node.tags and "spamtestplus" not in checker.required:
        return ':percent needs require "spamtestplus"'
    return _check_match(node, checker)


def _spam_needs(node, checker):
    if "spamtest" not in checker.required and "spamtestplus" not in checker.required:
        return 'spamtest needs require "spamtest" (or "spamtestplus")'
    return _check_percent(node, checker)


@test("spamtest", tags=dict(MATCHING, percent=None), exclusive=(MATCH_GROUP,), positional=("string",), check=_spam_needs)
def _spamtest(run, node):
    scores = run.environment.get("scores")
    return compare(node, [value(scores, "spam", "percent" in node.tags)], [run.x(node.args[0])], run)


@test("virustest", extension="virustest", tags=MATCHING, exclusive=(MATCH_GROUP,), positional=("string",),
      check=_check_match)
def _virustest(run, node):
    return compare(node, [value(run.environment.get("scores"), "virus")], [run.x(node.args[0])], run)

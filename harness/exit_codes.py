"""What ``harness`` exits with, in one place so commands, scripts and ``--help`` agree."""

from __future__ import annotations

OK = 0
CHECK_FAILED = 1  # a check ran and did not pass: compare moved, validate found bad records
USAGE = 2  # an error of use: a bad option, setting, name or data file (argparse uses 2 too)
NOT_COMPARABLE = 3  # compare: the runs differ in model, data, templates or settings
FAILED = 4  # the command itself failed: a plugin raised, a restore did not verify, a bug
INTERRUPTED = 130

HELP = f"""exit codes:
  {OK}    success
  {CHECK_FAILED}    a check did not pass (compare or leaderboard --check: a number moved, is missing or
       new; validate: bad records)
  {USAGE}    an error of use: a bad option, setting, name or data file (the message names it)
  {NOT_COMPARABLE}    compare or leaderboard --check: the runs are not comparable (each difference is named)
  {FAILED}    the command failed for another reason (a plugin raised, a restore did not verify, a
       defect); HARNESS_DEBUG=1 shows the traceback
  {INTERRUPTED}  interrupted; finished edits are kept and the same command resumes"""

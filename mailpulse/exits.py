"""The exit codes of every mailpulse command, and the one way each says what went wrong.

sysexits(3) where one fits, because Postfix's pipe(8) and mail tooling read them: 75 makes
Postfix keep a message queued and try again, where 2 (a usage error) would bounce it for good.
Every problem is one line on stderr, `mailpulse[ COMMAND]: SUBJECT: what is wrong`, in
lowercase words; the other inputs are still read and the first problem gives the exit code.
"""

from __future__ import annotations

import errno
import os

OK = os.EX_OK  # 0
FAILURE = 1  # not done: the agent could not start (a port taken), a command not built yet
USAGE = 2  # the command line or the config file is wrong (argparse's own code)
PARTIAL = 3  # output cut at a limit (a message over 8 MiB or naming over 1,000 recipients)
DATAERR = os.EX_DATAERR  # 65: input read but damaged or not understood; the rest counted
NOINPUT = os.EX_NOINPUT  # 66: a path that does not exist, or is no file to read
TEMPFAIL = os.EX_TEMPFAIL  # 75: not done now, try again later (Postfix keeps the mail)
NOPERM = os.EX_NOPERM  # 77: a file or directory this user may not read

# For the README's table, and `mailpulse --help`.
MEANINGS = {
    OK: "done",
    FAILURE: "not done: the agent could not start (the line says why: a port taken, and by "
    "whom); for postfix check, settings differ from the profile",
    USAGE: "the command line or the config file is wrong: the line names the option or key",
    PARTIAL: "output cut at a limit (bounce parse: over 8 MiB or 1,000 recipients)",
    DATAERR: "input damaged or not understood (a broken .gz, an unreadable message, delivery "
    "lines the log reader left out, a log with no Postfix line); what came before is counted",
    NOINPUT: "a path that does not exist, is a directory where a file belongs, or loops",
    TEMPFAIL: "not done now, try again (pipe(8): Postfix keeps the mail queued)",
    NOPERM: "a file or directory this user may not read",
}


def path_problem(e: OSError) -> str:
    """What is wrong with a path, in words (a link loop is not a missing file)."""
    if e.errno == errno.ELOOP:
        return "symbolic link loop"
    return (e.strerror or str(e)).lower()


def path_code(e: OSError) -> int:
    """The exit code of a path that could not be read."""
    if e.errno in (errno.EACCES, errno.EPERM):
        return NOPERM
    if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG):
        return NOINPUT
    return TEMPFAIL

"""The one family of errors a user's input can cause, and how every command reports them.

Bad data, configs, checkpoints, tokenizer files, hub names, sample files, ... raise a subclass of
UserError whose message is one line naming the file, line or key and what was expected. Every command's
main() is wrapped by `entry_point`: a UserError or an OSError (a path that is a file, a read-only folder,
a full disk) is printed as `error: ...` on stderr, one line per problem (prefixed `rank N:` under torchrun),
with exit status 1; anything else is a bug and keeps its traceback. DPO_TRACEBACK=1 shows user errors'
tracebacks too. Under torchrun a failure on one rank is reported by that rank alone; the others stop with
PeerFailed and say only that (`rank 0: stopped: rank 1 failed`; dpo.distributed.fail_together). SIGTERM,
which torchrun sends to the other ranks as soon as one fails (and a scheduler sends when it cancels a job),
and Ctrl-C also end a command with one `stopped:` line, after its `finally` blocks have run: exit status 143
and 130, as a shell reports those signals.
"""
import functools
import os
import signal
import sys
import threading


class UserError(Exception):
    """Bad input: each line of the message is one problem, saying where (file, line, key) and what was
    expected."""


class PeerFailed(UserError):
    """Another torchrun rank failed and reported why; this one only says that it stops."""


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, like KeyboardInterrupt, so that no `except Exception` handles it as a
    failure of the work it interrupts."""


def _several_ranks() -> bool:
    """Whether this is one of several torchrun processes."""
    return int(os.environ.get("WORLD_SIZE", 1)) > 1


def _raise_terminated(signum, frame):
    raise Terminated("terminated (SIGTERM)" + (": torchrun stops every rank once one fails (its error is above), "
                                               "or the job was cancelled" if _several_ranks() else ""))


def _rank_prefix() -> str:
    """`rank N: ` when this is one of several torchrun processes, else nothing."""
    return f"rank {os.environ.get('RANK', 0)}: " if _several_ranks() else ""


def error_lines(e: BaseException) -> str:
    """`error: <problem>` per line of the message, after the rank prefix."""
    return "\n".join(f"{_rank_prefix()}error: {line}" for line in (str(e).strip() or type(e).__name__).splitlines())


def entry_point(main):
    """Wrap a command's main(argv) -> int so that user errors end it with one line and exit status 1, and
    SIGTERM or Ctrl-C (SIGINT) with one `stopped:` line and exit status 128 + the signal's number, as a shell
    reports a process that signal ended (143, 130)."""
    @functools.wraps(main)
    def wrapper(argv=None) -> int:
        in_main_thread = threading.current_thread() is threading.main_thread()  # (signal handlers live there)
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
        try:
            return main(argv)
        except (UserError, OSError, Terminated, KeyboardInterrupt) as e:
            if os.environ.get("DPO_TRACEBACK") == "1":
                raise
            if isinstance(e, (UserError, OSError)) and not isinstance(e, PeerFailed):
                print(error_lines(e), file=sys.stderr, flush=True)
                return 1
            # not this rank's error, or no error: say only why it stops
            print(f"{_rank_prefix()}stopped: {str(e) or 'interrupted (SIGINT)'}", file=sys.stderr, flush=True)
            signum = {Terminated: signal.SIGTERM, KeyboardInterrupt: signal.SIGINT}.get(type(e))
            return 1 if signum is None else 128 + signum
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    return wrapper

"""Running one verb: user errors as messages and exit codes, defects as internal errors."""
import os
import sys
import traceback
import warnings

from edgesdk.errors import EdgeSDKError, InternalError

EXIT_BROKEN_PIPE = 128 + 13   # what a shell reports for a process ended by SIGPIPE


def run_command(func, args, prog):
    """Run a command function; map EdgeSDKError to its exit code with a message on stderr,
    and print the runtime's warnings (inputs far outside the conversion data) as one line."""
    from edgesdk.runtime.input_stats import InputRangeWarning

    def show(message, category, *rest, **kw):
        sys.stderr.write("{}: warning: {}\n".format(prog, message))
    with warnings.catch_warnings():
        warnings.simplefilter("default", InputRangeWarning)
        warnings.showwarning = show
        try:
            if getattr(args, "wait", False):
                from edgesdk import atomic
                atomic.WAIT_FOR_WRITERS = True
            return func(args)
        except EdgeSDKError as exc:
            sys.stderr.write("{}: error: {}\n".format(prog, exc))
            if exc.detail and getattr(args, "verbose", False):
                sys.stderr.write(exc.detail.rstrip("\n") + "\n")
            return exc.exit_code
        except KeyboardInterrupt:
            sys.stderr.write("{}: interrupted\n".format(prog))
            return 130
        except BrokenPipeError:
            # The reader went away (`edgesdk inspect B | head -1`): stop quietly, as a program
            # killed by SIGPIPE does, and keep the exit flush of stdout from failing again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_BROKEN_PIPE
        except Exception as exc:  # a defect in edgesdk: say so, traceback only on request
            return report_internal_error(prog, exc, getattr(args, "verbose", False))


def report_internal_error(prog, exc, verbose):
    """Print an unexpected exception as an internal error (one line, the traceback only when
    ``verbose``); returns :attr:`InternalError.exit_code`."""
    if verbose:
        traceback.print_exc(file=sys.stderr)
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    sys.stderr.write("{}: internal error (a defect in edgesdk, not in your input; please report "
                     "it with the command line): {}: {}{}{}\n".format(
                         prog, type(exc).__name__, exc,
                         " at {}:{}".format(os.path.basename(where.filename), where.lineno)
                         if where else "",
                         "" if verbose else " (--verbose prints the traceback)"))
    return InternalError.exit_code

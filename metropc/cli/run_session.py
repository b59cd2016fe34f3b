"""The running ``metropc-run`` session's plumbing, around the pipeline.

Signals (:class:`Interrupts`: Ctrl-C and SIGTERM without a traceback), the
stage processes' output in live mode (:class:`ChildOutput`), keys typed in
the terminal (:class:`Keys`), log lines for the user (:func:`setup_logging`)
and reloading the context file on save (:class:`ContextWatcher`).  None of
it reads the command line or builds the pipeline: ``metropc.cli.run`` does.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import signal
import sys
import threading
import time

from ..error import ContextError, StopRequested
from .logsafe import SafeFormatter

# The same logger as metropc.cli.run: its lines say "metropc.run".
log = logging.getLogger("metropc.run")


class FdWatch:
    """Warns when this process nears its limit of open file descriptors.

    Every connection to one of metropc-run's ports (control, stages,
    dashboard, metrics) holds a descriptor in this process; at the limit,
    ZeroMQ silently retries accepting, and a stage that dies cannot be
    replaced.  Nothing else would say why.  :meth:`check` is given the count
    and the limit and returns a warning when the count first reaches `high`
    of the limit, and a note when it is back under `low` (so a count
    hovering at the mark warns once); :meth:`poll` counts and logs.
    """

    def __init__(self, *, high: float = 0.8, low: float = 0.6, every: float = 2.0):
        self.high, self.low, self.every = high, low, every
        self.warned = False
        self._next = 0.0

    def check(self, count: int, limit: int) -> str | None:
        if not self.warned and count >= self.high * limit:
            self.warned = True
            return (f"{count} of this process's {limit} file descriptors are open "
                    "(many connections to its ports?); at the limit no stage can be "
                    "restarted and no client can connect")
        if self.warned and count < self.low * limit:
            self.warned = False
            return f"open file descriptors are back to {count} of {limit}"
        return None

    def poll(self) -> None:
        """Count (at most every `every` seconds) and log what :meth:`check` says."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every
        count = open_fds()
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        news = None if count is None or limit == resource.RLIM_INFINITY else (
            self.check(count, limit))
        if news is not None:
            (log.warning if self.warned else log.info)("%s", news)


class RecorderWatch:
    """Says when the recorder stops flushing its file, and when it goes on.

    The recorder says it flushed every second
    (:meth:`~metropc.recording.process.RecorderProcess.silent_for`); a
    write hung on a network disk, or a stopped process, says nothing else.
    :meth:`check` is given the silence and decides (sans I/O).
    """

    def __init__(self, path: str, after: float = 10.0):
        self.path, self.after = path, after
        self.silent = False

    def check(self, seconds: float) -> str | None:
        if not self.silent and seconds >= self.after:
            self.silent = True
            return (f"the recorder has flushed nothing to {self.path} for {seconds:.0f} s (a "
                    "hung disk, or a stopped process?); once its queue is full, results are "
                    "dropped for it (counted in internal#output_dropped and in its summary)")
        if self.silent and seconds < self.after:
            self.silent = False
            return f"the recorder writes to {self.path} again"
        return None


def open_fds() -> int | None:
    """How many file descriptors this process has open: the limit if none
    is left to count them with, None where unknown."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError as e:
        if e.errno == errno.EMFILE:
            return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return None


class ContextWatcher:
    """Reloads the context file when it changes; keeps the old one on error.

    A reload runs in a thread of its own, so that the main loop (status,
    keys, Ctrl-C) goes on while the context's top-level code runs, however
    long it takes (Pipeline refuses it after RELOAD_TIMEOUT).  A change
    saved meanwhile is loaded after it.
    """

    def __init__(self, pipeline, state=None, stamp=None):
        """`stamp`: :func:`~metropc.core.context_file_stamp` of the file
        taken before it was first read, so that an edit saved while the
        pipeline started is loaded too (a stamp taken now would take that
        edit for the one running)."""
        from ..core import context_file_stamp  # (numpy and xarray: not for --help)
        self._stamp_of = context_file_stamp
        self.pipeline = pipeline
        self.path = pipeline.context_path
        self.state = state
        self._stamp = context_file_stamp(self.path) if stamp is None else stamp
        self._loading = None

    def poll(self):
        if self._loading is not None and self._loading.is_alive():
            return
        stamp = self._stamp_of(self.path)
        if stamp is None or stamp == self._stamp:
            return
        self._stamp = stamp
        self._loading = threading.Thread(target=self.reload, name="metropc-reload",
                                         daemon=True)
        self._loading.start()

    def reload(self):
        try:
            ctx = self.pipeline.reload()
        except ContextError as e:
            log.error("context refused, the previous one keeps running (version %d)\n%s",
                      self.pipeline.version, e.format_for_context(context_text(self.path)))
            if self.state is not None:
                self.state.refuse(str(e))
        except OSError as e:
            log.error("cannot read context %s: %s", self.path, e)
            if self.state is not None:
                self.state.refuse(f"{self.path}: cannot read: {e.strerror or e}")
        else:
            if self.state is not None:
                self.state.loaded(ctx.version, len(ctx.views))


def context_text(path):
    """The context's text to quote in an error report; None if unreadable."""
    from ..core import read_context_file  # (numpy and xarray: not for --help)
    try:
        return read_context_file(path)
    except (OSError, ContextError):
        return None


#: The "signal number" of a stop because ``--duration`` is up (see Interrupts.raising).
TIME_UP = 0
#: Seconds a context's top level gets to stop (Interrupts.raising) before
#: metropc-run quits at once, as at a second Ctrl-C.
UNRESPONSIVE_LOAD = 5.0


class Interrupts:
    """Ctrl-C and SIGTERM, at any moment, without a traceback.

    SIGINT is blocked in every thread and taken by one thread with
    ``sigtimedwait``; stage processes are spawned while it is blocked, so
    they inherit the block and never see Ctrl-C, not even while Python
    starts up in them (before they can ignore it).  The first signal sets
    :attr:`stop` and calls `on_stop(signum)`; a second one calls
    `on_exit(signum)`.
    """

    def __init__(self, on_stop, on_exit):
        self.stop = threading.Event()
        self.signum = None
        self._on_stop, self._on_exit = on_stop, on_exit
        self._done = threading.Event()
        self._callbacks: list = []
        self._old_mask = self._old_term = self._old_int = self._old_hup = None
        self._old_usr1 = None
        self._thread = None
        #: The thread in which a stop raises StopRequested (see :meth:`raising`).
        self._raise_in: int | None = None

    @staticmethod
    def block():
        """Block SIGINT in this thread, and so in every thread and process it
        starts later; call it before anything else starts.  Returns the old mask."""
        return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    def install(self, old_mask):
        self._old_mask = old_mask
        self._thread = threading.Thread(target=self._wait, name="metropc-run-sigint",
                                        daemon=True)
        self._thread.start()
        handler = lambda signum, frame: self.request(signum)  # noqa: E731
        self._old_term = signal.signal(signal.SIGTERM, handler)
        # Should anything unblock SIGINT again, it still is no traceback.
        self._old_int = signal.signal(signal.SIGINT, handler)
        # multiprocessing's resource tracker, when it starts, unblocks SIGINT
        # in the thread that starts it (ensure_running); start it now and
        # block again, so that the stage processes, spawned later, inherit
        # the block (ensure_running leaves the mask alone once it runs).
        # It also inherits an ignored SIGHUP: when the terminal closes, it
        # outlives us to unlink what we could not (shared memory).
        from multiprocessing import resource_tracker

        old_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        # The terminal closed (a dropped ssh session): a stop like SIGTERM's.
        self._old_hup = old_hup if old_hup is not None else signal.SIG_DFL
        signal.signal(signal.SIGHUP, handler)
        self._old_usr1 = signal.signal(signal.SIGUSR1, self._raise_stop)

    def _raise_stop(self, signum, frame):
        # (Installed for the whole run: a signal sent just as raising() ends
        # is ignored, not the default action, which would end the process.)
        if self._raise_in == threading.get_ident():
            raise StopRequested("stopped")

    @contextlib.contextmanager
    def raising(self, limit: float | None = None):
        """Within: a stop raises StopRequested in this (the main) thread.

        For the context's top level, run in the main thread: one that never
        returns (a ``while True`` loop, a blocking read) would otherwise
        ignore the first Ctrl-C and ``--duration``.  After `limit` seconds
        the stop is requested with signal number TIME_UP.
        """
        self._raise_in = threading.get_ident()
        timer = None
        if limit is not None:
            timer = threading.Timer(limit, self.request, (TIME_UP,))
            timer.daemon = True
            timer.start()
        try:
            if self.stop.is_set():
                raise StopRequested("stopped")
            yield
        finally:
            self._raise_in = None
            if timer is not None:
                timer.cancel()

    def _wait(self):
        while not self._done.is_set():
            info = signal.sigtimedwait({signal.SIGINT}, 0.2)
            # A stop and continue (Ctrl-Z, fg) during the wait can make it
            # return a record of no signal at all (CPython 3.11): not a Ctrl-C.
            if info is not None and info.si_signo == signal.SIGINT:
                self.request(signal.SIGINT)

    def when_stopped(self, callback) -> None:
        """Call `callback()` at the first signal (now, if it came already):
        for what must happen at that moment, not when the main loop notices."""
        self._callbacks.append(callback)
        if self.stop.is_set():
            self._run_callbacks()

    def _run_callbacks(self):
        # No lock: SIGTERM's handler runs in the main thread, which may be
        # inside when_stopped.  Each callback is popped (atomic) by one caller.
        while True:
            try:
                callback = self._callbacks.pop()
            except IndexError:
                return
            callback()

    def request(self, signum):
        if self.stop.is_set():
            self._on_exit(signum)
            return
        self.signum = signum
        self.stop.set()
        self._run_callbacks()
        self._on_stop(signum)
        if self._raise_in is not None:
            signal.pthread_kill(self._raise_in, signal.SIGUSR1)
            # Code waiting inside C (a lock, a C library) sees no signal
            # until it returns, which may be never: then quit at once.
            watchdog = threading.Timer(UNRESPONSIVE_LOAD, self._unresponsive, (signum,))
            watchdog.daemon = True
            watchdog.start()

    def _unresponsive(self, signum):
        if self._raise_in is not None:
            log.error("the context's top level did not stop within %g s (it waits inside C "
                      "code?); quitting at once", UNRESPONSIVE_LOAD)
            self._on_exit(signum)

    def uninstall(self):
        self._done.set()
        if self._thread is not None:
            self._thread.join(1.0)
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)
            signal.signal(signal.SIGINT, self._old_int)
            signal.signal(signal.SIGHUP, self._old_hup)
        if self._old_usr1 is not None:
            signal.signal(signal.SIGUSR1, self._old_usr1)
        if self._old_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)


class ChildOutput:
    """What stage processes write to fds 1 and 2, through the rich console.

    In live mode the status region is redrawn in place, so raw writes by
    child processes (a context's ``print``, a stage's warning, a crash)
    would garble it.  Fds 1 and 2 become one pipe that the children
    inherit; this process writes through duplicates of the real ones
    (:attr:`stdout`, :attr:`stderr`), and a thread prints each captured line
    with the console, above the status region.
    """

    def __init__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = {fd: os.dup(fd) for fd in (1, 2)}
        read_end, write_end = os.pipe()
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        self._read_end = read_end
        self.stdout = open(self._saved[1], "w", buffering=1, closefd=False)
        self.stderr = open(self._saved[2], "w", buffering=1, closefd=False)
        sys.stdout, sys.stderr = self.stdout, self.stderr
        # Children started from here on: unbuffered, so a print shows at once.
        os.environ["PYTHONUNBUFFERED"] = "1"
        self.console = None
        self._thread = threading.Thread(target=self._pump, name="metropc-run-children",
                                        daemon=True)

    def start(self, console):
        self.console = console
        self._thread.start()

    def _pump(self):
        from rich.text import Text

        with open(self._read_end, "rb", buffering=0) as f:
            for raw in iter(f.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                try:
                    self.console.print(Text(line), soft_wrap=True)
                except Exception:  # noqa: BLE001 - never lose a child's words
                    os.write(self._saved[2], raw)

    def close(self):
        for fd in (1, 2):
            os.dup2(self._saved[fd], fd)  # the pipe ends once the children end
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        self._thread.join(1.0)
        self.stdout.close()
        self.stderr.close()

    def restore_cursor(self):
        try:
            os.write(self._saved[2], SHOW_CURSOR + b"\n")
        except OSError:  # (the terminal is gone)
            pass

    def detach(self):
        """The terminal is gone: what would have gone to it goes nowhere."""
        detach_from_terminal(self._saved.values())


def detach_from_terminal(fds=()) -> None:
    """After a hang-up, writes to the terminal fail (EIO): make fds 0, 1, 2
    and `fds` /dev/null, so that stopping says nothing rather than fails."""
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in (0, 1, 2, *fds):
            os.dup2(null, fd)
    finally:
        os.close(null)


#: The terminal as it was before :class:`Keys` changed it, for
#: :func:`restore_terminal` (which a second Ctrl-C's exit calls too).
_terminal = None  # (fd, termios attributes)

SHOW_CURSOR, HIDE_CURSOR = b"\x1b[?25h", b"\x1b[?25l"


def restore_terminal() -> None:
    """Give the terminal back as it was: echo, line editing, the cursor."""
    if _terminal is None:
        return
    import termios

    fd, attrs = _terminal
    try:
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        os.write(fd, SHOW_CURSOR)
    except (OSError, termios.error):  # (gone, or not ours to change any more)
        pass


class Keys:
    """Single keys typed in the terminal of ``metropc-run``: r, p, s, q.

    The terminal is put in cbreak mode (no echo, no line buffering; Ctrl-C
    still interrupts) while the live status runs, and restored at the end,
    on a second Ctrl-C's exit, and while the job is stopped (Ctrl-Z): a
    shell gets its terminal back as it gave it.  Only a run in the
    foreground takes keys; a key is one byte read alone, so that escape
    sequences (function and arrow keys) and pasted text do nothing.
    """

    def __init__(self, fd):
        import termios

        global _terminal
        self.fd = fd
        _terminal = (fd, termios.tcgetattr(fd))
        self._enter(termios.TCSAFLUSH)  # (keys typed before the run are not keys)
        self._old_tstp = signal.signal(signal.SIGTSTP, self._on_stop)
        self._old_cont = signal.signal(signal.SIGCONT, self._on_continue)

    @classmethod
    def open(cls, live):
        """Keys of the terminal on stdin, or None if stdin is not one (or
        this run is not the terminal's foreground job: ``metropc-run ... &``)."""
        if not live or not sys.stdin.isatty() or not _foreground(sys.stdin.fileno()):
            return None
        try:
            return cls(sys.stdin.fileno())
        except (ImportError, OSError, ValueError):
            return None

    def _enter(self, when=None):
        """Cbreak mode; keys typed meanwhile are kept unless `when` says
        otherwise (a continue runs this twice: once from SIGCONT's handler,
        once after the stop, and a key typed in between is the user's)."""
        import termios
        import tty

        tty.setcbreak(self.fd, termios.TCSANOW if when is None else when)
        # Ctrl-S would stop the terminal's output (XON/XOFF flow control),
        # and with it everything that writes to it: the log, the stages'
        # output, and so, once their pipe is full, the stages themselves.
        # A live display takes it as a byte (no key) instead, as editors do.
        attrs = termios.tcgetattr(self.fd)
        attrs[0] &= ~termios.IXON
        termios.tcsetattr(self.fd, termios.TCSANOW, attrs)

    def _on_stop(self, signum, frame):
        """Ctrl-Z: the terminal back as it was, then stop as asked."""
        restore_terminal()
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        # Stopped here, and continued below (SIGCONT's handler takes keys
        # again); or not stopped at all, if no shell waits for this job (an
        # orphaned process group): then keys at once.
        os.kill(os.getpid(), signal.SIGTSTP)
        signal.signal(signal.SIGTSTP, self._on_stop)
        self._on_continue(signal.SIGCONT, frame)

    def _on_continue(self, signum, frame):
        """Continued (``fg``): keys again, and the cursor hidden again; not
        in the background (``bg``), where a terminal change would stop us."""
        import termios

        if _foreground(self.fd):
            try:
                self._enter()
                os.write(self.fd, HIDE_CURSOR)
            except (OSError, termios.error):
                pass

    def act(self, pipeline, timeout):
        """Wait up to `timeout` s for a key and do what it says; "quit" for q."""
        import select

        if not _foreground(self.fd):  # (a read would stop us: SIGTTIN)
            select.select([], [], [], timeout)
            return None
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return None
        typed = os.read(self.fd, 64)
        if len(typed) != 1:  # an escape sequence, or pasted text: not a key
            return None
        key = typed.decode(errors="replace").lower()
        if key == "r":
            pipeline.reset()
            log.info("reset: every view starts empty from the next event")
        elif key == "p":
            if pipeline.paused:  # (paused by whoever: a client, the dashboard)
                pipeline.resume()
                log.info("resumed")
            else:
                pipeline.pause()
                log.info("paused: new events are not computed (p resumes)")
        elif key == "s":
            pipeline.step()
            log.info("step boundary")
        elif key == "q":
            return "quit"
        return None

    def close(self):
        global _terminal
        signal.signal(signal.SIGTSTP, self._old_tstp)
        signal.signal(signal.SIGCONT, self._old_cont)
        restore_terminal()
        _terminal = None


def _foreground(fd) -> bool:
    """Whether this process's group is the foreground job of terminal `fd`."""
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False


def setup_logging(verbose, console=None):
    """Log lines for the user: through `console` in live mode (so they
    scroll above the status region), else plain lines on stderr."""
    level = logging.INFO if verbose == 0 else logging.DEBUG
    if console is not None:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False, markup=False,
                              rich_tracebacks=False, log_time_format="%H:%M:%S",
                              keywords=[])
        handler.setFormatter(SafeFormatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(SafeFormatter(
            "%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    if verbose < 2:  # one line per web request would drown everything else
        logging.getLogger("tornado.access").setLevel(logging.WARNING)
    return handler

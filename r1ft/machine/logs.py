"""Logging: rich on the console, plain text in the run's job.log."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_console(level: int = logging.INFO) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    root = logging.getLogger()
    if any(getattr(h, "_r1ft", False) for h in root.handlers):
        return
    if sys.stderr.isatty():
        handler: logging.Handler = RichHandler(
            console=Console(stderr=True), show_path=False, markup=False, rich_tracebacks=False
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:  # docker logs, vastai logs, CI: plain lines, never wrapped
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    handler._r1ft = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "urllib3", "botocore", "boto3", "s3transfer", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _library_handlers_removed()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "no CPU 4-bit kernels" on CPU-only hosts
    # Deprecation chatter from the libraries about their own internals: nothing a user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\..*")
    logging.captureWarnings(True)
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[attr-defined]


def _library_handlers_removed() -> None:
    """huggingface_hub puts its own stderr handler on its logger when imported, and its records also reach
    the root handlers: every warning would print twice. Import its logging set-up now (so it cannot come
    later) and take that handler off: its records go through r1ft's handlers only (console and job.log)."""
    import huggingface_hub.utils.logging  # noqa: F401  (adds the handler, once, at its import)

    hub = logging.getLogger("huggingface_hub")
    for handler in list(hub.handlers):
        hub.removeHandler(handler)
    hub.propagate = True


class _JobLog(logging.FileHandler):
    """The run's job.log. A write that fails (a full disk) detaches it with one line on stderr, instead of a
    traceback for every later log line; the console keeps the whole log."""

    def handleError(self, record: logging.LogRecord) -> None:
        logging.getLogger().removeHandler(self)
        error = sys.exc_info()[1]
        print(f"r1ft: {self.baseFilename} can no longer be written ({error}); logging to the console only",
              file=sys.stderr)  # fmt: skip
        with contextlib.suppress(OSError):
            self.close()


def attach_file_log(path: Path) -> None:
    root = logging.getLogger()
    for h in root.handlers:
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve():
            return
    handler = _JobLog(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)

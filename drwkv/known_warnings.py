"""The warnings that our command-line tools silence: known and harmless here, each matched by its message.

``python -m export.*`` and ``python -m training.*`` call ``silence()`` at start-up, so that a user sees
the tool's own lines and any real problem, not the exporter's chatter. Anything not listed here still
shows. Add an entry only with the reason it is harmless.
"""
import logging
import warnings

#: (category, regular expression matched at the start of the message), for warnings.filterwarnings.
WARNINGS = [
    # torch.export's pytree code uses its own deprecated LeafSpec check (torch 2.13); nothing of ours.
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # x, t and y share one dynamic batch axis on purpose; torch.export keeps one name for it.
    (UserWarning, r"# The axis name: \w+ will not be used, since it shares the same shape constraints"),
]

#: (logger, start of the message) of log records torch writes through logging.
LOG_RECORDS = [
    # The ONNX exporter registers torchvision's ops when torchvision is there; we export none of them.
    ("torch.onnx._internal.exporter._registration", "torchvision is not installed"),
]


class _DropMessages(logging.Filter):
    def __init__(self, prefixes):
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record):
        return not record.getMessage().startswith(self.prefixes)


def silence():
    """Ignore the listed warnings and log records for the rest of the process (idempotent)."""
    for category, message in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, prefix in LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and prefix in f.prefixes for f in logger.filters):
            logger.addFilter(_DropMessages([prefix]))

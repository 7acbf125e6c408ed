"""What the benchmarks print about the machine they ran on, and how they end."""
import platform
import sys


def cpu_name():
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def exit_code(failures, tolerance):
    """0, or 1 after one stderr line listing the outputs off PyTorch's by more than ``tolerance``."""
    if not failures:
        return 0
    print(f"\noutput differs from PyTorch's by more than {tolerance:g} (relative) or is NaN: " + "; ".join(failures),
          file=sys.stderr)
    return 1

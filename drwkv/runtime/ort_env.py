"""The process's ONNX Runtime environment as drwkv uses it: one thread pool and one CPU arena.

Every InferenceSession drwkv creates takes its options from ``session_options``. The CPU path cuts
a model into dozens of sessions (``drwkv.runtime.ort_split``; about 220 for DRWKV-H); with a thread
pool per session, N threads would become N per session, thousands in all. So the sessions share
ONNX Runtime's global thread pool, which is created once per process, with the thread count of the
first session drwkv creates (``threads``; 0 or None: ONNX Runtime's default, one per physical core).
Later sessions run on that pool whatever they ask for, while drwkv's native kernels still use the
count each model was loaded with. Should the application have made the global pool already, drwkv's
sessions run on it as it is.

An application that creates its own sessions after drwkv's must set
``use_per_session_threads = False`` on them: ONNX Runtime refuses per-session pools once the global
one exists.
"""
import threading

_lock = threading.Lock()
_pool_made = False      # whether the global pool exists (made here, or by the application before)
_shared_arena = False


def session_options(threads=None, env_allocators=False):
    """SessionOptions on the shared thread pool (see the module doc), workers not spinning while
    idle (drwkv's native kernels run their own threads in between). env_allocators: allocate from
    the process's shared CPU arena (see ``register_shared_arena``)."""
    global _pool_made
    import onnxruntime as ort

    with _lock:
        if not _pool_made:
            try:
                ort.set_global_thread_pool_sizes(int(threads or 0), 1)
            except Exception:  # onnxruntime's own error: "Global thread pools have already been created"
                pass
            _pool_made = True
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.use_per_session_threads = False
    if env_allocators:
        register_shared_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
    return options


def register_shared_arena():
    """Register (once per process) a CPU arena that sessions created with use_env_allocators share:
    each session's own would keep its peak, 30-odd times over."""
    global _shared_arena
    with _lock:
        if not _shared_arena:
            import onnxruntime as ort

            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
            _shared_arena = True

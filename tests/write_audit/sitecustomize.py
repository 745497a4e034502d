"""A per-process log of every file a Python process writes, for tests that must prove who wrote what.

Put this folder on ``PYTHONPATH`` and set ``WRITE_AUDIT_LOG`` to a file: Python imports ``sitecustomize`` at
start-up, and every write-like operation of the process is appended there as one JSON line ``{"event", "path"}``
(absolute paths). Without ``WRITE_AUDIT_LOG`` nothing happens.

What is seen: :pep:`578` audit events, which CPython raises for ``open()``/``io.open``/``Path.write_*`` and
``os.open`` (so also ``tempfile.mkstemp``, ``np.save``, ``json`` dumps, transformers' ``save_pretrained`` config
and vocabulary files), ``os.rename``/``os.replace``, ``os.remove``/``unlink``, ``os.rmdir`` and
``shutil.rmtree``; and ``torch.save``, wrapped here because torch's C++ writer opens its file without an audit
event (DeepSpeed's checkpoint files and our RNG files go through it). Not seen: files written by native code
alone (safetensors' and tokenizers' Rust writers); the tests rely on their neighbours (``config.json``,
``vocab.txt``), which Python writes in the same call.
"""

from __future__ import annotations

import json
import os
import sys

_LOG = os.environ.get("WRITE_AUDIT_LOG")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _install(log_path: str) -> None:
    # Opened before the hook exists, written with os.write: logging never re-enters the hook.
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    busy = [False]
    torch_patched = [False]

    def record(event: str, path: object) -> None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, (str, os.PathLike)):
            return  # a file descriptor or a dir_fd-relative name: nothing to attribute
        line = json.dumps({"event": event, "path": os.path.abspath(os.fspath(path))}) + "\n"
        os.write(fd, line.encode("utf-8"))

    def patch_torch() -> None:
        torch = sys.modules.get("torch")
        save = getattr(torch, "save", None)
        if save is None or torch_patched[0]:
            return
        torch_patched[0] = True

        def audited_save(obj, f, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if isinstance(f, (str, bytes, os.PathLike)):
                record("torch.save", f)
            return save(obj, f, *args, **kwargs)

        torch.save = audited_save

    def hook(event: str, args: tuple) -> None:
        if busy[0]:
            return
        busy[0] = True
        try:
            if not torch_patched[0] and "torch" in sys.modules:
                patch_torch()  # torch.save is called long after torch finished importing
            if event == "open":
                path, mode, flags = args
                writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS)
                if writing:
                    record("open", path)
            elif event == "os.rename":
                record("rename-from", args[0])
                record("rename-to", args[1])
            elif event in ("os.remove", "os.rmdir", "shutil.rmtree"):
                record(event, args[0])
        finally:
            busy[0] = False

    sys.addaudithook(hook)


if _LOG:
    _install(_LOG)

"""Loading checkpoint and model files without executing pickled code.

``torch.load(weights_only=False)`` (DeepSpeed's default checkpoint engine, its ``zero_to_fp32``, and this
framework's RNG files until now) runs whatever a ``.pt`` file's pickle asks for: a planted object whose
``__reduce__`` returns ``(os.system, ("...",))`` executes on ``--resume auto`` or on export. Everything the
framework reads back from a checkpoint or a model folder therefore goes through :func:`load_weights_only`:
``torch.load(weights_only=True)`` with an explicit allow-list of the few plain classes DeepSpeed 0.19 pickles
(:func:`deepspeed_safe_globals`). Anything else is refused with :class:`UnsafeFileError`, a one-line message
naming the file and the offending global(s). See ``docs/security.md`` for what is trusted and why.

The plug-in points:

* :func:`install_safe_checkpoint_engine`: DeepSpeed reads every model/optimizer/ZeRO file of
  ``engine.load_checkpoint`` through ``engine.checkpoint_engine.load``; this swaps in a
  ``SafeTorchCheckpointEngine`` (:func:`safe_checkpoint_engine_class`), whose ``load`` is
  :func:`load_weights_only` (saving is unchanged).
* :func:`safe_zero_to_fp32`: DeepSpeed's ``zero_to_fp32`` (used by ``launch/export.py`` for ZeRO 1-3)
  calls ``torch.load(weights_only=False)`` directly; within this context its ``torch.load`` is the safe one.
* :func:`encode_rng_state` / :func:`decode_rng_state`: Python's and NumPy's generator states as tensors and
  plain numbers, so ``rng_state_rank{R}.pt`` loads weights-only; :func:`load_rng_file` refuses a file of the old
  pickle format and says how to convert it (``python -m framework.training.safe_load convert-rng FILE``).
* :func:`describe_unpickling_error`: for transformers' own refusal of a planted ``pytorch_model.bin`` (it loads
  ``.bin`` weights with ``weights_only=True``), the same one-line message.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import pickle
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Marks an RNG file written by :func:`encode_rng_state` (older files are plain pickles of numpy objects).
RNG_FORMAT = "academic-bert-rng/1"

_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL (\S+)")
# What a pre-safe-loading rng_state_rank{R}.pt pickles (numpy's state tuple holds an ndarray).
_LEGACY_RNG_GLOBALS = ("numpy.",)


class UnsafeFileError(RuntimeError):
    """A checkpoint or model file would need unpickling arbitrary objects; the message is one line that names
    the file, the offending global(s) and what to do."""


def deepspeed_safe_globals() -> list[type]:
    """The classes DeepSpeed 0.19 pickles into its checkpoint files, allowed for a weights-only load.

    Found by saving real checkpoints (ZeRO 0, 1 and 2; fp32 and bf16; CPU) and listing
    ``torch.serialization.get_unsafe_globals_in_checkpoint`` of every file: the model states hold none, the
    ZeRO optimizer shards hold ``LossScaler``, ``ZeroStageEnum`` and ``fragment_address``. ``DynamicLossScaler``
    is what the same field holds under fp16 (GPU). All four are plain data (numbers, an int enum, a dataclass of
    two ints, a torch dtype) rebuilt without calling any of their methods but ``__new__``/``__dict__`` updates.
    """
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _allowed_globals() -> list[type]:
    """:func:`deepspeed_safe_globals`, or none where DeepSpeed is not installed (model folders, RNG files)."""
    try:
        return deepspeed_safe_globals()
    except ImportError:
        return []


def unsafe_globals(path: str | Path) -> list[str]:
    """The globals in ``path``'s pickle that a weights-only load with the allow-list refuses (static scan, nothing
    is unpickled); empty for a legacy (non-zip) file, whose pickle torch cannot scan."""
    with torch.serialization.safe_globals(_allowed_globals()):
        try:
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except (ValueError, RuntimeError, OSError, KeyError):
            return []


def refusal_message(path: str | Path, offending: list[str]) -> str:
    """The one-line message of a refused file."""
    names = ", ".join(offending) if offending else "an object outside the allow-list"
    return (f"{path}: refused to load: its pickle references {names}, which a weights-only load does not allow "
            "(tensors, plain containers and DeepSpeed's own checkpoint classes only); unpickling it could run "
            "arbitrary code. Use files this framework or DeepSpeed wrote; see docs/security.md")


def describe_unpickling_error(path: str | Path, err: BaseException) -> str:
    """One line for an ``UnpicklingError`` of a weights-only load of ``path`` (here, or in transformers'
    ``from_pretrained`` of a model folder, where ``path`` is the folder and its ``*.bin`` files are named)."""
    path = Path(path)
    if path.is_dir():
        for weights in sorted(path.glob("*.bin")):
            if offending := unsafe_globals(weights):
                return refusal_message(weights, offending)
    offending = sorted(set(_GLOBAL_IN_MESSAGE.findall(str(err))))
    if not offending and path.is_file():
        offending = unsafe_globals(path)
    return refusal_message(path, offending)


def load_weights_only(path: str | Path, map_location: Any = "cpu", mmap: bool | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` with :func:`deepspeed_safe_globals` allowed.

    Raises:
        UnsafeFileError: the file's pickle references any other global (nothing of it is executed).
    """
    kwargs: dict[str, Any] = {} if mmap is None else {"mmap": mmap}
    with torch.serialization.safe_globals(_allowed_globals()):
        try:
            return torch.load(str(path), map_location=map_location, weights_only=True, **kwargs)
        except pickle.UnpicklingError as err:
            raise UnsafeFileError(describe_unpickling_error(path, err)) from None


# ----------------------------------------------------------------------------------------------------------
# DeepSpeed


@functools.cache
def safe_checkpoint_engine_class() -> type:
    """``SafeTorchCheckpointEngine``: DeepSpeed's torch checkpoint engine, ``load`` being :func:`load_weights_only`.

    Built on first use, so that importing this module needs no DeepSpeed (model folders, RNG files).
    """
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):
        """DeepSpeed's torch checkpoint engine, reading every file with :func:`load_weights_only`."""

        def load(self, path: str, map_location: Any = None) -> Any:  # noqa: D102 - see the class
            return load_weights_only(path, map_location=map_location)

    return SafeTorchCheckpointEngine


def install_safe_checkpoint_engine(engine: Any) -> None:
    """Make ``engine.load_checkpoint`` read its files weights-only (idempotent).

    DeepSpeed builds a ``TorchCheckpointEngine`` unless the config asks for a fast/decoupled writer; that one is
    replaced by a ``SafeTorchCheckpointEngine`` (:func:`safe_checkpoint_engine_class`) with the same settings.
    Another engine keeps its writer and gets the safe ``load`` on the instance (theirs is a plain ``torch.load``).
    """
    current = getattr(engine, "checkpoint_engine", None)
    if current is None:
        return
    safe_class = safe_checkpoint_engine_class()
    if isinstance(current, safe_class):
        return
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    if type(current) is TorchCheckpointEngine:
        safe = safe_class.__new__(safe_class)  # no __init__: it would only log again; the settings are copied
        safe.__dict__.update(current.__dict__)
        engine.checkpoint_engine = safe
    else:
        current.load = lambda path, map_location=None: load_weights_only(path, map_location=map_location)


class _TorchWithSafeLoad:
    """The ``torch`` module as ``zero_to_fp32`` sees it inside :func:`safe_zero_to_fp32`: ``load`` is safe."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def load(f: Any, map_location: Any = None, weights_only: Any = None, mmap: bool | None = None,
             **_: Any) -> Any:
        """:func:`load_weights_only`, whatever ``weights_only`` the caller passed."""
        return load_weights_only(f, map_location=map_location, mmap=mmap)


@contextlib.contextmanager
def safe_zero_to_fp32() -> Iterator[Any]:
    """DeepSpeed's ``zero_to_fp32`` module, its ``torch.load`` made weights-only for the duration.

    Its functions call ``torch.load(weights_only=False)`` on every model and optimizer shard, and take no
    loader argument; swapping the module's ``torch`` name is the narrowest override (the global ``torch.load``
    stays as it is). Not thread-safe: export is a one-shot command.
    """
    from deepspeed.utils import zero_to_fp32

    original = zero_to_fp32.torch
    zero_to_fp32.torch = _TorchWithSafeLoad()
    try:
        yield zero_to_fp32
    finally:
        zero_to_fp32.torch = original


# ----------------------------------------------------------------------------------------------------------
# RNG states


def encode_rng_state(state: dict[str, Any]) -> dict[str, Any]:
    """Python's and NumPy's generator states as tensors and plain numbers (``weights_only``-loadable).

    ``random.getstate()`` is ``(version, 625 ints, gauss_next)``; ``np.random.get_state()`` is
    ``("MT19937", uint32[624], pos, has_gauss, cached_gaussian)`` whose ndarray pickles through numpy's
    reconstructor, which a weights-only load refuses. The torch and CUDA states are byte tensors already.
    """
    version, internal, gauss_next = state["python"]
    bit_generator, key, pos, has_gauss, cached_gaussian = state["numpy"]
    encoded: dict[str, Any] = {
        "format": RNG_FORMAT,
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": None if gauss_next is None else float(gauss_next)},
        "numpy": {"bit_generator": str(bit_generator), "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": state["torch"],
    }
    if "cuda" in state:
        encoded["cuda"] = state["cuda"]
    return encoded


def decode_rng_state(encoded: dict[str, Any]) -> dict[str, Any]:
    """The ``random.setstate``/``np.random.set_state`` arguments back from :func:`encode_rng_state`."""
    if encoded.get("format") != RNG_FORMAT:
        raise ValueError(f"not an RNG state of format {RNG_FORMAT!r} (format {encoded.get('format')!r})")
    py, npy = encoded["python"], encoded["numpy"]
    state = {
        "python": (py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]),
        "numpy": (npy["bit_generator"], npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                  npy["cached_gaussian"]),
        "torch": encoded["torch"],
    }
    if "cuda" in encoded:
        state["cuda"] = encoded["cuda"]
    return state


def load_rng_file(path: str | Path) -> dict[str, Any]:
    """Read an ``rng_state_rank{R}.pt`` weights-only and return its :func:`encode_rng_state` form.

    Raises:
        UnsafeFileError: the file pickles objects; for a file of the pre-safe-loading format (numpy's state
            tuple) the message says how to convert it or resume without it.
    """
    try:
        encoded = load_weights_only(path)
    except UnsafeFileError as err:
        offending = unsafe_globals(path)
        if offending and all(name.startswith(_LEGACY_RNG_GLOBALS) for name in offending):
            raise UnsafeFileError(
                f"{path}: an RNG state in the old pickle format (it references {', '.join(offending)}), which is no "
                "longer unpickled; if you trust this checkpoint, convert it once with 'python -m "
                f"framework.training.safe_load convert-rng {path}', or delete the file to resume with fresh RNG "
                "states (dropout then differs from an uninterrupted run)") from None
        raise err from None
    if not isinstance(encoded, dict) or encoded.get("format") != RNG_FORMAT:
        raise UnsafeFileError(f"{path}: not an RNG state file of format {RNG_FORMAT!r}; delete it to resume with "
                              "fresh RNG states")
    return encoded


def convert_legacy_rng_file(path: str | Path) -> None:
    """Rewrite an old-format RNG file in the :func:`encode_rng_state` format, in place.

    This unpickles the file fully (``weights_only=False``): run it only on a checkpoint you trust. It is the one
    place that does, and only on an explicit command.
    """
    path = Path(path)
    state = torch.load(str(path), map_location="cpu", weights_only=False)
    if isinstance(state, dict) and state.get("format") == RNG_FORMAT:
        return
    tmp = path.with_name(path.name + ".tmp")
    torch.save(encode_rng_state(state), tmp)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    """``python -m framework.training.safe_load convert-rng FILE...``: convert trusted old-format RNG files."""
    parser = argparse.ArgumentParser(prog="python -m framework.training.safe_load",
                                     description="Convert trusted old-format rng_state_rank*.pt files (this "
                                                 "unpickles them: only for checkpoints you trust).")
    parser.add_argument("command", choices=["convert-rng"])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for path in args.files:
        convert_legacy_rng_file(path)
        load_rng_file(path)  # proves the converted file now loads weights-only
        print(f"converted {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seeds and reproducibility.

Per-stamp randomness never comes from a partition index or a global RNG: :func:`task_seed`
hashes the stamp's identity, so a retried or re-partitioned Spark task draws the same numbers.
"""

from __future__ import annotations

import hashlib
import os
import platform
import random
import socket
import struct

import numpy as np


def stable_hash64(*parts) -> int:
    """A 64-bit unsigned hash of ``parts`` (stable across processes, unlike ``hash()``).

    Floats are encoded by their IEEE-754 bytes, so 150.1 and 150.10000000000002 differ; pass
    coordinates exactly as stored in the manifest.
    """
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        if isinstance(part, float) or isinstance(part, np.floating):
            h.update(b"f" + struct.pack("<d", float(part)))
        elif isinstance(part, (int, np.integer)) and not isinstance(part, bool):
            h.update(b"i" + int(part).to_bytes(16, "little", signed=True))
        else:
            h.update(b"s" + str(part).encode())
        h.update(b"\x1f")
    return int.from_bytes(h.digest(), "little")


def task_seed(global_seed: int, brickname: str, ra_deg: float, dec_deg: float, config_id: str, replicate: int) -> int:
    """The per-task seed: hash(experiment seed, brickname, ra, dec, config id, replicate).

    63 bits (top bit dropped) so that it fits Parquet/Spark's signed int64 unchanged.
    """
    return stable_hash64(int(global_seed), str(brickname), float(ra_deg), float(dec_deg), str(config_id), int(replicate)) >> 1


def rng_from_seed(seed: int) -> np.random.Generator:
    """A numpy Generator (PCG64) for one 64-bit seed."""
    return np.random.Generator(np.random.PCG64(int(seed) & 0xFFFFFFFFFFFFFFFF))


def set_all_seeds(seeds) -> None:
    """Seed python, numpy and (when installed) torch; set cuDNN determinism flags.

    ``seeds`` is a :class:`~dhs_spark.config.experiment.SeedConfig` or an int.
    """
    seed = int(getattr(seeds, "global_seed", seeds))
    deterministic = bool(getattr(seeds, "torch_deterministic", True))
    random.seed(seed)
    np.random.seed(seed % 2**32)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def _version(module: str):
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return getattr(mod, "__version__", "unknown")


def get_reproducibility_info() -> dict:
    """Versions (python, numpy, pyspark, galsim, torch), git state and host."""
    from dhs_spark.config.experiment import git_info

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "numpy": np.__version__,
    }
    for module in ("pyspark", "galsim", "torch", "pyarrow", "pandas"):
        info[module] = _version(module)
    info.update(git_info())
    return info

"""Score stamps with a trained checkpoint: arrays (:func:`score_images`) or Parquet
(:func:`score_parquet`, the ``dhs-score`` command) for hard-negative mining and the anchors.

Scores are sigmoid probabilities in [0, 1], computed after exactly the preprocessing the model
was trained with (stored in the checkpoint), without augmentation.
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
import torch

from trainer.checkpoint import load_checkpoint, model_from_checkpoint
from trainer.preprocess import PreprocessConfig, preprocess

log = logging.getLogger(__name__)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but torch sees no CUDA GPU")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def make_score_fn(model: torch.nn.Module, preprocess_cfg: PreprocessConfig, device, batch_size: int = 256):
    """``f(images (N, C, H, W) float32 nanomaggies) -> float64 scores (N,)`` in [0, 1]."""
    device = torch.device(device)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format

    @torch.inference_mode()
    def score_fn(images: np.ndarray) -> np.ndarray:
        model.eval()
        out = np.empty(len(images), dtype=np.float64)
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(preprocess(images[start : start + batch_size], preprocess_cfg))
            x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            out[start : start + len(x)] = torch.sigmoid(model(x).float()).cpu().numpy()
        return out

    return score_fn


def score_images(checkpoint_path: str, images: np.ndarray, device: str = "cpu", batch_size: int = 256) -> np.ndarray:
    """Scores in [0, 1] (float64, shape (N,)) of ``images`` (N, C, H, W) float32 nanomaggies,
    bands g, r, z, host on pixel (H // 2, W // 2), as stored in the stamp Parquet."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
    dev = pick_device(device)
    model, cfg, pre = model_from_checkpoint(load_checkpoint(checkpoint_path), dev)
    if images.shape[1] != cfg.model.in_channels:
        raise ValueError(f"images have {images.shape[1]} bands, the model {checkpoint_path} takes {cfg.model.in_channels}")
    return make_score_fn(model, pre, dev, batch_size)(images)


def score_parquet(checkpoint_path: str, data: str, output: str, device: str = "cpu", split: str | None = None, batch_size: int = 256) -> int:
    """Score every stamp of ``data`` (or one ``split``) and write ``output`` Parquet with
    columns task_id, ra, dec, score (and label when the input has it), in input order.
    Returns the number of rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainer.data import COL, StampIndex

    dev = pick_device(device)
    model, _, pre = model_from_checkpoint(load_checkpoint(checkpoint_path), dev)
    score_fn = make_score_fn(model, pre, dev, batch_size)
    index = StampIndex.scan(data)
    missing = [c for c in (COL.task_id, COL.ra, COL.dec) if c not in index.columns]
    if missing:
        raise ValueError(f"{data}: stamps lack columns {missing} needed in the score table")
    id_cols = [COL.task_id, COL.ra, COL.dec] + ([COL.label] if COL.label in index.columns else [])
    schema = pa.schema([pa.field(c, t) for c, t in zip(id_cols, (pa.string(), pa.float64(), pa.float64(), pa.int32()))] + [pa.field("score", pa.float64())])
    n = 0
    with pq.ParquetWriter(output, schema) as writer:
        for rg, local in index.groups_of(index.rows(split)):
            images, table = index.read_images(rg, tuple(id_cols))
            table = table.take(pa.array(local))
            scores = score_fn(images[local])
            writer.write_table(pa.Table.from_arrays([*(table.column(c).cast(schema.field(c).type) for c in id_cols), pa.array(scores)], schema=schema))
            n += len(local)
    log.info("scored %d stamps of %s -> %s", n, data, output)
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dhs-score", description="Score Parquet stamps with a trained checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="best.pt / last.pt written by dhs-train")
    parser.add_argument("--data", required=True, help="stamp Parquet file or directory (local or s3://)")
    parser.add_argument("--output", required=True, help="output Parquet: task_id, ra, dec, score[, label]")
    parser.add_argument("--split", choices=("train", "val", "test"), default=None, help="score only this split (default: all rows)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    n = score_parquet(args.checkpoint, args.data, args.output, device=args.device, split=args.split, batch_size=args.batch_size)
    print(f"wrote {n} scores to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

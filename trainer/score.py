"""Score stamps with a trained checkpoint: arrays (:func:`score_images`) or Parquet
(:func:`score_parquet`, the ``dhs-score`` command) for hard-negative mining and the anchors.

Scores are sigmoid probabilities in [0, 1], computed after exactly the preprocessing the model
was trained with (stored in the checkpoint), without augmentation. :func:`embed_images` returns
the penultimate-layer features (the input of the final linear layer, i.e. the pooled body
output) together with the scores, for the linear-probe realism gate (``dhs_spark.realism``).
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


def make_embed_fn(model: torch.nn.Module, preprocess_cfg: PreprocessConfig, device, batch_size: int = 256):
    """``f(images (N, C, H, W) float32 nanomaggies) -> (features (N, D) float32, scores (N,) float64)``:
    the input of the model's final linear layer (``model.head[-1]``, captured by a forward
    hook, so any head whose last module is the classifier works) and the sigmoid scores of
    the same forward pass, in batches of ``batch_size``."""
    device = torch.device(device)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    last = model.head[-1]
    if not isinstance(last, torch.nn.Linear):
        raise TypeError(f"the model's last head module is {type(last).__name__}, not the linear classifier")

    @torch.inference_mode()
    def embed_fn(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        model.eval()
        captured: list[torch.Tensor] = []
        handle = last.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].float().cpu()))
        try:
            features = np.empty((len(images), last.in_features), dtype=np.float32)
            scores = np.empty(len(images), dtype=np.float64)
            for start in range(0, len(images), batch_size):
                x = torch.from_numpy(preprocess(images[start : start + batch_size], preprocess_cfg))
                x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                scores[start : start + len(x)] = torch.sigmoid(model(x).float()).cpu().numpy()
                features[start : start + len(x)] = captured.pop().numpy()
        finally:
            handle.remove()
        return features, scores

    return embed_fn


def _model_for_images(checkpoint_path: str, images, device: str):
    """(images as float32 (N, C, H, W), model, preprocess config, device) after checking the
    images' shape and band count against the checkpoint."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
    dev = pick_device(device)
    model, cfg, pre = model_from_checkpoint(load_checkpoint(checkpoint_path), dev)
    if images.shape[1] != cfg.model.in_channels:
        raise ValueError(f"images have {images.shape[1]} bands, the model {checkpoint_path} takes {cfg.model.in_channels}")
    return images, model, pre, dev


def embed_images(checkpoint_path: str, images: np.ndarray, device: str = "cpu", batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate-layer features (N, D) float32 and scores (N,) in [0, 1] of ``images``
    (N, C, H, W) float32 nanomaggies, preprocessed as in training (see :func:`make_embed_fn`)."""
    images, model, pre, dev = _model_for_images(checkpoint_path, images, device)
    return make_embed_fn(model, pre, dev, batch_size)(images)


def score_images(checkpoint_path: str, images: np.ndarray, device: str = "cpu", batch_size: int = 256) -> np.ndarray:
    """Scores in [0, 1] (float64, shape (N,)) of ``images`` (N, C, H, W) float32 nanomaggies,
    bands g, r, z, host on pixel (H // 2, W // 2), as stored in the stamp Parquet."""
    images, model, pre, dev = _model_for_images(checkpoint_path, images, device)
    return make_score_fn(model, pre, dev, batch_size)(images)


SCORE_FLAG_COLUMNS = ("is_control", "is_null_injection")
"""Columns of the stamps copied into the score table after ``score`` (null where a stamp file
lacks them), so that hard-negative mining can prove a row real (``dhs_spark.hardneg.real_score_rows``)."""


def score_parquet(checkpoint_path: str, data: str, output: str, device: str = "cpu", split: str | None = None, batch_size: int = 256) -> int:
    """Score every stamp of ``data`` (or one ``split``) and write ``output`` Parquet with
    columns task_id, ra, dec, (label when the input has it), score, is_control,
    is_null_injection (the stamp's flags, null where its file lacks the column), in input
    order. Returns the number of rows written."""
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
    flag_cols = [getattr(COL, c) for c in SCORE_FLAG_COLUMNS]
    schema = pa.schema([pa.field(c, t) for c, t in zip(id_cols, (pa.string(), pa.float64(), pa.float64(), pa.int32()))] + [pa.field("score", pa.float64())]
                       + [pa.field(c, pa.bool_()) for c in flag_cols])  # fmt: skip
    n = 0
    with pq.ParquetWriter(output, schema) as writer:
        for rg, local in index.groups_of(index.rows(split)):
            present = [c for c in flag_cols if index.file_has_column(rg, c)]
            images, table = index.read_images(rg, tuple(id_cols + present))
            table = table.take(pa.array(local))
            scores = score_fn(images[local])
            flags = [table.column(c).cast(pa.bool_()) if c in present else pa.nulls(len(local), pa.bool_()) for c in flag_cols]
            columns = [*(table.column(c).cast(schema.field(c).type) for c in id_cols), pa.array(scores), *flags]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
            n += len(local)
    log.info("scored %d stamps of %s -> %s", n, data, output)
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dhs-score", description="Score Parquet stamps with a trained checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="best.pt / last.pt written by dhs-train")
    parser.add_argument("--data", required=True, help="stamp Parquet file or directory (local or s3://)")
    parser.add_argument("--output", required=True, help="output Parquet: task_id, ra, dec[, label], score, is_control, is_null_injection")
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

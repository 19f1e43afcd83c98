"""Training and validation batches built as tensors, a whole batch at a time, instead of one
``TimeSeriesDataSet.__getitem__`` per sample.

The library's dataloader makes each sample in Python (a pandas row lookup, slicing, a Beta draw for the
random encoder length, and four :class:`models.features.RobustWindowNormalizer` fits, i.e. eight
``torch.quantile`` calls) and then collates the samples one by one. Profiled on the demo preset this was
a third of a training step (docs/performance.md, "Training profile"). :class:`WindowBatches` reads the
same fitted dataset (its ``index`` of windows and its ``data`` tensors, already encoded and scaled by
the library) and builds a batch with a few gathers:

- every window's rows gathered at once (``index_start`` + offset), right-padded like
  ``TimeSeriesDataSet._collate_fn``;
- the randomised encoder length exactly as ``__getitem__`` computes it (``min_encoder_length`` +
  round((length - min) * p), p ~ Beta(*randomize_length), the decoder extended to the horizon), with
  p drawn for the whole batch from torch's generator in one call (same distribution, not the same
  random stream as the library's per-sample draws);
- each target's per-window centre and scale (the median of the encoder's last ``max_length[0]`` steps,
  the IQR of its last ``max_length[1]`` steps over 1.349, floored) with ``torch.nanquantile`` over the
  batch's NaN-padded windows, then the normalizer's own transform and clip;
- ``relative_time_idx``, ``encoder_length``, ``decoder_time_idx``, ``groups`` and ``target_scale`` as the
  library computes them.

The result is the ``(x, (y, None))`` pair of the library's dataloader, tensor for tensor
(``tests/model/test_windows.py`` checks it against ``TimeSeriesDataSet``, fixed and random lengths).
``TimeSeriesDataSet`` stays the source of the encoders, scalers and dataset parameters the checkpoint
carries; only the per-sample Python goes away. Anything else (other normalizers, lags, weights, gaps)
raises :class:`Unsupported`, and :func:`models.tft.train_tft` then uses the library's dataloader.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pytorch_forecasting import TimeSeriesDataSet
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from models import features


class Unsupported(ValueError):
    """The dataset uses something :class:`WindowBatches` does not implement."""


def _collated(batch: Any) -> Any:
    """The batch as :meth:`WindowBatches.__getitems__` built it (module level: picklable for workers)."""
    return batch


class WindowBatches(Dataset):
    """The windows of a fitted ``TimeSeriesDataSet``; ``__getitems__`` builds a collated batch of them.

    ``randomize``: draw the encoder length as the library does when the dataset has ``randomize_length``
    (training); False: full windows as indexed (validation, tests).
    """

    def __init__(self, dataset: TimeSeriesDataSet, randomize: bool = True) -> None:
        ds = dataset
        if ds.data.get("weight") is not None:
            raise Unsupported("sample weights are not supported")
        if ds.lagged_variables:
            raise Unsupported("lagged variables are not supported")
        if ds._overwrite_values is not None:
            raise Unsupported("overwritten values are not supported")
        if ds.min_encoder_length < 1:
            raise Unsupported("windows without an encoder are not supported")
        if getattr(ds, "add_target_scales", False):
            raise Unsupported("add_target_scales is not supported")
        if not ds.multi_target:
            raise Unsupported("a single target is not supported")
        for name in ds.reals:
            if name not in ds.target_names and isinstance(ds.get_transformer(name), features.EncoderNormalizer):
                raise Unsupported(f"per-window scaler for the covariate {name!r} is not supported")
        self.normalizers: list[features.RobustWindowNormalizer] = []
        for normalizer in ds.target_normalizers:
            if type(normalizer) is not features.RobustWindowNormalizer or normalizer.transformation is not None \
                    or not isinstance(normalizer.max_length, list | tuple):
                raise Unsupported(f"target normalizer {normalizer!r} is not supported")
            self.normalizers.append(normalizer)
        index = ds.index
        self.start = torch.as_tensor(index["index_start"].to_numpy(np.int64))
        end = torch.as_tensor(index["index_end"].to_numpy(np.int64))
        self.length = end - self.start + 1
        time = ds.data["time"]
        if (time[end] - time[self.start] + 1 != self.length).any():
            raise Unsupported("windows with missing time steps are not supported")
        self.decoder_length = torch.as_tensor(np.asarray(
            ds.calculate_decoder_length(time[end].numpy(), self.length.numpy()), dtype=np.int64))
        self.reals = ds.data["reals"]
        self.categoricals = ds.data["categoricals"]
        self.targets = list(ds.data["target"])
        self.groups = ds.data["groups"]
        self.time = time
        self.real_names = list(ds.reals)
        self.target_positions = [self.real_names.index(t) if t in self.real_names else -1 for t in ds.target_names]
        self.relative_time_idx = self.real_names.index("relative_time_idx") if ds.add_relative_time_idx else -1
        self.encoder_length_idx = self.real_names.index("encoder_length") if ds.add_encoder_length else -1
        self.max_encoder_length = int(ds.max_encoder_length)
        self.min_encoder_length = int(ds.min_encoder_length)
        self.max_prediction_length = int(ds.max_prediction_length)
        self.randomize_length = ds.randomize_length if randomize else None

    def __len__(self) -> int:
        return len(self.start)

    def __getitem__(self, i: int) -> Any:
        return self.__getitems__([i])

    def encoder_lengths(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(first row offset in the window, encoder length, decoder length) of each window, randomised as
        ``TimeSeriesDataSet.__getitem__`` does when the dataset randomises lengths."""
        length, decoder = self.length[rows], self.decoder_length[rows]
        encoder = length - decoder
        offset = torch.zeros_like(length)
        if self.randomize_length is not None:
            a, b = self.randomize_length
            p = torch.distributions.Beta(torch.tensor(float(a)), torch.tensor(float(b))).sample((len(rows),))
            modifiable = encoder - self.min_encoder_length
            new_encoder = self.min_encoder_length + (modifiable * p).round().long()
            new_decoder = torch.minimum(decoder + (encoder - new_encoder),
                                        torch.tensor(self.max_prediction_length))
            shorter = new_encoder + new_decoder < length
            offset = torch.where(shorter, encoder - new_encoder, offset)
            encoder = torch.where(shorter, new_encoder, encoder)
            decoder = torch.where(shorter, new_decoder, decoder)
        return offset, encoder, decoder

    def __getitems__(self, indices: list[int] | torch.Tensor) -> tuple[dict[str, Any], tuple[list[torch.Tensor], None]]:
        rows = torch.as_tensor(indices, dtype=torch.long)
        n = len(rows)
        offset, enc_len, dec_len = self.encoder_lengths(rows)
        width_enc, width_dec = int(enc_len.max()), int(dec_len.max())
        first = self.start[rows] + offset  # data row of each window's first encoder step
        steps_enc = torch.arange(width_enc)
        steps_dec = torch.arange(width_dec)
        enc_valid = steps_enc[None, :] < enc_len[:, None]
        dec_valid = steps_dec[None, :] < dec_len[:, None]
        last_row = len(self.time) - 1
        enc_rows = (first[:, None] + steps_enc[None, :]).clamp(max=last_row)
        dec_rows = (first[:, None] + enc_len[:, None] + steps_dec[None, :]).clamp(max=last_row)

        def gather(data: torch.Tensor, where: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
            out = data[where]
            mask = valid.view(*valid.shape, *([1] * (out.ndim - 2)))
            return torch.where(mask, out, torch.zeros((), dtype=out.dtype))

        encoder_cont = gather(self.reals, enc_rows, enc_valid)
        decoder_cont = gather(self.reals, dec_rows, dec_valid)
        encoder_cat = gather(self.categoricals, enc_rows, enc_valid)
        decoder_cat = gather(self.categoricals, dec_rows, dec_valid)
        encoder_target = [gather(t, enc_rows, enc_valid) for t in self.targets]
        decoder_target = [gather(t, dec_rows, dec_valid) for t in self.targets]

        if self.relative_time_idx >= 0:
            j = self.relative_time_idx
            rel_enc = (steps_enc[None, :] - enc_len[:, None]).to(encoder_cont.dtype) / self.max_encoder_length
            encoder_cont[:, :, j] = torch.where(enc_valid, rel_enc, torch.zeros(()))
            rel_dec = steps_dec[None, :].expand(n, -1).to(decoder_cont.dtype) / self.max_encoder_length
            decoder_cont[:, :, j] = torch.where(dec_valid, rel_dec, torch.zeros(()))
        if self.encoder_length_idx >= 0:
            j = self.encoder_length_idx
            value = ((enc_len - 0.5 * self.max_encoder_length) / self.max_encoder_length * 2.0).to(encoder_cont.dtype)
            encoder_cont[:, :, j] = torch.where(enc_valid, value[:, None], torch.zeros(()))
            decoder_cont[:, :, j] = torch.where(dec_valid, value[:, None], torch.zeros(()))

        target_scale: list[torch.Tensor] = []
        for i, normalizer in enumerate(self.normalizers):
            center, scale = self._fit(normalizer, encoder_target[i], enc_len)
            target_scale.append(torch.stack([center, scale], dim=-1).float())
            j = self.target_positions[i]
            if j >= 0:
                scaled_enc = normalizer._clip((encoder_target[i] - center[:, None]) / scale[:, None])
                scaled_dec = normalizer._clip((decoder_target[i] - center[:, None]) / scale[:, None])
                encoder_cont[:, :, j] = torch.where(enc_valid, scaled_enc, torch.zeros(()))
                decoder_cont[:, :, j] = torch.where(dec_valid, scaled_dec, torch.zeros(()))

        # as the library: from the first step of the window as indexed, even when the encoder was shortened
        decoder_time_idx = (self.time[self.start[rows]] + enc_len)[:, None] + steps_dec[None, :]
        x = dict(
            encoder_cat=encoder_cat,
            encoder_cont=encoder_cont,
            encoder_target=encoder_target,
            encoder_lengths=enc_len,
            decoder_cat=decoder_cat,
            decoder_cont=decoder_cont,
            decoder_target=decoder_target,
            decoder_lengths=dec_len,
            decoder_time_idx=decoder_time_idx,
            groups=self.groups[self.start[rows]],
            target_scale=target_scale,
        )
        return x, (decoder_target, None)

    @staticmethod
    def _fit(normalizer: features.RobustWindowNormalizer, encoder: torch.Tensor,
             enc_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`RobustWindowNormalizer._set_parameters` on every window's own encoder at once: the encoder
        right-padded with NaN, quantiles ignoring NaN (what ``torch.quantile`` gives on each window alone)."""
        center_steps, scale_steps = (int(v) for v in normalizer.max_length)
        width = encoder.shape[1]
        pos = torch.arange(width)[None, :]
        values = encoder.float()
        nan = torch.tensor(float("nan"))
        in_center = (pos < enc_len[:, None]) & (pos >= enc_len[:, None] - center_steps)
        in_scale = (pos < enc_len[:, None]) & (pos >= enc_len[:, None] - scale_steps)
        center = torch.nanquantile(torch.where(in_center, values, nan), 0.5, dim=-1)
        q = torch.nanquantile(torch.where(in_scale, values, nan),
                              torch.tensor([0.25, 0.75], dtype=values.dtype), dim=-1)
        scale = torch.clamp((q[1] - q[0]) / features.IQR_TO_STD, min=normalizer.floor)
        return center.to(encoder.dtype), scale.to(encoder.dtype)

    def dataloader(self, train: bool, batch_size: int, num_workers: int = 0, seed: int | None = None) -> DataLoader:
        """Batches of ``batch_size`` windows (shuffled, last partial batch dropped when ``train``, as
        ``TimeSeriesDataSet.to_dataloader``); each batch is built by one ``__getitems__`` call.

        ``seed`` (not ``train``): the windows in one fixed random order, the same at every pass (so a
        validation limited to a few batches samples every series, not the first ones)."""
        sampler: Any
        if train:
            sampler = RandomSampler(self)
        elif seed is not None:
            sampler = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)).tolist()
        else:
            sampler = SequentialSampler(self)
        batches = BatchSampler(sampler, batch_size=batch_size, drop_last=train and len(self) > batch_size)
        return DataLoader(self, batch_sampler=batches, collate_fn=_collated, num_workers=num_workers)

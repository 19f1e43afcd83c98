"""An inference-only forward pass for pytorch-forecasting's Temporal Fusion Transformer.

``TemporalFusionTransformer.forward`` returns the prediction together with what interprets it
(attention weights per head, variable-selection weights). To get them it runs every input
variable's gated residual network (GRN) one after the other, stacks their outputs, and keeps each
attention head's full weight matrix: at 1,000 servers x 384 positions that is most of the CPU time
of a forecast. Serving needs the prediction only. :class:`FusedTFT` computes the same prediction
from the same trained weights, with less work:

- **Variable selection** (:class:`FusedVariableSelection`): each real input enters its GRN through
  a ``Linear(1, k)`` prescaler, so everything up to the first non-linearity is affine in one
  scalar. The prescaler, the first layer and the interpolating residual are folded into per-variable
  vectors; the remaining per-variable layers run as one batched matmul over all variables, with
  weights stacked ``[n_variables, in, out]``. The selection weights' GRN reads the concatenated
  embeddings through linear maps only, so those fold the same way (no concatenation, no
  interpolation at run time). The static context is projected once per series, not per time step.
- **Attention** (:class:`FusedAttention`): all heads in one
  ``torch.nn.functional.scaled_dot_product_attention`` call; the per-head weights are never stored.

Every other block (embeddings, static encoders, LSTMs, gates, output layers, the target
de-normalisation) is the library's own module, called as the library calls it. The result equals
``model(x)["prediction"]`` to float32 rounding: ``tests/model/test_fused.py`` checks it on the trained
test model, on randomised networks of three sizes and on real CloudWatch traces, with padded batches.
A batch of 32 servers takes about half the library's time (docs/performance.md, "Serving").
Building :class:`FusedTFT` raises :class:`Unsupported`, saying what is missing, for a model whose
structure this module does not implement; callers then use the library's forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pytorch_forecasting import TemporalFusionTransformer
from pytorch_forecasting.models.temporal_fusion_transformer.sub_modules import (
    GatedResidualNetwork,
    InterpretableMultiHeadAttention,
    ResampleNorm,
    VariableSelectionNetwork,
)
from torch import nn

__all__ = ["FusedAttention", "FusedTFT", "FusedVariableSelection", "Unsupported"]


class Unsupported(ValueError):
    """The model has a structure the fused forward does not implement."""


# --- helpers -----------------------------------------------------------------------------------------
def _gate(module: nn.Module) -> torch.Tensor | None:
    """The ``x * sigmoid(mask) * 2`` scale of a trainable-add norm, or None."""
    return torch.sigmoid(module.mask) * 2.0 if getattr(module, "trainable_add", False) else None


def _resample_matrix(norm: ResampleNorm) -> torch.Tensor:
    """``ResampleNorm`` before its LayerNorm is linear: the matrix ``[in, out]`` it multiplies by."""
    eye = torch.eye(norm.input_size)
    matrix = norm.resample(eye) if norm.input_size != norm.output_size else eye
    gate = _gate(norm)
    return matrix * gate if gate is not None else matrix


def _check_grn(grn: GatedResidualNetwork, where: str) -> None:
    if grn.residual:
        raise Unsupported(f"{where}: GRN with residual=True")
    add_norm = grn.gate_norm.add_norm
    if add_norm.input_size != add_norm.skip_size or add_norm.trainable_add:
        raise Unsupported(f"{where}: GRN whose skip connection is resampled or gated")


# --- variable selection ------------------------------------------------------------------------------
class FusedVariableSelection(nn.Module):
    """``VariableSelectionNetwork.forward`` for time-varying inputs, outputs only (no weights).

    Inputs are the scalar real variables ``reals`` ``[batch, time, n_reals]`` (in the network's
    order of real variables, see :attr:`real_names`), the embedded categoricals by name
    (``[batch, time, size]``) and the static context ``[batch, context]`` (one per series).
    """

    def __init__(self, vsn: VariableSelectionNetwork) -> None:
        super().__init__()
        if vsn.num_inputs < 2 or not hasattr(vsn, "flattened_grn"):
            raise Unsupported("variable selection over fewer than two inputs")
        names = list(vsn.input_sizes)
        self.real_names = [n for n in names if n in vsn.prescalers]
        self.other_names = [n for n in names if n not in vsn.prescalers]
        if not self.real_names:
            raise Unsupported("variable selection without real inputs")
        self.real_index = [names.index(n) for n in self.real_names]
        self.other_index = [names.index(n) for n in self.other_names]
        self.others = nn.ModuleList([vsn.single_variable_grns[n] for n in self.other_names])
        with torch.no_grad():
            self._fold_single(vsn)
            self._fold_weights(vsn, names)

    # per-variable GRNs of the real inputs
    def _fold_single(self, vsn: VariableSelectionNetwork) -> None:
        a1, b1, w2, b2, wg, bg, ar, br, g1, be1, g2, be2 = ([] for _ in range(12))
        eps: set[float] = set()
        for name in self.real_names:
            pre, grn = vsn.prescalers[name], vsn.single_variable_grns[name]
            if not isinstance(grn, GatedResidualNetwork) or grn.context_size is not None:
                raise Unsupported(f"real input {name!r} without a plain GRN")
            if not hasattr(grn, "resample_norm"):
                raise Unsupported(f"real input {name!r} embedded at the hidden size (no resampled residual)")
            _check_grn(grn, name)
            wp, bp = pre.weight[:, 0], pre.bias  # e = x * wp + bp, shape [k]
            a1.append(grn.fc1.weight @ wp)
            b1.append(grn.fc1.weight @ bp + grn.fc1.bias)
            w2.append(grn.fc2.weight.T)
            b2.append(grn.fc2.bias)
            wg.append(grn.gate_norm.glu.fc.weight.T)
            bg.append(grn.gate_norm.glu.fc.bias)
            matrix = _resample_matrix(grn.resample_norm)  # residual before its norm: e @ matrix
            ar.append(wp @ matrix)
            br.append(bp @ matrix)
            norm1, norm2 = grn.resample_norm.norm, grn.gate_norm.add_norm.norm
            g1.append(norm1.weight)
            be1.append(norm1.bias)
            g2.append(norm2.weight)
            be2.append(norm2.bias)
            eps.update((norm1.eps, norm2.eps))
        if len({t.shape for t in w2}) != 1 or len({t.shape for t in wg}) != 1:
            raise Unsupported("real inputs with different embedding sizes")
        if len(eps) != 1:
            raise Unsupported("layer norms with different eps")
        self.eps = eps.pop()

        def rows(ts: list[torch.Tensor]) -> torch.Tensor:  # [R, 1, d]: broadcast over positions
            return torch.stack(ts)[:, None, :].contiguous()

        self.a1, self.b1, self.b2, self.bg = rows(a1), rows(b1), rows(b2), rows(bg)
        self.w2, self.wg = torch.stack(w2).contiguous(), torch.stack(wg).contiguous()  # [R, in, out]
        # residual = LayerNorm(x * ar + br) * g1 + be1 for a scalar x: centred, it is x * ac + bc, whose
        # variance is the quadratic x^2 * qa + x * qb + qc, so no pass over [R, N, H] computes statistics
        ar_, br_ = rows(ar), rows(br)
        ac, bc = ar_ - ar_.mean(-1, keepdim=True), br_ - br_.mean(-1, keepdim=True)
        self.qa, self.qb, self.qc = ((ac * ac).mean(-1, keepdim=True), 2 * (ac * bc).mean(-1, keepdim=True),
                                     (bc * bc).mean(-1, keepdim=True) + self.eps)
        self.ag, self.bg1, self.be1 = ac * rows(g1), bc * rows(g1), rows(be1)
        self.g2, self.be2 = rows(g2), torch.stack(be2)  # [R, 1, H], [R, H]

    # the GRN that turns all embeddings (and the static context) into selection weights
    def _fold_weights(self, vsn: VariableSelectionNetwork, names: list[str]) -> None:
        grn = vsn.flattened_grn
        _check_grn(grn, "selection weights")
        sizes = [vsn.input_sizes[n] for n in names]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        total = sum(sizes)
        # flat = xr @ p + p0 + sum_o emb_o @ e_o, so a linear map L on flat folds into (p @ L, p0 @ L, e_o @ L)
        p = torch.zeros(len(self.real_names), total)
        p0 = torch.zeros(total)
        for r, name in enumerate(self.real_names):
            i = names.index(name)
            pre = vsn.prescalers[name]
            p[r, starts[i]:starts[i] + sizes[i]] = pre.weight[:, 0]
            p0[starts[i]:starts[i] + sizes[i]] = pre.bias
        blocks = {n: (starts[names.index(n)], vsn.input_sizes[n]) for n in self.other_names}

        def fold(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
            return p @ matrix, p0 @ matrix, [matrix[s:s + k] for s, k in blocks.values()]

        if not hasattr(grn, "resample_norm"):
            raise Unsupported("selection weights without a resampled residual")
        # CPU-only inference module: the folded tensors are plain attributes
        self.fa1, fb1, self.fo1 = fold(grn.fc1.weight.T)  # first layer: [total, hidden]
        self.fb1 = fb1 + grn.fc1.bias
        self.fr, self.fr0, self.fro = fold(_resample_matrix(grn.resample_norm))  # residual: [total, V]
        self.context = grn.context if grn.context_size is not None else None
        self.fc2, self.glu, self.res_norm = grn.fc2, grn.gate_norm.glu.fc, grn.resample_norm.norm
        self.out_norm = grn.gate_norm.add_norm.norm

    def selection_weights(self, reals: torch.Tensor, others: list[torch.Tensor], context: torch.Tensor) -> torch.Tensor:
        """Softmax weights ``[batch, time, n_inputs]`` in the network's input order."""
        h = torch.addmm(self.fb1, reals.flatten(0, 1), self.fa1).view(*reals.shape[:2], -1)
        res = torch.addmm(self.fr0, reals.flatten(0, 1), self.fr).view(*reals.shape[:2], -1)
        for emb, w, r in zip(others, self.fo1, self.fro, strict=True):
            h = h + emb @ w
            res = res + emb @ r
        if self.context is not None:
            h = h + self.context(context)[:, None, :]
        h = self.glu(self.fc2(F.elu(h)))
        return torch.softmax(self.out_norm(F.glu(h, dim=-1) + self.res_norm(res)), dim=-1)

    def forward(self, reals: torch.Tensor, others: dict[str, torch.Tensor], context: torch.Tensor) -> torch.Tensor:
        batch, steps, n_reals = reals.shape
        other_list = [others[n] for n in self.other_names]
        weights = self.selection_weights(reals, other_list, context)  # [B, T, V]
        x = reals.reshape(batch * steps, n_reals).T.unsqueeze(-1).contiguous()  # [R, N, 1]
        h = F.elu(torch.addcmul(self.b1, x, self.a1))
        h = torch.baddbmm(self.b2, h, self.w2)
        u = F.glu(torch.baddbmm(self.bg, h, self.wg), dim=-1)  # [R, N, H]
        # + residual (closed-form LayerNorm, see _fold_single)
        inv = torch.rsqrt(torch.addcmul(torch.addcmul(self.qc, x, self.qb), x * x, self.qa))  # [R, N, 1]
        u.add_(torch.addcmul(self.be1, inv, self.bg1)).add_(self.ag * (x * inv))
        # LayerNorm(u) * g2 + be2, weighted by the selection weights and summed over the variables
        w = weights.reshape(batch * steps, -1)
        w_real = w[:, self.real_index]  # [N, R]
        u.sub_(u.mean(-1, keepdim=True))
        scale = torch.rsqrt((u * u).mean(-1, keepdim=True).add_(self.eps)).mul_(w_real.T.unsqueeze(-1))
        total = u.mul_(scale).mul_(self.g2).sum(0).addmm_(w_real, self.be2)  # [N, H]
        for i, emb, module in zip(self.other_index, other_list, self.others, strict=True):
            total = total + module(emb).reshape(batch * steps, -1) * w[:, i:i + 1]
        return total.view(batch, steps, -1)


# --- attention ---------------------------------------------------------------------------------------
class FusedAttention(nn.Module):
    """``InterpretableMultiHeadAttention`` in one SDPA call; returns the output only."""

    def __init__(self, attn: InterpretableMultiHeadAttention) -> None:
        super().__init__()
        if attn.attention.scale is not True:
            raise Unsupported("unscaled attention")
        self.n_head, self.d_k = attn.n_head, attn.d_k
        with torch.no_grad():  # the heads' query and key layers side by side: one matmul each
            self.wq = torch.cat([m.weight for m in attn.q_layers])
            self.bq = torch.cat([m.bias for m in attn.q_layers])
            self.wk = torch.cat([m.weight for m in attn.k_layers])
            self.bk = torch.cat([m.bias for m in attn.k_layers])
        self.v_layer, self.w_h = attn.v_layer, attn.w_h

    def forward(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``q`` [B, Lq, d], ``kv`` [B, L, d], ``mask`` [B, Lq, L] True where attending is forbidden."""
        b, lq, _ = q.shape
        length = kv.shape[1]
        qs = F.linear(q, self.wq, self.bq).view(b, lq, self.n_head, self.d_k).transpose(1, 2)
        ks = F.linear(kv, self.wk, self.bk).view(b, length, self.n_head, self.d_k).transpose(1, 2)
        vs = self.v_layer(kv).unsqueeze(1).expand(b, self.n_head, length, -1)
        heads = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=~mask.unsqueeze(1),
                                               scale=1.0 / math.sqrt(self.d_k))
        return self.w_h(heads.mean(dim=1))


# --- the whole network -------------------------------------------------------------------------------
class FusedTFT(nn.Module):
    """``model(x)["prediction"]`` without the interpretation outputs, for a trained model on CPU.

    The folded tensors are computed from ``model``'s weights when this is built: build it again after
    changing them. Library modules it calls are ``model``'s own (shared, not copied).
    """

    def __init__(self, model: TemporalFusionTransformer) -> None:
        super().__init__()
        if not isinstance(model, TemporalFusionTransformer):
            raise Unsupported(f"not a TemporalFusionTransformer: {type(model).__name__}")
        self.model = model
        self.encoder_vsn = FusedVariableSelection(model.encoder_variable_selection)
        self.decoder_vsn = FusedVariableSelection(model.decoder_variable_selection)
        self.attention = FusedAttention(model.multihead_attn)
        x_reals = list(model.hparams.x_reals)
        for vsn in (self.encoder_vsn, self.decoder_vsn):
            missing = [n for n in vsn.real_names if n not in x_reals]
            if missing:
                raise Unsupported(f"real inputs outside x_reals: {missing}")
        self.encoder_cols = torch.tensor([x_reals.index(n) for n in self.encoder_vsn.real_names])
        self.decoder_cols = torch.tensor([x_reals.index(n) for n in self.decoder_vsn.real_names])
        self.eval()

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        m = self.model
        encoder_lengths, decoder_lengths = x["encoder_lengths"], x["decoder_lengths"]
        x_cat = torch.cat([x["encoder_cat"], x["decoder_cat"]], dim=1)
        x_cont = torch.cat([x["encoder_cont"], x["decoder_cont"]], dim=1)
        timesteps = x_cont.size(1)
        enc = int(encoder_lengths.max())
        embedded = m.input_embeddings(x_cat)

        # static variables (a [B, d] problem: the library's modules)
        if len(m.static_variables) > 0:
            vectors = dict(embedded)
            vectors.update({name: x_cont[..., idx].unsqueeze(-1) for idx, name in enumerate(m.hparams.x_reals)
                            if name in m.static_variables})
            static_embedding, _ = m.static_variable_selection({n: vectors[n][:, 0] for n in m.static_variables})
        else:
            static_embedding = torch.zeros((x_cont.size(0), m.hparams.hidden_size), dtype=x_cont.dtype)
        selection_context = m.static_context_variable_selection(static_embedding)  # [B, H], same at every step

        encoder_in = self.encoder_vsn(x_cont[:, :enc].index_select(-1, self.encoder_cols),
                                      {n: embedded[n][:, :enc] for n in self.encoder_vsn.other_names},
                                      selection_context)
        decoder_in = self.decoder_vsn(x_cont[:, enc:].index_select(-1, self.decoder_cols),
                                      {n: embedded[n][:, enc:] for n in self.decoder_vsn.other_names},
                                      selection_context)

        # LSTM encoder/decoder, gates and static enrichment: as the library runs them
        input_hidden = m.static_context_initial_hidden_lstm(static_embedding).expand(m.hparams.lstm_layers, -1, -1)
        input_cell = m.static_context_initial_cell_lstm(static_embedding).expand(m.hparams.lstm_layers, -1, -1)
        encoder_output, (hidden, cell) = m.lstm_encoder(encoder_in, (input_hidden, input_cell),
                                                        lengths=encoder_lengths, enforce_sorted=False)
        decoder_output, _ = m.lstm_decoder(decoder_in, (hidden, cell), lengths=decoder_lengths, enforce_sorted=False)
        lstm_encoder = m.post_lstm_add_norm_encoder(m.post_lstm_gate_encoder(encoder_output), encoder_in)
        lstm_decoder = m.post_lstm_add_norm_decoder(m.post_lstm_gate_decoder(decoder_output), decoder_in)
        lstm_output = torch.cat([lstm_encoder, lstm_decoder], dim=1)
        enrichment = m.static_context_enrichment(static_embedding)
        attn_input = m.static_enrichment(lstm_output, m.expand_static_context(enrichment, timesteps))

        # attention: queries for the predicted steps only, as in the library
        mask = m.get_attention_mask(encoder_lengths=encoder_lengths, decoder_lengths=decoder_lengths)
        attn_output = self.attention(attn_input[:, enc:], attn_input, mask)
        attn_output = m.post_attn_gate_norm(attn_output, attn_input[:, enc:])
        output = m.pre_output_gate_norm(m.pos_wise_ff(attn_output), lstm_output[:, enc:])
        output = [layer(output) for layer in m.output_layer] if m.n_targets > 1 else m.output_layer(output)
        return m.transform_output(output, target_scale=x["target_scale"])


# --- cost ---------------------------------------------------------------------------------------------
def forward_flops(network: FusedTFT, x: dict[str, torch.Tensor]) -> dict[str, float]:
    """Floating-point operations of one ``network(x)`` call, per series of the batch, by kind.

    ``matmul``: every matrix product, as :class:`torch.utils.flop_counter.FlopCounterMode` counts them
    (2 per multiply-add). It has no formula for the CPU LSTM kernel nor the CPU attention kernel, so
    those are counted here the same way: ``lstm``, per layer and step ``2 * 4h * (in + h)`` (the four
    gates' products); ``attention``, per head ``2 * Lq * L * d_k`` for the scores plus as much for the
    weighted values. Element-wise work (activations, norms, softmax) is left out: it is memory-bound,
    not what a matmul rate limits.
    """
    from torch.utils.flop_counter import FlopCounterMode

    m = network.model
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:  # the counter's module tracker needs autograd's mode, not inference_mode
        network(x)
    batch = int(x["encoder_lengths"].shape[0])
    counted = {str(k): float(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    matmul = sum(v for k, v in counted.items() if "scaled_dot_product" not in k)
    encoder_steps = float(x["encoder_lengths"].float().sum())
    decoder_steps = float(x["decoder_lengths"].float().sum())
    lstm = 0.0
    for module, steps in ((m.lstm_encoder, encoder_steps), (m.lstm_decoder, decoder_steps)):
        h = module.hidden_size
        for layer in range(module.num_layers):
            width = module.input_size if layer == 0 else h
            lstm += steps * 2 * 4 * h * (width + h)
    lq = int(x["decoder_lengths"].max())
    length = int(x["encoder_lengths"].max()) + lq
    attention = batch * network.attention.n_head * 2 * 2 * lq * length * network.attention.d_k
    return {"matmul": matmul / batch, "lstm": lstm / batch, "attention": attention / batch,
            "total": (matmul + lstm + attention) / batch}


def matmul_rate(threads: int, size: int = 1024, seconds: float = 1.0) -> float:
    """The machine's measured fp32 matrix-multiply rate in FLOP/s: square ``size`` products on ``threads``
    intra-op threads, best of repeated runs over about ``seconds`` (torch's threads restored afterwards)."""
    import time

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        out = torch.empty(size, size)
        torch.mm(a, b, out=out)  # warm-up
        best = math.inf
        deadline = time.perf_counter() + seconds
        while True:
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            best = min(best, time.perf_counter() - t0)
            if time.perf_counter() > deadline:
                break
        return 2.0 * size**3 / best
    finally:
        torch.set_num_threads(previous)

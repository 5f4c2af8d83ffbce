"""Running gradient totals of a reversible backward: each parameter's (and each whole-sequence
input's) gradient is one buffer that every chunk adds into in place (products by addmm_, which
accumulates into the total), so no full-size term per chunk ever lives beside it."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from nmt.reversible.deferred import DeferredWeightGrads
from nmt.reversible.gated import float32_math


def grads_of(outputs, out_grads, wrt, skip=frozenset()):
    """torch.autograd.grad over the outputs that carry a graph; None for unreachable inputs and
    for those whose id is in `skip` (autograd then does not compute their branch)."""
    pairs = [(o, g) for o, g in zip(outputs, out_grads) if o.requires_grad]
    needs = [i for i, tensor in enumerate(wrt) if tensor.requires_grad and id(tensor) not in skip]
    result: List[Optional[Tensor]] = [None] * len(wrt)
    if not pairs or not needs:
        return result
    found = torch.autograd.grad([o for o, _ in pairs], [wrt[i] for i in needs],
                                [g for _, g in pairs], allow_unused=True)
    for i, g in zip(needs, found):
        result[i] = g
    return result


def accumulate(totals: List[Optional[Tensor]], new: Sequence[Optional[Tensor]],
                foreign: Sequence[Optional[Tensor]] = ()) -> None:
    """totals[i] += new[i], in place into one buffer per slot. The first gradient of a slot
    becomes that buffer when nothing else can see its storage (autograd.grad's fresh results);
    one that may alias (another slot's gradient, a gradient fed in: `foreign`, or a view of a
    larger storage) is copied, as a later add_ must not write into anything else."""
    seen: dict = {}
    for g in list(new) + list(foreign):
        if g is not None:
            key = g.untyped_storage().data_ptr()
            seen[key] = seen.get(key, 0) + 1
    for i, g in enumerate(new):
        if g is not None:
            if totals[i] is None:
                totals[i] = g if _owned(g, seen) else g.clone()
            else:
                totals[i].add_(g)


def _owned(g: Tensor, seen: dict) -> bool:
    """Whether `g` alone covers its whole storage, and nothing else counted in `seen` shares it."""
    return (seen.get(g.untyped_storage().data_ptr(), 0) == 1 and g.is_contiguous()
            and g.storage_offset() == 0
            and g.numel() * g.element_size() == g.untyped_storage().nbytes())


def _add_rows(total: Tensor, grad: Tensor, x: Tensor) -> None:
    """total += grad.t() @ x as one accumulating product (addmm_, BLAS's beta = 1): no
    product-size term beside the running total, and one op instead of a product and a sum."""
    total.addmm_(grad.t(), x)


def _running_total(param_grads: List[Optional[Tensor]], i: int, weight: Tensor) -> Tensor:
    if param_grads[i] is None:
        param_grads[i] = torch.zeros_like(weight)
    return param_grads[i]


def projection_weights(rnn, chunk) -> List[int]:
    """ids of the first layer's input Linears' weights whose x columns `add_projection_grads`
    computes by hand (all of them, when the chunk carries its inputs and they need grad)."""
    if chunk.inputs is None:
        return []
    return [id(layer.weight) for layer in rnn.cells[0].input_layers() if layer.weight.requires_grad]


class BiasTotal:
    """The running total of the first layer's input biases' gradients, kept stacked (P,) as
    d projected sums them over rows: one addition per chunk, not one per Linear; `into` adds
    each bias's slice into its gradient at the end of the run."""

    def __init__(self):
        self.total: Optional[Tensor] = None

    def add(self, d_flat: Tensor) -> None:
        with torch.no_grad():
            sums = d_flat.sum(0, keepdim=True).view(-1)  # as autograd's sum_to of addmm's
        self.total = sums if self.total is None else self.total.add_(sums)

    def into(self, rnn, param_grads: List[Optional[Tensor]], params: List[Tensor]) -> None:
        if self.total is None:
            return
        layers = rnn.cells[0].input_layers()
        index = {id(param): i for i, param in enumerate(params)}
        pieces = self.total.split([layer.out_features for layer in layers])
        for layer, piece in zip(layers, pieces):
            i = index.get(id(layer.bias))
            if i is not None and layer.bias.requires_grad:
                param_grads[i] = piece if param_grads[i] is None else param_grads[i].add_(piece)


def projection_grads(rnn, chunk, d_projected: Tensor, wrt: List[Tensor], biases: BiasTotal, *,
                     stacked: Optional[Tuple[Tensor, Tensor]] = None):
    """What autograd returns over the chunk's first-layer projection `project_input(x)` =
    x @ cat(W[:, :input]).t() + cat(b), given d_projected (batch, C, P), for `wrt` (the chunk's
    x_leaf first if it has one, then parameters), besides the weights (`add_projection_grads`)
    and biases (added into `biases`: their slices of d_projected summed over rows): d x =
    d_projected @ cat(W[:, :input]) (then by autograd through x's own graph to x_leaf),
    autograd's products and sums, done by hand so that no graph holds the stacked weight
    through the chunk's steps. None where the projection is not that (no inputs, inputs not
    float32, a Linear without bias). stacked: the cell's `stacked_input()`, if made already."""
    cell, x = rnn.cells[0], chunk.inputs
    layers = cell.input_layers()
    if x is None or x.dtype != torch.float32 or any(layer.bias is None for layer in layers):
        return None
    result: List[Optional[Tensor]] = [None] * len(wrt)
    d_flat = d_projected.reshape(-1, d_projected.shape[-1])
    if chunk.x_leaf is not None and chunk.x_leaf.requires_grad:
        with torch.no_grad(), float32_math(x.device):
            weight = cell.input_weight() if stacked is None else stacked[0]
            d_x = d_flat.mm(weight).view(x.shape)
            del weight
        result[0] = d_x if x is chunk.x_leaf else grads_of([x], [d_x], [chunk.x_leaf])[0]
    wanted = {id(tensor) for tensor in wrt}
    if any(id(layer.bias) in wanted and layer.bias.requires_grad for layer in layers):
        biases.add(d_flat)
    return result


def add_projection_grads(rnn, chunk, d_projected: Tensor, param_grads: List[Optional[Tensor]],
                          params: List[Tensor]) -> None:
    """Add the gradient of the x columns of the first layer's input Linears (the chunk's
    `project_input`: x @ cat(W[:, :input]).t()) into their running totals, per Linear:
    autograd's product for that weight, d.t() @ x, accumulated into its total; one product for
    all of them where their totals are row blocks of one buffer (`_stacked_total`)."""
    cell = rnn.cells[0]
    index = {id(param): i for i, param in enumerate(params)}
    with float32_math(d_projected.device):
        flat = chunk.inputs.detach().float().reshape(-1, cell.input_size)
        d_flat = d_projected.reshape(-1, d_projected.shape[-1])
        stacked = _stacked_total(param_grads, index, cell.input_layers())
        if stacked is not None:
            _add_rows(stacked[:, : cell.input_size], d_flat, flat)
            return
        first = 0
        for layer in cell.input_layers():
            width = layer.out_features
            if layer.weight.requires_grad and id(layer.weight) in index:
                total = _running_total(param_grads, index[id(layer.weight)], layer.weight)
                _add_rows(total[:, : cell.input_size], d_flat[:, first: first + width], flat)
            first += width


def _stacked_total(param_grads: List[Optional[Tensor]], index: dict, layers) -> Optional[Tensor]:
    """One (P, width) buffer whose row blocks, in `layers` order, are the layers' weight-gradient
    totals (made on first use, when they all need one and are as wide), or None."""
    if any(not layer.weight.requires_grad or id(layer.weight) not in index for layer in layers):
        return None
    slots = [index[id(layer.weight)] for layer in layers]
    totals = [param_grads[i] for i in slots]
    if all(total is None for total in totals):
        if len({layer.weight.shape[1] for layer in layers}) != 1:
            return None
        stacked = layers[0].weight.new_zeros(sum(layer.out_features for layer in layers),
                                             layers[0].weight.shape[1])
        for i, piece in zip(slots, stacked.split([layer.out_features for layer in layers])):
            param_grads[i] = piece
        return stacked
    base = totals[0]._base if totals[0] is not None else None
    if base is None or any(total is None or total._base is not base for total in totals):
        return None
    return base


def add_weight_grads(param_grads: List[Optional[Tensor]], params: List[Tensor],
                      weight_grads: DeferredWeightGrads, bias_grads: list,
                      d_projected: Optional[Tensor] = None) -> None:
    """Add the chunk's recorded weight gradients into the columns they belong to (accumulated:
    no full-size product beside the running total), and the per-step bias gradients.
    d_projected: the chunk's first-layer d projected (batch, C, P), for `record_sliced`."""
    index = {id(param): i for i, param in enumerate(params)}
    for layer, first, inputs, grad in weight_grads.pairs(d_projected):
        total = _running_total(param_grads, index[id(layer.weight)], layer.weight)
        _add_rows(total[:, first:], grad, inputs)
    for bias, grad in bias_grads:
        i = index[id(bias)]
        if param_grads[i] is None:
            param_grads[i] = torch.zeros_like(bias)
        param_grads[i] += grad



def table_weight_index(embedding, params: List[Tensor]) -> Optional[int]:
    """The index in `params` of a plain `nn.Embedding`'s table whose gradient
    `add_embedding_grads` can add chunk by chunk (dense, no max_norm, no frequency scaling,
    trainable), or None: the caller then backpropagates through the module by autograd."""
    weight = getattr(embedding, "weight", None)
    if (type(embedding) is not torch.nn.Embedding or embedding.sparse
            or embedding.max_norm is not None or embedding.scale_grad_by_freq
            or weight is None or not weight.requires_grad):
        return None
    return next((i for i, param in enumerate(params) if param is weight), None)


def add_embedding_grads(embedding, ids: Tensor, embedded_grad: Tensor, total: Tensor) -> None:
    """Add the gradient of a plain `nn.Embedding` lookup of `ids` (batch, C) into `total`, a
    running total of its table's gradient, given d loss / d the looked-up rows `embedded_grad`
    (batch, C, dim): no lookup again, no (batch, T, dim) gradient kept for the whole run, no
    table-sized term beside the total. Only the rows the ids touch are computed: the kernel
    autograd runs (`embedding_dense_backward`) over the chunk's distinct ids (each row the same
    sum, in the same order, as in a whole-table call), then added into its row."""
    with torch.no_grad():
        rows, local = torch.unique(ids, return_inverse=True)  # local: ids' shape
        block = torch.ops.aten.embedding_dense_backward(embedded_grad, local, rows.numel(), -1,
                                                        False)
        if embedding.padding_idx is not None:  # the padding row gets nothing
            block.masked_fill_((rows == embedding.padding_idx).unsqueeze(1), 0)
        total.index_add_(0, rows, block)

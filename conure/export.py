"""Deployment without conure: a task, every task, or the streaming step as a plain-torch graph, exported to ONNX
(``torch.onnx.export``) or PyTorch 2 export (``torch.export.export`` + ``torch.export.save``).

For inference the owner maps are constants: task j reads exactly the conv weights with ``1 <= owner <= j``, so its
network is an ordinary dilated causal CNN. The modules here fold each task's owner mask into its conv weights
(``weight * (1 <= owner <= j)``, laid out for one im2col GEMM per conv) and hold nothing but standard torch ops
(embedding, layer norm, ReLU, matmul, concat, topk): no conure custom op reaches the exported graph, which
onnxruntime, ``torch.export.load`` (libtorch, Triton, TorchServe) run without conure installed.

Graphs (all float32):

* :class:`TaskGraph` (``--task N``): ``items [B, L] int64`` (left padded, 0 = padding) -> ``scores [B, N_t]``
  (ranking scores with column 0 = -inf, or class logits: exactly :meth:`conure.checkpoint.InferenceModel.scores`,
  with the head's pooling: last / mean / attention) and, with ``top_k``, ``topk_scores [B, k]``, ``topk_indices
  [B, k] int64`` (k = min(top_k, N_t - 1) for ranking heads, min(top_k, N_t) for classifiers). B and L are dynamic.
* :class:`AllTasksGraph` (``--task all``): the same input -> per learned task t, ``scores_t`` (+ ``topk_scores_t``,
  ``topk_indices_t``): what :mod:`conure.serving` computes, plus each head. The item embedding and, for pre-LN
  backbones, block 0's first LayerNorm + ReLU are computed once when the tasks share them (Conure, SinMoAll,
  FineCLS, PeterRec share the backbone's shared parameters; SinMo/FineAll keep one backbone per task).
* :class:`StreamGraph` (``--stream``): one new item per user against explicit state, like the decoding step of
  causal-conv1d. Inputs ``items [B] int64`` and one ``state_c`` per conv c (forward order: block c // 2, conv1 then
  conv2); outputs the scores at the new position (``scores`` / ``scores_t``, + top-k as above) and ``new_state_c``.

Streaming state layout: ``state_c`` is ``[T_c, B, R_c, C]`` float32 with ``R_c = (K - 1) * dilation_c`` (dilation_c
= d for conv1 of a block with dilation d, 2d for conv2): the conv's last ``R_c`` inputs, **oldest first** (a shift
register, ``new_state_c = cat(state_c, input)[:, :, 1:]``), zeros = before the sequence start, so a new user starts
from all-zero state. The conv input is relu(LN(.)) in front of it for pre-LN blocks; for post-LN blocks the block
input (conv1) and relu(LN1(conv1 output)) (conv2). ``T_c`` counts the task states the graph holds: 1 for a
single-task graph; for an all-task graph T (the tasks in ``tasks`` order), except ``T_0 = 1`` when the tasks share
block 0's first conv input (pre-LN with shared embedding and LayerNorm). ``B`` is dynamic; the state of a user may
be stored anywhere between events. :func:`state_from_streaming` converts a :class:`conure.streaming.StreamingState`
(ring buffers indexed by position) into this layout. Stepping a left-padded history one column at a time (padding
id 0 included) reproduces the full forward at every position, as :mod:`conure.streaming` does. A head with ``pool:
mean`` or ``attention`` adds one state ``pool_t`` after the conv states: ``[B, C + 1]`` (mean: the sum of the
outputs at real positions, their count) or ``[B, C + 2]`` (attention, an online softmax: the sum of
``exp(l - m) * h``, the sum of ``exp(l - m)``, the largest logit ``m`` so far); zeros = no real item yet (padding
steps leave it as it is), so the pooled vector equals :class:`conure.heads.Pool` over the history at every step.

Bad inputs (both runtimes alike unless said): an item id outside ``[0, num_items)`` is read as padding (0) (map raw ids
with the vocabulary file first, dropping unknown ones, as ``conure predict`` does); an all-padding row gets the
scores of an all-padding history (``conure predict`` reports such a user as empty: check ``(items != 0).any(1)``);
``L = 0`` is an error from the runtime (onnxruntime: ``RUNTIME_EXCEPTION`` from ArgMax; torch: ``IndexError``), not
NaN scores; ids of another dtype: onnxruntime refuses them (``INVALID_ARGUMENT``), the ``.pt2`` program reads int32
ids like int64. docs/DEPLOY.md has the table.

Vocabulary file (:func:`vocab_document`, written beside the model as ``<stem>.vocab.json``): ``items`` (raw item id
-> input index), ``item_ids`` (index -> raw id, null at 0), ``max_len`` (``conure predict`` keeps a history's last
``max_len`` known items), and per task its output names and the raw id (``targets``) or class name (``classes``) of
every output column.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "FORMATS",
    "TaskGraph",
    "AllTasksGraph",
    "StreamGraph",
    "task_graph",
    "all_tasks_graph",
    "stream_graph",
    "initial_state",
    "state_from_streaming",
    "export_onnx",
    "export_pt2",
    "vocab_document",
    "export_models",
    "export_run",
    "vocab_path",
    "cli_export",
    "ExportError",
]

FORMATS = ("safetensors", "onnx", "pt2")
PathLike = Union[str, os.PathLike]


class ExportError(ValueError):
    """A model or a request the exporter cannot serve (a streaming step of a pooled head, a bad top-k...)."""


# ------------------------------------------------------------------------------------------------ layers
def _folded_cols(conv, task: int) -> torch.Tensor:
    """A masked conv's weights for ``task`` as im2col GEMM columns: ``[K * C_in, C_out]`` float32, row ``k * C_in + i``
    = ``weight[o, i, k]`` where ``1 <= owner <= task``, else 0 (the owner map folded in)."""
    w = conv.weight.detach().to(torch.float32)
    keep = (conv.owner >= 1) & (conv.owner <= task)
    w = torch.where(keep, w, torch.zeros_like(w))
    return w.permute(2, 1, 0).reshape(-1, w.shape[0]).contiguous()


class _Conv(nn.Module):
    """Causal dilated conv as one GEMM: ``a [B, L, C_in] -> [B, L, C_out]``; the taps are shifted views of ``a``
    left-padded with ``(K - 1) * dilation`` zeros (zeros = before the sequence start, as the masked conv)."""

    def __init__(self, cols: torch.Tensor, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.register_buffer("cols", cols)
        self.kernel_size, self.dilation = int(kernel_size), int(dilation)
        self.span = (self.kernel_size - 1) * self.dilation

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        length = a.shape[1]
        if self.kernel_size == 1:
            return a @ self.cols
        ap = F.pad(a, (0, 0, self.span, 0))
        taps = [ap.narrow(1, k * self.dilation, length) for k in range(self.kernel_size)]
        return torch.cat(taps, dim=-1) @ self.cols

    def step(self, a: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One position: ``a [B, C_in]``, ``state [B, R, C_in]`` (last R inputs, oldest first) -> (out [B, C_out],
        new state)."""
        window = torch.cat([state, a.unsqueeze(1)], dim=1)  # [B, R + 1, C_in]
        col = torch.cat([window[:, k * self.dilation] for k in range(self.kernel_size)], dim=-1)
        return col @ self.cols, window[:, 1:]


class _LayerNorm(nn.Module):
    def __init__(self, ln: nn.LayerNorm) -> None:
        super().__init__()
        self.register_buffer("weight", ln.weight.detach().to(torch.float32).clone())
        self.register_buffer("bias", ln.bias.detach().to(torch.float32).clone())
        self.eps = float(ln.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


class _Patch(nn.Module):
    """PeterRec's bottleneck patch ``h + up(relu(down(h)))`` as plain buffers."""

    def __init__(self, patch) -> None:
        super().__init__()
        for name in ("down", "up"):
            lin = getattr(patch, name)
            self.register_buffer(f"{name}_w", lin.weight.detach().to(torch.float32).clone())
            self.register_buffer(f"{name}_b", lin.bias.detach().to(torch.float32).clone())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + F.linear(F.relu(F.linear(h, self.down_w, self.down_b)), self.up_w, self.up_b)


class _Block(nn.Module):
    """One residual block with its task's folded weights (pre-LN: ``x + conv2(relu(LN2(conv1(relu(LN1(x))))))``;
    post-LN: ``x + relu(LN2(conv2(relu(LN1(conv1(x))))))``), as :class:`conure.nn.ResidualBlock`."""

    def __init__(self, block, task: int, pre_ln: bool, patch=None) -> None:
        super().__init__()
        if block.conv1.bias is not None or block.conv2.bias is not None:
            raise ExportError("export: convolutions with bias are not supported")
        self.pre_ln = bool(pre_ln)
        k = block.conv1.kernel_size
        self.conv1 = _Conv(_folded_cols(block.conv1, task), k, block.conv1.dilation)
        self.conv2 = _Conv(_folded_cols(block.conv2, task), k, block.conv2.dilation)
        self.ln1, self.ln2 = _LayerNorm(block.ln1), _LayerNorm(block.ln2)
        self.patch = None if patch is None else _Patch(patch)

    def forward(self, x: torch.Tensor, a1: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x [B, L, C]``; ``a1``: relu(LN1(x)) when already computed (pre-LN, shared between tasks)."""
        if self.pre_ln:
            a1 = F.relu(self.ln1(x)) if a1 is None else a1
            h = self.conv2(F.relu(self.ln2(self.conv1(a1))))
        else:
            h = F.relu(self.ln2(self.conv2(F.relu(self.ln1(self.conv1(x))))))
        return x + (h if self.patch is None else self.patch(h))

    def step(self, x: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, a1: Optional[torch.Tensor] = None):
        """One position ``x [B, C]`` with the two convs' states -> (out [B, C], new s1, new s2)."""
        if self.pre_ln:
            a1 = F.relu(self.ln1(x)) if a1 is None else a1
            h, s1 = self.conv1.step(a1, s1)
            h, s2 = self.conv2.step(F.relu(self.ln2(h)), s2)
        else:
            h, s1 = self.conv1.step(x, s1)
            h, s2 = self.conv2.step(F.relu(self.ln1(h)), s2)
            h = F.relu(self.ln2(h))
        return x + (h if self.patch is None else self.patch(h)), s1, s2


class _Head(nn.Module):
    """A task head as plain buffers: pooling (``last`` / ``mean`` / ``attention``, as :class:`conure.heads.Pool`) and
    scores (next-item: ``W u + b``; item: ``proj(u) @ E^T``; both with column 0 = -inf; profile: ``W u + b``)."""

    def __init__(self, head, top_k: Optional[int]) -> None:
        super().__init__()
        from conure.heads import ItemHead, NextItemHead, ProfileHead

        pooling = getattr(head, "pooling", None)
        self.mode = pooling.mode if pooling is not None else "last"
        if self.mode == "attention":
            self.register_buffer("query", pooling.query.detach().to(torch.float32).clone())

        def f32(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(torch.float32).clone()

        if isinstance(head, NextItemHead):
            self.kind, n = "next_item", head.num_items
            self.register_buffer("w", f32(head.out.weight))
            self.register_buffer("b", f32(head.out.bias))
        elif isinstance(head, ItemHead):
            self.kind, n = "item", head.num_targets
            self.register_buffer("proj_w", f32(head.proj.weight))
            self.register_buffer("proj_b", f32(head.proj.bias))
            self.register_buffer("table_t", f32(head.table.weight).T.contiguous())
        elif isinstance(head, ProfileHead):
            self.kind, n = "profile", head.num_classes
            self.register_buffer("w", f32(head.out.weight))
            self.register_buffer("b", f32(head.out.bias))
        else:
            raise ExportError(f"export: unsupported head {type(head).__name__}")
        self.num_outputs = int(n)
        if self.kind != "profile":
            # column 0 is padding, never a prediction: -inf exactly as index_fill puts it (x + 0.0 == x elsewhere)
            mask = torch.zeros(n)
            mask[0] = float("-inf")
            self.register_buffer("mask", mask)
        if top_k is not None:
            top_k = int(top_k)
            if top_k < 1:
                raise ExportError(f"export: top_k must be >= 1, got {top_k}")
            top_k = min(top_k, n - (0 if self.kind == "profile" else 1))
        self.top_k = top_k

    def pool(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``hidden [B, L, C]``, ``items [B, L]`` -> ``[B, C]`` (an all-padding row reads position L - 1)."""
        length = items.shape[1]
        nonpad = items != 0
        # the last real position (L - 1 for an all-padding row: argmax of all zeros is 0); every mode takes this
        # ArgMax, so L = 0 is an error in every runtime rather than NaN scores from an empty mean
        last = (length - 1) - torch.argmax(nonpad.flip(1).to(torch.int32), dim=1)
        if self.mode == "last":
            return torch.gather(hidden, 1, last.view(-1, 1, 1).expand(-1, 1, hidden.shape[2])).squeeze(1)
        # real positions; an all-padding row reads position L - 1 (a non-empty row's last is real already)
        real = nonpad | (torch.arange(length, device=items.device).view(1, -1) == last.view(-1, 1))
        if self.mode == "mean":
            w = real.to(hidden.dtype)
            return (hidden * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True)
        logits = (hidden @ self.query).masked_fill(~real, float("-inf"))
        return (torch.softmax(logits, dim=1).unsqueeze(-1) * hidden).sum(1)

    def pool_step(self, h: torch.Tensor, real: torch.Tensor, state: torch.Tensor):
        """The pooled user vector after one more position, from running statistics (the streaming step).

        ``h [B, C]``: the backbone output at the new position; ``real [B, 1]`` bool: its item is not padding;
        ``state``: mean ``[B, C + 1]`` = (sum of h over real positions, their count); attention ``[B, C + 2]`` =
        (sum of exp(l - m) h, sum of exp(l - m), m) over real positions, l = h . query, m = the largest l so far
        (an online softmax). All zeros: no real position yet. Returns (user [B, C], new state); while a user has no
        real position the vector is ``h``, as :class:`conure.heads.Pool` reads position L - 1 of an empty row.
        """
        c = h.shape[1]
        if self.mode == "mean":
            total, count = state[:, :c] + h, state[:, c:] + 1
            state = torch.where(real, torch.cat([total, count], dim=1), state)
            total, count = state[:, :c], state[:, c:]
            return torch.where(count > 0, total / count.clamp_min(1.0), h), state
        acc, norm, top = state[:, :c], state[:, c : c + 1], state[:, c + 1 :]
        logit = (h @ self.query).unsqueeze(1)  # [B, 1]
        seen = norm > 0
        top2 = torch.where(seen, torch.maximum(top, logit), logit)
        # the old sums rescaled to the new maximum; 0 when there are none (exp of a stale m could overflow)
        scale = torch.where(seen, torch.exp(torch.minimum(top - top2, torch.zeros_like(top))), torch.zeros_like(top))
        weight = torch.exp(logit - top2)
        state = torch.where(real, torch.cat([acc * scale + weight * h, norm * scale + weight, top2], dim=1), state)
        acc, norm = state[:, :c], state[:, c : c + 1]
        return torch.where(norm > 0, acc / torch.where(norm > 0, norm, torch.ones_like(norm)), h), state

    def scores(self, user: torch.Tensor) -> torch.Tensor:
        if self.kind == "item":
            return F.linear(user, self.proj_w, self.proj_b) @ self.table_t + self.mask
        s = F.linear(user, self.w, self.b)
        return s + self.mask if self.kind == "next_item" else s

    def outputs(self, scores: torch.Tensor) -> List[torch.Tensor]:
        if self.top_k is None:
            return [scores]
        values, indices = torch.topk(scores, self.top_k, dim=1)
        return [scores, values, indices]


def _clean_ids(items: torch.Tensor, num_items: int) -> torch.Tensor:
    # documented behaviour: an id outside the vocabulary is read as padding (ONNX Gather would wrap negative ids
    # and fail on large ones; torch's embedding would raise), the same in every runtime
    bad = (items < 0) | (items >= num_items)
    return torch.where(bad, torch.zeros_like(items), items)


class _TaskNet(nn.Module):
    """One task's backbone (folded weights) and head."""

    def __init__(self, model) -> None:
        super().__init__()
        backbone = model.backbone
        patches = model.patches
        self.task, self.name, self.kind = model.task, model.name, model.kind
        self.pre_ln = bool(backbone.pre_ln)
        self.register_buffer("embedding", backbone.embedding.weight.detach().to(torch.float32).clone())
        self.blocks = nn.ModuleList(
            _Block(b, model.forward_task, backbone.pre_ln, None if patches is None else patches[i])
            for i, b in enumerate(backbone.blocks)
        )
        self.head = _Head(model.head, None)
        self.kernel_size = int(backbone.kernel_size)

    def hidden(self, x: torch.Tensor, a1: Optional[torch.Tensor] = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, a1 if i == 0 else None)
        return x


def _check_items(items: torch.Tensor) -> None:
    # eager use of the modules; in the exported graphs the runtimes check the input dtype themselves
    if not isinstance(items, torch.Tensor) or items.dtype != torch.int64:
        raise TypeError(
            f"items must be an int64 tensor, got "
            f"{items.dtype if isinstance(items, torch.Tensor) else type(items).__name__}"
        )


class TaskGraph(nn.Module):
    """One task: ``forward(items [B, L] int64) -> (scores [B, N][, topk_scores [B, k], topk_indices [B, k]])``."""

    def __init__(self, model, top_k: Optional[int] = None) -> None:
        super().__init__()
        self.net = _TaskNet(model)
        self.net.head = _Head(model.head, top_k)
        self.num_items = int(self.net.embedding.shape[0])
        self.tasks = (model.task,)

    def output_names(self) -> List[str]:
        return ["scores"] + (["topk_scores", "topk_indices"] if self.net.head.top_k is not None else [])

    def forward(self, items: torch.Tensor):
        _check_items(items)
        items = _clean_ids(items, self.num_items)
        hidden = self.net.hidden(F.embedding(items, self.net.embedding))
        head = self.net.head
        return tuple(head.outputs(head.scores(head.pool(hidden, items))))


def _shares_front(nets: Sequence[_TaskNet]) -> Tuple[bool, bool]:
    """(every task has the same embedding, and also the same block-0 LN1 with pre-LN blocks)."""
    first = nets[0]
    emb = all(torch.equal(n.embedding, first.embedding) for n in nets)
    ln = (
        emb
        and first.pre_ln
        and all(
            torch.equal(n.blocks[0].ln1.weight, first.blocks[0].ln1.weight)
            and torch.equal(n.blocks[0].ln1.bias, first.blocks[0].ln1.bias)
            and n.blocks[0].ln1.eps == first.blocks[0].ln1.eps
            for n in nets
        )
    )
    return emb, ln


class AllTasksGraph(nn.Module):
    """Every task at once: ``forward(items [B, L]) -> (scores_t[, topk_scores_t, topk_indices_t] for t in tasks)``."""

    def __init__(self, models: Sequence[Any], top_k: Optional[int] = None) -> None:
        super().__init__()
        if not models:
            raise ExportError("export: no task to export")
        self.nets = nn.ModuleList(_TaskNet(m) for m in models)
        for net, m in zip(self.nets, models):
            net.head = _Head(m.head, top_k)
        self.tasks = tuple(m.task for m in models)
        self.share_embedding, self.share_ln = _shares_front(self.nets)
        if self.share_embedding:  # one copy of the table in the file
            for net in self.nets[1:]:
                net.embedding = self.nets[0].embedding
        self.num_items = int(self.nets[0].embedding.shape[0])

    def output_names(self) -> List[str]:
        out = []
        for t, net in zip(self.tasks, self.nets):
            out += [f"scores_{t}"] + ([f"topk_scores_{t}", f"topk_indices_{t}"] if net.head.top_k is not None else [])
        return out

    def forward(self, items: torch.Tensor):
        _check_items(items)
        items = _clean_ids(items, self.num_items)
        x0 = F.embedding(items, self.nets[0].embedding) if self.share_embedding else None
        a1 = F.relu(self.nets[0].blocks[0].ln1(x0)) if self.share_ln else None
        out: List[torch.Tensor] = []
        for net in self.nets:
            x = x0 if x0 is not None else F.embedding(items, net.embedding)
            hidden = net.hidden(x, a1)
            out += net.head.outputs(net.head.scores(net.head.pool(hidden, items)))
        return tuple(out)


class StreamGraph(nn.Module):
    """The streaming step: ``forward(items [B] int64, state_0, ..., state_{2n-1}[, pool_t ...])`` -> (per task:
    scores[, top-k]; then new_state_0, ..., new_state_{2n-1}[, new_pool_t ...]); layout in the module docstring."""

    def __init__(self, models: Sequence[Any], top_k: Optional[int] = None, single: bool = True) -> None:
        super().__init__()
        if not models:
            raise ExportError("export: no task to export")
        self.nets = nn.ModuleList(_TaskNet(m) for m in models)
        for net, m in zip(self.nets, models):
            if net.kernel_size < 2:
                raise ExportError("export: the streaming step needs kernel_size >= 2 (a kernel of 1 keeps no state)")
            net.head = _Head(m.head, top_k)
        self.single = bool(single) and len(models) == 1
        self.tasks = tuple(m.task for m in models)
        self.share_embedding, self.share_ln = _shares_front(self.nets)
        if self.share_embedding:
            for net in self.nets[1:]:
                net.embedding = self.nets[0].embedding
        self.num_items = int(self.nets[0].embedding.shape[0])
        self.channels = int(self.nets[0].embedding.shape[1])
        self.num_convs = 2 * len(self.nets[0].blocks)
        # tasks whose head pools over positions carry running pooling statistics as extra state
        self.pooled = [i for i, net in enumerate(self.nets) if net.head.mode != "last"]

    def state_shapes(self, batch_size: int) -> List[Tuple[int, ...]]:
        """Every state tensor's shape, in input order: ``[T_c, B, R_c, C]`` per conv (forward order), then
        ``[B, C + 1]`` (mean) or ``[B, C + 2]`` (attention) per pooled task."""
        net = self.nets[0]
        shapes: List[Tuple[int, ...]] = []
        for c in range(self.num_convs):
            conv = net.blocks[c // 2].conv1 if c % 2 == 0 else net.blocks[c // 2].conv2
            rows = 1 if (c == 0 and self.share_ln) else len(self.nets)
            shapes.append((rows, batch_size, conv.span, self.channels))
        for i in self.pooled:
            shapes.append((batch_size, self.channels + (1 if self.nets[i].head.mode == "mean" else 2)))
        return shapes

    def state_names(self) -> List[str]:
        return [f"state_{c}" for c in range(self.num_convs)] + [f"pool_{self.tasks[i]}" for i in self.pooled]

    def output_names(self) -> List[str]:
        out = []
        for t, net in zip(self.tasks, self.nets):
            sfx = "" if self.single else f"_{t}"
            out += [f"scores{sfx}"] + (
                [f"topk_scores{sfx}", f"topk_indices{sfx}"] if net.head.top_k is not None else []
            )
        return out + ["new_" + n for n in self.state_names()]

    def input_names(self) -> List[str]:
        return ["items"] + self.state_names()

    def forward(self, items: torch.Tensor, *states: torch.Tensor):
        _check_items(items)
        items = _clean_ids(items, self.num_items)
        real = (items != 0).unsqueeze(1)  # [B, 1]
        x0 = F.embedding(items, self.nets[0].embedding) if self.share_embedding else None
        a1 = F.relu(self.nets[0].blocks[0].ln1(x0)) if self.share_ln else None
        scores: List[torch.Tensor] = []
        new = [[None] * len(self.nets) for _ in range(self.num_convs)]
        new_pool: List[torch.Tensor] = []
        for t, net in enumerate(self.nets):
            x = x0 if x0 is not None else F.embedding(items, net.embedding)
            for b, block in enumerate(net.blocks):
                c = 2 * b
                s1 = states[c][0 if (c == 0 and self.share_ln) else t]
                x, n1, n2 = block.step(x, s1, states[c + 1][t], a1 if b == 0 else None)
                new[c][t], new[c + 1][t] = n1, n2
            if net.head.mode != "last":
                x, pool = net.head.pool_step(x, real, states[self.num_convs + self.pooled.index(t)])
                new_pool.append(pool)
            scores += net.head.outputs(net.head.scores(x))
        out_states = []
        for c in range(self.num_convs):
            parts = new[c][:1] if (c == 0 and self.share_ln) else new[c]
            out_states.append(torch.stack(parts, dim=0))
        return tuple(scores + out_states + new_pool)


def initial_state(graph: StreamGraph, batch_size: int) -> List[torch.Tensor]:
    """All-zero state (users before their first item) for ``batch_size`` users."""
    return [torch.zeros(s) for s in graph.state_shapes(batch_size)]


def state_from_streaming(state) -> List[torch.Tensor]:
    """A :class:`conure.streaming.StreamingState`'s ring buffers (slot ``position % R``) in the exported layout
    (oldest first): one ``[T_c, B, R_c, C]`` tensor per conv. The state must hold the tasks in the graph's order.
    :mod:`conure.streaming` keeps no pooling statistics: this serves graphs whose heads all pool ``last``."""
    out = []
    for ring in state.rings:
        r = ring.shape[2]
        # the oldest of the last r inputs is position pos - r, at slot (pos - r) % r = pos % r
        idx = (state.pos.view(-1, 1) + torch.arange(r, device=ring.device).view(1, -1)) % max(r, 1)
        idx = idx.view(1, ring.shape[1], r, 1).expand(ring.shape[0], -1, -1, ring.shape[3])
        out.append(torch.gather(ring, 2, idx).to(torch.float32).contiguous())
    return out


# ------------------------------------------------------------------------------------------------ builders
def task_graph(model, top_k: Optional[int] = None) -> TaskGraph:
    """:class:`TaskGraph` of an :class:`conure.checkpoint.InferenceModel`."""
    return TaskGraph(model, top_k).eval()


def all_tasks_graph(models: Sequence[Any], top_k: Optional[int] = None) -> AllTasksGraph:
    """:class:`AllTasksGraph` of several tasks' :class:`conure.checkpoint.InferenceModel`s (one per task)."""
    return AllTasksGraph(models, top_k).eval()


def stream_graph(models: Union[Any, Sequence[Any]], top_k: Optional[int] = None) -> StreamGraph:
    """:class:`StreamGraph` of one :class:`conure.checkpoint.InferenceModel` or of several."""
    single = not isinstance(models, (list, tuple))
    return StreamGraph([models] if single else list(models), top_k, single).eval()


# ------------------------------------------------------------------------------------------------ writers
def _example(graph: nn.Module) -> Tuple[tuple, Any, List[str]]:
    """Example inputs (odd sizes, so no dimension is specialised to 0/1 or to another), dynamic shapes, names."""
    batch = torch.export.Dim("batch", min=1)
    if isinstance(graph, StreamGraph):
        items = torch.arange(1, 4, dtype=torch.int64) % graph.num_items
        shapes = graph.state_shapes(3)
        states = tuple(torch.zeros(s) for s in shapes)
        # forward(items, *states): the batch is axis 1 of the conv states, axis 0 of the pooling states
        dyn = ({0: batch}, tuple({1 if len(s) == 4 else 0: batch} for s in shapes))
        return (items,) + states, dyn, graph.input_names()
    length = torch.export.Dim("length", min=1)
    items = torch.arange(3 * 7, dtype=torch.int64).view(3, 7) % graph.num_items
    return (items,), ({0: batch, 1: length},), ["items"]


def _exported(graph: nn.Module):
    args, dyn, _ = _example(graph)
    with torch.no_grad():
        return torch.export.export(graph, args, dynamic_shapes=dyn, strict=False)


def export_pt2(graph: nn.Module, path: PathLike) -> Path:
    """``torch.export.export`` the graph (dynamic batch, and length for full graphs) and ``torch.export.save`` it."""
    import io

    from conure.checkpoint import atomic_write_bytes

    buffer = io.BytesIO()
    torch.export.save(_exported(graph), buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def export_onnx(graph: nn.Module, path: PathLike, opset: int = 18) -> Path:
    """``torch.onnx.export`` the graph (the dynamo exporter; dynamic batch, and length for full graphs): a single
    self-contained ``.onnx`` file, written atomically."""
    from conure.checkpoint import atomic_write_bytes

    args, dyn, names = _example(graph)
    # the exporter logs a warning per torchvision op it cannot register: noise for a graph that has none
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph,
                args,
                input_names=names,
                output_names=graph.output_names(),
                dynamic_shapes=dyn,
                opset_version=opset,
                dynamo=True,
                verbose=False,
                external_data=False,
                optimize=True,
            )
    finally:
        registry_log.setLevel(level)
    proto = program.model_proto
    return atomic_write_bytes(path, proto.SerializeToString())


def vocab_path(path: PathLike) -> Path:
    """Where the vocabulary file of a model file goes: ``model.onnx`` -> ``model.vocab.json``."""
    p = Path(path)
    return p.with_name(p.stem + ".vocab.json")


def vocab_document(models: Sequence[Any], graph: nn.Module, fmt: str) -> Dict[str, Any]:
    """The vocabulary file's JSON (see the module docstring)."""
    source = list(models[0].vocab["source"])
    names = graph.output_names()
    doc: Dict[str, Any] = {
        "format": "conure.export",
        "version": 1,
        "model_format": fmt,
        "graph": "stream"
        if isinstance(graph, StreamGraph)
        else ("all" if isinstance(graph, AllTasksGraph) else "task"),
        "inputs": (graph.input_names() if isinstance(graph, StreamGraph) else ["items"]),
        "outputs": names,
        "max_len": int(models[0].max_len),
        "num_items": len(source),
        "items": {raw: i for i, raw in enumerate(source) if raw is not None and i > 0},
        "item_ids": source,
        "tasks": [],
    }
    heads = [graph.net.head] if isinstance(graph, TaskGraph) else [n.head for n in graph.nets]
    single = isinstance(graph, TaskGraph) or (isinstance(graph, StreamGraph) and graph.single)
    for m, head in zip(models, heads):
        sfx = "" if single else f"_{m.task}"
        entry: Dict[str, Any] = {
            "task": m.task,
            "name": m.name,
            "kind": m.kind,
            "method": m.method,
            "pool": head.mode,
            "scores": f"scores{sfx}",
            "top_k": head.top_k,
        }
        if head.top_k is not None:
            entry.update({"topk_scores": f"topk_scores{sfx}", "topk_indices": f"topk_indices{sfx}"})
        entry["classes" if m.kind == "profile" else "targets"] = m.target_names()
        doc["tasks"].append(entry)
    if isinstance(graph, StreamGraph):
        doc["state"] = [
            {"name": n, "shape": [s[0], "B", s[2], s[3]] if len(s) == 4 else ["B", s[1]], "dtype": "float32"}
            for n, s in zip(graph.state_names(), graph.state_shapes(1))
        ]
    return doc


def export_models(
    models: Sequence[Any],
    out: PathLike,
    fmt: str,
    *,
    all_tasks: bool = False,
    top_k: Optional[int] = None,
    stream: bool = False,
) -> Tuple[Path, Path, nn.Module]:
    """Write ``models`` (InferenceModels) as one graph to ``out`` (``fmt``: ``onnx`` or ``pt2``) and the vocabulary
    file beside it; returns (model path, vocabulary path, the graph)."""
    from conure.checkpoint import atomic_write_text

    if fmt not in ("onnx", "pt2"):
        raise ExportError(f"export: format must be 'onnx' or 'pt2' here, got {fmt!r}")
    models = list(models)
    if stream:
        graph: nn.Module = stream_graph(models if all_tasks else models[0], top_k)
    elif all_tasks:
        graph = all_tasks_graph(models, top_k)
    else:
        graph = task_graph(models[0], top_k)
    path = export_onnx(graph, out) if fmt == "onnx" else export_pt2(graph, out)
    vpath = atomic_write_text(vocab_path(out), json.dumps(vocab_document(models, graph, fmt), indent=1) + "\n")
    return path, vpath, graph


def export_run(
    checkpoint: PathLike, task: str, fmt: str, out: PathLike, *, top_k: Optional[int] = None, stream: bool = False
) -> Tuple[Path, Path, nn.Module]:
    """``conure export --format onnx|pt2``: task ``task`` (id or name, or ``"all"``: every learned task) of a run
    checkpoint (or the task of a safetensors export) as a graph file plus its vocabulary file."""
    from conure import checkpoint as ckpt
    from conure.commands import check_task, load_run
    from conure.run import RunError

    p = ckpt.resolve_checkpoint(checkpoint)
    _, meta = ckpt.load(p)
    if meta.get("kind") == "export":
        model = ckpt.load_inference(p)
        if str(task) not in ("all", str(model.task), model.name):
            raise RunError(f"--task {task}: {p} is an export of task {model.task} ({model.name})")
        models = [model]
    else:
        learner, meta, p = load_run(p)
        names = [t["name"] for t in meta["tasks"]]
        if str(task) == "all":
            ids = list(learner.learned_tasks)
            if not ids:
                raise RunError(f"{p}: no task has been learned yet")
        else:
            ids = [check_task(task, learner.learned_tasks, names)]
        models = [
            ckpt.inference_model(
                learner, t, meta["vocab"], max_len=meta.get("max_len"), extra={"source_checkpoint": str(p)}
            )
            for t in ids
        ]
    return export_models(models, out, fmt, all_tasks=str(task) == "all", top_k=top_k, stream=stream)


def cli_export(args, usage_error, say) -> int:
    """``conure export`` with ``--format onnx|pt2`` (or ``--task all``, ``--top-k``, ``--stream``, which need one):
    ``usage_error``: the CLI's usage exception class; ``say``: its printer."""
    if args.format == "safetensors":
        raise usage_error(
            "--task all, --top-k and --stream need --format onnx or pt2 (safetensors holds one task "
            "for 'conure predict')"
        )
    if args.top_k is not None and args.top_k < 1:
        raise usage_error("--top-k must be >= 1")
    try:
        import onnx  # noqa: F401  (the ONNX exporter's dependencies, named before any work)
        import onnxscript  # noqa: F401
    except ImportError as e:
        if args.format == "onnx":
            raise usage_error(
                f"--format onnx needs the onnx and onnxscript packages ({e}): pip install 'conure[export]'"
            ) from None
    try:
        path, vpath, graph = export_run(
            args.checkpoint, args.task, args.format, args.out, top_k=args.top_k, stream=args.stream
        )
    except ExportError as e:
        raise usage_error(str(e)) from None
    what = "streaming step" if args.stream else "graph"
    say(
        f"exported {what} of task{'s' if len(graph.tasks) > 1 else ''} {', '.join(map(str, graph.tasks))} "
        f"({args.format}) -> {path}; vocabulary -> {vpath}"
    )
    return 0

"""Conure's backbone: NextItNet over masked causal convolutions (layers in :mod:`conure.nn`).

Activations are ``[B, L, C]``. See :mod:`conure.nn` for the block variants (pre-LN default, post-LN as in the
original NextItNet) and the owner-map convention (uint8, 0 = free, t = owned by task t).
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from conure import ops
from conure.heads import head_from_config
from conure.nn import (
    BottleneckPatch,
    CapacityError,
    MaskedCausalConv1d,
    ResidualBlock,
    check_task_id,
    gather_last,
    left_padded,
)

__all__ = ["NextItNet", "PatchStack", "module_config", "build_module"]


class NextItNet(nn.Module):
    """NextItNet backbone: item embedding (padding id 0) and residual blocks of dilated causal convolutions.

    ``forward(items [B, L] int64, task, patches=None) -> [B, L, C]``; ``user_vector(items, task) -> [B, C]`` is the
    output at the last non-padding position. ``patches`` is an optional sequence of one module per block (PeterRec).
    """

    def __init__(
        self,
        num_items: int,
        channels: int = 256,
        kernel_size: int = 3,
        dilations: Sequence[int] = (1, 4) * 4,
        pre_ln: bool = True,
    ) -> None:
        super().__init__()
        if num_items < 2:
            raise ValueError(f"NextItNet: num_items counts the padding id 0 and must be >= 2, got {num_items}")
        if len(dilations) == 0:
            raise ValueError("NextItNet: need at least one block (dilations is empty)")
        self.num_items, self.channels, self.kernel_size = int(num_items), int(channels), int(kernel_size)
        self.dilations, self.pre_ln = tuple(int(d) for d in dilations), bool(pre_ln)
        self.embedding = nn.Embedding(num_items, channels, padding_idx=0)
        self.blocks = nn.ModuleList(ResidualBlock(channels, kernel_size, d, pre_ln) for d in self.dilations)
        self.reset_parameters()

    def config(self) -> Dict[str, object]:
        """Constructor arguments (JSON-able): ``NextItNet(**net.config())`` builds an equal-shaped network."""
        return {
            "num_items": self.num_items,
            "channels": self.channels,
            "kernel_size": self.kernel_size,
            "dilations": list(self.dilations),
            "pre_ln": self.pre_ln,
        }

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """Embedding ~ N(0, 1/C) with a zero padding row; convolutions as ``nn.Conv1d``; LayerNorms (1, 0)."""
        with torch.no_grad():
            nn.init.normal_(self.embedding.weight, 0.0, self.channels**-0.5, generator=generator)
            self.embedding.weight[0].zero_()
            for block in self.blocks:
                block.conv1.reset_parameters(generator)
                block.conv2.reset_parameters(generator)
                block.ln1.reset_parameters()
                block.ln2.reset_parameters()

    def forward(
        self,
        items: torch.Tensor,
        task: int,
        patches: Optional[Sequence[nn.Module]] = None,
        out_len: Optional[int] = None,
    ) -> torch.Tensor:
        """``[B, L, C]``; with ``out_len``, only the last ``out_len`` positions ``[B, out_len, C]``, computed from the
        inputs they depend on alone: each block gets the last positions its output needs plus its receptive field
        (:meth:`window_lengths`), so a head that reads the last position skips most of the early layers' work
        (the values equal the full forward's up to GEMM rounding)."""
        check_task_id(task, "NextItNet.forward")
        if not isinstance(items, torch.Tensor) or items.dim() != 2 or items.dtype != torch.int64:
            raise ValueError(
                "NextItNet.forward: items must be an int64 tensor [B, L], got "
                f"{tuple(items.shape) if isinstance(items, torch.Tensor) else type(items).__name__}"
                f"{' ' + str(items.dtype) if isinstance(items, torch.Tensor) else ''}"
            )
        if items.numel():
            # One host sync, worth it: nn.Embedding's own error names neither the id nor the vocabulary (and on
            # CUDA it is a device-side assert that poisons the context).
            lo, hi = (int(v) for v in torch.aminmax(items))
            if lo < 0 or hi >= self.num_items:
                raise ValueError(
                    f"NextItNet.forward: item ids must be in [0, num_items={self.num_items}) "
                    f"(0 = padding), got ids from {lo} to {hi}"
                )
        if patches is not None and len(patches) != len(self.blocks):
            raise ValueError(f"NextItNet.forward: need one patch per block ({len(self.blocks)}), got {len(patches)}")
        if out_len is None or out_len >= items.shape[1]:
            x = self.embedding(items)
            for n, block in enumerate(self.blocks):
                x = block(x, task, None if patches is None else patches[n])
            return x
        if isinstance(out_len, bool) or not isinstance(out_len, int) or out_len < 1:
            raise ValueError(f"NextItNet.forward: out_len must be an int >= 1, got {out_len!r}")
        windows = self.window_lengths(out_len, items.shape[1])
        x = self.embedding(items[:, items.shape[1] - windows[0] :])
        for n, block in enumerate(self.blocks):
            x = block(x[:, x.shape[1] - windows[n] :], task, None if patches is None else patches[n])
        return x[:, x.shape[1] - out_len :]

    def window_lengths(self, out_len: int, length: int) -> List[int]:
        """Per block, how many of the last input positions its output's last ``out_len`` positions depend on
        (capped at ``length``): ``out_len`` plus the receptive field of that block and the ones after it (a block
        of dilation d reads ``(K - 1) * (d + 2d)`` earlier positions: conv1 at d, conv2 at 2d)."""
        need, out = out_len, []
        for d in reversed(self.dilations):
            need += (self.kernel_size - 1) * 3 * d
            out.append(min(need, length))
        return out[::-1]

    def user_vector(
        self, items: torch.Tensor, task: int, patches: Optional[Sequence[nn.Module]] = None
    ) -> torch.Tensor:
        """Backbone output at the last non-padding position of each row: ``[B, C]`` (only the positions it depends
        on are computed when every row is left padded)."""
        n = 1 if left_padded(items) else None
        return gather_last(
            self.forward(items, task, patches, out_len=n), items[:, items.shape[1] - 1 :] if n else items
        )

    # --- the owner maps ------------------------------------------------------------------------------------------
    def conv_layers(self) -> List[Tuple[str, MaskedCausalConv1d]]:
        """``(name, layer)`` of every masked convolution, in forward order."""
        return [(name, m) for name, m in self.named_modules() if isinstance(m, MaskedCausalConv1d)]

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters without an owner map (embedding, LayerNorms, conv biases): Conure trains them in task 1 only."""
        for name, p in self.named_parameters():
            if not (
                name.endswith(".weight") and isinstance(self.get_submodule(name[: -len(".weight")]), MaskedCausalConv1d)
            ):
                yield p

    def conv_weights(self) -> List[nn.Parameter]:
        return [m.weight for _, m in self.conv_layers()]

    def free_counts(self) -> Dict[str, int]:
        return {name: m.owned(0) for name, m in self.conv_layers()}

    def check_free(self, task: int) -> None:
        """Raise :class:`CapacityError` if some convolution has no free weight left for a new ``task``."""
        check_task_id(task, "NextItNet")
        full = [name for name, n in self.free_counts().items() if n == 0]
        if full:
            raise CapacityError(
                f"task {task}: no free weights left in {len(full)} convolution(s) ({', '.join(full[:4])}"
                f"{', ...' if len(full) > 4 else ''}); earlier tasks kept all of them. Use a smaller keep_ratio "
                f"for earlier tasks or a wider backbone."
            )

    @torch.no_grad()
    def claim_free_(self, task: int) -> Dict[str, int]:
        """Assign every free weight of every convolution to ``task``; returns the count per layer.

        Raises :class:`CapacityError` (changing nothing) if some layer has no free weight left.
        """
        self.check_free(task)
        return {name: m.claim_free_(task) for name, m in self.conv_layers()}

    @torch.no_grad()
    def prune_(self, task: int, keep_ratio: float) -> Dict[str, int]:
        """Keep the ``round(keep_ratio * n)`` largest-|w| of the n weights ``task`` owns, per conv layer; free the rest.

        Values are left in place (the next task starts from them). Returns the kept count per layer.
        """
        check_task_id(task, "NextItNet.prune_")
        return {name: int(ops.magnitude_prune_(m.weight, m.owner, task, keep_ratio)) for name, m in self.conv_layers()}

    def capacity(self, heads: Optional[Mapping[int, nn.Module]] = None) -> Dict[str, object]:
        """Who owns what, and what each task costs to store.

        Returns a dict:

        * ``layers``: ``{name: {"size": n, "free": share, "tasks": {t: share}}}`` per conv layer (shares of its
          weights);
        * ``total_weights``, ``free`` (share of all conv weights that is free);
        * ``tasks``: ``{t: {"weights", "share", "weight_bytes", "owner_bytes", "head_bytes", "shared_bytes",
          "bytes"}}``: the conv weights task t owns, their bytes, one owner-map byte per owned weight, its head's
          parameter bytes (``heads[t]`` if given), and for task 1 the parameters without owner map (embedding,
          LayerNorms, biases) that it trains; ``bytes`` is the sum.
        * ``free_bytes``: bytes of the free weights plus their owner-map bytes (stored, usable by the next task).
        """
        layers: Dict[str, object] = {}
        totals: Dict[int, int] = {}
        total = free = 0
        for name, m in self.conv_layers():
            counts = torch.bincount(m.owner.flatten().to(torch.int64), minlength=1).tolist()
            n = m.owner.numel()
            layers[name] = {
                "size": n,
                "free": counts[0] / n,
                "tasks": {t: c / n for t, c in enumerate(counts) if t and c},
            }
            for t, c in enumerate(counts):
                if t and c:
                    totals[t] = totals.get(t, 0) + c
            total, free = total + n, free + counts[0]
        wsize = self.embedding.weight.element_size()
        shared = sum(p.numel() * p.element_size() for p in self.shared_parameters())
        heads = dict(heads or {})
        tasks: Dict[int, Dict[str, float]] = {}
        for t in sorted(set(totals) | set(heads)):
            c = totals.get(t, 0)
            head = heads.get(t)
            head_bytes = 0 if head is None else sum(p.numel() * p.element_size() for p in head.parameters())
            row = {
                "weights": c,
                "share": c / max(total, 1),
                "weight_bytes": c * wsize,
                "owner_bytes": c,
                "head_bytes": head_bytes,
                "shared_bytes": shared if t == 1 else 0,
            }
            row["bytes"] = row["weight_bytes"] + row["owner_bytes"] + row["head_bytes"] + row["shared_bytes"]
            tasks[t] = row
        return {
            "layers": layers,
            "total_weights": total,
            "free": free / max(total, 1),
            "tasks": tasks,
            "free_bytes": free * (wsize + 1),
        }


class PatchStack(nn.ModuleList):
    """One :class:`~conure.nn.BottleneckPatch` per residual block (PeterRec)."""

    def __init__(self, channels: int, num_blocks: int, reduction: int = 8) -> None:
        super().__init__(BottleneckPatch(channels, reduction) for _ in range(num_blocks))
        self.channels, self.num_blocks, self.reduction = channels, num_blocks, reduction

    def config(self) -> Dict[str, object]:
        return {
            "type": "PatchStack",
            "channels": self.channels,
            "num_blocks": self.num_blocks,
            "reduction": self.reduction,
        }


def module_config(module: nn.Module) -> Dict[str, object]:
    """The JSON config of a stored module (backbone, patch stack, head) that :func:`build_module` rebuilds."""
    if isinstance(module, NextItNet):
        return {"type": "NextItNet", **module.config()}
    return module.config()


def build_module(config: Mapping[str, object]) -> nn.Module:
    """A fresh module from :func:`module_config`'s output (weights not included)."""
    cfg = dict(config)
    kind = cfg.pop("type", None)
    if kind == "NextItNet":
        return NextItNet(**cfg)
    if kind == "PatchStack":
        return PatchStack(**cfg)
    return head_from_config(dict(config))

"""Streaming inference: per-user state of a NextItNet backbone, updated one item at a time.

A causal convolution needs only its last ``(K - 1) * dilation`` inputs, so a user's whole history is summarised by
one ring buffer per conv (its last inputs: in a pre-LN block the LayerNorm + ReLU outputs in front of it; in a
post-LN block the block input for conv1 and relu(LN1(conv1)) for conv2). :class:`StreamingState`
holds those buffers for a batch of users and one or more tasks; :meth:`StreamingState.step` consumes each user's
newest item and returns the user vector (the backbone output at the new position) in O(blocks) work per user,
equal to the full forward over the whole left-padded history (see ``tests/test_streaming.py``).

Positions and padding: a fresh state is "before position 0": the first item stepped is position 0, exactly like
the first column of the full forward ``model(items)``. Padding id 0 is an ordinary item here, as it is in the full
forward (its embedding row goes through LayerNorm; its LN bias makes it non-zero), so streaming the left-padded
history ``items[b, 0..L-1]`` one column at a time reproduces ``model(items)[:, t]`` at every step t. A user who
joins later than the others can be started with ``reset_(users, pad_history=n)``: the state after n padding items
(n is capped at :attr:`StreamingState.receptive_field`, beyond which more padding changes nothing).

Weights are taken from the model once (masked per task, laid out for the kernels: :class:`StackedWeights`); after
the model's weights or owner maps change call :meth:`StreamingState.refresh_weights`.

Pre-LN backbones (the paper's) step through the fused ``stream_step_`` operator, post-LN backbones
(``NextItNet(pre_ln=False)``) through ``stream_step_post_ln_``.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from conure import ops
from conure.nn import check_task_id
from conure.ops.layout import conv_cols

__all__ = ["StackedWeights", "StreamingState"]


def _as_tasks(tasks: Union[int, Sequence[int]], where: str) -> tuple:
    tasks = (tasks,) if isinstance(tasks, int) and not isinstance(tasks, bool) else tuple(tasks)
    if not tasks:
        raise ValueError(f"{where}: need at least one task")
    for t in tasks:
        check_task_id(t, where)
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"{where}: tasks must be distinct, got {tasks}")
    return tasks


class StackedWeights:
    """A NextItNet's inference weights for tasks ``tasks``, in the layout of the fused kernels.

    * ``embedding``: [num_items, C] (shared);
    * ``wcols[c]``: [T, K * C_in, C_out] per conv c (block c // 2, conv1 then conv2): each task's masked weights
      (:func:`conure.ops.layout.conv_cols`);
    * ``ln``: 4 vectors per block (ln1 weight, ln1 bias, ln2 weight, ln2 bias), shared by the tasks;
    * ``dilations`` (conv1 per block), ``kernel_size``, ``eps``, ``pre_ln`` (the block kind).
    """

    def __init__(self, model, tasks: Union[int, Sequence[int]], dtype: Optional[torch.dtype] = None) -> None:
        self.tasks = _as_tasks(tasks, type(self).__name__)
        self.pre_ln = bool(getattr(model, "pre_ln", True))
        for block in model.blocks:
            if block.conv1.bias is not None or block.conv2.bias is not None:
                raise ValueError(f"{type(self).__name__}: convolutions with bias are not supported")
            if block.ln1.eps != block.ln2.eps or block.ln1.eps != model.blocks[0].ln1.eps:
                raise ValueError(f"{type(self).__name__}: all LayerNorms must share one eps")
        self.kernel_size = int(model.kernel_size)
        self.dilations = [int(b.conv1.dilation) for b in model.blocks]
        self.eps = float(model.blocks[0].ln1.eps)
        self.channels = int(model.channels)
        self._dtype = dtype
        self.refresh(model)

    @torch.no_grad()
    def refresh(self, model) -> None:
        """Re-read the model's weights and owner maps."""
        dtype = self._dtype or model.embedding.weight.dtype
        self.embedding = model.embedding.weight.detach().to(dtype)
        self.wcols: List[torch.Tensor] = []
        self.ln: List[torch.Tensor] = []
        for block in model.blocks:
            for conv in (block.conv1, block.conv2):
                w = conv.weight.detach().to(dtype)
                self.wcols.append(torch.stack([conv_cols(w, conv.owner, t) for t in self.tasks]).contiguous())
            for p in (block.ln1.weight, block.ln1.bias, block.ln2.weight, block.ln2.bias):
                self.ln.append(p.detach().to(dtype).contiguous())

    @property
    def device(self) -> torch.device:
        return self.embedding.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.dtype

    def ring_lengths(self) -> List[int]:
        """Ring buffer length (K - 1) * dilation of every conv, in forward order."""
        return [(self.kernel_size - 1) * d * m for d in self.dilations for m in (1, 2)]

    def ring_channels(self) -> List[int]:
        """Input channels of every conv, in forward order."""
        return [w.shape[1] // self.kernel_size for w in self.wcols]

    def embed(self, items: torch.Tensor, where: str) -> torch.Tensor:
        """Item ids (int64, any shape) -> embeddings; float input of trailing size C passes through."""
        if not isinstance(items, torch.Tensor):
            raise TypeError(f"{where}: items must be a tensor, got {type(items).__name__}")
        if items.is_floating_point():
            if items.shape[-1] != self.channels or items.dtype != self.dtype:
                raise ValueError(
                    f"{where}: embeddings must be [..., {self.channels}] of {self.dtype}, got "
                    f"{tuple(items.shape)} {items.dtype}"
                )
            return items.to(self.device)
        if items.dtype != torch.int64:
            raise TypeError(f"{where}: item ids must be int64, got {items.dtype}")
        items = items.to(self.device)
        if items.numel() and (int(items.min()) < 0 or int(items.max()) >= self.embedding.shape[0]):
            raise ValueError(
                f"{where}: item ids must be in [0, {self.embedding.shape[0]}), got "
                f"[{int(items.min())}, {int(items.max())}]"
            )
        return F.embedding(items, self.embedding)


class StreamingState:
    """Ring-buffer state of ``batch_size`` users of a NextItNet (pre- or post-LN), for one or more tasks.

    Args:
        model: a :class:`conure.models.NextItNet` (or a :class:`StackedWeights`).
        batch_size: number of users B.
        tasks: a task id or a sequence of them; every held task's state advances with each step.
        pad_history: start every user after this many padding items (0: at position 0).

    Tensors (all on the model's device):

    * ``pos``: int64 [B], items consumed per user;
    * ``rings[c]``: [T_c, B, (K - 1) * dilation_c, C_in] per conv c, T_0 = 1 (block 0's first conv input is the same
      for every task), T_c = T otherwise.
    """

    def __init__(self, model, batch_size: int, tasks: Union[int, Sequence[int]], *, pad_history: int = 0) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
            raise ValueError(f"StreamingState: batch_size must be an int >= 0, got {batch_size!r}")
        tasks = _as_tasks(tasks, "StreamingState")
        if isinstance(model, StackedWeights):
            if model.tasks != tasks:
                raise ValueError(f"StreamingState: weights hold tasks {model.tasks}, asked for {tasks}")
            self.weights = model
        else:
            self.weights = StackedWeights(model, tasks)
        w = self.weights
        self.pos = torch.zeros(batch_size, dtype=torch.int64, device=w.device)
        self.rings = [
            torch.zeros(1 if c == 0 else len(tasks), batch_size, r, ch, dtype=w.dtype, device=w.device)
            for c, (r, ch) in enumerate(zip(w.ring_lengths(), w.ring_channels()))
        ]
        if pad_history:
            self.reset_(None, pad_history)

    # --- properties ----------------------------------------------------------------------------------------------
    @property
    def tasks(self) -> tuple:
        return self.weights.tasks

    @property
    def batch_size(self) -> int:
        return self.pos.shape[0]

    @property
    def receptive_field(self) -> int:
        """Items before the newest one that can still change the output: sum of (K - 1) * dilation over convs."""
        return sum(self.weights.ring_lengths())

    def _task_index(self, task: Optional[int]) -> int:
        if task is None:
            if len(self.tasks) != 1:
                raise ValueError(
                    f"StreamingState.step: this state holds tasks {self.tasks}; name one (or use step_all)"
                )
            return 0
        if task not in self.tasks:
            raise ValueError(f"StreamingState.step: task {task!r} is not held by this state (tasks {self.tasks})")
        return self.tasks.index(task)

    # --- stepping ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step_all(self, items: torch.Tensor) -> torch.Tensor:
        """Consume one item per user; returns every held task's user vector: [T, B, C].

        items: int64 [B] item ids (0 = padding), or float [B, C] embeddings looked up by the caller.
        """
        w = self.weights
        x = w.embed(items, "StreamingState.step")
        if x.shape != (self.batch_size, w.channels):
            raise ValueError(
                f"StreamingState.step: need one item per user ([{self.batch_size}]), got {tuple(items.shape)}"
            )
        out = ops.stream_step_(
            x, self.pos, self.rings, w.wcols, w.ln, w.dilations, w.kernel_size, w.eps, post_ln=not w.pre_ln
        )
        self.pos += 1
        return out

    def step(self, items: torch.Tensor, task: Optional[int] = None) -> torch.Tensor:
        """Consume one item per user (every held task advances); returns task ``task``'s user vectors [B, C].

        ``task`` may be omitted when the state holds one task.
        """
        index = self._task_index(task)
        return self.step_all(items)[index]

    @torch.no_grad()
    def run(self, items: torch.Tensor) -> torch.Tensor:
        """Step through ``items [B, L]`` column by column; returns the user vectors after the last: [T, B, C]."""
        if not isinstance(items, torch.Tensor) or items.dim() != 2 or items.shape[0] != self.batch_size:
            raise ValueError(
                f"StreamingState.run: items must be [B={self.batch_size}, L], got "
                f"{tuple(items.shape) if isinstance(items, torch.Tensor) else type(items).__name__}"
            )
        out = None
        for t in range(items.shape[1]):
            out = self.step_all(items[:, t])
        if out is None:
            raise ValueError("StreamingState.run: items has no columns")
        return out

    # --- users ---------------------------------------------------------------------------------------------------
    def _index(self, user_idx, where: str) -> torch.Tensor:
        idx = torch.as_tensor(user_idx, dtype=torch.int64, device=self.pos.device).reshape(-1)
        if idx.numel() and (int(idx.min()) < -self.batch_size or int(idx.max()) >= self.batch_size):
            raise IndexError(f"{where}: user index out of range for {self.batch_size} users")
        return idx

    def _empty_like(self, batch_size: int) -> StreamingState:
        new = object.__new__(StreamingState)
        new.weights = self.weights
        new.pos = self.pos.new_zeros(batch_size)
        new.rings = [r.new_zeros((r.shape[0], batch_size) + tuple(r.shape[2:])) for r in self.rings]
        return new

    def gather(self, user_idx) -> StreamingState:
        """A new state holding users ``user_idx`` (int64 indices, repeats allowed) of this one (copies)."""
        idx = self._index(user_idx, "StreamingState.gather")
        new = self._empty_like(idx.numel())
        new.pos = self.pos[idx]
        new.rings = [r[:, idx].contiguous() for r in self.rings]
        return new

    @torch.no_grad()
    def scatter_(self, user_idx, other: StreamingState) -> StreamingState:
        """Write ``other``'s users into this state at ``user_idx`` (one index per user of ``other``)."""
        idx = self._index(user_idx, "StreamingState.scatter_")
        if (
            other.weights.tasks != self.tasks
            or other.batch_size != idx.numel()
            or [r.shape[2:] for r in other.rings] != [r.shape[2:] for r in self.rings]
        ):
            raise ValueError("StreamingState.scatter_: other must hold the same tasks and model, one user per index")
        self.pos[idx] = other.pos
        for r, o in zip(self.rings, other.rings):
            r[:, idx] = o
        return self

    @torch.no_grad()
    def reset_(self, user_idx=None, pad_history: int = 0) -> StreamingState:
        """Restart users ``user_idx`` (all when None): empty history, or after ``pad_history`` padding items."""
        if isinstance(pad_history, bool) or not isinstance(pad_history, int) or pad_history < 0:
            raise ValueError(f"StreamingState.reset_: pad_history must be an int >= 0, got {pad_history!r}")
        idx = (
            torch.arange(self.batch_size, device=self.pos.device)
            if user_idx is None
            else self._index(user_idx, "StreamingState.reset_")
        )
        fresh = self._empty_like(idx.numel())
        pad = torch.zeros(idx.numel(), dtype=torch.int64, device=self.pos.device)
        for _ in range(min(pad_history, self.receptive_field)):
            fresh.step_all(pad)
        return self.scatter_(idx, fresh)

    # --- save / restore ------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, torch.Tensor]:
        """``{"tasks", "pos", "ring.<c>"}`` tensors (the weights are the model's, not saved here)."""
        out = {"tasks": torch.tensor(self.tasks, dtype=torch.int64), "pos": self.pos.clone()}
        out.update({f"ring.{c}": r.clone() for c, r in enumerate(self.rings)})
        return out

    @torch.no_grad()
    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> StreamingState:
        """Restore :meth:`state_dict` output (same model layout and tasks; any batch size)."""
        tasks = tuple(int(t) for t in state["tasks"].tolist())
        if tasks != self.tasks:
            raise ValueError(f"StreamingState.load_state_dict: state holds tasks {tasks}, this one {self.tasks}")
        rings = [state[f"ring.{c}"] for c in range(len(self.rings))]
        for c, (r, mine) in enumerate(zip(rings, self.rings)):
            if (
                r.dim() != 4
                or r.shape[0] != mine.shape[0]
                or r.shape[2:] != mine.shape[2:]
                or r.shape[1] != state["pos"].shape[0]
            ):
                raise ValueError(
                    f"StreamingState.load_state_dict: ring {c} has shape {tuple(r.shape)}, expected "
                    f"[{mine.shape[0]}, B, {mine.shape[2]}, {mine.shape[3]}]"
                )
        w = self.weights
        self.pos = state["pos"].to(device=w.device, dtype=torch.int64).clone()
        self.rings = [r.to(device=w.device, dtype=w.dtype).contiguous().clone() for r in rings]
        return self

    def refresh_weights(self, model) -> None:
        """Re-read the model's weights (after training or pruning); the users' buffers are kept."""
        self.weights.refresh(model)

"""The common in-memory representation that every reader produces and every task builder consumes.

An :class:`Interactions` holds, for U users,

* ``history``: each user's chronological sequence of items of the main service (the *source* items every task
  reads), stored compactly as CSR arrays (:class:`ItemSequences`);
* ``streams``: optional named sequences of items of *other* services (same user index, own item catalogue),
  e.g. the targets of a later Conure task;
* ``attributes``: a per-user attribute table (gender, age bracket, ...), raw strings, ``None`` where missing.

Raw ids are kept as they came (ints for MovieLens, strings for token formats); vocabularies (dense ids with 0
reserved for padding) are built later, from the training users only, by :mod:`conure.data.tasks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Hashable, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["ItemSequences", "Interactions", "factorize", "FirstSeenIndex"]


class FirstSeenIndex(dict):
    """raw id -> dense code, numbered in order of first appearance; looking up a new id assigns the next code.

    Readers feed it token columns block by block, so only the distinct ids are held, never one object per
    event: ``np.fromiter(map(index.__getitem__, tokens), np.int64)`` runs at dict speed in C, calling back into
    Python only for ids not seen before.
    """

    def __missing__(self, key: Hashable) -> int:
        code = self[key] = len(self)
        return code

    def codes(self, values: Iterable[Hashable], count: int = -1) -> np.ndarray:
        """[n] int64 codes of ``values``, adding unseen ids (``count``: the number of values, when known)."""
        return np.fromiter(map(self.__getitem__, values), dtype=np.int64, count=count)

    def uniques(self) -> np.ndarray:
        """[len] object array of the raw ids, position = code (what :func:`factorize` returns as uniques)."""
        uniques = np.empty(len(self), dtype=object)
        uniques[:] = list(self)
        return uniques


def factorize(values: Sequence[Hashable] | np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Map raw ids to dense codes.

    Returns ``(uniques, codes)`` with ``uniques[codes] == values``. Integer arrays get sorted uniques (fast
    numpy path); anything else keeps the order of first appearance, so that token ids stay in file order.
    """
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        uniques, codes = np.unique(values, return_inverse=True)
        return uniques.astype(np.int64), codes.astype(np.int64).reshape(-1)
    values = list(values)
    index = FirstSeenIndex()
    codes = index.codes(values, count=len(values))
    return index.uniques(), codes


@dataclass
class ItemSequences:
    """Per-user chronological item sequences in CSR form.

    ``items[offsets[u]:offsets[u + 1]]`` are user ``u``'s events, oldest first, as indices into ``item_ids``.

    Attributes:
        item_ids: [I] raw item ids (int64 or object array of str); position = item index.
        offsets: [U + 1] int64, non-decreasing, ``offsets[0] == 0``.
        items: [E] int64 item indices.
        timestamps: [E] float64 aligned with ``items``, or None when the source has no time.
    """

    item_ids: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    timestamps: Optional[np.ndarray] = None

    @property
    def num_users(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def lengths(self) -> np.ndarray:
        """[U] int64 number of events per user."""
        return np.diff(self.offsets)

    def user_of_event(self) -> np.ndarray:
        """[E] int64: the user index of each event."""
        return np.repeat(np.arange(self.num_users, dtype=np.int64), self.lengths)

    def sequence(self, user: int) -> list:
        """User ``user``'s raw item ids, oldest first."""
        return self.item_ids[self.items[self.offsets[user] : self.offsets[user + 1]]].tolist()

    @classmethod
    def from_events(
        cls,
        user_codes: np.ndarray,
        num_users: int,
        item_raw: Sequence | np.ndarray,
        timestamps: Optional[np.ndarray] = None,
    ) -> ItemSequences:
        """Group events by user and order them by time.

        ``user_codes``: [E] dense user index of each event (file order). Ties in ``timestamps`` keep file order
        (``np.lexsort`` is stable), so equal-time events stay as the file listed them.
        """
        item_ids, item_codes = factorize(item_raw)
        return cls.from_codes(user_codes, num_users, item_ids, item_codes, timestamps)

    @classmethod
    def from_codes(
        cls,
        user_codes: np.ndarray,
        num_users: int,
        item_ids: np.ndarray,
        item_codes: np.ndarray,
        timestamps: Optional[np.ndarray] = None,
    ) -> ItemSequences:
        """:meth:`from_events` for items already factorized (``item_ids[item_codes]`` = the raw item of each
        event, file order)."""
        user_codes = np.asarray(user_codes, dtype=np.int64)
        if timestamps is None:
            order = np.argsort(user_codes, kind="stable")
        else:
            timestamps = np.asarray(timestamps, dtype=np.float64)
            order = np.lexsort((timestamps, user_codes))
        counts = np.bincount(user_codes, minlength=num_users)
        offsets = np.zeros(num_users + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(
            item_ids=item_ids,
            offsets=offsets,
            items=item_codes[order],
            timestamps=None if timestamps is None else timestamps[order],
        )

    @classmethod
    def from_lists(cls, sequences: Sequence[Sequence[Hashable]]) -> ItemSequences:
        """Build from one list of raw item ids per user (already chronological)."""
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        flat = [item for seq in sequences for item in seq]
        item_ids, codes = factorize(flat)
        return cls.from_lengths(item_ids, codes, lengths)

    @classmethod
    def from_lengths(cls, item_ids: np.ndarray, items: np.ndarray, lengths: np.ndarray) -> ItemSequences:
        """Build from the users' item codes laid end to end (``items``, chronological per user) and the [U]
        number of items of each user."""
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(item_ids=item_ids, offsets=offsets, items=items)


@dataclass
class Interactions:
    """Users' chronological histories plus a per-user attribute table; the output of every reader.

    Attributes:
        user_ids: [U] raw user ids; the position is the *user index* used in ``Split.users``.
        history: the main service's item sequences (task inputs and task-1 targets).
        attributes: attribute name -> [U] object array of ``str`` (``None`` = missing).
        streams: name -> item sequences of another service for the same users (e.g. Conure task-2 targets).
        attribute_labels: attribute name -> {raw value: human-readable label} (e.g. ML-1M occupation codes).
        attribute_origin: attribute name -> (file, [U] int64 line of each user's value, 0 = none): lets later
            stages name the file and line of a malformed label.
        source: a short description of where the data came from.
    """

    user_ids: np.ndarray
    history: ItemSequences
    attributes: Dict[str, np.ndarray] = field(default_factory=dict)
    streams: Dict[str, ItemSequences] = field(default_factory=dict)
    attribute_labels: Dict[str, Dict[str, str]] = field(default_factory=dict)
    attribute_origin: Dict[str, Tuple[str, np.ndarray]] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        u = len(self.user_ids)
        if self.history.num_users != u:
            raise ValueError(f"history has {self.history.num_users} users, user_ids has {u}")
        for name, col in self.attributes.items():
            if len(col) != u:
                raise ValueError(f"attribute {name!r} has {len(col)} rows, expected {u}")
        for name, seqs in self.streams.items():
            if seqs.num_users != u:
                raise ValueError(f"stream {name!r} has {seqs.num_users} users, expected {u}")

    @property
    def num_users(self) -> int:
        return int(len(self.user_ids))

    @property
    def num_events(self) -> int:
        return int(self.history.items.shape[0])

    @property
    def num_raw_items(self) -> int:
        return int(len(self.history.item_ids))

    def sequence(self, user: int) -> list:
        """User index ``user``'s raw item ids in the main history, oldest first."""
        return self.history.sequence(user)

    def user_index(self) -> Dict[Hashable, int]:
        """raw user id -> user index."""
        return {uid: i for i, uid in enumerate(self.user_ids.tolist())}

    def __repr__(self) -> str:
        return (
            f"Interactions({self.source or 'in-memory'}: {self.num_users} users, {self.num_raw_items} items, "
            f"{self.num_events} events, attributes={sorted(self.attributes)}, streams={sorted(self.streams)})"
        )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_events(
        cls,
        users: Sequence[Hashable] | np.ndarray,
        items: Sequence[Hashable] | np.ndarray,
        timestamps: Optional[Sequence[float] | np.ndarray] = None,
        source: str = "",
    ) -> Interactions:
        """Build from parallel event columns in file order (one row per interaction).

        Each user's events are sorted by ``timestamps`` (stable: ties keep file order); without timestamps the
        file order is the chronological order.
        """
        user_ids, user_codes = factorize(users)
        item_ids, item_codes = factorize(items)
        return cls.from_codes(
            user_ids,
            user_codes,
            item_ids,
            item_codes,
            None if timestamps is None else np.asarray(timestamps, np.float64),
            source,
        )

    @classmethod
    def from_codes(
        cls,
        user_ids: np.ndarray,
        user_codes: np.ndarray,
        item_ids: np.ndarray,
        item_codes: np.ndarray,
        timestamps: Optional[np.ndarray] = None,
        source: str = "",
    ) -> Interactions:
        """:meth:`from_events` for event columns already factorized (``user_ids[user_codes]`` and
        ``item_ids[item_codes]`` are the raw user and item of each event, in file order)."""
        history = ItemSequences.from_codes(user_codes, len(user_ids), item_ids, item_codes, timestamps)
        return cls(user_ids=user_ids, history=history, source=source)

    @classmethod
    def from_sequences(
        cls,
        sequences: Mapping[Hashable, Sequence[Hashable]] | Iterable[Tuple[Hashable, Sequence]],
        attributes: Optional[Mapping[str, Mapping[Hashable, Optional[str]]]] = None,
        source: str = "",
    ) -> Interactions:
        """Build from ``{user: [item, ...]}`` (oldest first) and optional ``{attribute: {user: value}}``."""
        pairs = list(sequences.items()) if isinstance(sequences, Mapping) else list(sequences)
        user_ids = np.empty(len(pairs), dtype=object)
        user_ids[:] = [u for u, _ in pairs]
        history = ItemSequences.from_lists([list(s) for _, s in pairs])
        inter = cls(user_ids=user_ids, history=history, source=source)
        for name, table in (attributes or {}).items():
            col = np.full(len(pairs), None, dtype=object)
            index = inter.user_index()
            for u, value in table.items():
                if u in index:
                    col[index[u]] = None if value is None else str(value)
            inter.attributes[name] = col
        return inter

    def set_attribute(
        self,
        name: str,
        values: np.ndarray,
        origin: Optional[Tuple[str, np.ndarray]] = None,
        labels: Optional[Dict[str, str]] = None,
    ) -> None:
        """Attach a [U] column of raw attribute values (``None`` = missing)."""
        if len(values) != self.num_users:
            raise ValueError(f"attribute {name!r} has {len(values)} rows, expected {self.num_users}")
        self.attributes[name] = values
        if origin is not None:
            self.attribute_origin[name] = origin
        if labels:
            self.attribute_labels[name] = dict(labels)

"""Readers: MovieLens-100K/1M, RecBole atomic files, the Conure release format, a generic sequence TSV.

Every reader returns an :class:`~conure.data.interactions.Interactions` (chronological per-user item
sequences + a per-user attribute table); :func:`load_dataset` dispatches on a dataset kind so that a config
file can name one. No pandas: numeric tables go through ``np.loadtxt`` (C parser, ~0.2 s per million lines),
token tables through plain ``str.split``. When the fast path rejects a file, a line-by-line pass finds the
first bad line so that every :class:`DataError` names the file and line.

The token readers (RecBole, Conure, sequence TSV) stream: they read the file in blocks of whole lines and turn
each block's ids into int64 codes at once (:class:`~conure.data.interactions.FirstSeenIndex`), so that memory
grows with the output (code arrays, distinct ids) rather than with one Python string per token. They return
exactly what reading the whole file at once returned, errors included.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
from itertools import chain, compress
from pathlib import Path
from typing import Callable, Dict, Hashable, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from conure.data.errors import DataError
from conure.data.interactions import FirstSeenIndex, Interactions, ItemSequences
from conure.data.tasks import PROFILE_TRAIN
from conure.registry import DatasetKind, dataset_kind, register_dataset

__all__ = [
    "read_ml100k",
    "read_ml1m",
    "read_recbole",
    "read_conure",
    "read_seq_tsv",
    "read_attribute_csv",
    "load_dataset",
    "ML_AGE_BRACKETS",
    "ML1M_OCCUPATIONS",
]

PathLike = Union[str, os.PathLike]

# MovieLens-1M's age codes (its README): the code is the lower bound of the bracket. MovieLens-100K gives raw
# ages, which read_ml100k maps onto the same codes so that one "age_bracket" spec works on both.
ML_AGE_BRACKETS: Dict[str, str] = {
    "1": "Under 18",
    "18": "18-24",
    "25": "25-34",
    "35": "35-44",
    "45": "45-49",
    "50": "50-55",
    "56": "56+",
}
ML1M_OCCUPATIONS: Dict[str, str] = {
    str(i): name
    for i, name in enumerate(
        [
            "other",
            "academic/educator",
            "artist",
            "clerical/admin",
            "college/grad student",
            "customer service",
            "doctor/health care",
            "executive/managerial",
            "farmer",
            "homemaker",
            "K-12 student",
            "lawyer",
            "programmer",
            "retired",
            "sales/marketing",
            "scientist",
            "self-employed",
            "technician/engineer",
            "tradesman/craftsman",
            "unemployed",
            "writer",
        ]
    )
}
_GENDERS = ("F", "M")


def _age_code(age: int) -> str:
    for lower in (56, 50, 45, 35, 25, 18):
        if age >= lower:
            return str(lower)
    return "1"


# ---------------------------------------------------------------------------------------------- file helpers
def _check_file(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} not found", path=p)
    if p.is_dir():
        raise DataError(f"expected a {what}, found a directory", path=p)
    return p


def _read_text(path: PathLike, what: str = "file") -> str:
    """Whole file as text with universal newlines; UTF-8, falling back to Latin-1 (MovieLens is Latin-1)."""
    raw = _check_file(path, what).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    # Normalise Windows/old-Mac newlines; the BOM some editors write would otherwise glue onto the first id.
    return text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")


# Streaming readers take a file in blocks of about this many characters, cut at line ends: they hold one block's
# strings at a time, never the whole file's (tests shrink it to put block edges everywhere).
_BLOCK_CHARS = 1 << 20


def is_utf8(chunks: Iterable[bytes]) -> bool:
    """Whether the bytes of ``chunks``, joined, are valid UTF-8, checked chunk by chunk (an incremental decoder
    accepts exactly what one ``bytes.decode`` of the whole accepts, a character split between chunks included)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for chunk in chunks:
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _file_encoding(p: Path) -> str:
    """What :func:`_read_text` decodes ``p`` as: "utf-8" if the whole file is valid UTF-8, else "latin-1"."""
    with open(p, "rb") as f:
        return "utf-8" if is_utf8(iter(lambda: f.read(_BLOCK_CHARS), b"")) else "latin-1"


def _line_blocks(path: PathLike, what: str, whole: bool = False) -> Iterator[Tuple[int, str]]:
    """A text file's lines in blocks: yields ``(line number of the block's first line, block)``, a block being
    whole lines joined by "\\n" (so ``block.split("\\n")`` are its lines).

    The text is :func:`_read_text`'s (same encoding, newlines, leading BOMs dropped) and the lines are
    ``text.split("\\n")`` less a final empty one: the newline ending the last line opens no empty line (an empty
    file yields nothing).
    ``whole``: one block for the whole file, as does a path that is no regular file (a pipe: read once only).
    """
    p = _check_file(path, what)
    if whole or not p.is_file():
        text = _read_text(p, what)
        if text:
            yield 1, text[:-1] if text.endswith("\n") else text
        return
    # newline=None: "\r\n" and "\r" are read as "\n", also where a "\r\n" straddles two reads.
    with open(p, encoding=_file_encoding(p), newline=None) as f:
        lineno, pending, at_start = 1, [], True
        while True:
            chunk = f.read(_BLOCK_CHARS)
            if not chunk:
                break
            if at_start:  # drop leading BOMs, even a run of them longer than one read
                chunk = chunk.lstrip("\ufeff")
                at_start = not chunk
            cut = chunk.rfind("\n")
            if cut < 0:  # a line longer than a read: keep it whole
                pending.append(chunk)
                continue
            block = "".join(pending) + chunk[:cut] if pending else chunk[:cut]
            pending = [chunk[cut + 1 :]]
            yield lineno, block
            lineno += block.count("\n") + 1
        tail = "".join(pending)
        if tail:
            yield lineno, tail


def _drain(parts: List[np.ndarray], dtype: type) -> np.ndarray:
    """``np.concatenate(parts)``, dropping each part once copied (``parts`` ends empty): the code arrays read
    block by block are never held twice over."""
    out = np.empty(sum(len(part) for part in parts), dtype=dtype)
    pos = 0
    parts.reverse()
    while parts:
        part = parts.pop()
        out[pos : pos + len(part)] = part
        pos += len(part)
    return out


def _find(directory: Path, names: Sequence[str], what: str) -> Path:
    for name in names:
        if (directory / name).exists():
            return directory / name
    raise DataError(f"{what} not found (looked for {', '.join(names)})", path=directory)


def _diagnose_table(
    path: PathLike, text: str, sep: str, columns: Sequence[str], parsers: Sequence[Callable[[str], object]]
) -> None:
    """Slow path: raise a DataError for the first line that does not fit ``columns``; return if all fit."""
    ncols = len(columns)
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) != ncols:
            if len(parts) == 1:
                raise DataError(
                    f"expected {ncols} fields ({', '.join(columns)}) separated by {sep!r}, found no "
                    f"{sep!r} in {line[:60]!r}: wrong separator?",
                    path,
                    lineno,
                )
            raise DataError(
                f"expected {ncols} fields ({', '.join(columns)}) separated by {sep!r}, got {len(parts)}", path, lineno
            )
        for name, part, parse in zip(columns, parts, parsers):
            try:
                parse(part)
            except ValueError:
                raise DataError(
                    f"{name} {part!r} is not a valid {getattr(parse, '__name__', 'value')}", path, lineno
                ) from None


def _int_table(path: PathLike, text: str, sep: str, columns: Sequence[str]) -> np.ndarray:
    """Parse an all-integer table -> [n, ncols] int64, raising DataError with file:line on any defect."""
    ncols = len(columns)
    body = text
    if sep != "\t":
        # np.loadtxt takes one-character delimiters; a file that already contains tabs would then pass for a
        # correct one, so count separators first: each data line must hold exactly ncols - 1 of them.
        n_lines = sum(1 for ln in text.split("\n") if ln.strip())
        if "\t" in text or text.count(sep) != (ncols - 1) * n_lines:
            _diagnose_table(path, text, sep, columns, [int] * ncols)
            raise DataError(f"could not parse as {ncols} {sep!r}-separated fields", path)
        body = text.replace(sep, "\t")
    try:
        table = np.loadtxt(io.StringIO(body), dtype=np.int64, delimiter="\t", comments=None, ndmin=2)
    except ValueError as exc:
        _diagnose_table(path, text, sep, columns, [int] * ncols)
        raise DataError(f"could not parse: {exc}", path) from None
    if table.shape[0] == 0:
        raise DataError("file holds no data lines", path)
    if table.shape[1] != ncols:
        _diagnose_table(path, text, sep, columns, [int] * ncols)
        raise DataError(f"expected {ncols} columns, got {table.shape[1]}", path)
    return table


def _events_to_interactions(
    path: PathLike, table: np.ndarray, min_rating: Optional[float], source: str
) -> Interactions:
    """[n, 4] user/item/rating/timestamp int table -> Interactions (ties in time keep file order)."""
    if min_rating is not None:
        table = table[table[:, 2] >= min_rating]
        if table.shape[0] == 0:
            raise DataError(f"no interactions left with rating >= {min_rating}", path)
    return Interactions.from_events(table[:, 0], table[:, 1], table[:, 3].astype(np.float64), source=source)


def _attach_rows(
    inter: Interactions,
    path: PathLike,
    rows: List[Tuple[int, Hashable, Dict[str, Optional[str]]]],
    labels: Optional[Dict[str, Dict[str, str]]] = None,
) -> None:
    """Attach per-user attribute rows ``(line, raw user id, {name: value})``; users absent from the
    interactions are ignored (a users file usually lists everyone), duplicates are an error."""
    index = inter.user_index()
    names: List[str] = []
    for _, _, values in rows:
        for n in values:
            if n not in names:
                names.append(n)
    cols = {n: np.full(inter.num_users, None, dtype=object) for n in names}
    lines = np.zeros(inter.num_users, dtype=np.int64)
    seen: Dict[Hashable, int] = {}
    for lineno, uid, values in rows:
        if uid in seen:
            raise DataError(f"user {uid!r} listed twice (first on line {seen[uid]})", path, lineno)
        seen[uid] = lineno
        u = index.get(uid)
        if u is None:
            continue
        lines[u] = lineno
        for n, v in values.items():
            cols[n][u] = v
    for n in names:
        inter.set_attribute(n, cols[n], origin=(str(path), lines), labels=(labels or {}).get(n))


# ---------------------------------------------------------------------------------------------- MovieLens
def _ml_paths(path: PathLike, ratings: str, users: str) -> Tuple[Path, Optional[Path]]:
    p = Path(path)
    if p.is_dir():
        r = p / ratings
        if not r.exists():
            raise DataError(f"ratings file {ratings} not found in directory", path=p)
        u = p / users
    else:
        r, u = p, p.with_name(users)
    return r, (u if u.exists() else None)


def read_ml100k(path: PathLike, *, min_rating: Optional[float] = None) -> Interactions:
    """MovieLens-100K: ``u.data`` (user, item, rating, timestamp; tab-separated) and ``u.user``
    (``id|age|gender|occupation|zip``).

    ``path`` is the ``ml-100k`` directory or the ``u.data`` file (``u.user`` is then looked up beside it and is
    optional). ``min_rating`` keeps only ratings >= it (default: every rating counts as an interaction, as in
    Conure). Attributes: ``gender`` (M/F), ``age`` (years), ``age_bracket`` (ML-1M codes, see
    :data:`ML_AGE_BRACKETS`), ``occupation`` (name), ``zip``.
    """
    data_path, user_path = _ml_paths(path, "u.data", "u.user")
    text = _read_text(data_path, "MovieLens-100K ratings file")
    table = _int_table(data_path, text, "\t", ["user id", "item id", "rating", "timestamp"])
    inter = _events_to_interactions(data_path, table, min_rating, source=f"ml-100k:{data_path}")
    if user_path is not None:
        rows = []
        for lineno, line in enumerate(_read_text(user_path).split("\n"), start=1):
            if not line.strip():
                continue
            parts = line.split("|")
            if len(parts) != 5:
                raise DataError(
                    f"expected 5 '|'-separated fields (id|age|gender|occupation|zip), got "
                    f"{len(parts)}" + (": wrong separator?" if len(parts) == 1 else ""),
                    user_path,
                    lineno,
                )
            uid_s, age_s, gender, occupation, zip_code = (x.strip() for x in parts)
            try:
                uid = int(uid_s)
            except ValueError:
                raise DataError(f"user id {uid_s!r} is not an integer", user_path, lineno) from None
            age = None
            if age_s:
                try:
                    age = int(age_s)
                except ValueError:
                    raise DataError(f"age {age_s!r} is not an integer", user_path, lineno) from None
            if gender and gender not in _GENDERS:
                raise DataError(f"gender {gender!r} is not one of {_GENDERS}", user_path, lineno)
            rows.append(
                (
                    lineno,
                    uid,
                    {
                        "gender": gender or None,
                        "age": None if age is None else str(age),
                        "age_bracket": None if age is None else _age_code(age),
                        "occupation": occupation or None,
                        "zip": zip_code or None,
                    },
                )
            )
        _attach_rows(inter, user_path, rows, labels={"age_bracket": ML_AGE_BRACKETS})
    return inter


def read_ml1m(path: PathLike, *, min_rating: Optional[float] = None) -> Interactions:
    """MovieLens-1M: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) and ``users.dat``
    (``UserID::Gender::Age::Occupation::Zip-code``; age already a bracket code, occupation a code 0-20).

    ``path`` is the ``ml-1m`` directory or the ``ratings.dat`` file. Attributes: ``gender``, ``age`` and
    ``age_bracket`` (both the code), ``occupation`` (code; names in ``attribute_labels``), ``zip``.
    """
    data_path, user_path = _ml_paths(path, "ratings.dat", "users.dat")
    text = _read_text(data_path, "MovieLens-1M ratings file")
    table = _int_table(data_path, text, "::", ["UserID", "MovieID", "Rating", "Timestamp"])
    inter = _events_to_interactions(data_path, table, min_rating, source=f"ml-1m:{data_path}")
    if user_path is not None:
        rows = []
        for lineno, line in enumerate(_read_text(user_path).split("\n"), start=1):
            if not line.strip():
                continue
            parts = line.split("::")
            if len(parts) != 5:
                raise DataError(
                    f"expected 5 '::'-separated fields (UserID::Gender::Age::Occupation::Zip-code), "
                    f"got {len(parts)}" + (": wrong separator?" if len(parts) == 1 else ""),
                    user_path,
                    lineno,
                )
            uid_s, gender, age, occupation, zip_code = (x.strip() for x in parts)
            try:
                uid = int(uid_s)
            except ValueError:
                raise DataError(f"UserID {uid_s!r} is not an integer", user_path, lineno) from None
            if gender and gender not in _GENDERS:
                raise DataError(f"Gender {gender!r} is not one of {_GENDERS}", user_path, lineno)
            if age and age not in ML_AGE_BRACKETS:
                raise DataError(
                    f"Age {age!r} is not one of the codes {sorted(ML_AGE_BRACKETS, key=int)}", user_path, lineno
                )
            if occupation and occupation not in ML1M_OCCUPATIONS:
                raise DataError(f"Occupation {occupation!r} is not a code 0-20", user_path, lineno)
            rows.append(
                (
                    lineno,
                    uid,
                    {
                        "gender": gender or None,
                        "age": age or None,
                        "age_bracket": age or None,
                        "occupation": occupation or None,
                        "zip": zip_code or None,
                    },
                )
            )
        _attach_rows(
            inter,
            user_path,
            rows,
            labels={"age": ML_AGE_BRACKETS, "age_bracket": ML_AGE_BRACKETS, "occupation": ML1M_OCCUPATIONS},
        )
    return inter


# ---------------------------------------------------------------------------------------------- RecBole
RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")


def _recbole_header(path: Path, line: str, sep: str) -> List[Tuple[str, str]]:
    fields = []
    for raw in line.split(sep):
        name, colon, ftype = raw.strip().rpartition(":")
        if not colon or not name or ftype not in RECBOLE_TYPES:
            raise DataError(
                f"bad header field {raw.strip()!r}: expected name:type with type one of {', '.join(RECBOLE_TYPES)}",
                path,
                1,
            )
        fields.append((name, ftype))
    return fields


def _lines_regular(block: str, sep: str, ncols: int, nl: int) -> bool:
    """Every one of the ``nl`` lines of ``block`` holds exactly ncols - 1 separators (vectorised: separators
    become NUL bytes, counted between newlines). A NUL already in the text counts on its line, so that the
    total then disagrees: such a block reads line by line, as the whole-file reader read such a file."""
    if block.count(sep) != (ncols - 1) * nl:
        return False
    marks = np.frombuffer(block.replace(sep, "\x00").encode("utf-8", "surrogatepass"), dtype=np.uint8)
    newlines = np.flatnonzero(marks == 10)
    seps = np.cumsum(marks == 0)
    per_line = np.diff(np.concatenate([[0], seps[newlines], [seps[-1]]]))
    return bool((per_line == ncols - 1).all())


def _splits_by_line(sep: str) -> bool:
    """Whether files can be read in blocks of lines with this separator: not if it is empty or holds a newline
    or a NUL (:func:`_lines_regular`'s marker); such a file is read as one block."""
    return bool(sep) and not any(c in sep for c in "\n\r\x00")


def _joins_safely(sep: str) -> bool:
    """Whether lines joined by ``sep`` and split by it give each line its own fields (the fast path). Not so if a
    proper prefix of ``sep`` is also a suffix: with "::", a line ending in ":" would lend that ":" to a separator
    match across the join ("a::b:" then "c::d" read as a, b / :c, d). Such separators split line by line."""
    return not any(sep[:k] == sep[-k:] for k in range(1, len(sep)))


class _RecboleRows:
    """The rows of a RecBole atomic file, one block of lines at a time.

    Reading the header raises its errors. :meth:`blocks` yields ``(file line of each row, one list of raw field
    strings per field)``; a line with the wrong number of fields raises there (the first one in the file).

    The whole-file reader this replaces took one of two paths, and block by block both are kept. If every data
    line holds the right number of fields (and no NUL; no empty line but the last), each line is a row, a
    whitespace-only one too; otherwise whitespace-only lines are skipped. Which one applies is known at the end
    of the file only, so whitespace-only lines are always left out of the blocks and :meth:`blank_row` says,
    after the last block, the first of them that the one-path reading would have kept as a row (its fields are
    all empty after ``strip``, so it can only end in an "empty field" error).
    """

    def __init__(self, path: Path, sep: str) -> None:
        self.path, self.sep = path, sep
        self._by_line = _splits_by_line(sep)
        self._join = _joins_safely(sep)
        self._blocks = _line_blocks(path, "RecBole atomic file", whole=not self._by_line)
        lineno, block = next(self._blocks, (1, ""))
        head, newline, rest = block.partition("\n")
        if not head.strip():
            raise DataError("missing the typed header line (e.g. 'user_id:token\\titem_id:token')", path, 1)
        self.header = _recbole_header(path, head, sep)
        self.names = [n for n, _ in self.header]
        self._rest = [(2, rest)] if newline else []
        self._all_regular = True  # every data line held ncols fields (and the text no NUL)
        self._n_lines = 0
        self._empty_lines: List[int] = []  # line numbers of empty data lines (first two suffice)
        self._first_blank: Optional[int] = None  # first whitespace-only line left out of a regular block

    def blocks(self) -> Iterator[Tuple[Sequence[int], List[List[str]]]]:
        sep, ncols = self.sep, len(self.header)
        for lineno, block in chain(self._rest, self._blocks):
            nl = block.count("\n") + 1
            self._n_lines += nl
            # (empty lines matter with one field only: with more, they fail the field count)
            if len(self._empty_lines) < 2 and (not block or "\n\n" in block or block[0] == "\n" or block[-1] == "\n"):
                self._empty_lines += [lineno + i for i, ln in enumerate(block.split("\n")) if not ln][:2]
            # Fast path: with ncols fields on every line the block splits in one C call into a flat field list
            # whose j::ncols slices are the columns (~10x faster than splitting line by line).
            if self._join:
                flat = block.replace("\n", sep).split(sep)
                regular = len(flat) == ncols * nl and (ncols == 1 or _lines_regular(block, sep, ncols, nl))
            else:  # the same columns, split line by line (a NUL in the text is irregular, as in _lines_regular)
                per_line = [line.split(sep) for line in block.split("\n")]
                regular = "\x00" not in block and all(len(fields) == ncols for fields in per_line)
                flat = [f for fields in per_line for f in fields] if regular else []
            if regular and not self._by_line:  # the block is the whole file: apply the empty-line rule now
                regular = bool(block) and "\n\n" not in block and block[0] != "\n"
            if regular:
                numbers: Sequence[int] = range(lineno, lineno + nl)
                cols = [flat[j::ncols] for j in range(ncols)]
                # A whitespace-only line passes the field count only if it holds nothing but separators; its
                # first field is then blank too (the cheap test, ~15x faster than a regex over the block).
                if self._by_line and (ncols == 1 or not sep.strip()) and "" in map(str.strip, cols[0]):
                    keep = [bool(ln.strip()) for ln in block.split("\n")]
                    if not all(keep):
                        if self._first_blank is None:
                            self._first_blank = lineno + keep.index(False)
                        numbers = list(compress(numbers, keep))
                        cols = [list(compress(c, keep)) for c in cols]
                yield numbers, cols
                continue
            self._all_regular = False
            rows, numbers = [], []
            for i, line in enumerate(block.split("\n")):
                if not line.strip():
                    continue
                parts = line.split(sep)
                if len(parts) != ncols:
                    raise DataError(
                        f"expected {ncols} {sep!r}-separated fields ({', '.join(self.names)}), got "
                        f"{len(parts)}" + (": wrong separator?" if len(parts) == 1 else ""),
                        self.path,
                        lineno + i,
                    )
                rows.append(parts)
                numbers.append(lineno + i)
            yield numbers, [list(c) for c in zip(*rows)] if rows else [[] for _ in range(ncols)]

    def blank_row(self) -> Optional[int]:
        """After the last block: the line of the first whitespace-only line the whole-file reader would have
        kept as a row, or None (none, or it would have skipped them all)."""
        if self._first_blank is None or not self._all_regular:
            return None
        last = self._n_lines + 1
        empty = self._empty_lines
        if empty and (len(empty) > 1 or empty[0] != last or self._n_lines < 2):
            return None  # an empty line inside the data: line by line, blank lines skipped
        return self._first_blank


def _floats(path: Path, name: str, values: List[str], numbers: Sequence[int]) -> Tuple[np.ndarray, Optional[Exception]]:
    """``(values as float64, None)``, or ``(empty, the error)``: the first value ``float`` rejects, by line."""
    try:
        return np.array(values, dtype=np.float64), None
    except ValueError as exc:
        for v, ln in zip(values, numbers):
            try:
                float(v)
            except ValueError:
                return np.empty(0), DataError(f"{name} {v!r} is not a float", path, ln)
        return np.empty(0), exc  # numpy parses str with float(): not reached


def _recbole_user_row(
    path: Path, header: List[Tuple[str, str]], cols: List[List[str]], r: int, ln: int, uidx: int, user_field: str
) -> Tuple[int, str, Dict[str, Optional[str]]]:
    values: Dict[str, Optional[str]] = {}
    for j, (fname, ftype) in enumerate(header):
        if j == uidx:
            continue
        v = cols[j][r].strip()
        if v and ftype == "float":
            try:
                float(v)
            except ValueError:
                raise DataError(f"{fname} {v!r} is not a float", path, ln) from None
        values[fname] = v or None
    uid = cols[uidx][r].strip()
    if not uid:
        raise DataError(f"empty {user_field}", path, ln)
    return ln, uid, values


def read_recbole(
    path: PathLike,
    *,
    dataset: Optional[str] = None,
    user_field: str = "user_id",
    item_field: str = "item_id",
    time_field: Optional[str] = "timestamp",
    rating_field: Optional[str] = "rating",
    min_rating: Optional[float] = None,
    field_separator: str = "\t",
) -> Interactions:
    """RecBole atomic files: ``<name>.inter`` and optionally ``<name>.user``, unchanged.

    ``path`` is RecBole's dataset directory (``dataset/ml-100k`` holding ``ml-100k.inter``; ``dataset``
    overrides the name) or the ``.inter`` file itself. Headers are typed (``user_id:token item_id:token
    timestamp:float``); the field names default to RecBole's ``USER_ID_FIELD``/``ITEM_ID_FIELD``/``TIME_FIELD``.
    Without a time field, file order is the chronological order. Every non-user column of ``.user`` becomes an
    attribute (raw string; empty = missing; ``float`` columns are checked to parse).
    """
    p = Path(path)
    if p.is_dir():
        name = dataset or p.name
        inter_path = p / f"{name}.inter"
        if not inter_path.exists():
            raise DataError(f"RecBole interaction file {name}.inter not found in directory", path=p)
        user_path = p / f"{name}.user"
    else:
        inter_path, user_path = p, p.with_suffix(".user")
    rows = _RecboleRows(inter_path, field_separator)
    names = rows.names
    missing = next((f for f in (user_field, item_field) if f not in names), None)
    no_rating = min_rating is not None and rating_field not in names
    ui = ii = 0
    if missing is None:
        ui, ii = names.index(user_field), names.index(item_field)
    ri = names.index(rating_field) if min_rating is not None and not no_rating else None
    ti = names.index(time_field) if time_field is not None and time_field in names else None
    # The whole-file reader ran each check over every row before the next one (empty user ids, empty item ids,
    # ratings, timestamps), so the error to raise is the first of the earliest check that fails: each check's
    # first failing line is noted while reading, and building the output stops once an error is certain.
    n_rows, empty_user, empty_item = 0, None, None
    rating_error: Optional[Exception] = None
    time_error: Optional[Exception] = None
    users, items = FirstSeenIndex(), FirstSeenIndex()
    user_codes, item_codes, times = [], [], []
    for numbers, cols in rows.blocks():
        n_rows += len(numbers)
        if missing is not None or empty_user is not None:
            continue
        ucol = list(map(str.strip, cols[ui]))
        if "" in ucol:
            empty_user = numbers[ucol.index("")]
            continue
        icol = list(map(str.strip, cols[ii]))
        if empty_item is None and "" in icol:
            empty_item = numbers[icol.index("")]
        if empty_item is not None or no_rating:
            continue
        keep = None
        if ri is not None and rating_error is None:
            ratings, rating_error = _floats(inter_path, rating_field, cols[ri], numbers)
            keep = ratings >= min_rating
        if ti is not None and rating_error is None and time_error is None:
            stamps, time_error = _floats(inter_path, time_field, cols[ti], numbers)
        if rating_error is not None or time_error is not None:
            continue
        if keep is not None:
            ucol, icol = list(compress(ucol, keep)), list(compress(icol, keep))
            if ti is not None:
                stamps = stamps[keep]
        user_codes.append(users.codes(ucol, len(ucol)))
        item_codes.append(items.codes(icol, len(icol)))
        if ti is not None:
            times.append(stamps)
    if missing is not None:
        raise DataError(f"header lacks the field {missing!r} (has {', '.join(names)})", inter_path, 1)
    blank = rows.blank_row()
    if not n_rows and blank is None:
        raise DataError("file holds no data lines", inter_path)
    if blank is not None and (empty_user is None or blank < empty_user):
        empty_user = blank
    if empty_user is not None:
        raise DataError(f"empty {user_field}", inter_path, empty_user)
    if empty_item is not None:
        raise DataError(f"empty {item_field}", inter_path, empty_item)
    if no_rating:
        raise DataError(f"min_rating given but the header has no {rating_field!r} field", inter_path, 1)
    if rating_error is not None:
        raise rating_error
    if time_error is not None:
        raise time_error
    if not len(users):
        raise DataError(f"no interactions left with {rating_field} >= {min_rating}", inter_path)
    inter = Interactions.from_codes(
        users.uniques(),
        _drain(user_codes, np.int64),
        items.uniques(),
        _drain(item_codes, np.int64),
        _drain(times, np.float64) if ti is not None else None,
        source=f"recbole:{inter_path}",
    )
    if user_path.exists():
        urows = _RecboleRows(user_path, field_separator)
        uheader, unames = urows.header, urows.names
        uidx = unames.index(user_field) if user_field in unames else None
        attr_rows: List[Tuple[int, Hashable, Dict[str, Optional[str]]]] = []
        row_error: Optional[DataError] = None
        for unumbers, ucols in urows.blocks():
            if uidx is None or row_error is not None:
                continue
            try:
                for r, ln in enumerate(unumbers):
                    attr_rows.append(_recbole_user_row(user_path, uheader, ucols, r, ln, uidx, user_field))
            except DataError as exc:
                row_error = exc
        if uidx is None:
            raise DataError(f"header lacks the field {user_field!r} (has {', '.join(unames)})", user_path, 1)
        blank = urows.blank_row()
        if blank is not None and (row_error is None or blank < row_error.line):
            raise DataError(f"empty {user_field}", user_path, blank)
        if row_error is not None:
            raise row_error
        _attach_rows(inter, user_path, attr_rows)
    return inter


# ---------------------------------------------------------------------------------------------- Conure release
def _split_items(text: str, sep: str, pad_token: Optional[str]) -> List[str]:
    items = list(filter(None, map(str.strip, text.split(sep))))  # stripped ids, empty ones dropped
    if pad_token is not None and pad_token in items:
        items = [t for t in items if t != pad_token]
    return items


class _Histories:
    """Users' item sequences built as they are read: item codes laid end to end, in one shared index."""

    def __init__(self) -> None:
        self.index = FirstSeenIndex()
        self.codes: List[np.ndarray] = []
        self.lengths: List[np.ndarray] = []

    def add(self, flat: List[str], lengths: List[int]) -> None:
        """Append users whose sequences, laid end to end, are ``flat`` (``lengths``: items per user)."""
        self.codes.append(self.index.codes(flat, len(flat)))
        self.lengths.append(np.array(lengths, dtype=np.int64))

    def sequences(self) -> ItemSequences:
        """What ``ItemSequences.from_lists`` returns for the same sequences (ids numbered by first appearance);
        once, at the end (the parts are let go as they are copied)."""
        return ItemSequences.from_lengths(
            self.index.uniques(), _drain(self.codes, np.int64), _drain(self.lengths, np.int64)
        )


def _later_task_targets(
    num_users: int, line_users: List[int], index: FirstSeenIndex, codes: List[np.ndarray], lengths: List[int]
) -> ItemSequences:
    """A stream from the target codes of a later-task file (numbered by ``index`` in file order; line k
    belongs to user ``line_users[k]``, each user on one line at most), as ``ItemSequences.from_lists`` builds
    it from one target list per user in user order: item ids renumbered by first appearance in user order."""
    users = np.array(line_users, dtype=np.int64)
    lens = np.array(lengths, dtype=np.int64)
    flat = _drain(codes, np.int64)
    order = np.argsort(users, kind="stable")
    starts = np.cumsum(lens) - lens
    lens_o = lens[order]
    # positions in ``flat`` of the lines' targets taken in user order
    gather = np.repeat(starts[order] - (np.cumsum(lens_o) - lens_o), lens_o) + np.arange(int(lens_o.sum()))
    gathered = flat[gather]
    present, first = np.unique(gathered, return_index=True)
    by_first = present[np.argsort(first)]  # file-order codes in order of first appearance in user order
    rank = np.empty(len(index), dtype=np.int64)
    rank[by_first] = np.arange(len(by_first))
    per_user = np.zeros(num_users, dtype=np.int64)
    per_user[users] = lens
    return ItemSequences.from_lengths(index.uniques()[by_first], rank[gathered], per_user)


def read_conure(
    path: PathLike,
    *,
    streams: Optional[Mapping[str, PathLike]] = None,
    labels: Optional[Mapping[str, PathLike]] = None,
    pad_token: Optional[str] = None,
    item_separator: str = ",",
    target_separator: str = ",,",
) -> Interactions:
    """The Conure release format.

    ``path``: the task-1 file, one user per line, comma-separated item ids oldest first. ``streams``: name ->
    file of ``source items,,target items`` lines (an item task on another service: the targets become stream
    ``name``); ``labels``: name -> file of ``source items,,label`` lines (a profile task: the label becomes
    attribute ``name``). The release's files carry no user ids, so a later-task line is joined to the task-1
    user with the identical source sequence (the first not yet joined, in file order); a line with no such user
    becomes a new user. User ids are ``"<file stem>:<line>"``. ``pad_token`` (e.g. ``"0"`` for the release's
    pre-padded files) is dropped from sequences.
    """
    blocks = _line_blocks(path, "Conure task-1 file")
    path = Path(path)
    stem = path.stem
    user_ids: List[str] = []
    history = _Histories()
    for start, block in blocks:
        flat: List[str] = []
        lengths: List[int] = []
        for lineno, line in enumerate(block.split("\n"), start):
            items = _split_items(line, item_separator, pad_token)
            if not items:
                raise DataError("empty user: the line holds no item ids", path, lineno)
            user_ids.append(f"{stem}:{lineno}")
            flat += items
            lengths.append(len(items))
        history.add(flat, lengths)
    if not user_ids:
        raise DataError("file holds no users", path)

    # Later-task lines join task-1 users by identical history: a dict from each history (its item codes as
    # int32 bytes, 4 bytes per item) to the first user with it; next_same chains the users sharing one.
    num_task1, num_task1_items = len(user_ids), len(history.index)
    first_with: Dict[bytes, int] = {}
    next_same = np.full(num_task1, -1, dtype=np.int64)
    key_type = np.int32 if num_task1_items < 2**31 else np.int64
    if streams or labels:
        end = num_task1
        for codes, lengths in zip(reversed(history.codes), reversed(history.lengths)):
            keys = codes.astype(key_type)
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            for i in range(len(lengths) - 1, -1, -1):  # backwards, so that each chain runs in file order
                u = end - len(lengths) + i
                key = keys[offsets[i] : offsets[i + 1]].tobytes()
                next_same[u] = first_with.get(key, -1)
                first_with[key] = u
            end -= len(lengths)

    def history_key(items: List[str]) -> Optional[bytes]:
        """The lookup key of a source sequence; None if an id is not a task-1 item (no task-1 user has it)."""
        codes = list(map(history.index.get, items))
        if None in codes or max(codes) >= num_task1_items:
            return None
        return np.array(codes, dtype=key_type).tobytes()

    def read_pairs(file: PathLike, is_label: bool) -> Tuple[List[int], List[int], object]:
        """One later-task file: the user index and line of each line, and their labels (label files) or
        targets (stream files: codes in a file-order index, code arrays, count per line); appends the users
        task 1 does not list."""
        fblocks = _line_blocks(file, "Conure task file")
        fpath = Path(file)
        fstem = fpath.stem
        next_match: Dict[bytes, int] = {}  # history -> its next task-1 user not yet joined in this file
        line_users: List[int] = []
        line_numbers: List[int] = []
        labels_read: List[str] = []
        target_index = FirstSeenIndex()
        target_codes: List[np.ndarray] = []
        target_lengths: List[int] = []
        for start, block in fblocks:
            block_targets: List[str] = []
            new_flat: List[str] = []
            new_lengths: List[int] = []
            for lineno, line in enumerate(block.split("\n"), start):
                if target_separator not in line:
                    raise DataError(
                        f"expected 'source items{target_separator}target' (no {target_separator!r} found)",
                        fpath,
                        lineno,
                    )
                src_text, _, tgt_text = line.partition(target_separator)
                source = _split_items(src_text, item_separator, pad_token)
                if not source:
                    raise DataError("empty user: no source item ids", fpath, lineno)
                targets = _split_items(tgt_text, item_separator, None)
                if not targets:
                    raise DataError("label missing" if is_label else "no target item ids", fpath, lineno)
                if is_label and len(targets) != 1:
                    raise DataError(f"expected one label after {target_separator!r}, got {len(targets)}", fpath, lineno)
                key = history_key(source)
                u = -1
                if key is not None:
                    u = next_match[key] if key in next_match else first_with.get(key, -1)
                    if u >= 0:
                        next_match[key] = int(next_same[u])
                if u < 0:  # a user task 1 does not list: new user with this history
                    # (its new ids can wait for the end of the block: the lookups above ignore non-task-1 ids)
                    u = len(user_ids)
                    user_ids.append(f"{fstem}:{lineno}")
                    new_flat += source
                    new_lengths.append(len(source))
                line_users.append(u)
                line_numbers.append(lineno)
                if is_label:
                    labels_read.append(targets[0])
                else:
                    block_targets += targets
                    target_lengths.append(len(targets))
            if new_lengths:
                history.add(new_flat, new_lengths)
            if not is_label:
                target_codes.append(target_index.codes(block_targets, len(block_targets)))
        if is_label:
            return line_users, line_numbers, labels_read
        return line_users, line_numbers, (target_index, target_codes, target_lengths)

    stream_tables = {name: read_pairs(f, False) for name, f in (streams or {}).items()}
    label_tables = {name: (Path(f), read_pairs(f, True)) for name, f in (labels or {}).items()}
    uid_array = np.empty(len(user_ids), dtype=object)
    uid_array[:] = user_ids
    inter = Interactions(user_ids=uid_array, history=history.sequences(), source=f"conure:{path}")
    for name, (line_users, _, (target_index, target_codes, target_lengths)) in stream_tables.items():
        inter.streams[name] = _later_task_targets(len(user_ids), line_users, target_index, target_codes, target_lengths)
    for name, (fpath, (line_users, line_numbers, labels_read)) in label_tables.items():
        col = np.full(len(user_ids), None, dtype=object)
        lines = np.zeros(len(user_ids), dtype=np.int64)
        for u, lineno, label in zip(line_users, line_numbers, labels_read):
            col[u] = label
            lines[u] = lineno
        inter.set_attribute(name, col, origin=(str(fpath), lines))
    return inter


# ---------------------------------------------------------------------------------------------- sequence TSV
def read_attribute_csv(
    inter: Interactions, path: PathLike, *, user_column: str = "user_id", delimiter: str = ","
) -> Interactions:
    """Attach a user-attribute CSV (header row; ``user_column`` + one column per attribute) to ``inter``.

    Raw user ids are matched as strings (and as ints when ``inter``'s ids are ints). Empty cells are missing
    values; CSV users without interactions are ignored. Returns ``inter`` (modified in place).
    """
    text = _read_text(path, "attribute file")
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataError("empty attribute file: expected a header row", path, 1) from None
    if user_column not in header:
        hint = f" (the header {header[0]!r} has no {delimiter!r}: wrong separator?)" if len(header) == 1 else ""
        raise DataError(f"header lacks the user column {user_column!r}{hint}", path, 1)
    uidx = header.index(user_column)
    int_ids = inter.user_ids.dtype.kind in "iu"
    rows = []
    for row in reader:
        lineno = reader.line_num
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataError(f"expected {len(header)} fields ({', '.join(header)}), got {len(row)}", path, lineno)
        uid: Hashable = row[uidx].strip()
        if not uid:
            raise DataError(f"empty {user_column}", path, lineno)
        if int_ids:
            try:
                uid = int(uid)
            except ValueError:
                raise DataError(
                    f"{user_column} {uid!r} is not an integer like the interaction file's ids", path, lineno
                ) from None
        rows.append((lineno, uid, {h: (c.strip() or None) for j, (h, c) in enumerate(zip(header, row)) if j != uidx}))
    _attach_rows(inter, path, rows)
    return inter


def read_seq_tsv(
    path: PathLike,
    *,
    attributes: Optional[PathLike] = None,
    user_column: str = "user_id",
    item_separator: str = " ",
    attribute_delimiter: str = ",",
) -> Interactions:
    """Generic sequences: ``user_id<TAB>item item item ...`` (oldest first, one user per line), plus an
    optional user-attribute CSV (see :func:`read_attribute_csv`). Ids are kept as strings."""
    seen: Dict[str, int] = {}  # user id -> line; its keys are the user ids, in file order
    history = _Histories()
    for start, block in _line_blocks(path, "sequence file"):
        flat: List[str] = []
        lengths: List[int] = []
        for lineno, line in enumerate(block.split("\n"), start):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                raise DataError(
                    f"expected 'user_id<TAB>items', got {len(parts)} tab-separated fields"
                    + (": wrong separator?" if len(parts) == 1 else ""),
                    path,
                    lineno,
                )
            uid = parts[0].strip()
            if not uid:
                raise DataError("empty user id", path, lineno)
            if uid in seen:
                raise DataError(f"user {uid!r} listed twice (first on line {seen[uid]})", path, lineno)
            seen[uid] = lineno
            items = list(filter(None, parts[1].strip().split(item_separator)))
            if not items:
                raise DataError(f"empty user {uid!r}: no item ids", path, lineno)
            flat += items
            lengths.append(len(items))
        history.add(flat, lengths)
    if not seen:
        raise DataError("file holds no users", path)
    user_ids = np.empty(len(seen), dtype=object)
    user_ids[:] = list(seen)
    inter = Interactions(user_ids=user_ids, history=history.sequences(), source=f"seq-tsv:{path}")
    if attributes is not None:
        read_attribute_csv(inter, attributes, user_column=user_column, delimiter=attribute_delimiter)
    return inter


# ---------------------------------------------------------------------------------------------- dispatch
def load_dataset(kind: str, path: Optional[PathLike] = None, **options) -> Interactions:
    """Read a dataset of ``kind`` (a registered kind: :data:`conure.registry.DATASETS`) into :class:`Interactions`.

    ``options`` go to the kind's reader: :func:`read_ml100k`, :func:`read_ml1m`, :func:`read_recbole`,
    :func:`read_conure`, :func:`read_seq_tsv`, or for ``"synthetic"`` (no path)
    :func:`conure.data.synthetic.make_synthetic_interactions`.
    """
    spec = dataset_kind(kind)
    if not spec.needs_path:
        if path is not None:
            raise ValueError(f"the {kind} dataset takes no path")
        return spec.reader(**options)
    if path is None:
        raise ValueError(f"dataset kind {kind!r} needs a path")
    return spec.reader(path, **options)


def _movielens_specs(train: bool) -> List[Dict[str, object]]:
    def profile(name: str, attribute: str) -> Dict[str, object]:
        spec: Dict[str, object] = {"name": name, "kind": "profile", "attribute": attribute}
        return {**spec, "train": dict(PROFILE_TRAIN)} if train else spec  # one dict per task: --set edits one

    return [
        {"name": "next_item", "kind": "next_item", "windows": "all"},
        {"name": "later_items", "kind": "item", "split": "time", "window": 0.2},
        profile("gender", "gender"),
        profile("age", "age_bracket"),
        profile("occupation", "occupation"),
    ]


def _sequence_specs(train: bool) -> List[Dict[str, object]]:
    return [
        {"name": "next_item", "kind": "next_item"},
        {"name": "later_items", "kind": "item", "split": "time", "window": 0.2},
    ]


for _kind, _reader, _specs in (
    ("ml-100k", read_ml100k, _movielens_specs),
    ("ml-1m", read_ml1m, _movielens_specs),
    ("recbole", read_recbole, _sequence_specs),
    ("conure", read_conure, _sequence_specs),
    ("seq-tsv", read_seq_tsv, _sequence_specs),
):
    register_dataset(DatasetKind(_kind, _reader, _specs))

"""Readers: MovieLens-100K/1M, RecBole atomic files, the Conure release format, a generic sequence TSV.

Every reader returns an :class:`~conure.data.interactions.Interactions` (chronological per-user item
sequences + a per-user attribute table); :func:`load_dataset` dispatches on a dataset kind so that a config
file can name one. No pandas: numeric tables go through ``np.loadtxt`` (C parser, ~0.2 s per million lines),
token tables through plain ``str.split``. When the fast path rejects a file, a line-by-line pass finds the
first bad line so that every :class:`DataError` names the file and line.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Callable, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from conure.data.errors import DataError
from conure.data.interactions import Interactions, ItemSequences

__all__ = [
    "read_ml100k", "read_ml1m", "read_recbole", "read_conure", "read_seq_tsv", "read_attribute_csv",
    "load_dataset", "DATASET_KINDS", "ML_AGE_BRACKETS", "ML1M_OCCUPATIONS",
]

PathLike = Union[str, os.PathLike]

# MovieLens-1M's age codes (its README): the code is the lower bound of the bracket. MovieLens-100K gives raw
# ages, which read_ml100k maps onto the same codes so that one "age_bracket" spec works on both.
ML_AGE_BRACKETS: Dict[str, str] = {
    "1": "Under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49", "50": "50-55", "56": "56+",
}
ML1M_OCCUPATIONS: Dict[str, str] = {str(i): name for i, name in enumerate([
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer"])}
_GENDERS = ("F", "M")


def _age_code(age: int) -> str:
    for lower in (56, 50, 45, 35, 25, 18):
        if age >= lower:
            return str(lower)
    return "1"


# ---------------------------------------------------------------------------------------------- file helpers
def _read_text(path: PathLike, what: str = "file") -> str:
    """Whole file as text with universal newlines; UTF-8, falling back to Latin-1 (MovieLens is Latin-1)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} not found", path=p)
    if p.is_dir():
        raise DataError(f"expected a {what}, found a directory", path=p)
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    # Normalise Windows/old-Mac newlines; the BOM some editors write would otherwise glue onto the first id.
    return text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")


def _find(directory: Path, names: Sequence[str], what: str) -> Path:
    for name in names:
        if (directory / name).exists():
            return directory / name
    raise DataError(f"{what} not found (looked for {', '.join(names)})", path=directory)


def _diagnose_table(path: PathLike, text: str, sep: str, columns: Sequence[str],
                    parsers: Sequence[Callable[[str], object]]) -> None:
    """Slow path: raise a DataError for the first line that does not fit ``columns``; return if all fit."""
    ncols = len(columns)
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) != ncols:
            if len(parts) == 1:
                raise DataError(f"expected {ncols} fields ({', '.join(columns)}) separated by {sep!r}, found no "
                                f"{sep!r} in {line[:60]!r}: wrong separator?", path, lineno)
            raise DataError(f"expected {ncols} fields ({', '.join(columns)}) separated by {sep!r}, got "
                            f"{len(parts)}", path, lineno)
        for name, part, parse in zip(columns, parts, parsers):
            try:
                parse(part)
            except ValueError:
                raise DataError(f"{name} {part!r} is not a valid {getattr(parse, '__name__', 'value')}",
                                path, lineno) from None


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


def _events_to_interactions(path: PathLike, table: np.ndarray, min_rating: Optional[float],
                            source: str) -> Interactions:
    """[n, 4] user/item/rating/timestamp int table -> Interactions (ties in time keep file order)."""
    if min_rating is not None:
        table = table[table[:, 2] >= min_rating]
        if table.shape[0] == 0:
            raise DataError(f"no interactions left with rating >= {min_rating}", path)
    return Interactions.from_events(table[:, 0], table[:, 1], table[:, 3].astype(np.float64), source=source)


def _attach_rows(inter: Interactions, path: PathLike, rows: List[Tuple[int, Hashable, Dict[str, Optional[str]]]],
                 labels: Optional[Dict[str, Dict[str, str]]] = None) -> None:
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
                raise DataError(f"expected 5 '|'-separated fields (id|age|gender|occupation|zip), got "
                                f"{len(parts)}" + (": wrong separator?" if len(parts) == 1 else ""),
                                user_path, lineno)
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
            rows.append((lineno, uid, {
                "gender": gender or None, "age": None if age is None else str(age),
                "age_bracket": None if age is None else _age_code(age),
                "occupation": occupation or None, "zip": zip_code or None}))
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
                raise DataError(f"expected 5 '::'-separated fields (UserID::Gender::Age::Occupation::Zip-code), "
                                f"got {len(parts)}" + (": wrong separator?" if len(parts) == 1 else ""),
                                user_path, lineno)
            uid_s, gender, age, occupation, zip_code = (x.strip() for x in parts)
            try:
                uid = int(uid_s)
            except ValueError:
                raise DataError(f"UserID {uid_s!r} is not an integer", user_path, lineno) from None
            if gender and gender not in _GENDERS:
                raise DataError(f"Gender {gender!r} is not one of {_GENDERS}", user_path, lineno)
            if age and age not in ML_AGE_BRACKETS:
                raise DataError(f"Age {age!r} is not one of the codes {sorted(ML_AGE_BRACKETS, key=int)}",
                                user_path, lineno)
            if occupation and occupation not in ML1M_OCCUPATIONS:
                raise DataError(f"Occupation {occupation!r} is not a code 0-20", user_path, lineno)
            rows.append((lineno, uid, {"gender": gender or None, "age": age or None, "age_bracket": age or None,
                                       "occupation": occupation or None, "zip": zip_code or None}))
        _attach_rows(inter, user_path, rows,
                     labels={"age": ML_AGE_BRACKETS, "age_bracket": ML_AGE_BRACKETS, "occupation": ML1M_OCCUPATIONS})
    return inter


# ---------------------------------------------------------------------------------------------- RecBole
RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")


def _recbole_header(path: Path, line: str, sep: str) -> List[Tuple[str, str]]:
    fields = []
    for raw in line.split(sep):
        name, colon, ftype = raw.strip().rpartition(":")
        if not colon or not name or ftype not in RECBOLE_TYPES:
            raise DataError(f"bad header field {raw.strip()!r}: expected name:type with type one of "
                            f"{', '.join(RECBOLE_TYPES)}", path, 1)
        fields.append((name, ftype))
    return fields


def _recbole_columns(path: Path, sep: str) -> Tuple[List[Tuple[str, str]], List[List[str]], List[int]]:
    """(header fields, one list of raw strings per field, 1-based file line of each data row).

    Fast path: with no blank lines, the whole body splits in one C call into a flat field list whose
    ``j::ncols`` slices are the columns (~10x faster than splitting line by line). Any irregularity falls
    back to the line-by-line pass, which names the offending line.
    """
    text = _read_text(path, "RecBole atomic file")
    head, _, body = text.partition("\n")
    if not head.strip():
        raise DataError("missing the typed header line (e.g. 'user_id:token\\titem_id:token')", path, 1)
    header = _recbole_header(path, head, sep)
    ncols = len(header)
    body = body[:-1] if body.endswith("\n") else body
    if body and "\n\n" not in body and not body.startswith("\n"):
        flat = body.replace("\n", sep).split(sep)
        n_rows = body.count("\n") + 1
        if len(flat) == ncols * n_rows:
            # Same count could still hide one short and one long line: verify the separators per line.
            if ncols == 1 or body.count(sep) == (ncols - 1) * n_rows and _rows_regular(body, sep, ncols):
                return header, [flat[j::ncols] for j in range(ncols)], list(range(2, n_rows + 2))
    rows, numbers = [], []
    names = [n for n, _ in header]
    for lineno, line in enumerate(body.split("\n"), start=2):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) != ncols:
            raise DataError(f"expected {ncols} {sep!r}-separated fields ({', '.join(names)}), got {len(parts)}"
                            + (": wrong separator?" if len(parts) == 1 else ""), path, lineno)
        rows.append(parts)
        numbers.append(lineno)
    cols = [list(c) for c in zip(*rows)] if rows else [[] for _ in range(ncols)]
    return header, cols, numbers


def _rows_regular(body: str, sep: str, ncols: int) -> bool:
    """Every line holds ncols - 1 separators (checked on the flat field list's line breaks, vectorised)."""
    marks = np.frombuffer(body.replace(sep, "\x00").encode("utf-8", "surrogatepass"), dtype=np.uint8)
    newlines = np.flatnonzero(marks == 10)
    seps = np.cumsum(marks == 0)
    per_line = np.diff(np.concatenate([[0], seps[newlines], [seps[-1]]]))
    return bool((per_line == ncols - 1).all())


def _float_column(path: Path, name: str, values: Sequence[str], numbers: List[int]) -> np.ndarray:
    try:
        return np.array(values, dtype=np.float64)
    except ValueError:
        for v, ln in zip(values, numbers):
            try:
                float(v)
            except ValueError:
                raise DataError(f"{name} {v!r} is not a float", path, ln) from None
        raise


def read_recbole(path: PathLike, *, dataset: Optional[str] = None, user_field: str = "user_id",
                 item_field: str = "item_id", time_field: Optional[str] = "timestamp",
                 rating_field: Optional[str] = "rating", min_rating: Optional[float] = None,
                 field_separator: str = "\t") -> Interactions:
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
    header, cols, numbers = _recbole_columns(inter_path, field_separator)
    names = [n for n, _ in header]
    for needed in (user_field, item_field):
        if needed not in names:
            raise DataError(f"header lacks the field {needed!r} (has {', '.join(names)})", inter_path, 1)
    if not numbers:
        raise DataError("file holds no data lines", inter_path)
    users = [s.strip() for s in cols[names.index(user_field)]]
    items = [s.strip() for s in cols[names.index(item_field)]]
    for col, what in ((users, user_field), (items, item_field)):
        if "" in col:
            raise DataError(f"empty {what}", inter_path, numbers[col.index("")])
    keep = None
    if min_rating is not None:
        if rating_field not in names:
            raise DataError(f"min_rating given but the header has no {rating_field!r} field", inter_path, 1)
        keep = _float_column(inter_path, rating_field, cols[names.index(rating_field)], numbers) >= min_rating
    timestamps = None
    if time_field is not None and time_field in names:
        timestamps = _float_column(inter_path, time_field, cols[names.index(time_field)], numbers)
    if keep is not None:
        users = [u for u, k in zip(users, keep) if k]
        items = [i for i, k in zip(items, keep) if k]
        timestamps = None if timestamps is None else timestamps[keep]
        if not users:
            raise DataError(f"no interactions left with {rating_field} >= {min_rating}", inter_path)
    inter = Interactions.from_events(users, items, timestamps, source=f"recbole:{inter_path}")
    if user_path.exists():
        uheader, ucols, unumbers = _recbole_columns(user_path, field_separator)
        unames = [n for n, _ in uheader]
        if user_field not in unames:
            raise DataError(f"header lacks the field {user_field!r} (has {', '.join(unames)})", user_path, 1)
        uidx = unames.index(user_field)
        attr_rows = []
        for r, ln in enumerate(unumbers):
            values: Dict[str, Optional[str]] = {}
            for j, (fname, ftype) in enumerate(uheader):
                v = ucols[j][r].strip()
                if j == uidx:
                    continue
                if v and ftype == "float":
                    try:
                        float(v)
                    except ValueError:
                        raise DataError(f"{fname} {v!r} is not a float", user_path, ln) from None
                values[fname] = v or None
            uid = ucols[uidx][r].strip()
            if not uid:
                raise DataError(f"empty {user_field}", user_path, ln)
            attr_rows.append((ln, uid, values))
        _attach_rows(inter, user_path, attr_rows)
    return inter


# ---------------------------------------------------------------------------------------------- Conure release
def _record_lines(text: str) -> List[str]:
    """Lines of a one-record-per-line file; the newline ending the last line opens no (empty) record."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _split_items(text: str, sep: str, pad_token: Optional[str]) -> List[str]:
    items = [t.strip() for t in text.split(sep)]
    return [t for t in items if t and t != pad_token]


def read_conure(path: PathLike, *, streams: Optional[Mapping[str, PathLike]] = None,
                labels: Optional[Mapping[str, PathLike]] = None, pad_token: Optional[str] = None,
                item_separator: str = ",", target_separator: str = ",,") -> Interactions:
    """The Conure release format.

    ``path``: the task-1 file, one user per line, comma-separated item ids oldest first. ``streams``: name ->
    file of ``source items,,target items`` lines (an item task on another service: the targets become stream
    ``name``); ``labels``: name -> file of ``source items,,label`` lines (a profile task: the label becomes
    attribute ``name``). The release's files carry no user ids, so a later-task line is joined to the task-1
    user with the identical source sequence (the first not yet joined, in file order); a line with no such user
    becomes a new user. User ids are ``"<file stem>:<line>"``. ``pad_token`` (e.g. ``"0"`` for the release's
    pre-padded files) is dropped from sequences.
    """
    text = _read_text(path, "Conure task-1 file")
    path = Path(path)
    user_ids: List[str] = []
    sequences: List[List[str]] = []
    for lineno, line in enumerate(_record_lines(text), start=1):
        items = _split_items(line, item_separator, pad_token)
        if not items:
            raise DataError("empty user: the line holds no item ids", path, lineno)
        user_ids.append(f"{path.stem}:{lineno}")
        sequences.append(items)
    if not sequences:
        raise DataError("file holds no users", path)
    by_sequence: Dict[Tuple[str, ...], List[int]] = {}
    for u, seq in enumerate(sequences):
        by_sequence.setdefault(tuple(seq), []).append(u)

    def read_pairs(file: PathLike, is_label: bool) -> Dict[int, Tuple[int, List[str]]]:
        """user index -> (line, targets) for one later-task file, appending unmatched users."""
        ftext = _read_text(file, "Conure task file")
        fpath = Path(file)
        taken: Dict[Tuple[str, ...], int] = {}
        out: Dict[int, Tuple[int, List[str]]] = {}
        for lineno, line in enumerate(_record_lines(ftext), start=1):
            if target_separator not in line:
                raise DataError(f"expected 'source items{target_separator}target' (no {target_separator!r} found)",
                                fpath, lineno)
            src_text, _, tgt_text = line.partition(target_separator)
            source = _split_items(src_text, item_separator, pad_token)
            if not source:
                raise DataError("empty user: no source item ids", fpath, lineno)
            targets = _split_items(tgt_text, item_separator, None)
            if not targets:
                raise DataError("label missing" if is_label else "no target item ids", fpath, lineno)
            if is_label and len(targets) != 1:
                raise DataError(f"expected one label after {target_separator!r}, got {len(targets)}", fpath, lineno)
            key = tuple(source)
            candidates = by_sequence.get(key, [])
            k = taken.get(key, 0)
            if k < len(candidates):
                u = candidates[k]
                taken[key] = k + 1
            else:  # a user task 1 does not list: new user with this history
                u = len(sequences)
                user_ids.append(f"{fpath.stem}:{lineno}")
                sequences.append(source)
            out[u] = (lineno, targets)
        return out

    stream_tables = {name: read_pairs(f, False) for name, f in (streams or {}).items()}
    label_tables = {name: (Path(f), read_pairs(f, True)) for name, f in (labels or {}).items()}
    uid_array = np.empty(len(user_ids), dtype=object)
    uid_array[:] = user_ids
    inter = Interactions(user_ids=uid_array, history=ItemSequences.from_lists(sequences),
                         source=f"conure:{path}")
    for name, table in stream_tables.items():
        inter.streams[name] = ItemSequences.from_lists([table[u][1] if u in table else []
                                                        for u in range(len(user_ids))])
    for name, (fpath, table) in label_tables.items():
        col = np.full(len(user_ids), None, dtype=object)
        lines = np.zeros(len(user_ids), dtype=np.int64)
        for u, (lineno, targets) in table.items():
            col[u] = targets[0]
            lines[u] = lineno
        inter.set_attribute(name, col, origin=(str(fpath), lines))
    return inter


# ---------------------------------------------------------------------------------------------- sequence TSV
def read_attribute_csv(inter: Interactions, path: PathLike, *, user_column: str = "user_id",
                       delimiter: str = ",") -> Interactions:
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
                raise DataError(f"{user_column} {uid!r} is not an integer like the interaction file's ids",
                                path, lineno) from None
        rows.append((lineno, uid, {h: (c.strip() or None) for j, (h, c) in enumerate(zip(header, row))
                                   if j != uidx}))
    _attach_rows(inter, path, rows)
    return inter


def read_seq_tsv(path: PathLike, *, attributes: Optional[PathLike] = None, user_column: str = "user_id",
                 item_separator: str = " ", attribute_delimiter: str = ",") -> Interactions:
    """Generic sequences: ``user_id<TAB>item item item ...`` (oldest first, one user per line), plus an
    optional user-attribute CSV (see :func:`read_attribute_csv`). Ids are kept as strings."""
    text = _read_text(path, "sequence file")
    pairs: List[Tuple[str, List[str]]] = []
    seen: Dict[str, int] = {}
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataError(f"expected 'user_id<TAB>items', got {len(parts)} tab-separated fields"
                            + (": wrong separator?" if len(parts) == 1 else ""), path, lineno)
        uid = parts[0].strip()
        if not uid:
            raise DataError("empty user id", path, lineno)
        if uid in seen:
            raise DataError(f"user {uid!r} listed twice (first on line {seen[uid]})", path, lineno)
        seen[uid] = lineno
        items = [t for t in parts[1].strip().split(item_separator) if t]
        if not items:
            raise DataError(f"empty user {uid!r}: no item ids", path, lineno)
        pairs.append((uid, items))
    if not pairs:
        raise DataError("file holds no users", path)
    inter = Interactions.from_sequences(pairs, source=f"seq-tsv:{path}")
    if attributes is not None:
        read_attribute_csv(inter, attributes, user_column=user_column, delimiter=attribute_delimiter)
    return inter


# ---------------------------------------------------------------------------------------------- dispatch
DATASET_KINDS = ("ml-100k", "ml-1m", "recbole", "conure", "seq-tsv", "synthetic")


def load_dataset(kind: str, path: Optional[PathLike] = None, **options) -> Interactions:
    """Read a dataset of ``kind`` (one of :data:`DATASET_KINDS`) into :class:`Interactions`.

    ``options`` go to the reader: :func:`read_ml100k`, :func:`read_ml1m`, :func:`read_recbole`,
    :func:`read_conure`, :func:`read_seq_tsv`, or for ``"synthetic"`` (no path)
    :func:`conure.data.synthetic.make_synthetic_interactions`.
    """
    if kind == "synthetic":
        from conure.data.synthetic import make_synthetic_interactions
        if path is not None:
            raise ValueError("the synthetic dataset takes no path")
        return make_synthetic_interactions(**options)
    readers: Dict[str, Callable[..., Interactions]] = {
        "ml-100k": read_ml100k, "ml-1m": read_ml1m, "recbole": read_recbole, "conure": read_conure,
        "seq-tsv": read_seq_tsv,
    }
    if kind not in readers:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {DATASET_KINDS}")
    if path is None:
        raise ValueError(f"dataset kind {kind!r} needs a path")
    return readers[kind](path, **options)

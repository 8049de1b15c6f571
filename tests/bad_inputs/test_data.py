"""Bad inputs of the data readers and the task sequence builder (every DataError starts with path[:line]:)."""

import pytest

from ._framework import behaves, raises

ML100K = "1\t10\t5\t100\n1\t11\t3\t101\n2\t10\t4\t102\n"


ML1M = "1::10::5::100\n1::11::3::101\n2::10::4::102\n"


def _reader(fn, *files, path=None, **kw):
    """run(ctx): write ``files`` ((relpath, content) pairs, bytes = binary) and call ``fn(path or first file)``."""

    def run(ctx):
        written = [ctx.write(rel, content, isinstance(content, bytes)) for rel, content in files]
        target = ctx.tmp / path if path is not None else written[0]
        return fn(
            target, **{k: (ctx.tmp / v if isinstance(v, str) and k in ("attributes",) else v) for k, v in kw.items()}
        )

    return run


def _conure_with(kind, rel, content):
    def run(ctx):
        from conure.data import read_conure

        main = ctx.write("c/main.csv", "1,2,3\n4,5\n")
        f = ctx.write(rel, content)
        return read_conure(main, **{kind: {"x": f}})

    return run


def _attr_csv(content):
    def run(ctx):
        from conure.data import read_attribute_csv, read_seq_tsv

        inter = read_seq_tsv(ctx.write("a/seq.tsv", "u\t1 2\nv\t3\n"))
        return read_attribute_csv(inter, ctx.write("a/attr.csv", content))

    return run


def _recbole_user(content):
    def run(ctx):
        from conure.data import read_recbole

        ctx.write("rbu/rbu.inter", "user_id:token\titem_id:token\n1\t2\n")
        ctx.write("rbu/rbu.user", content)
        return read_recbole(ctx.tmp / "rbu")

    return run


def _check_interactions(users, events):
    def check(inter, ctx):
        assert inter.num_users == users and inter.num_events == events, inter

    return check


def _specs(specs, **kw):
    def run(ctx):
        from conure.data import build_task_sequence, make_synthetic_interactions

        inter = make_synthetic_interactions(num_users=50, num_items=20, seq_len=6, seed=0)
        return build_task_sequence(inter, specs, **kw)

    return run


def _d(name):
    from conure import data

    return getattr(data, name)


@raises(
    "data.ml100k.missing",
    "read_ml100k",
    "path does not exist",
    _d("DataError"),
    "MovieLens-100K ratings file not found",
)
def test_data_ml100k_missing(ctx):
    return _d("read_ml100k")(ctx.tmp / "nope")


@raises(
    "data.ml100k.dir_without_file",
    "read_ml100k",
    "directory without u.data",
    _d("DataError"),
    "ratings file u.data not found in directory",
)
def test_data_ml100k_dir_without_file(ctx):
    return _d("read_ml100k")(ctx.tmp)


@raises("data.ml100k.empty", "read_ml100k", "empty file", _d("DataError"), "u.data: file holds no data lines")
def test_data_ml100k_empty(ctx):
    return _reader(_d("read_ml100k"), ("e/u.data", ""))(ctx)


@raises(
    "data.ml100k.three_fields",
    "read_ml100k",
    "3 fields per line",
    _d("DataError"),
    "u.data:1: expected 4 fields (user id, item id, rating, timestamp) separated by '\\t', got 3",
)
def test_data_ml100k_three_fields(ctx):
    return _reader(_d("read_ml100k"), ("f3/u.data", "1\t10\t5\n"))(ctx)


@raises("data.ml100k.wrong_separator", "read_ml100k", "comma-separated", _d("DataError"), "wrong separator?")
def test_data_ml100k_wrong_separator(ctx):
    return _reader(_d("read_ml100k"), ("cs/u.data", "1,10,5,100\n"))(ctx)


@raises(
    "data.ml100k.not_int",
    "read_ml100k",
    "a non-integer item id",
    _d("DataError"),
    "u.data:1: item id 'x' is not a valid int",
)
def test_data_ml100k_not_int(ctx):
    return _reader(_d("read_ml100k"), ("ni/u.data", "1\tx\t5\t100\n"))(ctx)


@raises(
    "data.ml100k.int64_overflow",
    "read_ml100k",
    "an id beyond int64",
    _d("DataError"),
    "could not convert string '99999999999999999999' to int64",
)
def test_data_ml100k_int64_overflow(ctx):
    return _reader(_d("read_ml100k"), ("hi/u.data", "1\t99999999999999999999\t5\t100\n"))(ctx)


@raises(
    "data.ml100k.truncated", "read_ml100k", "file truncated mid-line", _d("DataError"), "u.data:4: expected 4 fields"
)
def test_data_ml100k_truncated(ctx):
    return _reader(_d("read_ml100k"), ("tr/u.data", ML100K + "3\t1"))(ctx)


@raises("data.ml100k.binary", "read_ml100k", "binary garbage", _d("DataError"), "u.data:1: expected 4 fields")
def test_data_ml100k_binary(ctx):
    return _reader(_d("read_ml100k"), ("bi/u.data", bytes(range(256)) * 4))(ctx)


@raises(
    "data.ml100k.user_gender",
    "read_ml100k",
    "u.user with gender 'X'",
    _d("DataError"),
    "u.user:1: gender 'X' is not one of ('F', 'M')",
)
def test_data_ml100k_user_gender(ctx):
    return _reader(_d("read_ml100k"), ("ug/u.data", ML100K), ("ug/u.user", "1|20|X|eng|123\n"), path="ug")(ctx)


@raises(
    "data.ml100k.user_fields",
    "read_ml100k",
    "u.user with 4 fields",
    _d("DataError"),
    "u.user:1: expected 5 '|'-separated fields (id|age|gender|occupation|zip), got 4",
)
def test_data_ml100k_user_fields(ctx):
    return _reader(_d("read_ml100k"), ("uf/u.data", ML100K), ("uf/u.user", "1|20|M|eng\n"), path="uf")(ctx)


@raises(
    "data.ml100k.user_duplicate",
    "read_ml100k",
    "u.user lists a user twice",
    _d("DataError"),
    "u.user:2: user 1 listed twice (first on line 1)",
)
def test_data_ml100k_user_duplicate(ctx):
    return _reader(_d("read_ml100k"), ("ud/u.data", ML100K), ("ud/u.user", "1|20|M|e|1\n1|20|M|e|1\n"), path="ud")(ctx)


@behaves(
    "data.ml100k.crlf_bom", "read_ml100k", "Windows newlines and a UTF-8 BOM", "accepted", _check_interactions(2, 3)
)
def test_data_ml100k_crlf_bom(ctx):
    return _reader(_d("read_ml100k"), ("bom/u.data", "\ufeff" + ML100K.replace("\n", "\r\n")))(ctx)


@raises(
    "data.ml1m.tab_separated",
    "read_ml1m",
    "tab-separated ratings.dat",
    _d("DataError"),
    "ratings.dat:1: expected 4 fields (UserID, MovieID, Rating, Timestamp) separated by '::', found no '::'",
)
def test_data_ml1m_tab_separated(ctx):
    return _reader(_d("read_ml1m"), ("m1/ratings.dat", ML100K))(ctx)


@raises(
    "data.ml1m.mixed_separators",
    "read_ml1m",
    "a tab-separated line among '::' lines",
    _d("DataError"),
    "ratings.dat:2: expected 4 fields",
)
def test_data_ml1m_mixed_separators(ctx):
    return _reader(_d("read_ml1m"), ("m2/ratings.dat", "1::10::5::100\n1\t2\t3\t4\n"))(ctx)


@raises(
    "data.ml1m.min_rating",
    "read_ml1m",
    "min_rating above every rating",
    _d("DataError"),
    "no interactions left with rating >= 6",
)
def test_data_ml1m_min_rating(ctx):
    return _reader(_d("read_ml1m"), ("m3/ratings.dat", ML1M), min_rating=6)(ctx)


@raises(
    "data.ml1m.user_age",
    "read_ml1m",
    "users.dat age 17 (not a code)",
    _d("DataError"),
    "users.dat:1: Age '17' is not one of the codes",
)
def test_data_ml1m_user_age(ctx):
    return _reader(_d("read_ml1m"), ("m4/ratings.dat", ML1M), ("m4/users.dat", "1::M::17::3::123\n"), path="m4")(ctx)


@raises(
    "data.ml1m.user_occupation",
    "read_ml1m",
    "users.dat occupation 21",
    _d("DataError"),
    "users.dat:1: Occupation '21' is not a code 0-20",
)
def test_data_ml1m_user_occupation(ctx):
    return _reader(_d("read_ml1m"), ("m5/ratings.dat", ML1M), ("m5/users.dat", "1::M::18::21::123\n"), path="m5")(ctx)


@raises(
    "data.recbole.no_header",
    "read_recbole",
    "first line blank",
    _d("DataError"),
    "r1.inter:1: missing the typed header line",
)
def test_data_recbole_no_header(ctx):
    return _reader(_d("read_recbole"), ("r1/r1.inter", "\n1\t2\n"))(ctx)


@raises(
    "data.recbole.untyped_header",
    "read_recbole",
    "header without :type",
    _d("DataError"),
    "bad header field 'user_id': expected name:type",
)
def test_data_recbole_untyped_header(ctx):
    return _reader(_d("read_recbole"), ("r2/r2.inter", "user_id\titem_id\n1\t2\n"))(ctx)


@raises(
    "data.recbole.missing_field",
    "read_recbole",
    "header lacks item_id",
    _d("DataError"),
    "r3.inter:1: header lacks the field 'item_id' (has user_id, rating)",
)
def test_data_recbole_missing_field(ctx):
    return _reader(_d("read_recbole"), ("r3/r3.inter", "user_id:token\trating:float\n1\t2\n"))(ctx)


@raises("data.recbole.no_rows", "read_recbole", "header only", _d("DataError"), "file holds no data lines")
def test_data_recbole_no_rows(ctx):
    return _reader(_d("read_recbole"), ("r4/r4.inter", "user_id:token\titem_id:token\n"))(ctx)


@raises(
    "data.recbole.short_row",
    "read_recbole",
    "a row with 1 of 2 fields",
    _d("DataError"),
    "r5.inter:3: expected 2 '\\t'-separated fields (user_id, item_id), got 1",
)
def test_data_recbole_short_row(ctx):
    return _reader(_d("read_recbole"), ("r5/r5.inter", "user_id:token\titem_id:token\n1\t2\n3\n"))(ctx)


@raises("data.recbole.empty_user", "read_recbole", "an empty user_id", _d("DataError"), "r6.inter:2: empty user_id")
def test_data_recbole_empty_user(ctx):
    return _reader(_d("read_recbole"), ("r6/r6.inter", "user_id:token\titem_id:token\n\t2\n"))(ctx)


@raises(
    "data.recbole.bad_float",
    "read_recbole",
    "timestamp 'yesterday'",
    _d("DataError"),
    "r7.inter:2: timestamp 'yesterday' is not a float",
)
def test_data_recbole_bad_float(ctx):
    return _reader(
        _d("read_recbole"), ("r7/r7.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\tyesterday\n")
    )(ctx)


@raises(
    "data.recbole.min_rating_no_field",
    "read_recbole",
    "min_rating without a rating field",
    _d("DataError"),
    "min_rating given but the header has no 'rating' field",
)
def test_data_recbole_min_rating_no_field(ctx):
    return _reader(_d("read_recbole"), ("r8/r8.inter", "user_id:token\titem_id:token\n1\t2\n"), min_rating=3)(ctx)


@raises(
    "data.recbole.user_bad_float",
    "read_recbole",
    ".user float column 'old'",
    _d("DataError"),
    "rbu.user:2: age 'old' is not a float",
)
def test_data_recbole_user_bad_float(ctx):
    return _recbole_user("user_id:token\tage:float\n1\told\n")(ctx)


@raises(
    "data.recbole.user_no_user_field",
    "read_recbole",
    ".user without user_id",
    _d("DataError"),
    "rbu.user:1: header lacks the field 'user_id'",
)
def test_data_recbole_user_no_user_field(ctx):
    return _recbole_user("uid:token\tage:float\n1\t3\n")(ctx)


@behaves(
    "data.recbole.nan_timestamp",
    "read_recbole",
    "timestamp 'nan'",
    "accepted: NaN timestamps sort last within the user (no error)",
    lambda inter, c: inter.sequence(0) == ["3", "2"] or pytest.fail(str(inter.sequence(0))),
)
def test_data_recbole_nan_timestamp(ctx):
    return _reader(
        _d("read_recbole"), ("r9/r9.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\tnan\n1\t3\t1\n")
    )(ctx)


@raises("data.conure.empty", "read_conure", "empty file", _d("DataError"), "file holds no users")
def test_data_conure_empty(ctx):
    return _reader(_d("read_conure"), ("c1.csv", ""))(ctx)


@raises(
    "data.conure.blank_line",
    "read_conure",
    "a blank line (a user without items)",
    _d("DataError"),
    "c2.csv:2: empty user: the line holds no item ids",
)
def test_data_conure_blank_line(ctx):
    return _reader(_d("read_conure"), ("c2.csv", "1,2\n\n3\n"))(ctx)


@raises(
    "data.conure.pad_only",
    "read_conure",
    "a line of padding only (pad_token='0')",
    _d("DataError"),
    "c3.csv:1: empty user",
)
def test_data_conure_pad_only(ctx):
    return _reader(_d("read_conure"), ("c3.csv", "0,0,0\n"), pad_token="0")(ctx)


@raises(
    "data.conure.stream_no_separator",
    "read_conure",
    "stream line without ',,'",
    _d("DataError"),
    "s1.csv:1: expected 'source items,,target' (no ',,' found)",
)
def test_data_conure_stream_no_separator(ctx):
    return _conure_with("streams", "c/s1.csv", "1,2,3\n")(ctx)


@raises(
    "data.conure.stream_no_targets",
    "read_conure",
    "stream line with no targets",
    _d("DataError"),
    "s2.csv:1: no target item ids",
)
def test_data_conure_stream_no_targets(ctx):
    return _conure_with("streams", "c/s2.csv", "1,2,3,,\n")(ctx)


@raises(
    "data.conure.label_two",
    "read_conure",
    "label line with 2 labels",
    _d("DataError"),
    "l1.csv:1: expected one label after ',,', got 2",
)
def test_data_conure_label_two(ctx):
    return _conure_with("labels", "c/l1.csv", "1,2,3,,1,2\n")(ctx)


@raises(
    "data.conure.label_missing", "read_conure", "label line with no label", _d("DataError"), "l2.csv:1: label missing"
)
def test_data_conure_label_missing(ctx):
    return _conure_with("labels", "c/l2.csv", "1,2,3,,\n")(ctx)


@raises(
    "data.seq_tsv.no_tab",
    "read_seq_tsv",
    "space instead of tab",
    _d("DataError"),
    "q1.tsv:1: expected 'user_id<TAB>items', got 1 tab-separated fields: wrong separator?",
)
def test_data_seq_tsv_no_tab(ctx):
    return _reader(_d("read_seq_tsv"), ("q1.tsv", "u1 1 2 3\n"))(ctx)


@raises(
    "data.seq_tsv.duplicate",
    "read_seq_tsv",
    "a user twice",
    _d("DataError"),
    "q2.tsv:2: user 'u' listed twice (first on line 1)",
)
def test_data_seq_tsv_duplicate(ctx):
    return _reader(_d("read_seq_tsv"), ("q2.tsv", "u\t1\nu\t2\n"))(ctx)


@raises(
    "data.seq_tsv.no_items",
    "read_seq_tsv",
    "a user without items",
    _d("DataError"),
    "q3.tsv:1: empty user 'u': no item ids",
)
def test_data_seq_tsv_no_items(ctx):
    return _reader(_d("read_seq_tsv"), ("q3.tsv", "u\t \n"))(ctx)


@raises(
    "data.seq_tsv.directory",
    "read_seq_tsv",
    "a directory",
    _d("DataError"),
    "expected a sequence file, found a directory",
)
def test_data_seq_tsv_directory(ctx):
    return _d("read_seq_tsv")(ctx.tmp)


@raises(
    "data.attributes.empty",
    "read_attribute_csv",
    "empty file",
    _d("DataError"),
    "attr.csv:1: empty attribute file: expected a header row",
)
def test_data_attributes_empty(ctx):
    return _attr_csv("")(ctx)


@raises(
    "data.attributes.separator",
    "read_attribute_csv",
    "';'-separated",
    _d("DataError"),
    "header lacks the user column 'user_id' (the header 'user_id;g' has no ',': wrong separator?)",
)
def test_data_attributes_separator(ctx):
    return _attr_csv("user_id;g\nu;M\n")(ctx)


@raises(
    "data.attributes.fields",
    "read_attribute_csv",
    "a row with 3 of 2 fields",
    _d("DataError"),
    "attr.csv:2: expected 2 fields (user_id, g), got 3",
)
def test_data_attributes_fields(ctx):
    return _attr_csv("user_id,g\nu,M,3\n")(ctx)


@raises(
    "data.attributes.duplicate",
    "read_attribute_csv",
    "a user twice",
    _d("DataError"),
    "attr.csv:3: user 'u' listed twice (first on line 2)",
)
def test_data_attributes_duplicate(ctx):
    return _attr_csv("user_id,g\nu,M\nu,F\n")(ctx)


@raises("data.load.unknown_kind", "load_dataset", "kind 'netflix'", ValueError, "unknown dataset kind 'netflix'")
def test_data_load_unknown_kind(ctx):
    return _d("load_dataset")("netflix", ctx.tmp)


@raises(
    "data.load.no_path", "load_dataset", "kind 'ml-1m' without a path", ValueError, "dataset kind 'ml-1m' needs a path"
)
def test_data_load_no_path(ctx):
    return _d("load_dataset")("ml-1m")


@raises(
    "data.specs.missing_kind",
    "build_task_sequence",
    "a spec without 'kind'",
    ValueError,
    "task spec {'name': 'a'} lacks 'kind'",
)
def test_data_specs_missing_kind(ctx):
    return _specs([{"name": "a"}])(ctx)


@raises(
    "data.specs.unknown_key", "build_task_sequence", "a spec with an unknown key", ValueError, "unknown keys ['colour']"
)
def test_data_specs_unknown_key(ctx):
    return _specs([{"name": "a", "kind": "next_item", "colour": 1}])(ctx)


@raises(
    "data.specs.no_specs",
    "build_task_sequence",
    "no specs",
    ValueError,
    "build_task_sequence needs at least one task spec",
)
def test_data_specs_no_specs(ctx):
    return _specs([])(ctx)


@raises(
    "data.specs.missing_attribute",
    "build_task_sequence",
    "a profile task on an absent attribute",
    _d("DataError"),
    "attribute 'shoe' not found (available: ['age', 'gender', 'occupation'])",
)
def test_data_specs_missing_attribute(ctx):
    return _specs([{"name": "a", "kind": "next_item"}, {"name": "b", "kind": "profile", "attribute": "shoe"}])(ctx)


@raises(
    "data.specs.fractions",
    "build_task_sequence",
    "valid_frac + test_frac >= 1",
    ValueError,
    "need 0 <= valid_frac, test_frac and valid_frac + test_frac < 1",
)
def test_data_specs_fractions(ctx):
    return _specs([{"name": "a", "kind": "next_item"}], valid_frac=0.6, test_frac=0.5)(ctx)

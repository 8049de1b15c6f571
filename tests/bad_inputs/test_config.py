"""Bad inputs of the config loader: conure.config.load_config (YAML file + --set)."""

from ._common import _check_defaults, _config, _config_error
from ._framework import behaves, fixed, raises


@raises(
    "config.yaml_syntax",
    "config.load_config",
    "a YAML syntax error (an unclosed [)",
    _config_error(),
    "bad.yaml:3:1: invalid YAML: expected ',' or ']', but got '<stream end>'",
)
def test_config_yaml_syntax(ctx):
    return _config("model:\n  channels: [16\n")(ctx)


@raises(
    "config.yaml_tab",
    "config.load_config",
    "a tab in the indentation",
    _config_error(),
    "bad.yaml:2:1: invalid YAML: found character '\\t' that cannot start any token",
)
def test_config_yaml_tab(ctx):
    return _config("model:\n\tchannels: 16\n")(ctx)


@fixed(
    "config.yaml_duplicate_key",
    "config.load_config",
    "a key given twice (two train: sections)",
    "accepted: PyYAML keeps the last one, the first section is silently ignored",
    "ConfigError with file:line",
    error=_config_error(),
    fragment="bad.yaml:3:1: invalid YAML: duplicate key 'train' (first on line 1)",
)
def test_config_yaml_duplicate_key(ctx):
    return _config("train: {epochs: 3}\nseed: 1\ntrain: {lr: 0.1}\n")(ctx)


@raises(
    "config.not_a_mapping",
    "config.load_config",
    "a YAML list instead of a mapping",
    _config_error(),
    "bad.yaml: a config must be a mapping of keys to values, got [1, 2] (list)",
)
def test_config_not_a_mapping(ctx):
    return _config("- 1\n- 2\n")(ctx)


@raises(
    "config.not_utf8",
    "config.load_config",
    "binary bytes (not UTF-8)",
    _config_error(),
    "cannot read config file bad.yaml: 'utf-8' codec can't decode byte 0x80",
)
def test_config_not_utf8(ctx):
    return _config(bytes(range(256)))(ctx)


@behaves(
    "config.empty_file",
    "config.load_config",
    "an empty file (no dataset, tasks or model key)",
    "every key is optional: all defaults (synthetic data, its default task sequence, the default model)",
    _check_defaults,
)
def test_config_empty_file(ctx):
    return _config("")(ctx)


@raises(
    "config.section_null",
    "config.load_config",
    "a section left empty (`model:` with nothing below)",
    _config_error(),
    "model: expected a mapping, got None (null)",
)
def test_config_section_null(ctx):
    return _config("model:\nseed: 1\n")(ctx)


@raises(
    "config.data_path_missing",
    "config.load_config",
    "data kind ml-1m without data.path",
    _config_error(),
    "data: data kind 'ml-1m' needs data.path (the file or directory to read)",
)
def test_config_data_path_missing(ctx):
    return _config("data: {kind: ml-1m}\n")(ctx)


@raises(
    "config.task_missing_kind", "config.load_config", "a task without kind", _config_error(), "tasks[0]: missing 'kind'"
)
def test_config_task_missing_kind(ctx):
    return _config("tasks: [{name: a}]\n")(ctx)


@raises(
    "config.task_missing_name", "config.load_config", "a task without name", _config_error(), "tasks[0]: missing 'name'"
)
def test_config_task_missing_name(ctx):
    return _config("tasks: [{kind: next_item}]\n")(ctx)


@raises(
    "config.task_missing_attribute",
    "config.load_config",
    "a profile task without attribute",
    _config_error(),
    "tasks[1]: task spec 'g': a profile task needs 'attribute'",
)
def test_config_task_missing_attribute(ctx):
    return _config("tasks: [{name: a, kind: next_item}, {name: g, kind: profile}]\n")(ctx)


@raises(
    "config.model_no_blocks",
    "config.load_config",
    "model.dilations []",
    _config_error(),
    "model: dilations must be a non-empty list of positive ints",
)
def test_config_model_no_blocks(ctx):
    return _config("model: {dilations: []}\n")(ctx)


@raises(
    "config.unknown_key",
    "config.load_config",
    "an unknown top-level key (colour)",
    _config_error(),
    "unknown config key 'colour' (known keys: seed, device, threads, data, tasks, model, method, train, "
    "baselines, output)",
)
def test_config_unknown_key(ctx):
    return _config("colour: red\n")(ctx)


@raises(
    "config.misspelt_key",
    "config.load_config",
    "a misspelt section (modle)",
    _config_error(),
    "unknown config key 'modle' (did you mean 'model'?)",
)
def test_config_misspelt_key(ctx):
    return _config("modle: {channels: 8}\n")(ctx)


@raises(
    "config.misspelt_nested_key",
    "config.load_config",
    "a misspelt key in a section (train.epoch)",
    _config_error(),
    "unknown config key 'train.epoch' (did you mean 'train.epochs'?)",
)
def test_config_misspelt_nested_key(ctx):
    return _config("train: {epoch: 3}\n")(ctx)


@raises(
    "config.misspelt_task_key",
    "config.load_config",
    "a misspelt task key (atribute)",
    _config_error(),
    "unknown config key 'tasks[1].atribute' (did you mean 'tasks[1].attribute'?)",
)
def test_config_misspelt_task_key(ctx):
    return _config("tasks: [{name: a, kind: next_item}, {name: g, kind: profile, atribute: gender}]\n")(ctx)


@raises(
    "config.set_misspelt_key",
    "config.load_config",
    "--set model.chanels=8",
    _config_error(),
    "unknown config key 'model.chanels' (did you mean 'model.channels'?)",
)
def test_config_set_misspelt_key(ctx):
    return _config("", "model.chanels=8")(ctx)


@raises(
    "config.string_for_int",
    "config.load_config",
    "model.channels: lots",
    _config_error(),
    "model.channels: expected an integer, got 'lots' (string)",
)
def test_config_string_for_int(ctx):
    return _config("model: {channels: lots}\n")(ctx)


@raises(
    "config.quoted_int",
    "config.load_config",
    "model.channels: '16' (a quoted number)",
    _config_error(),
    "model.channels: expected an integer, got '16' (string)",
)
def test_config_quoted_int(ctx):
    return _config("model: {channels: '16'}\n")(ctx)


@raises(
    "config.float_for_int",
    "config.load_config",
    "model.channels: 16.5",
    _config_error(),
    "model.channels: expected an integer, got 16.5 (number)",
)
def test_config_float_for_int(ctx):
    return _config("model: {channels: 16.5}\n")(ctx)


@raises(
    "config.bool_for_int",
    "config.load_config",
    "train.epochs: true",
    _config_error(),
    "train.epochs: expected an integer, got True (boolean)",
)
def test_config_bool_for_int(ctx):
    return _config("train: {epochs: true}\n")(ctx)


@raises(
    "config.list_for_float",
    "config.load_config",
    "train.lr: [0.1]",
    _config_error(),
    "train.lr: expected a number, got [0.1] (list)",
)
def test_config_list_for_float(ctx):
    return _config("train: {lr: [0.1]}\n")(ctx)


@fixed(
    "config.scalar_for_list",
    "config.load_config",
    "method.keep_ratios: 0.5 (a number, not a list)",
    "the message said 'expected a list of a numbers'",
    "ConfigError 'expected a list of numbers'",
    error=_config_error(),
    fragment="method.keep_ratios: expected a list of numbers, got 0.5 (number)",
)
def test_config_scalar_for_list(ctx):
    return _config("method: {keep_ratios: 0.5}\n")(ctx)


@raises(
    "config.keep_ratio_above_1",
    "config.load_config",
    "method.keep_ratios: [1.5]",
    _config_error(),
    "method: keep_ratios must be a non-empty list of values in [0, 1]",
)
def test_config_keep_ratio_above_1(ctx):
    return _config("method: {keep_ratios: [1.5]}\n")(ctx)


@raises(
    "config.keep_ratio_negative",
    "config.load_config",
    "method.keep_ratios: [0.5, -0.1]",
    _config_error(),
    "method: keep_ratios must be a non-empty list of values in [0, 1]",
)
def test_config_keep_ratio_negative(ctx):
    return _config("method: {keep_ratios: [0.5, -0.1]}\n")(ctx)


@raises(
    "config.keep_ratio_nan",
    "config.load_config",
    "method.keep_ratios: [.nan]",
    _config_error(),
    "method: keep_ratios must be a non-empty list of values in [0, 1]",
)
def test_config_keep_ratio_nan(ctx):
    return _config("method: {keep_ratios: [.nan]}\n")(ctx)


@raises(
    "config.train_keep_ratio",
    "config.load_config",
    "train.keep_ratio: 2",
    _config_error(),
    "train: TrainConfig.keep_ratio must be in [0, 1] or 'auto', got 2.0",
)
def test_config_train_keep_ratio(ctx):
    return _config("train: {keep_ratio: 2}\n")(ctx)


@raises(
    "config.task_train_keep_ratio",
    "config.load_config",
    "a task's train.keep_ratio: -1",
    _config_error(),
    "tasks[0].train: TrainConfig.keep_ratio must be in [0, 1] or 'auto', got -1.0",
)
def test_config_task_train_keep_ratio(ctx):
    return _config("tasks: [{name: a, kind: next_item, train: {keep_ratio: -1}}]\n")(ctx)


@raises(
    "config.baselines_l2_empty",
    "config.load_config",
    "baselines.l2: [] (no L2 strength to try)",
    _config_error(),
    "baselines: l2 must be a non-empty list of positive numbers",
)
def test_config_baselines_l2_empty(ctx):
    return _config("baselines: {l2: []}\n")(ctx)


@raises(
    "config.baselines_max_features",
    "config.load_config",
    "baselines.max_features: 0",
    _config_error(),
    "baselines: max_features must be >= 1",
)
def test_config_baselines_max_features(ctx):
    return _config("baselines: {max_features: 0}\n")(ctx)

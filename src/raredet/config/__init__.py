"""Reading `pipeline.config` and `label_map.pbtxt`: parsing, validation, LabelMap, effective config.

`load(path)` is the only way the rest of raredet gets a config: it parses the protobuf text format,
turns every syntax error or misspelt field into a `ConfigError` naming file, line, column and the
nearest valid field name, resolves relative paths against the config file's directory, checks the
values raredet acts on, and warns once about fields it parses but ignores.

One module per concern: `text` (parsing and hints), `label_map` (`LabelMap`), `load` (`load`, paths,
the config's label map, effective config), `validate` (value checks, `NOT_ACTED_ON`) and `extractors`
(the feature-extractor names raredet builds, as data, for the parser's errors). The one-screen
summary of `raredet config check` is a verb and lives in `raredet.commands.config`.
"""

from raredet.config.label_map import LabelMap
from raredet.config.load import (
    LoadedConfig,
    check_input_paths,
    effective_config_text,
    fill_defaults,
    load,
    parse_config,
    reader_paths,
    resolve_paths,
)
from raredet.config.text import parse_text
from raredet.config.validate import (
    NOT_ACTED_ON,
    PAIR_AWARE_RANGES,
    ConfigWarning,
    check_calibration,
    class_index,
    input_readers,
    not_acted_on,
    validate,
)

__all__ = [
    "NOT_ACTED_ON",
    "PAIR_AWARE_RANGES",
    "ConfigWarning",
    "LabelMap",
    "LoadedConfig",
    "check_calibration",
    "check_input_paths",
    "class_index",
    "effective_config_text",
    "fill_defaults",
    "input_readers",
    "load",
    "not_acted_on",
    "parse_config",
    "parse_text",
    "reader_paths",
    "resolve_paths",
    "validate",
]

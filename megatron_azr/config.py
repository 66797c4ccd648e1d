"""Typed run configuration: dataclasses loaded from YAML, with dotted command-line overrides.

Every section is a dataclass owned by the room that uses it (the algorithm's lives in
``megatron_azr.azr.config`` and knows nothing of torch); this module only composes them and
implements loading. Loading is strict: an unknown key or a value of the wrong type is an error
that names the key and where it came from (the YAML file or the override on the command line),
because a silently ignored typo in an ablation config wastes a cluster allocation.

Relative data paths (:data:`DATA_PATHS`) are made absolute at load, against the config file's
directory when the path exists there and the repository root otherwise, never the working
directory: a run started from anywhere finds the shipped seed files and models.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from megatron_azr.azr.config import AZRConfig
from megatron_azr.eval.config import EvalConfig
from megatron_azr.executor.config import ExecutorConfig
from megatron_azr.models.config import REPO_ROOT, ModelSection
from megatron_azr.rollout.config import RolloutConfig
from megatron_azr.telemetry.config import LoggingConfig, ProfileConfig
from megatron_azr.train.config import ActorConfig, ParallelConfig

T = TypeVar("T")
_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

# Config keys that name files or directories read by a run (see the module docstring).
DATA_PATHS = ("model.path", "azr.seed_io_path", "azr.seed_induction_path")


class ConfigError(ValueError):
    """A configuration that cannot be loaded; the message names the key and its source."""


@dataclass
class RunConfig:
    name: str = "tiny-cpu"
    output_dir: str = "runs/tiny-cpu"
    seed: int = 1234
    steps: int = 4
    checkpoint_every: int = 10
    # Step checkpoints kept on disk (the newest ones); each holds actor, optimizer and buffers.
    keep_checkpoints: int = 2
    # A resume may change keys the checkpoint fixed (model, seed files: rundir.FIXED_ON_RESUME).
    allow_config_change: bool = False

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError("steps must be >= 0")
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("checkpoint_every and keep_checkpoints must be >= 1")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    azr: AZRConfig = field(default_factory=AZRConfig)
    model: ModelSection = field(default_factory=ModelSection)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.actor.kl_coef > 0:
            # Caught here, not at the first update after the model load and rollouts.
            raise ValueError(
                "actor.kl_coef > 0 needs reference log-probs, which `azr train` does not "
                "compute (Actor.update takes them from code that does)"
            )


# --------------------------------------------------------------------------------------------
# Typed conversion of plain data (YAML) into dataclasses.


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail(expected: str | None = None) -> typing.NoReturn:
        raise ConfigError(
            f"{source}: key '{key}': expected {expected or _type_name(tp)}, "
            f"got {type(value).__name__} ({value!r})"
        )

    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, source)
            except ConfigError:
                pass
        fail(" or ".join(_type_name(a) for a in args))
    if origin is Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return value
        fail("one of " + ", ".join(repr(a) for a in args))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            fail(f"a mapping for section {tp.__name__}")
        return _build(tp, value, key, source)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            fail()
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                fail()
            pairs = enumerate(zip(value, args, strict=True))
            return tuple(_convert(v, a, f"{key}[{i}]", source) for i, (v, a) in pairs)
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            fail()
        k_tp, v_tp = args if args else (Any, Any)
        return {
            _convert(k, k_tp, f"{key}.<key>", source): _convert(v, v_tp, f"{key}.{k}", source)
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            # YAML 1.1 reads "1e-4" (no dot) as a string; people write lr=1e-4.
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            fail()
        return value
    raise TypeError(f"config field '{key}' has an unsupported annotation {tp!r}")


def _build(cls: type[T], data: dict[str, Any], prefix: str, source: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            known = ", ".join(sorted(fields))
            hint = _nearest(str(name), fields, prefix)
            raise ConfigError(f"{source}: unknown key '{key}'{hint} (known here: {known})")
        kwargs[name] = _convert(value, hints[name], key, source)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        where = f"section '{prefix}'" if prefix else "top level"
        raise ConfigError(f"{source}: {where}: {e}") from e


def from_dict(cls: type[T], data: dict[str, Any], source: str = "<dict>") -> T:
    """Build dataclass ``cls`` from plain data, strictly (see module docstring)."""
    if not isinstance(data, dict):
        got = type(data).__name__
        raise ConfigError(f"{source}: expected a mapping at the top level, got {got}")
    return _build(cls, data, "", source)


def to_dict(cfg: Any) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            sections = [k for k, v in node.items() if isinstance(v, dict)]
            hint = _nearest(part, sections, ".".join(parts[:i]))
            raise ConfigError(
                f"{source}: unknown key '{dotted}' ('{where}' is not a section){hint}"
            )
        node = child
    if parts[-1] not in node:
        hint = _nearest(parts[-1], node, ".".join(parts[:-1]))
        raise ConfigError(f"{source}: unknown key '{dotted}'{hint}")
    node[parts[-1]] = value


def _nearest(name: str, known: typing.Iterable[str], prefix: str) -> str:
    """ ", did you mean 'section.key'?" for the closest known key, or "" when none is close."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if not match:
        return ""
    return f", did you mean '{prefix + '.' if prefix else ''}{match[0]}'?"


def resolve_data_path(path: str, config_dir: Path | None = None) -> str:
    """``path`` made absolute: against ``config_dir`` when it exists there, else against the
    repository root; empty paths stay empty, absolute ones only get ``~`` expanded."""
    if not path:
        return path
    if Path(path).expanduser().is_absolute():
        return str(Path(path).expanduser())
    if config_dir is not None and (config_dir / path).exists():
        return os.path.normpath(Path(config_dir).absolute() / path)
    return os.path.normpath(REPO_ROOT / path)


def _resolve_data_paths(data: dict[str, Any], config_dir: Path | None) -> None:
    for dotted in DATA_PATHS:
        section, key = dotted.split(".")
        node = data.get(section)
        if isinstance(node, dict) and isinstance(node.get(key), str):
            node[key] = resolve_data_path(node[key], config_dir)


def apply_overrides(cfg: T, overrides: list[str], config_dir: Path | None = None) -> T:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML scalars/flow collections.
    Relative data paths resolve as in a file loaded from ``config_dir``."""
    cls = type(cfg)
    for item in overrides:
        source = f"command-line override '{item}'"
        if "=" not in item:
            raise ConfigError(f"{source}: expected KEY=VALUE")
        dotted, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: value is not valid YAML: {e}") from e
        data = to_dict(cfg)
        _set_dotted(data, dotted.strip(), value, source)
        _resolve_data_paths(data, config_dir)
        cfg = from_dict(cls, data, source)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a :class:`Config` from YAML (defaults when ``path`` is None) and apply overrides."""
    cfg = Config()
    config_dir = None
    if path is not None:
        path = Path(path)
        if not path.is_file() and not path.is_absolute() and (REPO_ROOT / path).is_file():
            path = REPO_ROOT / path  # a shipped config named from outside the checkout
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        config_dir = path.parent
        if isinstance(data, dict):
            _resolve_data_paths(data, config_dir)
        cfg = from_dict(Config, data, str(path))
    return apply_overrides(cfg, overrides or [], config_dir)


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)

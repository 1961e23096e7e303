"""Config files for ``interp`` commands: ``interp SUBCOMMAND --config FILE.yaml``.

A config file (YAML, or TOML with a ``.toml`` suffix) is a mapping whose keys are the
subcommand's option names: the argparse ``dest`` names, written with underscores or
dashes (``batch_size`` or ``batch-size``; positional arguments by their names too).
Flags given on the command line override the file. Repeatable options (``--hook``) take a
list; ``--option KEY=VALUE``-style options also take a mapping. An optional ``command`` key
names the subcommand, so ``interp --config FILE`` runs it directly.

After a successful run, the commands that write artifacts store the resolved config
(every option, after merging file and flags) next to them (``OUTPUT_CONFIG``), e.g.
``runs/NAME/config.yaml`` for ``interp harvest --out runs/NAME`` and ``OUT/config.yaml`` for
``interp train --out OUT``; ``interp --config runs/NAME/config.yaml`` runs it again. Paths
in a config are used as written (relative to the directory the command runs in).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from interp.errors import InterpError, closest

CONFIG_FLAG = "--config"
_SKIP = {"help", "config", "func", "command"}


class ConfigError(InterpError, ValueError):
    """A config file that is missing, not valid YAML/TOML, or names unknown options."""


# where each command stores its resolved config: (args, return value of the command) -> path
def _in_dir(attr: str, name: str = "config.yaml") -> Callable:
    return lambda a, ret: Path(getattr(a, attr)) / name


def _beside(a, ret) -> Path | None:
    out = ret if isinstance(ret, (str, Path)) else getattr(a, "out", None)
    return Path(out).with_suffix(".config.yaml") if out else None


OUTPUT_CONFIG: dict[str, Callable[[argparse.Namespace, Any], Path | None]] = {
    "harvest": _in_dir("out"),
    "train": _in_dir("out"),
    "demo": _in_dir("out"),
    "eval": lambda a, ret: Path(a.eval_out) / "eval_config.yaml",
    "circuit": _beside,
    "probe": _beside,
    "features": _beside,
    "graph": _beside,
    # config.yaml there is circuit-tracer's
    "export-tracer": _in_dir("out", "export_config.yaml"),
}
SAVE_BEFORE = {"demo"}  # ends by serving the app; it always starts afresh anyway


# ---------------------------------------------------------------- parser plumbing
def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """A ``--config FILE`` option on every subcommand (idempotent)."""
    for name, sp in subparsers(parser).items():
        if any(CONFIG_FLAG in a.option_strings for a in sp._actions):
            continue
        sp.add_argument(CONFIG_FLAG, metavar="FILE", default=None,
                        help="YAML/TOML file of this command's options (keys: option names "
                        "with _ or -); flags on the command line override it")
    extra = (f"Any subcommand also reads its options from a file: `interp SUBCOMMAND "
             f"{CONFIG_FLAG} FILE.yaml` (command-line flags override it); `interp "
             f"{CONFIG_FLAG} FILE.yaml` when the file names its `command`.")
    if extra not in (parser.epilog or ""):
        parser.epilog = ((parser.epilog + "\n") if parser.epilog else "") + extra


def _options(sp: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """dest -> action of a subcommand's options and positionals (not help / --config)."""
    return {a.dest: a for a in sp._actions
            if a.dest not in _SKIP and a.dest is not argparse.SUPPRESS}


def _aliases(opts: dict[str, argparse.Action]) -> dict[str, str]:
    """Every accepted key spelling (dest, long option names; _ or -) -> dest."""
    out = {}
    for dest, a in opts.items():
        names = [dest] + [s.lstrip("-") for s in a.option_strings if s.startswith("--")]
        for n in names:
            out[n.replace("-", "_")] = dest
    return out


# ---------------------------------------------------------------- files
def load_file(path: str | Path) -> dict:
    """The mapping in a YAML or TOML file, with clear errors for a missing or bad file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        hint = " (did you mean its config.yaml?)" if (path / "config.yaml").exists() else ""
        raise ConfigError(f"config file {path} is a folder{hint}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        try:
            import tomllib
        except ImportError as e:  # Python 3.10
            raise ConfigError(f"{path}: TOML needs Python >= 3.11; use YAML") from e
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from e
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(e, "problem", None) or str(e)
            raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of option names to values, not a "
                          f"{type(data).__name__}")
    return data


def _coerce(path: Path, key: str, action: argparse.Action, value: Any) -> Any:
    """A file value in the form the parsed option would have (or a string argparse's
    ``type`` converts as it does a command-line value)."""
    bad = lambda what: ConfigError(  # noqa: E731
        f"{path}: {key}: {what} (got {value!r} of type {type(value).__name__})")
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise bad("expected true or false")
        return value
    if isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+"):
        if isinstance(value, dict):  # --option KEY=VALUE: a mapping reads better
            return [f"{k}={json.dumps(v)}" for k, v in value.items()]
        items = value if isinstance(value, list) else [value]
        try:
            items = [(v if isinstance(v, str) else str(v)) if action.type is None else
                     (action.type(v) if isinstance(v, str) else v) for v in items]
        except (TypeError, ValueError) as e:
            raise bad(f"an item is not valid ({e})") from e
        _check_choices(path, key, action, items)
        return items
    if isinstance(value, (list, dict)):
        if action.type not in (None, int, float, str):  # an option parsed into a list
            return value
        raise bad("expected a single value")
    if action.type is int:
        if isinstance(value, bool):
            raise bad("expected an integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise bad("expected an integer")
            value = int(value)
        elif isinstance(value, str):  # "200_000", or "1e6" (YAML reads it as a string)
            try:
                value = int(value)
            except ValueError:
                try:
                    f = float(value)
                except ValueError as e:
                    raise bad("expected an integer") from e
                if not f.is_integer():
                    raise bad("expected an integer")
                value = int(f)
    elif action.type is float:
        if isinstance(value, bool):
            raise bad("expected a number")
        try:
            value = float(value)
        except ValueError as e:
            raise bad("expected a number") from e
    elif action.type is None and not isinstance(value, str):
        value = str(value)  # e.g. a window "12,4" or a name that YAML read as a number
    _check_choices(path, key, action, [value])
    return value


def _check_choices(path: Path, key: str, action: argparse.Action, values: list) -> None:
    if action.choices is None:
        return
    for v in values:
        if v not in action.choices:
            raise ConfigError(f"{path}: {key}: {v!r} is not one of "
                              f"{', '.join(map(str, action.choices))}")


def values_for(sp: argparse.ArgumentParser, command: str, data: dict,
               path: str | Path) -> dict[str, Any]:
    """The file's values by dest, validated against ``sp``'s options."""
    path = Path(path)
    opts = _options(sp)
    aliases = _aliases(opts)
    named = data.get("command")
    if named is not None and named != command:
        raise ConfigError(f"{path} is a config for `interp {named}`, not `interp {command}`")
    unknown_keys = [k for k in data if k != "command" and str(k).replace("-", "_") not in aliases]
    if unknown_keys:
        hints = []
        for k in unknown_keys:
            near = closest(str(k).replace("-", "_"), sorted(opts), 1)
            hints.append(f"{k!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        raise ConfigError(f"{path}: unknown key{'s' if len(hints) > 1 else ''} for `interp "
                          f"{command}`: {', '.join(hints)}; valid keys: "
                          f"{', '.join(sorted(opts))}")
    out: dict[str, Any] = {}
    for k, v in data.items():
        if k == "command" or v is None:  # null: the option's default
            continue
        dest = aliases[str(k).replace("-", "_")]
        if dest in out:
            raise ConfigError(f"{path}: {dest!r} is given twice (as {k!r} too)")
        out[dest] = _coerce(path, str(k), opts[dest], v)
    return out


# ---------------------------------------------------------------- parse
def _config_path(argv: Sequence[str]) -> str | None:
    path = None
    for i, tok in enumerate(argv):
        if tok == "--":
            break
        if tok == CONFIG_FLAG:
            if i + 1 >= len(argv):
                raise ConfigError(f"{CONFIG_FLAG} needs a file name")
            path = argv[i + 1]
        elif tok.startswith(CONFIG_FLAG + "="):
            path = tok.split("=", 1)[1]
    return path


def parse_args(parser: argparse.ArgumentParser,
               argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args`` with a subcommand's ``--config FILE`` merged in (flags win).

    The file's values become the subcommand's defaults; options it provides are no longer
    required on the command line. Repeatable options given on the command line replace the
    file's list rather than add to it. ``args.config_values`` holds what the file gave.
    """
    add_config_options(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    subs = subparsers(parser)
    if argv and (argv[0] == CONFIG_FLAG or argv[0].startswith(CONFIG_FLAG + "=")):
        path = _config_path(argv[:2] if argv[0] == CONFIG_FLAG else argv[:1])
        command = load_file(path).get("command")
        if command is None:
            raise ConfigError(f"{path} does not name its command: run `interp SUBCOMMAND "
                              f"{CONFIG_FLAG} {path}` or add `command: SUBCOMMAND` to it")
        if command not in subs:
            raise ConfigError(f"{path}: unknown command {command!r}; valid: "
                              f"{', '.join(subs)}")
        argv = [command, *argv]
    command = next((t for t in argv if t in subs), None)
    if command is None:
        return parser.parse_args(argv)  # argparse reports the missing subcommand
    rest = argv[argv.index(command) + 1:]
    path = _config_path(rest)
    values: dict[str, Any] = {}
    if path is not None:
        sp = subs[command]
        values = values_for(sp, command, load_file(path), path)
        opts = _options(sp)
        later = {}
        saved = []
        for dest, v in values.items():
            a = opts[dest]
            saved.append((a, a.required, a.nargs, a.default))
            if isinstance(a, argparse._AppendAction):
                later[dest] = (a.default, v)  # filled in after parsing unless given
            else:
                a.default = v
            a.required = False
            if not a.option_strings and a.nargs is None:
                a.nargs = "?"  # a positional the file provides
        try:
            args = parser.parse_args(argv)
        finally:
            for a, req, nargs, default in saved:
                a.required, a.nargs, a.default = req, nargs, default
        for dest, (default, v) in later.items():
            if getattr(args, dest) is default:  # not given on the command line
                setattr(args, dest, v)
    else:
        args = parser.parse_args(argv)
    args.config_values = values
    return args


# ---------------------------------------------------------------- resolved configs
def resolved(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """Every option of the run's subcommand with the value it ran with."""
    sp = subparsers(parser)[args.command]
    out: dict[str, Any] = {"command": args.command}
    for dest in _options(sp):
        v = getattr(args, dest, None)
        out[dest] = list(v) if isinstance(v, tuple) else v
    return out


def write_config(path: str | Path, config: dict[str, Any]) -> Path:
    import yaml

    from interp.version import code_version

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# interp {config['command']}: resolved configuration (code {code_version()}, "
              f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n"
              f"# run it again: interp --config {path}  (flags after it override the file)\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(header + yaml.safe_dump(config, sort_keys=False, default_flow_style=None),
                   encoding="utf-8")
    os.replace(tmp, path)
    return path


def save_resolved(parser: argparse.ArgumentParser, args: argparse.Namespace,
                  ret: Any = None) -> Path | None:
    """Store the run's resolved config where its command puts it (rank 0 only)."""
    where = OUTPUT_CONFIG.get(getattr(args, "command", None))
    if where is None or os.environ.get("RANK", "0") != "0":
        return None
    path = where(args, ret)
    if path is None:
        return None
    return write_config(path, resolved(parser, args))


# ---------------------------------------------------------------- --option KEY=VALUE
def _typed(key: str, text: str, hint: Any) -> Any:
    """``text`` as a value of the annotation ``hint`` (bool, int, float, str, a tuple or list
    of ints, dict, each optionally ``| None``)."""
    import types
    import typing

    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if type(None) in args and text.strip().lower() in ("none", "null"):
            return None
        (hint,) = [a for a in args if a is not type(None)]
    bad = lambda what: ConfigError(  # noqa: E731
        f"--option {key}={text}: expected {what}")
    if hint is bool:
        word = text.strip().lower()
        if word in ("true", "yes", "1", "on"):
            return True
        if word in ("false", "no", "0", "off"):
            return False
        raise bad("true or false")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise bad("an integer") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise bad("a number") from None
    if hint is str:
        return text
    origin = typing.get_origin(hint)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if origin in (tuple, list):
        if not (isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                                for v in value)):
            raise bad("a list of integers such as [256,1024,4096]")
        return origin(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise bad("a JSON object")
        return value
    return text


def typed_options(pairs: Sequence[str] | dict | None, cls: type,
                  set_by_flags: dict[str, str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (or a mapping of them) as a dict of ``cls``'s fields, each value
    parsed by its field's type; an unknown key, a bad value, or a key that one of the
    command's flags sets (``set_by_flags``: field -> flag) is a one-line error."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    items = list(pairs.items()) if isinstance(pairs, dict) else []
    for pair in [] if isinstance(pairs, dict) else pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option takes KEY=VALUE, got {pair!r}")
        items.append((key.strip(), value))
    out: dict[str, Any] = {}
    for key, value in items:
        if key in set_by_flags:
            raise ConfigError(f"--option {key}=...: {key} is set by {set_by_flags[key]}; use "
                              f"that instead")
        if key not in names:
            near = closest(key, [n for n in names if n not in set_by_flags], 3)
            raise ConfigError(f"--option {key}: unknown setting" + (
                f" (did you mean {', '.join(near)}?)" if near else "") + "; valid: "
                + ", ".join(n for n in names if n not in set_by_flags))
        out[key] = value if not isinstance(value, str) else _typed(key, value, hints[key])
    return out

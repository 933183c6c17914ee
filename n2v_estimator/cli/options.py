"""The command's options, generated from the estimator's source: parameters, their help, yes-or-no words.

Every estimator parameter is an option, its help taken from the class docstring's
Parameters section, so the command line never lags behind the estimator. Both are read
from ``estimator.py`` with :mod:`ast`, not imported: torch and scikit-learn take seconds to
import, and ``--help`` and a usage error need neither. A usage error is one line, with the
closest option for a misspelled one.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import inspect
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar, overload

from .._typing import Params
from ..gateway.budget import MAX_EXPANSION
from .messages import PROG

# Words a yes-or-no option takes (--tta, --tta true, --tta=false); the option alone means yes.
BOOLEAN_METAVAR = "[BOOL]"
BOOLEAN_WORDS = {
    "true": True,
    "false": False,
    "yes": True,
    "no": False,
    "on": True,
    "off": False,
    "1": True,
    "0": False,
}
# The prefix of the attributes that hold the estimator's parameters in parsed arguments.
PARAMETER_PREFIX = "param_"

_N = TypeVar("_N")  # the namespace a caller parses into


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; the commands' names and their help on one line."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)
        # argparse measures a command's name without its indent: room for "    transform".
        self._action_max_length = len("    transform")


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors in one line too, as every other error of the command, with the closest
    option for a misspelled one; yes-or-no options with or without a value."""

    boolean_options: frozenset[str] = frozenset()  # set on the top-level parser by build_parser
    commands: Mapping[str, argparse.ArgumentParser] = {}

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")

    # argparse's own signatures (typeshed's overloads), so that a caller's namespace keeps its type.
    @overload
    def parse_known_args(
        self, args: Iterable[str] | None = None, namespace: None = None
    ) -> tuple[argparse.Namespace, list[str]]: ...
    @overload
    def parse_known_args(self, args: Iterable[str] | None, namespace: _N) -> tuple[_N, list[str]]: ...
    @overload
    def parse_known_args(self, *, namespace: _N) -> tuple[_N, list[str]]: ...

    def parse_known_args(self, args: Iterable[str] | None = None, namespace: Any = None) -> tuple[Any, list[str]]:
        argv = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(with_boolean_values(argv, self.boolean_options), namespace)

    @overload
    def parse_args(self, args: Iterable[str] | None = None, namespace: None = None) -> argparse.Namespace: ...
    @overload
    def parse_args(self, args: Iterable[str] | None, namespace: _N) -> _N: ...
    @overload
    def parse_args(self, *, namespace: _N) -> _N: ...

    def parse_args(self, args: Iterable[str] | None = None, namespace: Any = None) -> Any:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command_name: str = getattr(parsed, "command", None) or ""  # none parsed: the top-level parser answers
            command = self.commands.get(command_name, self)
            command.error(f"unrecognized arguments: {' '.join(extras)}{suggestion(extras, command)}")
        return parsed


class CommandFactory(Protocol):
    """What makes one command's parser: ``new_command(name, summary, description, usage=None)``."""

    def __call__(
        self, name: str, summary: str, description: str, usage: str | None = None
    ) -> argparse.ArgumentParser: ...


def with_boolean_values(argv: Sequence[str], names: Iterable[str]) -> list[str]:
    """``argv`` with every yes-or-no option given its value: ``--tta`` -> ``--tta=true``,
    ``--tta false`` -> ``--tta=false``; left as it is after ``--``."""
    out: list[str] = []
    k = 0
    while k < len(argv):
        token = str(argv[k])
        if token == "--":
            return out + list(argv[k:])
        if token in names:
            following = str(argv[k + 1]).lower() if k + 1 < len(argv) else None
            given = following in BOOLEAN_WORDS
            out.append(f"{token}={following if given else 'true'}")
            k += 2 if given else 1
            continue
        out.append(token)
        k += 1
    return out


def boolean(text: str) -> bool:
    """A yes-or-no option's value."""
    try:
        return BOOLEAN_WORDS[str(text).strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"{text!r} is not true or false") from None


def suggestion(extras: Sequence[str], parser: argparse.ArgumentParser) -> str:
    """``"; did you mean --max-epochs?"`` for options of ``extras`` close to one of ``parser``'s."""
    known = [option for option in parser._option_string_actions if option.startswith("--")]
    close = {}
    for extra in extras:
        if extra.startswith("--"):
            found = difflib.get_close_matches(extra.split("=")[0], known, n=1, cutoff=0.6)
            if found:
                close[extra.split("=")[0]] = found[0]
    return "".join(f"; did you mean {right} (not {wrong})?" for wrong, right in close.items())


def parameter_help(docstring: str | None) -> dict[str, str]:
    """``{name: help}`` from the numpydoc ``Parameters`` section of ``docstring``:
    the description on one line, followed by the type line in brackets."""
    text = inspect.cleandoc(docstring or "")
    match = re.search(r"^Parameters\n-+\n(.*?)(?=^\S[^\n]*\n-+\n|\Z)", text, re.M | re.S)
    helps = {}
    for entry in re.split(r"\n(?=\S)", match.group(1).strip()) if match else []:
        header, _, body = entry.partition("\n")
        names, _, kind = header.partition(" : ")
        description = re.sub(r":\w+:`~?([^`]*)`", r"\1", " ".join(body.split())).replace("``", "")
        for name in names.split(","):
            helps[name.strip()] = f"{description} [{kind.strip()}]"
    return helps


def escaped(text: str) -> str:
    """``text`` as argparse help, which formats ``%``."""
    return text.replace("%", "%%")


def parameter_value(text: str) -> Any:
    """An option's value: a Python literal (``64``, ``(16, 64, 64)``, ``None``,
    ``True``; also ``true``, ``false``, ``none``) or, failing that, the string."""
    spelled = {"true": True, "false": False, "none": None, "null": None}
    if text.strip().lower() in spelled:
        return spelled[text.strip().lower()]
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def add_parameter_options(
    parser: argparse.ArgumentParser, names: Iterable[str], helps: Mapping[str, str], defaults: Params
) -> None:
    """An option for each of the estimator's parameters ``names`` (``--max-epochs`` and ``--max_epochs``)."""
    group = parser.add_argument_group(
        "estimator parameters",
        "Noise2VoidDenoiser's parameters (docs: guide/parameters); values are Python literals or strings.",
    )
    for name in names:
        spellings = dict.fromkeys([f"--{name.replace('_', '-')}", f"--{name}"])
        yes_or_no = isinstance(defaults[name], bool)
        group.add_argument(
            *spellings,
            dest=f"{PARAMETER_PREFIX}{name}",
            metavar=BOOLEAN_METAVAR if yes_or_no else "VALUE",
            default=argparse.SUPPRESS,
            type=boolean if yes_or_no else parameter_value,
            help=escaped(helps.get(name) or f"(default: {defaults[name]!r})"),
        )


def add_flag(parser: argparse.ArgumentParser, *spellings: str, help: str, default: bool | None = False) -> None:
    """A yes-or-no option: alone it means yes; ``true`` or ``false`` may follow."""
    parser.add_argument(*spellings, type=boolean, default=default, metavar=BOOLEAN_METAVAR, help=help)


def add_overwrite_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--overwrite``: replace ``what`` where it exists."""
    add_flag(parser, "--overwrite", help=f"replace {what} where it exists (without it, an existing one is refused)")


def add_trust_option(parser: argparse.ArgumentParser) -> None:
    """``--trust-declared-size``: read image files that declare far more pixels than they store."""
    add_flag(
        parser,
        "--trust-declared-size",
        help=f"read image files that declare over {MAX_EXPANSION} times more pixels than they store (refused "
        "by default as crafted or damaged: noisy images barely compress)",
    )


def given_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The estimator's parameters given as options, by name."""
    return {
        key[len(PARAMETER_PREFIX) :]: value for key, value in vars(args).items() if key.startswith(PARAMETER_PREFIX)
    }


@lru_cache(maxsize=1)
def estimator_signature() -> tuple[dict[str, Any], str | None]:
    """``(defaults, docstring)`` of :class:`Noise2VoidDenoiser`: ``get_params()`` of a default
    estimator (names sorted) and the class docstring, read from ``estimator.py`` with :mod:`ast`
    rather than imported (torch and scikit-learn take seconds to import). Where the source cannot
    be read (an install without it), the class is imported instead."""
    try:
        source = Path(__file__).parent.parent / "estimator.py"
        tree = ast.parse(source.read_text(encoding="utf-8"))
        (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Noise2VoidDenoiser"]
        (init,) = [node for node in cls.body if isinstance(node, ast.FunctionDef) and node.name == "__init__"]
        names = [arg.arg for arg in init.args.kwonlyargs]
        defaults = {name: _literal(value) for name, value in zip(names, init.args.kw_defaults, strict=True)}
        return dict(sorted(defaults.items())), ast.get_docstring(cls, clean=False)
    except (OSError, SyntaxError, ValueError, TypeError):
        from ..estimator import Noise2VoidDenoiser

        return Noise2VoidDenoiser().get_params(), Noise2VoidDenoiser.__doc__


def _literal(node: ast.expr | None) -> Any:
    """The value a parameter's default is written as; a ValueError where it has none or is not a literal."""
    if node is None:
        raise ValueError("a keyword-only parameter without a default")
    return ast.literal_eval(node)

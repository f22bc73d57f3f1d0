"""MkDocs hook: the CLI reference page, generated at build time from the command's own parsers.

``privsplit.cli.main.build_parser()`` gives every subcommand and option (with its help, default and choices), and
``privsplit.errors.EXIT_CODES`` the exit codes, so the page cannot drift from the command. The page is added to
the site as ``reference/cli.md``; it is never written into docs/. ``render()`` is also what the tests read.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

PAGE = "reference/cli.md"


def _escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    try:
        return parser._get_formatter()._expand_help(action)  # %(default)s and friends, as --help prints them
    except (KeyError, TypeError, ValueError):
        return action.help


def _flags(action: argparse.Action) -> str:
    names = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.metavar or action.dest}`"
    if action.nargs != 0 and action.option_strings:
        metavar = action.metavar or (
            "{" + ",".join(map(str, action.choices)) + "}" if action.choices else action.dest.upper()
        )
        if isinstance(metavar, tuple):
            metavar = " ".join(metavar)
        names += f" `{metavar}`"
    return names


def _default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or action.required:
        return ""
    value = action.default
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    return f"`{value}`"


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, list[str], str, argparse.ArgumentParser]]:
    """(name, aliases, one-line help, parser) of each subcommand, once each (aliases share a parser)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help or "" for a in action._choices_actions}
        seen: dict[int, tuple[str, list[str]]] = {}
        order: list[int] = []
        for name, sub in action.choices.items():
            if id(sub) in seen:
                seen[id(sub)][1].append(name)
            else:
                seen[id(sub)] = (name, [])
                order.append(id(sub))
        parsers = {id(p): p for p in action.choices.values()}
        for key in order:
            name, aliases = seen[key]
            yield name, aliases, helps.get(name, ""), parsers[key]


def _command(lines: list[str], path: str, aliases: list[str], summary: str, parser: argparse.ArgumentParser) -> None:
    depth = min(2 + path.count(" "), 4)
    lines += [f"{'#' * depth} `{path}`", ""]
    if aliases:
        lines += ["Also spelled: " + ", ".join(f"`{a}`" for a in aliases) + ".", ""]
    description = parser.description or summary
    if description:
        lines += [_escape(description.replace("%%", "%")), ""]
    usage = " ".join(parser.format_usage().replace("usage: ", "", 1).split())
    lines += ["```text", usage, "```", ""]
    rows = [
        (_flags(a), _default(a), _escape(_help(parser, a)))
        for a in parser._actions
        if not isinstance(a, (argparse._SubParsersAction, argparse._HelpAction)) and a.help != argparse.SUPPRESS
    ]
    if rows:
        lines += ["| argument | default | meaning |", "|---|---|---|"]
        lines += [f"| {flags} | {default} | {meaning} |" for flags, default, meaning in rows]
        lines.append("")
    for name, sub_aliases, sub_summary, sub in _subcommands(parser):
        _command(lines, f"{path} {name}", [f"{path} {a}" for a in sub_aliases], sub_summary, sub)


def render() -> str:
    """The CLI reference as Markdown: every subcommand with its usage and options, then the exit codes."""
    from privsplit.cli.main import build_parser
    from privsplit.errors import EXIT_CODES

    parser = build_parser()
    lines = [
        "# CLI reference",
        "",
        "Generated from the parsers of `privsplit` (`privsplit.cli.main.build_parser()`) when this site is built: "
        "it lists what `privsplit COMMAND --help` prints, for every command. Errors are one line on stderr that names "
        "the file or option and the fix, with one of the [exit codes](#exit-codes) below.",
        "",
        "## Commands",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    for name, _, summary, _ in _subcommands(parser):
        lines.append(f"| [`privsplit {name}`](#privsplit-{name.replace('_', '-')}) | {_escape(summary)} |")
    lines.append("")
    for name, aliases, summary, sub in _subcommands(parser):
        _command(lines, f"privsplit {name}", [f"privsplit {a}" for a in aliases], summary, sub)
    lines += ["## Exit codes", "", "| code | meaning |", "|---|---|"]
    lines += [f"| {e.code} | {_escape(e.meaning)} |" for e in EXIT_CODES]
    return "\n".join(lines) + "\n"


def on_files(files, config):  # mkdocs event: add the generated page
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=render()))
    return files

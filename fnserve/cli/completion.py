"""``fnserve completion bash|zsh|fish``: a shell completion script, generated from the command's own parser
so that it knows every command, option and choice there is (and no more). The scripts are static: a TAB
runs no Python.

What they complete: commands and subcommands, the options of the command typed so far (after a ``-``), the
values of options with fixed choices (``--backend``, ``--kind``, ``--log-level``); elsewhere file names.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass

from fnserve.cli.base import Commands, add_command


@dataclass(frozen=True)
class Node:
    """One command level: its path (``/jobs/ls``; the top is ``""``), its subcommands with their help, and
    its options with their help and fixed choices (empty for flags and free values)."""

    path: str
    commands: list[tuple[str, str]]
    options: list[tuple[list[str], str, list[str], bool]]
    """(option strings, help, choices, takes a value)"""


def nodes(parser: argparse.ArgumentParser, path: str = "") -> Iterator[Node]:
    commands: list[tuple[str, str]] = []
    options = []
    children = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            commands += [(name, helps.get(name, "")) for name in action.choices]
            children += list(action.choices.items())
        elif not action.option_strings:  # a positional with fixed values completes like a subcommand
            commands += [(str(choice), action.help or "") for choice in action.choices or ()]
        else:
            choices = [str(c) for c in action.choices] if action.choices else []
            options.append((list(action.option_strings), (action.help or "").replace("%%", "%"), choices,
                            action.nargs != 0))
    yield Node(path, commands, options)
    for name, child in children:
        yield from nodes(child, f"{path}/{name}")


def bash(parser: argparse.ArgumentParser, *, shell: str = "bash") -> str:
    """The bash script (zsh runs the same one through bashcompinit: ``shell="zsh"``)."""
    tree = list(nodes(parser))
    prog = parser.prog
    known = "|".join(node.path for node in tree if node.path)
    levels = "\n".join(
        f'        "{node.path}") fn_cmds="{" ".join(c for c, _ in node.commands)}"; '
        f'fn_opts="{" ".join(s for o in node.options for s in o[0])}" ;;' for node in tree)
    values = "\n".join(f'        "{node.path} {string}") COMPREPLY=($(compgen -W "{" ".join(choices)}" -- "$cur")); '
                       f'return ;;' for node in tree for strings, _, choices, _ in node.options if choices
                       for string in strings)
    header = (f"#compdef {prog}\n# zsh completion for {prog}: `source <({prog} completion zsh)` after compinit\n"
              f"autoload -U +X bashcompinit && bashcompinit\n") if shell == "zsh" else \
        f"# bash completion for {prog}: `source <({prog} completion bash)`, or save it as\n" \
        f"# ~/.local/share/bash-completion/completions/{prog}\n"
    return f"""{header}_{prog}() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}} cmdpath="" word i
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        case "$cmdpath/$word" in
            {known}) cmdpath="$cmdpath/$word" ;;
        esac
    done
    local fn_cmds="" fn_opts=""  # not zsh's $commands and $options: zsh runs this too
    case "$cmdpath" in
{levels}
    esac
    case "$cmdpath $prev" in
{values}
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$fn_opts" -- "$cur"))
    elif [[ -n $fn_cmds ]]; then
        COMPREPLY=($(compgen -W "$fn_cmds" -- "$cur"))
    fi
}}
complete -o default -F _{prog} {prog}
"""


def fish(parser: argparse.ArgumentParser) -> str:
    tree = list(nodes(parser))
    prog = parser.prog
    known = " ".join(node.path for node in tree if node.path)
    lines = [f"# fish completion for {prog}: `{prog} completion fish > ~/.config/fish/completions/{prog}.fish`",
             f"function __{prog}_at --description 'whether the command typed so far is $argv[1]'",
             '    set -l cmdpath ""',
             "    for word in (commandline -opc)[2..-1]",
             f'        contains -- "$cmdpath/$word" {known}; and set cmdpath "$cmdpath/$word"',
             "    end",
             '    test "$cmdpath" = "$argv[1]"',
             "end"]
    for node in tree:
        at = f"-n '__{prog}_at \"{node.path}\"'"
        if node.commands:
            lines.append(f"complete -c {prog} {at} -f")
        lines += [f"complete -c {prog} {at} -a {name} -d {_quoted(text)}" for name, text in node.commands]
        for strings, text, choices, takes_value in node.options:
            names = " ".join(f"-l {s[2:]}" if s.startswith("--") else f"-s {s[1:]}" for s in strings)
            value = f" -x -a {_quoted(' '.join(choices))}" if choices else " -r" if takes_value else ""
            lines.append(f"complete -c {prog} {at} {names}{value} -d {_quoted(text)}")
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    """``text`` as a single-quoted fish word."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    return fish(parser) if shell == "fish" else bash(parser, shell=shell)


def cmd_completion(args: argparse.Namespace) -> None:
    from fnserve.cli import build_parser
    from fnserve.cli.output import print_json

    text = script(build_parser(), args.shell)
    print_json({"shell": args.shell, "script": text}) if args.json else print(text, end="")


def register(sub: Commands, offline: argparse.ArgumentParser) -> None:
    completion = add_command(
        sub, "completion", "print a shell completion script (bash, zsh, fish)",
        "Print a completion script for a shell: commands, subcommands, options and option values complete\n"
        "on TAB. Load it in the shell's start-up file (see the examples), or save it where the shell looks.",
        ["echo 'source <(fnserve completion bash)' >> ~/.bashrc",
         "echo 'source <(fnserve completion zsh)' >> ~/.zshrc     # after compinit",
         "fnserve completion fish > ~/.config/fish/completions/fnserve.fish"],
        [offline])
    completion.add_argument("shell", choices=["bash", "zsh", "fish"])
    completion.set_defaults(run=cmd_completion)

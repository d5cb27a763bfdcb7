"""The README's commands work as written, without running any of them (no training, no download).

- every ``clipfed ...`` command in the fenced shell blocks of the sections a newcomer follows
  (Quickstart, Reproduce a table, Your own CLIP) names a real subcommand (its ``--help`` exits 0),
  uses only flags that subcommand has, and parses with the real parser;
- every ``-c``/``--run-config`` text there is a valid run config (``load_run_config``); in Your own
  CLIP the teacher names are ones open_clip knows, and the SynthConfig recipes the section shows
  load and fit the run that names them;
- the ``make`` targets the Quickstart names exist;
- the Reference section lists every run-config key with its real default, and every subcommand;
- every ``#anchor`` in a link of README.md or docs/*.md names a heading of its target.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

import pytest

from clipfed.checks import load_run_config
from clipfed.cli import build_parser, main
from clipfed.config import RunConfig, parse_config_text

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
NEWCOMER_SECTIONS = ("Quickstart", "Reproduce a table", "Your own CLIP")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def section(title: str, text: str = README) -> str:
    """The body of the ``## title`` section (up to the next level-2 heading)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def shell_lines(text: str) -> list[str]:
    """The command lines of the fenced bash blocks in ``text``, continuation lines joined."""
    lines = []
    for language, body in FENCE.findall(text):
        if language not in ("bash", "sh", "shell"):
            continue
        lines += [line for line in body.replace("\\\n", " ").splitlines() if line.strip()]
    return lines


def clipfed_commands(title: str) -> list[list[str]]:
    """The argument lists (after ``clipfed``) of the section's ``clipfed`` commands; a shell
    variable the section assigns (``S="num-server-rounds=10 ..."``) becomes its value, any other
    ``0`` (a seed) or a harmless path text; comments are dropped."""
    commands, assigned = [], {}
    for line in shell_lines(section(title)):
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(\S.*)", line.strip())
        if match and len(value := shlex.split(match.group(2), comments=True)) == 1:  # not VAR=x clipfed ...
            assigned[match.group(1)] = value[0]
            continue
        line = SHELL_VARIABLE.sub(lambda m: assigned.get(m.group(1), "0"), line)
        tokens = shlex.split(line, comments=True)
        while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):  # VAR=value clipfed ...
            tokens = tokens[1:]
        if tokens and tokens[0] == "clipfed":
            commands.append(tokens[1:])
    return commands


def subcommand_path(parser: argparse.ArgumentParser, args: list[str]) -> tuple[list[str], argparse.ArgumentParser]:
    """The subcommand names at the start of ``args`` and the parser of the last one."""
    path = []
    for token in args:
        choices = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if not choices or token not in choices:
            break
        path.append(token)
        parser = choices[token]
    return path, parser


def run_config_texts(args: list[str]) -> list[str]:
    return [args[i + 1] for i, token in enumerate(args[:-1]) if token in ("-c", "--run-config")]


COMMANDS = [(title, args) for title in NEWCOMER_SECTIONS for args in clipfed_commands(title)]


def test_the_newcomer_sections_show_commands() -> None:
    for title in NEWCOMER_SECTIONS:
        assert clipfed_commands(title), f"no clipfed command found in README's {title}"
    assert any(run_config_texts(args) for _, args in COMMANDS)


@pytest.mark.parametrize(("title", "args"), COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_command_parses(title: str, args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    path, sub = subcommand_path(build_parser(), args)
    assert path, f"{title}: `clipfed {' '.join(args)}` names no subcommand"
    with pytest.raises(SystemExit) as stopped:
        main([*path, "--help"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: clipfed {' '.join(path)}")
    flags = {token.split("=", 1)[0] for token in args[len(path):]
             if token.startswith("-") and not re.fullmatch(r"-\d+(\.\d+)?", token)}
    unknown = sorted(flags - set(sub._option_string_actions))
    assert not unknown, f"{title}: `clipfed {' '.join(path)}` has no {unknown}"
    try:
        build_parser().parse_args(args)  # types, choices, required arguments; runs nothing
    except SystemExit as err:
        pytest.fail(f"{title}: `clipfed {' '.join(args)}` does not parse ({capsys.readouterr().err.strip()}, "
                    f"exit {err.code})")


@pytest.mark.parametrize(("title", "args"), [c for c in COMMANDS if run_config_texts(c[1])],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_run_config_validates(title: str, args: list[str]) -> None:
    cfg = load_run_config(parse_config_text(run_config_texts(args)))
    if title == "Your own CLIP" and cfg.teacher == "openclip":
        from clipfed.engines.preflight import teacher_problems

        assert not teacher_problems(cfg.to_flower()), f"{title}: {teacher_problems(cfg.to_flower())}"


def test_every_teacher_eval_names_weights_open_clip_knows() -> None:
    from clipfed.engines.preflight import teacher_problems

    checked = 0
    for _, args in COMMANDS:
        if args[:2] == ["teacher", "eval"]:
            parsed = build_parser().parse_args(args)
            keys = {"teacher": parsed.teacher, "teacher-model": parsed.teacher_model,
                    "teacher-pretrained": parsed.teacher_pretrained}
            assert not teacher_problems(keys), teacher_problems(keys)
            checked += 1
    assert checked


def test_the_synth_config_examples_load_and_fit_their_run(tmp_path: Path) -> None:
    from clipfed.data_synth import SynthConfig
    from clipfed.data_synth.provider import synth_config_for

    text = section("Your own CLIP")
    tomls = [body for language, body in FENCE.findall(text) if language == "toml"]
    assert len(tomls) == 1, "Your own CLIP shows one SynthConfig TOML recipe"
    recipe = tmp_path / "my-synth.toml"
    recipe.write_text(tomls[0])
    loaded = SynthConfig.from_file(recipe)
    assert loaded.teacher.backend == "openclip" and all(t.count("{}") == 1 for t in loaded.teacher.templates)
    inline = re.search(r"`(\{\"teacher\".*?\})` in a `\.json` file", text, re.DOTALL)
    assert inline, "the JSON form of the recipe is shown"
    (tmp_path / "my-synth.json").write_text(inline.group(1))
    SynthConfig.from_file(tmp_path / "my-synth.json")
    runs = [args for args in clipfed_commands("Your own CLIP")
            if any("synth-config=" in t for t in run_config_texts(args))]
    assert runs, "a run names the recipe"
    for args in runs:
        values = parse_config_text(run_config_texts(args))
        assert values["synth-config"] == "my-synth.toml"
        synth_config_for(load_run_config({**values, "synth-config": str(recipe)}))  # no clash, same pool


def test_quickstart_make_targets_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", makefile, re.MULTILINE))
    used = {t for line in shell_lines(section("Quickstart")) for t in re.findall(r"^\s*make ([\w-]+)", line)}
    assert {"demo", "test"} <= used <= targets


def test_reference_lists_every_key_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `([a-z0-9-]+)` \| `([^`]*)` \|", section("Reference"), re.MULTILINE))
    expected = {}
    for name, field in RunConfig.model_fields.items():
        default = field.default
        expected[field.alias or name] = (("true" if default else "false") if isinstance(default, bool)
                                         else json.dumps(default) if isinstance(default, str) else repr(default))
    assert rows == expected


def leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[str]:
    subparsers = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if subparsers is None:
        return [" ".join(prefix)]
    return [leaf for name, sub in subparsers.choices.items() for leaf in leaf_commands(sub, (*prefix, name))]


def test_reference_lists_every_command() -> None:
    listed = set(re.findall(r"^\| `clipfed ([a-z -]+)` \|", section("Reference"), re.MULTILINE))
    assert listed == set(leaf_commands(build_parser()))


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes of a document's headings (outside fenced blocks)."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", FENCE.sub("", markdown), re.MULTILINE):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        candidate, n = slug, 1
        while candidate in anchors:
            candidate, n = f"{slug}-{n}", n + 1
        anchors.add(candidate)
    return anchors


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_link_anchors_name_headings(document: Path) -> None:
    text = document.read_text()
    prose = re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))
    broken = []
    for target in re.findall(r"\]\(([^)\s]*#[^)\s]+)\)", prose):
        path, anchor = target.split("#", 1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", path, re.IGNORECASE):
            continue
        linked = (document.parent / path).resolve() if path else document
        if linked.suffix == ".md" and linked.is_file() and anchor not in github_anchors(linked.read_text()):
            broken.append(target)
    assert not broken, f"{document.relative_to(ROOT)}: anchors that name no heading: {broken}"

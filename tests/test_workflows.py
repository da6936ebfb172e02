"""workflows.json: the original file works, defaults fill gaps, every mistake is found at load time."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from lib.config import load_workspace
from lib.errors import ConfigError, UnknownWorkflowError
from lib.paths import Paths
from lib.workflows import get_workflow, load_workflows, plan_for

ORIGINAL = {"workflows": {
    "build": {"description": "Build a repository",
              "steps": [{"action": "cd", "target": "{{repo.local}}"},
                        {"action": "run", "command": "go build ./...", "condition": "repo.language == 'go'"},
                        {"action": "run", "command": "npm run build", "condition": "repo.language == 'javascript'"}],
              "log_file": "/tmp/orchestrator-build-{{repo.name}}.log"},
    "review": {"description": "Review pending merge requests or pull requests",
               "steps": [{"action": "cd", "target": "{{repo.local}}"},
                         {"action": "run", "command": "git log origin/{{repo.default_branch}}..HEAD --oneline"}]},
}}


def write_workflows(home, doc) -> Path:
    path = home.path / "config" / "workflows.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def repo_named(home, **fields):
    home.write_repos([{"name": "svc", "local": str(home.path / "svc"), "language": "go", **fields}])
    (home.path / "svc").mkdir(exist_ok=True)
    return load_workspace(home.repos_file).get("svc")


def test_original_file_works_and_missing_names_fall_back_to_shipped_defaults(home):
    write_workflows(home, ORIGINAL)
    workflows = load_workflows(Paths.from_env())
    assert workflows["build"].log_file == "/tmp/orchestrator-build-{{repo.name}}.log"
    assert {"build", "test", "status", "pull", "review"} <= set(workflows)
    assert workflows["test"].source.parent.name == "config" and workflows["test"].source != workflows["build"].source


def test_home_without_workflows_file_uses_shipped_defaults(home):
    assert {"build", "test", "status", "pull", "review"} <= set(load_workflows(Paths.from_env()))


def test_plan_keeps_steps_whose_condition_holds_and_uses_log_file_template(home):
    write_workflows(home, ORIGINAL)
    repo = repo_named(home)
    plan = plan_for(get_workflow(load_workflows(Paths.from_env()), "build"), repo, Path("/logs"))
    assert [c.command for c in plan.commands] == ["go build ./..."]
    assert plan.commands[0].cwd == repo.local
    assert plan.log == Path("/tmp/orchestrator-build-svc.log")


def test_default_log_path_is_in_the_log_dir(home):
    repo = repo_named(home)
    plan = plan_for(get_workflow(load_workflows(Paths.from_env()), "review"), repo, Path("/logs"))
    assert plan.log == Path("/logs/orchestrator-review-svc.log")
    assert plan.commands[0].command == "git log --oneline origin/main..HEAD"


def test_no_step_left_is_a_skip_with_the_reason(home):
    write_workflows(home, ORIGINAL)
    repo = repo_named(home, language="python")
    plan = plan_for(get_workflow(load_workflows(Paths.from_env()), "build"), repo, Path("/logs"))
    assert plan.commands == () and plan.skip_reason == "no step of 'build' applies (language python)"


def test_command_whose_first_word_is_not_on_path_is_skipped(home):
    write_workflows(home, {"workflows": {"lint": {"description": "", "steps": [
        {"action": "run", "command": "FOO=1 no-such-linter-xyz --check ."}]}}})
    plan = plan_for(get_workflow(load_workflows(Paths.from_env()), "lint"), repo_named(home), Path("/logs"))
    assert plan.skip_reason == "no-such-linter-xyz not found on PATH"


def test_cd_steps_change_the_directory_of_later_steps(home):
    write_workflows(home, {"workflows": {"docs": {"description": "", "steps": [
        {"action": "cd", "target": "{{repo.local}}/docs"}, {"action": "run", "command": "make"}]}}})
    repo = repo_named(home)
    plan = plan_for(get_workflow(load_workflows(Paths.from_env()), "docs"), repo, Path("/logs"))
    assert plan.commands[0].cwd == repo.local / "docs"


def test_values_in_run_commands_are_shown_quoted_and_passed_as_variables(home):
    write_workflows(home, {"workflows": {"show": {"description": "", "steps": [
        {"action": "run", "command": "printf '%s\\n' {{repo.description}} {{repo.tags}}"}]}}})
    repo = repo_named(home, description="x; touch pwned $(id) `id`", tags=["a b", "c"])
    command = plan_for(get_workflow(load_workflows(Paths.from_env()), "show"), repo, Path("/logs")).commands[0]
    assert shlex.split(command.command) == ["printf", "%s\\n", "x; touch pwned $(id) `id`", "a b,c"]
    assert command.script == "printf '%s\\n' \"${ORCH_REPO_DESCRIPTION}\" \"${ORCH_REPO_TAGS}\""
    assert dict(command.env) == {"ORCH_REPO_DESCRIPTION": "x; touch pwned $(id) `id`", "ORCH_REPO_TAGS": "a b,c"}


BAD = [
    ({"workflows": {"w": {"steps": [{"action": "rm", "target": "/"}]}}}, "workflows.w.steps[0].action: unknown action \"rm\""),
    ({"workflows": {"w": {"steps": [{"action": "run", "command": "echo {{repo.colour}}"}]}}}, "unknown variable {{repo.colour}}"),
    ({"workflows": {"w": {"steps": [{"action": "run", "command": "echo {{env.HOME}}"}]}}}, "unknown variable {{env.HOME}}"),
    ({"workflows": {"w": {"steps": [{"action": "run", "command": "echo {{repo.name"}]}}}, "unclosed '{{'"),
    ({"workflows": {"w": {"steps": [{"action": "run", "command": "echo '{{repo.name}}'"}]}}}, "is inside single quotes"),
    ({"workflows": {"w": {"steps": [{"action": "run", "command": "echo \"x {{repo.name}}\""}]}}}, "is inside double quotes"),
    ({"workflows": {"w": {"steps": [{"action": "run", "command": "true # it's fine\necho \"x' {{repo.description}}\""}]}}},
     "is inside double quotes"),
    ({"workflows": {"w": {"steps": [{"action": "run", "command": "echo \\ # \"{{repo.description}}\""}]}}},
     "is inside double quotes"),
    ({"workflows": {"w": {"steps": [{"action": "run", "command": "echo $(( {{repo.description}} + 1 ))"}]}}},
     "is inside $(( ))"),
    ({"workflows": {"w": {"steps": [{"action": "run", "command": "sh -c 'echo '{{repo.description}}"}]}}},
     "is joined to a quoted word"),
    ({"workflows": {"w": {"steps": [{"action": "run", "command": "echo ${{repo.name}}"}]}}}, "joined to a quoted word or a $"),
    ({"workflows": {"w": {"steps": [{"action": "run", "command": "x", "condition": "repo.language = 'go'"}]}}},
     "workflows.w.steps[0].condition: \"repo.language = 'go'\" unexpected character"),
    ({"workflows": {"w": {"steps": [{"action": "run", "command": "x", "condition": "os.system('x')"}]}}}, "unknown word"),
    ({"workflows": {"w": {"steps": [{"action": "run"}]}}}, "workflows.w.steps[0].command: missing or empty"),
    ({"workflows": {"w": {"steps": [{"action": "run", "command": "x", "when": "always"}]}}}, "steps[0].when: unknown key"),
    ({"workflows": {"w": {"steps": []}}}, "workflows.w.steps: must be a non-empty list"),
    ({"workflows": {"w": {"steps": [{"action": "run", "command": "x"}], "log_file": ""}}}, "log_file: must be a non-empty string"),
    ({"workflows": {"../evil": {"steps": [{"action": "run", "command": "x"}]}}}, "workflow names use only"),
    ({"flows": {}}, "must be an object with a \"workflows\" object"),
] + [({"workflows": {"w": {"steps": [{"action": "run", "command": command}]}}}, message) for command, message in [
    # A here-document's body is neither a word nor quoted: the value would be printed literally ("${ORCH_...}").
    ("cat <<EOF\n{{repo.description}}\nEOF", "is inside a here-document"),
    ("cat <<-'EOF'\n\tbranch={{repo.default_branch}}\n\tEOF", "is inside a here-document"),
    ("cat <<EOF >x; echo {{repo.name}}\nbody\nEOF", None),
    ("cat << \"END\" | sh\necho {{repo.name}}\nEND", "is inside a here-document"),
    ("cat <<EOF\na\nEOF\ncat <<EOF\n{{repo.name}}\nEOF", "is inside a here-document"),
    # Arithmetic evaluates the value as an expression: `a[$(cmd)]` runs cmd under bash.
    ("(( {{repo.description}} > 1 ))", "arithmetic"),
    ("if ((1 + {{repo.description}})); then :; fi", "arithmetic"),
    ("for ((i = 0; i < {{repo.description}}; i++)); do :; done", "arithmetic"),
    ("let n={{repo.description}}+1", "arithmetic"),
    ("true && let n={{repo.description}}", "arithmetic"),
    ("[[ {{repo.description}} -eq 1 ]]", "arithmetic"),
    ("[[ 1 -lt {{repo.description}} ]] && echo yes", "arithmetic"),
    ("declare -i n={{repo.description}}", "arithmetic"),
    ("typeset -ri n={{repo.description}}", "arithmetic"),
    ("local -i n={{repo.description}}", "arithmetic"),
    ("echo $[ {{repo.description}} + 1 ]", "arithmetic"),
    ("echo ${arr[{{repo.description}}]}", "arithmetic"),
    ("echo ${arr[ 1 + {{repo.description}} ]}", "arithmetic"),
    ("arr[{{repo.description}}]=1", "arithmetic"),
    ("echo ${PATH:{{repo.description}}}", "arithmetic"),
    ("echo ${PATH:1:{{repo.description}}}", "arithmetic"),
] if message]


def test_a_placeholder_after_a_here_document_line_is_still_checked(home):
    write_workflows(home, {"workflows": {"w": {"steps": [{"action": "run",
                                                           "command": "cat <<EOF >x; echo {{repo.name}}\nbody\nEOF"}]}}})
    assert "w" in load_workflows(Paths.from_env()), "a placeholder on the here-document's own line is a word"


@pytest.mark.parametrize("doc,expected", BAD, ids=[f"{i}-{b[1][:40]}" for i, b in enumerate(BAD)])
def test_bad_workflow_files_fail_at_load_with_one_line_each(home, doc, expected):
    path = write_workflows(home, doc)
    with pytest.raises(ConfigError) as caught:
        load_workflows(Paths.from_env())
    lines = str(caught.value).splitlines()
    assert any(expected in line for line in lines), lines
    assert all(line.startswith(f"{path}: ") for line in lines)


@pytest.mark.parametrize("command", [
    "echo {{repo.name}} # a note with an apostrophe: it's {{repo.description}}",
    "cat <<< {{repo.description}}",
    "cat <<'EOF'\nliteral $x\nEOF\necho {{repo.description}}",
    "printf '%s\\n' {{repo.description}}",
    "echo $((1 + 2)) {{repo.description}}",
    "(( 1 > 0 )) && echo {{repo.description}}",
    "let n=1; echo {{repo.description}}",
    "[[ {{repo.name}} == svc ]] && echo {{repo.description}}",
    "[ -n {{repo.name}} ] && test 1 -eq 1",
    "echo ${UNSET:-{{repo.description}}}",
    "declare -r x={{repo.description}}",
    "echo '((' {{repo.description}} \"let [[\"",
    "echo ${arr[1]} {{repo.description}}",
    "git log origin/{{repo.default_branch}}..HEAD",
])
def test_placeholders_that_stay_one_quoted_word_are_accepted(home, command):
    write_workflows(home, {"workflows": {"w": {"steps": [{"action": "run", "command": command}]}}})
    assert "w" in load_workflows(Paths.from_env())


def test_malformed_json(home):
    write_workflows(home, '{"workflows": {')
    with pytest.raises(ConfigError, match="workflows.json: line 1 column 16: invalid JSON"):
        load_workflows(Paths.from_env())


def test_unknown_workflow_name_lists_the_defined_ones(home):
    with pytest.raises(UnknownWorkflowError, match="unknown workflow 'deploy'; defined: build, pull, review, status, test"):
        get_workflow(load_workflows(Paths.from_env()), "deploy")


def test_a_huge_value_is_cut_in_error_lines(home):
    huge = "x" * 1_000_000
    write_workflows(home, {"workflows": {"w": {"steps": [
        {"action": "run", "command": "x", "condition": f"repo.name == '{huge}' and"},
        {"action": huge}, {"action": "run", "command": "echo {{" + huge}]}}})
    with pytest.raises(ConfigError) as caught:
        load_workflows(Paths.from_env())
    lines = str(caught.value).splitlines()
    assert len(lines) == 3
    assert all(len(line) < 600 and "characters cut]" in line for line in lines), [len(line) for line in lines]


def test_deeply_nested_condition_is_a_config_error(home):
    write_workflows(home, {"workflows": {"w": {"steps": [
        {"action": "run", "command": "x", "condition": "(" * 400 + "repo.name" + ")" * 400}]}}})
    with pytest.raises(ConfigError, match=r"workflows.w.steps\[0\].condition: .*nested more than"):
        load_workflows(Paths.from_env())


@pytest.mark.parametrize("command,skipped", [
    ("no-such-tool-xyz test", True),
    ("FOO=1 no-such-tool-xyz test", True),
    ("~/bin/no-such-tool-xyz", False),
    ("$HOME/bin/no-such-tool-xyz", False),
    ("${TOOLS}/run", False),
    ("[[ -f x ]] && make", False),
    ("./no-such-script", False),
    ("declare -x A=1; make", False),
    ("function f { :; }; f", False),
    ("time make", False),
])
def test_only_a_bare_missing_first_word_is_a_missing_tool(home, command, skipped):
    write_workflows(home, {"workflows": {"w": {"steps": [{"action": "run", "command": command}]}}})
    plan = plan_for(get_workflow(load_workflows(Paths.from_env()), "w"), repo_named(home), Path("/logs"))
    assert (plan.skip_reason is not None) is skipped, plan.skip_reason
    if skipped:
        assert plan.skip_reason == "no-such-tool-xyz not found on PATH"


def test_a_relative_log_file_is_under_the_log_dir(home):
    write_workflows(home, {"workflows": {"w": {"steps": [{"action": "run", "command": "make"}],
                                               "log_file": "runs/{{repo.name}}.log"}}})
    plan = plan_for(get_workflow(load_workflows(Paths.from_env()), "w"), repo_named(home), Path("/logs"))
    assert plan.log == Path("/logs/runs/svc.log")

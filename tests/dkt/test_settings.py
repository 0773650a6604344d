"""dkt/settings.py: every variable declared once, the README table generated from it, secrets masked,
bad values stopping start-up with one line (real subprocesses), and no environment read anywhere else."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dkt import settings
from dkt.settings import (
    GROUPS,
    MASK,
    REPO_ROOT,
    ClientSettings,
    PipelineSettings,
    ServiceSettings,
    SettingsError,
    StoreSettings,
    SwarmSettings,
    TrainingSettings,
    load,
)

# Product code: everything but the tests and what is not ours (virtualenvs, runtime state, snapshots).
# mk/: the build's own scripts (mk/install.py) run on the system Python before any venv, so before pydantic-settings.
SKIP_DIRS = {"tests", "var", "run", "__pycache__", "node_modules", "build", "dist", "mk"}
# Files other than Python that read variables: shell scripts, the stack file, images, the proxy.
NON_PYTHON = [
    "init_for_inference_server.sh",
    "init_for_train_server.sh",
    "docker-compose.yml",
    *(str(p.relative_to(REPO_ROOT)) for p in sorted((REPO_ROOT / "docker").glob("*"))),
    *(str(p.relative_to(REPO_ROOT)) for p in sorted((REPO_ROOT / "docker_manual").glob("*.sh"))),
]


def product_python() -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(REPO_ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".") and "egg-info" not in d]
        out += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    return sorted(out)


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any declared variable (so defaults show), plus ``extra``."""
    declared = {name for g in GROUPS for name in g.variables()}
    return {**{k: v for k, v in os.environ.items() if k not in declared}, **extra}


# -- the table and the declarations ------------------------------------------------------------------------
def test_readme_table_is_generated_from_the_declarations() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    begin, end = readme.index(settings.README_BEGIN), readme.index(settings.README_END)
    current = readme[begin + len(settings.README_BEGIN) : end].strip("\n")
    assert current == settings.markdown().strip("\n"), "README is out of date: dkt settings markdown --write README.md"
    # Every declared variable has its row, in its group's section.
    for group in GROUPS:
        section = current.split(f"**{group.title}**", 1)[1].split("\n**", 1)[0]
        assert all(f"| `{name}` |" in section for name in group.variables()), group.title


def test_replace_table_rewrites_only_between_the_markers() -> None:
    text = f"intro\n{settings.README_BEGIN}\nold table\n{settings.README_END}\noutro\n"
    assert (
        settings.replace_table(text, "new\n") == f"intro\n{settings.README_BEGIN}\nnew\n{settings.README_END}\noutro\n"
    )
    with pytest.raises(SettingsError, match="markers"):
        settings.replace_table("no markers here", "new\n")


def test_every_variable_is_declared_once_with_a_doc() -> None:
    seen: dict[str, str] = {}
    for group in GROUPS:
        assert group.title, group.__name__
        for name, field in group.variables().items():
            assert name not in seen, f"{name} declared in {seen.get(name)} and {group.__name__}"
            seen[name] = group.__name__
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*", name), name
            assert field.description and len(field.description) > 10, f"{name}: no doc"
    assert len(seen) > 90  # the whole product, not a sample


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("DKT_SECRET_KEY", ClientSettings),
        ("DKT_INFERENCE_URL", ClientSettings),
        ("DKT_MODEL_TAG", ServiceSettings),
        ("DKT_MAX_BODY_BYTES", ServiceSettings),
        ("DKT_STORE", StoreSettings),
        ("AWS_SECRET_ACCESS_KEY", StoreSettings),
        ("DKT_DEPLOY_MODE", PipelineSettings),
        ("DKT_SERVE_PORT", PipelineSettings),
        ("DKT_TRAIN_EPOCHS", TrainingSettings),
        ("DKT_REGISTRY", SwarmSettings),
    ],
)
def test_variables_are_grouped_by_component(name: str, group: type[settings.Group]) -> None:
    assert settings.group_of(name) is group


def test_show_prints_each_group_with_its_variables_in_order() -> None:
    proc = run_cli("-m", "dkt", "settings", "show", env=clean_env())
    assert proc.returncode == 0, proc.stderr
    headers = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert headers == [f"[{g.title}]" for g in GROUPS]
    sections = re.split(r"^\[.*\]$", proc.stdout, flags=re.M)[1:]
    for group, section in zip(GROUPS, sections, strict=True):
        names = [line.split()[0] for line in section.strip().splitlines()]
        assert names == list(group.variables()), group.title
    assert re.search(r"^  DKT_SERVE_PORT +3000$", proc.stdout, re.M)
    assert re.search(r"^  DKT_STORE_ROOT +var/store$", proc.stdout, re.M)  # repository paths shown relative


def test_every_variable_the_product_names_is_declared() -> None:
    """A variable added to the code, a script, the compose file or an image without a declaration fails here."""
    declared = {name for g in GROUPS for name in g.variables()}
    named: dict[str, str] = {}
    files = [p for p in product_python() if p != REPO_ROOT / "dkt" / "settings.py"]
    files += [REPO_ROOT / f for f in NON_PYTHON]
    for path in files:
        # DKT_S3_* / DKT_CLIENT_* in prose are families, not variables (a name never ends in "_").
        for name in re.findall(r"\bDKT_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(errors="replace")):
            named.setdefault(name, str(path.relative_to(REPO_ROOT)))
    missing = {n: where for n, where in named.items() if n not in declared}
    assert not missing, f"named but not declared in dkt/settings.py: {missing}"


# -- secrets -----------------------------------------------------------------------------------------------
def test_secrets_have_no_default() -> None:
    secrets = [f for g in GROUPS for f in g.variables().values() if settings._is_secret(f)]
    assert {str(f.validation_alias) for f in secrets} >= {
        "DKT_SECRET_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AIRFLOW__API_AUTH__JWT_SECRET",
    }
    assert all(f.default is None for f in secrets)


def environ_of(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """This process's environment becomes ``env`` (a clean_env), for the test's duration."""
    for name in set(os.environ) - set(env):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_show_masks_secrets(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """In the test's process (`show` as the command runs it; test_show_prints_... runs it as a process)."""
    values = {
        "DKT_SECRET_KEY": "flask-secret-1234",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-5678",
        "AIRFLOW__API_AUTH__JWT_SECRET": "jwt-secret-9012",
    }
    environ_of(monkeypatch, clean_env(**values, DKT_S3_BUCKET="visible-bucket"))
    assert settings.main(["show"]) == 0
    out, err = capsys.readouterr()
    for name, secret in values.items():
        assert secret not in out + err
        assert re.search(rf"^  {name} +{re.escape(MASK)}$", out, re.M), name
    assert "visible-bucket" in out  # not everything is masked
    environ_of(monkeypatch, clean_env())
    assert settings.main(["show"]) == 0
    assert re.search(r"^  DKT_SECRET_KEY +\(unset\)$", capsys.readouterr().out, re.M)


# -- bad values ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"DKT_SERVE_PORT": "abc"}, "error: DKT_SERVE_PORT='abc': not an integer"),
        ({"DKT_STORE": "ftp"}, "error: DKT_STORE='ftp': expected 'local' or 's3'"),
        ({"DKT_STORE": "s3"}, "error: DKT_STORE=s3 needs DKT_S3_BUCKET (the bucket name)"),
        ({"DKT_TARGET_DIFFICULTY": "1.5"}, "error: DKT_TARGET_DIFFICULTY='1.5': expected a value below 1.0"),
        ({"DKT_SWARM_TIMEOUT": "0"}, "error: DKT_SWARM_TIMEOUT='0': expected a value above 0.0"),
        ({"DKT_STORE_LEASE_SECONDS": "nan"}, "error: DKT_STORE_LEASE_SECONDS='nan': not a finite number"),
        ({"DKT_TRAIN_EXECUTOR": "celery"}, "error: DKT_TRAIN_EXECUTOR='celery': expected 'local' or 'edge'"),
        # compose would pass it to Docker, which refuses it only when a deploy is already under way
        (
            {"DKT_INFERENCE_START_PERIOD": "4 min"},
            "error: DKT_INFERENCE_START_PERIOD='4 min': String should match "
            "pattern '^([0-9]+(\\.[0-9]+)?(ns|us|ms|s|m|h))+$'",
        ),
    ],
)
def test_a_bad_value_stops_with_one_line_and_exit_2(
    env: dict[str, str], line: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In the test's process (each case was a process of 0.5 CPU-s): what `show` says about each value is the point;
    the process form of the same refusal is the next test."""
    environ_of(monkeypatch, clean_env(**env))
    code = settings.main(["show"])
    assert (code, capsys.readouterr().err.strip().splitlines()) == (2, [line])


def test_a_bad_value_stops_the_settings_process_with_one_line_and_exit_2() -> None:
    proc = run_cli("-m", "dkt.settings", "show", env=clean_env(DKT_SERVE_PORT="abc"))
    assert (proc.returncode, proc.stderr.strip().splitlines()) == (2, ["error: DKT_SERVE_PORT='abc': not an integer"])


@pytest.mark.parametrize(
    ("argv", "env", "line"),
    [
        # The client app factory (gunicorn, flask) and make up's module, both at start-up.
        (["-c", "from client import create_app; create_app()"], {"DKT_CANDIDATE_POOL": "many"},
         "error: DKT_CANDIDATE_POOL='many': not an integer"),
        (["-c", "from client import create_app; create_app()"], {"DKT_ENV": "production"},
         "error: DKT_SECRET_KEY must be set when DKT_ENV=production"),
        (["-m", "dkt", "stack", "status"], {"DKT_AIRFLOW_PORT": "80a"},
         "error: DKT_AIRFLOW_PORT='80a': not an integer"),
        (["-m", "dkt", "data", "list"], {"DKT_STORE": "ftp"}, "error: DKT_STORE='ftp': expected 'local' or 's3'"),
    ],
)  # fmt: skip
def test_product_entry_points_stop_on_a_bad_value(argv: list[str], env: dict[str, str], line: str) -> None:
    proc = run_cli(*argv, env=clean_env(**env))
    assert proc.returncode == 2, proc.stderr
    assert line in proc.stderr.splitlines() and "Traceback" not in proc.stderr


# -- reading -----------------------------------------------------------------------------------------------
def test_an_explicit_mapping_replaces_the_environment_and_empty_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DKT_STORE", "s3")
    assert load(StoreSettings, {}).kind == "local"
    assert load(StoreSettings, {"DKT_STORE": "", "DKT_S3_PREFIX": "/a/b/"}).prefix == "a/b"
    monkeypatch.setenv("DKT_S3_BUCKET", "b")
    assert load(StoreSettings).kind == "s3"  # no mapping: the real environment
    assert load(StoreSettings, {"AWS_ENDPOINT_URL": "http://s3.local"}).endpoint_url == "http://s3.local"
    assert settings.is_set("DKT_STORE") and not settings.is_set("DKT_STORE", {"DKT_STORE": ""})
    with pytest.raises(KeyError, match="not declared"):
        settings.is_set("DKT_NOT_A_VARIABLE")


def test_values_keep_their_historical_meaning() -> None:
    # Only these three strings turned the access log off in service.py; anything else left it on.
    assert [load(ServiceSettings, {"DKT_ACCESS_LOG": v}).access_log for v in ("0", "false", "no")] == [False] * 3
    assert [load(ServiceSettings, {"DKT_ACCESS_LOG": v}).access_log for v in ("1", "yes", "off")] == [True] * 3
    swarm = load(SwarmSettings, {"DKT_INFERENCE_HOST_PORT": "3100"})
    assert swarm.metadata_url == "http://127.0.0.1:3100/metadata"
    assert load(TrainingSettings, {}).epochs is None and load(TrainingSettings, {"DKT_TRAIN_EPOCHS": "3"}).epochs == 3


# -- no environment read outside dkt/settings.py ------------------------------------------------------------
def env_reads(source: str) -> list[int]:
    """Lines reading the environment. Allowed: ``{**os.environ, ...}`` (a child process gets the WHOLE
    environment: PATH, HOME, credentials and its own variables, which no settings class could list),
    ``os.environ[k] = v`` / ``del`` / ``os.environ.update(...)`` (setting variables for children is no read)."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            lines += [node.lineno for a in node.names if a.name in ("environ", "environb", "getenv", "getenvb")]
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os"):
            continue
        if node.attr in ("getenv", "getenvb", "environb"):
            lines.append(node.lineno)
        elif node.attr == "environ":
            parent = parents.get(node)
            spread = isinstance(parent, ast.Dict) and any(
                k is None and v is node for k, v in zip(parent.keys, parent.values, strict=True)
            )
            update = isinstance(parent, ast.Attribute) and parent.attr == "update"
            write = isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store | ast.Del)
            if not (spread or update or write):
                lines.append(node.lineno)
    return sorted(lines)


def test_the_scanner_finds_reads_and_allows_passing_the_environment_on() -> None:
    reads = "import os\nfrom os import getenv\na = os.environ.get('X')\nb = os.environ['X']\nc = os.getenv('X')\n"
    reads += "d = dict(os.environ)\ne = 'X' in os.environ\n"
    assert env_reads(reads) == [2, 3, 4, 5, 6, 7]
    allowed = "import os\nenv = {**os.environ, 'A': '1'}\nos.environ['A'] = '1'\nos.environ.update(env)\n"
    assert env_reads(allowed) == []


def test_no_product_code_reads_the_environment_outside_dkt_settings() -> None:
    files = [p for p in product_python() if p != REPO_ROOT / "dkt" / "settings.py"]
    assert REPO_ROOT / "service.py" in files and REPO_ROOT / "dags" / "dkt_tasks.py" in files
    found = {str(p.relative_to(REPO_ROOT)): lines for p in files if (lines := env_reads(p.read_text()))}
    assert not found, f"read the environment through dkt/settings.py instead (file: lines): {found}"

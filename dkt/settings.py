"""Every environment variable the product reads, declared once: type, default, unit, one line of doc.

Grouped by component. Python code reads a group with ``load(ServiceSettings)`` (a ``SettingsError`` naming
the variable on a bad value) or ``load_or_exit(...)`` (``error: ...`` on stderr, exit 2: start-up code).
Variables read by shell scripts, Dockerfiles, haproxy or the compose file are declared here too (their
``reader`` says who), so that the README table generated from this module lists everything an operator sets.

    python -m dkt.settings show         # the effective settings per group, secrets masked
    python -m dkt.settings markdown     # the README table (``--write README.md`` replaces it between markers)

Self-contained on purpose (stdlib, pydantic, pydantic-settings): the DAG files import it from Airflow's venv.
An empty variable counts as unset, as every reader did before this module existed.
"""

from __future__ import annotations

import contextvars
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, NoReturn, TypeVar, Union, get_args, get_origin

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from dkt.cli import Parser

REPO_ROOT = Path(__file__).resolve().parent.parent
README_BEGIN = "<!-- settings:begin -->"
README_END = "<!-- settings:end -->"
MASK = "********"


class SettingsError(ValueError):
    """An environment variable with a value the product cannot use; the message names it and says why."""


def _flag(value: Any) -> Any:
    # The service's historical reading of DKT_ACCESS_LOG: only these three strings turn it off.
    return value if isinstance(value, bool) else str(value) not in ("0", "false", "no")


Flag = Annotated[bool, BeforeValidator(_flag)]

# The mapping the next load() reads instead of os.environ (tests, and callers that build a child's environment).
_ENVIRON: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("dkt_settings_env", default=None)


class _MappingEnvSource(EnvSettingsSource):
    def _load_env_vars(self) -> Mapping[str, str | None]:
        environ = _ENVIRON.get()
        if environ is None:
            return super()._load_env_vars()
        # What the base class does with os.environ under this module's config: exact names, empty = unset.
        return {k: v for k, v in environ.items() if v}


def env(
    name: str,
    default: Any = None,
    doc: str = "",
    unit: str = "",
    reader: str = "",
    secret: bool = False,
    **constraints: Any,
) -> Any:
    """A field read from environment variable ``name``; ``reader`` names a non-Python reader (shown in the docs)."""
    extra = {"unit": unit, "reader": reader, "secret": secret}
    return Field(default, validation_alias=name, description=doc, json_schema_extra=extra, **constraints)


class Group(BaseSettings):
    """One component's variables. Subclasses set ``title`` (the heading in ``show`` and the README)."""

    title: ClassVar[str] = ""
    model_config = SettingsConfigDict(
        # Exact names; empty = unset (as every reader did); field names accepted too (load()'s overrides).
        case_sensitive=True,
        env_ignore_empty=True,
        extra="ignore",
        populate_by_name=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env file and no secrets dir: the environment is the one source, as it was before.
        return init_settings, _MappingEnvSource(settings_cls)

    @classmethod
    def variables(cls) -> dict[str, FieldInfo]:
        """Environment variable name -> field, in declaration order."""
        return {str(f.validation_alias): f for f in cls.model_fields.values()}

    def env_values(self) -> dict[str, Any]:
        """Environment variable name -> effective value (secrets stay ``SecretStr``)."""
        by_alias = {str(f.validation_alias): name for name, f in type(self).model_fields.items()}
        return {var: getattr(self, name) for var, name in by_alias.items()}


def term_ranges(text: str) -> list[tuple[date, date]]:
    """``DKT_TERM_DATES`` as (first, last) day pairs; ValueError naming the range that does not parse."""
    ranges = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        first, sep, last = part.partition("..")
        try:
            if not sep:
                raise ValueError
            lo, hi = date.fromisoformat(first.strip()), date.fromisoformat(last.strip())
        except ValueError:
            raise ValueError(
                f"bad term range {part[:40]!r}: expected FIRST..LAST, e.g. 2026-09-01..2026-12-18"
            ) from None
        if hi < lo:
            raise ValueError(f"term range {part[:40]!r} ends before it starts")
        ranges.append((lo, hi))
    return ranges


def _check_term_dates(text: str) -> str:
    term_ranges(text)
    return text


def in_term(text: str, day: date) -> bool:
    """Whether ``day`` falls in one of the ``DKT_TERM_DATES`` ranges (always, when none are set)."""
    ranges = term_ranges(text)
    return not ranges or any(lo <= day <= hi for lo, hi in ranges)


# -- client (Flask app, client/) ----------------------------------------------------------------------------
class ClientSettings(Group):
    title: ClassVar[str] = "client"
    client_db: str = env(
        "DKT_CLIENT_DB",
        "var/client.db",
        "the SQLite answer store (WAL, created on start; relative: to the working directory, but the swarm"
        " and the exporter resolve it against the repository root: give both the same value)",
        "path",
    )
    questions: str = env(
        "DKT_QUESTIONS",
        "data/sim/questions.csv",
        "the question bank (CSV) the client serves; baked into the swarm client image",
        "path",
    )
    inference_url: str | None = env(
        "DKT_INFERENCE_URL",
        None,
        "the inference service's base URL; unset: http://127.0.0.1:3000 for the client,"
        " http://127.0.0.1:$DKT_SERVE_PORT for `dkt deploy`",
        "URL",
    )
    inference_url_file: str | None = env(
        "DKT_INFERENCE_URL_FILE",
        None,
        "a file holding the current inference URL (blue/green deploys rewrite it; the client re-reads it when"
        " it changes and on every retry); unset: none for the client, $DKT_RUN_DIR/inference_url for deploy",
        "path",
    )
    target_difficulty: float = env(
        "DKT_TARGET_DIFFICULTY",
        0.7,
        "the probability of a correct answer the next question aims at",
        "probability",
        gt=0.0,
        lt=1.0,
    )
    inference_timeout_s: float = env(
        "DKT_INFERENCE_TIMEOUT_S",
        2.0,
        "timeout of each connect and each read of a request to the inference service (the whole page:"
        " DKT_INFERENCE_DEADLINE_S)",
        "s",
    )
    inference_retries: int = env("DKT_INFERENCE_RETRIES", 3, "attempts per inference request", "attempts")
    inference_deadline_s: float = env(
        "DKT_INFERENCE_DEADLINE_S",
        5.0,
        "total time a page waits for the inference service (all its calls, retries and slow replies); past it"
        " the page shows that predictions are unavailable",
        "s",
        gt=0.0,
    )
    candidate_pool: int = env("DKT_CANDIDATE_POOL", 120, "unanswered items scored to pick the next question", "items")
    diagnostic_items: int = env(
        "DKT_DIAGNOSTIC_ITEMS",
        6,
        "a new student's diagnostic: this many questions, each from a different skill, before practice"
        " (0: none; docs/student.md)",
        "items",
        ge=0,
        le=16,
    )
    session_length: int = env(
        "DKT_SESSION_LENGTH", 20, "answers after which a practice session ends with its summary", "answers", ge=1
    )
    daily_cap: int = env(
        "DKT_DAILY_CAP",
        10,
        "answers per skill and day (UTC) before practice of that skill stops for the day (ASSISTments' skill"
        " builder default)",
        "answers",
        ge=1,
    )
    review_after_days: float = env(
        "DKT_REVIEW_AFTER_DAYS",
        7.0,
        "a started skill not practised for this many days is recommended as due for review",
        "days",
        gt=0.0,
    )
    explore_rate: float = env(
        "DKT_EXPLORE_RATE",
        0.1,
        "the share of questions chosen uniformly at random from the candidate pool instead of by target difficulty,"
        " so online quality and the shadow gate have answers the production model did not select"
        " (docs/monitoring.md#exploration)",
        "share",
        ge=0.0,
        le=1.0,
    )
    secret_key: SecretStr | None = env(
        "DKT_SECRET_KEY",
        None,
        "Flask session/CSRF secret (signs the sign-in cookie); unset: a random key per process, which only works"
        " with one process (refused when DKT_ENV=production); `make up` generates one into"
        " var/secrets/client_secret_key, the swarm into var/swarm/client_secret_key (mode 0600, docs/accounts.md)",
        secret=True,
    )
    environment: str = env("DKT_ENV", "", "`production` makes DKT_SECRET_KEY mandatory (the client image sets it)")
    client_port: int = env(
        "DKT_CLIENT_PORT",
        8000,
        "the client's port: `make up` binds 127.0.0.1 to it; in the swarm the proxy reaches the client container on it",
        "port",
    )
    metrics_window_days: float = env(
        "DKT_METRICS_WINDOW_DAYS",
        7.0,
        "the client's /metrics: online quality gauges (dkt_online_*) cover answers of the last this many days;"
        " 0 = every answer logged (docs/monitoring.md)",
        "days",
        ge=0.0,
    )
    term_dates: Annotated[str, AfterValidator(_check_term_dates)] = env(
        "DKT_TERM_DATES",
        "",
        "term ranges `FIRST..LAST` (ISO dates, inclusive), comma separated, e.g."
        " `2026-09-01..2026-12-18,2027-01-06..2027-03-26`: the client's dkt_in_term is 1 inside them;"
        " empty = always in term",
    )
    login_max_failures: int = env(
        "DKT_LOGIN_MAX_FAILURES",
        5,
        "failed sign-ins one username may have within DKT_LOGIN_WINDOW_S before further tries are refused"
        " (counted in the client database: shared by every worker; docs/accounts.md)",
        "attempts",
        ge=1,
    )
    login_max_failures_per_address: int = env(
        "DKT_LOGIN_MAX_FAILURES_PER_ADDRESS",
        30,
        "failed sign-ins (and claim codes) one client address may have within DKT_LOGIN_WINDOW_S; higher than"
        " the per-name limit because a classroom often shares one address",
        "attempts",
        ge=1,
    )
    login_window_s: float = env(
        "DKT_LOGIN_WINDOW_S", 900.0, "the window the sign-in failure limits count over", "s", gt=0.0
    )
    trusted_proxies: int = env(
        "DKT_TRUSTED_PROXIES",
        0,
        "proxies in front of the client whose X-Forwarded-For it believes (the per-address sign-in limit counts"
        " the address they report); 0: the TCP peer, and the header is ignored (a client could forge it);"
        " the swarm's haproxy: 1",
        "proxies",
        ge=0,
    )
    operator_token: SecretStr | None = env(
        "DKT_OPERATOR_TOKEN",
        None,
        "the token /operator/login takes (the operator page, until operator accounts exist); unset: the page"
        " answers 404 to everyone without an operator session (docs/monitoring.md#operator-page)",
        secret=True,
    )
    prometheus_url: str | None = env(
        "DKT_PROMETHEUS_URL",
        None,
        "the Prometheus server the operator page asks for the service's latency (its query API), e.g."
        " http://127.0.0.1:9090; unset: the page says Prometheus is not configured",
        "URL",
    )
    # The teacher views' at-risk rules (client/teacher.py, docs/teacher.md#at-risk-students).
    at_risk_attempts: int = env(
        "DKT_AT_RISK_ATTEMPTS",
        10,
        "the teacher page flags a student with this many answers in one skill whose level is still below"
        " proficient (docs/teacher.md)",
        "answers",
        ge=1,
    )
    at_risk_score_drop: float = env(
        "DKT_AT_RISK_SCORE_DROP",
        5.0,
        "the teacher page flags a student whose predicted score (mean mastery over all skills, out of 100) fell by"
        " at least this much over their last DKT_AT_RISK_WINDOW answers",
        "points",
        gt=0.0,
    )
    at_risk_window: int = env(
        "DKT_AT_RISK_WINDOW",
        10,
        "how many recent answers the falling-score rule of the teacher page looks back over",
        "answers",
        ge=1,
    )
    at_risk_inactive_days: float = env(
        "DKT_AT_RISK_INACTIVE_DAYS",
        7.0,
        "the teacher page flags a student whose last answer is older than this (or who never answered)",
        "days",
        gt=0.0,
    )


# -- service (service.py, BentoML) --------------------------------------------------------------------------
class ServiceSettings(Group):
    title: ClassVar[str] = "service"
    model_tag: str = env(
        "DKT_MODEL_TAG", "dkt-model:latest", "the BentoML model the service loads (packer.py sets it for the build)"
    )
    shadow_model_tag: str = env(
        "DKT_SHADOW_MODEL_TAG",
        "",
        "a second BentoML model scored beside production on /predict and reported as `shadow`, never what the"
        " page shows (docs/monitoring.md); empty = no shadow; one that does not load stops the service",
    )
    max_history: int = env(
        "DKT_MAX_HISTORY", 10_000, "answers accepted per request; features use all of them", "answers"
    )
    max_candidates: int = env("DKT_MAX_CANDIDATES", 500, "candidate items accepted per request", "items")
    max_body_bytes: int = env(
        "DKT_MAX_BODY_BYTES", 4 * 1024 * 1024, "largest request body; larger ones (chunked too) get 413", "bytes"
    )
    max_batch_size: int = env("DKT_MAX_BATCH_SIZE", 64, "requests merged into one model call at most", "requests", ge=1)
    batching: Literal["inprocess", "bentoml"] = env(
        "DKT_BATCHING",
        "inprocess",
        "how concurrent requests are merged into model calls: `inprocess` (serving/batcher.py, in the API worker)"
        " or `bentoml` (BentoML's adaptive batching in a model worker process; measured slower on 2 cores:"
        " docs/serving.md#batching)",
    )
    max_latency_ms: int = env(
        "DKT_MAX_LATENCY_MS",
        10_000,
        "BentoML's batching: a request queued this long for the model is answered 503 (with DKT_BATCHING=bentoml)",
        "ms",
        ge=1,
    )
    service_timeout_s: int = env("DKT_SERVICE_TIMEOUT_S", 30, "BentoML's request timeout", "s")
    service_host: str = env(
        "DKT_SERVICE_HOST",
        "127.0.0.1",
        "the address `dkt serve` and `make serving-up` bind; 0.0.0.0 only where other hosts must reach it"
        " (the inference image binds 0.0.0.0 inside its container)",
    )
    body_timeout_s: float = env(
        "DKT_BODY_TIMEOUT_S",
        10.0,
        "a request body not complete this long after its headers gets 408 (keep it under DKT_SERVICE_TIMEOUT_S)",
        "s",
    )
    header_timeout_s: float = env(
        "DKT_HEADER_TIMEOUT_S",
        10.0,
        "a connection that has not sent a request's headers this long after opening (or after its last"
        " response) is closed",
        "s",
    )
    max_concurrency: int = env(
        "DKT_MAX_CONCURRENCY",
        256,
        "requests with a complete body served at once per worker; more get 429 (slow bodies do not count)",
        "requests",
    )
    torch_threads: int = env(
        "DKT_TORCH_THREADS",
        1,
        "torch intra-op threads (batching already fills a core; more spin-wait on a busy host);"
        " also bench/naive_server.py",
        "threads",
    )
    access_log: Flag = env("DKT_ACCESS_LOG", True, "one log line per request; `0`, `false` or `no` turn it off")
    tracing: Flag = env(
        "DKT_TRACING",
        False,
        "an OpenTelemetry span per API request (BentoML's tracing: configure its exporter to collect them); off,"
        " the endpoints skip the tracing middleware (about 0.5 CPU-ms a request)",
    )
    device: str = env(
        "DKT_SERVICE_DEVICE",
        "auto",
        "the service's torch device (also `dkt infer`'s default): auto (cuda when torch sees one, else cpu), cpu,"
        " cuda, cuda:N",
        pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
    )
    state_cache_bytes: int = env(
        "DKT_STATE_CACHE_BYTES",
        512 * 1024 * 1024,
        "per worker, the memory for cached per-student model states (requests with `student_id`; least recently"
        " used dropped first; 0 = no cache)",
        "bytes",
        ge=0,
    )
    model_name: str = env("DKT_MODEL_NAME", "dkt-model", "the BentoML model name packer.py stores bundles under")
    served_model_file: Path | None = env(
        "DKT_SERVED_MODEL_FILE",
        None,
        "a JSON file naming the bundle folder (and shadow) to serve: each worker checks it once a second and swaps"
        " a new bundle in without a restart (`dkt deploy` with DKT_DEPLOY_STRATEGY=swap writes it;"
        " docs/serving.md#model-swap); unset: DKT_MODEL_TAG for the server's life",
        "path",
    )


# -- store (pipeline/store.py, `python -m data`, `python -m models`) ---------------------------------------
class StoreSettings(Group):
    title: ClassVar[str] = "store"
    kind: Literal["local", "s3"] = env(
        "DKT_STORE", "local", "where data sets and models are stored: `local` (a folder) or `s3`"
    )
    root: Path = env("DKT_STORE_ROOT", REPO_ROOT / "var" / "store", "the local store's folder", "path")
    bucket: str = env("DKT_S3_BUCKET", "", "the S3 bucket (required with DKT_STORE=s3)")
    prefix: str = env("DKT_S3_PREFIX", "", "key prefix inside the bucket (slashes at either end dropped)")
    endpoint_url: str | None = env(
        "DKT_S3_ENDPOINT_URL", None, "S3 endpoint (MinIO, moto); unset: AWS_ENDPOINT_URL, else AWS", "URL"
    )
    aws_endpoint_url: str | None = env(
        "AWS_ENDPOINT_URL", None, "boto3's own endpoint variable; used when DKT_S3_ENDPOINT_URL is unset", "URL"
    )
    region: str | None = env("AWS_DEFAULT_REGION", None, "the bucket's region (boto3's default when unset)")
    s3_max_attempts: int = env(
        "DKT_S3_MAX_ATTEMPTS",
        5,
        "tries per S3 call (boto3's standard retries, backoff up to 20 s): how long a store call rides out an"
        " unreachable endpoint before the command fails",
        ge=1,
    )
    aws_access_key_id: SecretStr | None = env(
        "AWS_ACCESS_KEY_ID", None, "S3 credentials (boto3 reads them itself; or an instance role / ~/.aws)", secret=True
    )
    aws_secret_access_key: SecretStr | None = env(
        "AWS_SECRET_ACCESS_KEY", None, "S3 credentials, with AWS_ACCESS_KEY_ID", secret=True
    )
    lease_seconds: float = env(
        "DKT_STORE_LEASE_SECONDS",
        30.0,
        "push lease: renewed every quarter of it; another host's lease is dead when unrenewed this long",
        "s",
        ge=1,
        allow_inf_nan=False,
    )
    data_keep_versions: int = env(
        "DKT_DATA_KEEP_VERSIONS",
        30,
        "data versions kept: after each data push (and `dkt data prune`) the older ones go, except `latest` and"
        " any a stored model names; 0: keep all (docs/pipeline.md#versioned-storage)",
        "versions",
        ge=0,
    )

    @model_validator(mode="after")
    def _derive(self) -> StoreSettings:
        self.prefix = self.prefix.strip("/")
        # boto3 reads AWS_ENDPOINT_URL itself, but naming it here lets the error messages say which store is used.
        if self.endpoint_url is None and self.aws_endpoint_url:
            self.endpoint_url = self.aws_endpoint_url
        if self.kind == "s3" and not self.bucket:
            raise ValueError("DKT_STORE=s3 needs DKT_S3_BUCKET (the bucket name)")
        return self


# -- pipeline (data update, retrain, deploy: pipeline/, the DAG tasks' CLIs) -------------------------------
class PipelineSettings(Group):
    title: ClassVar[str] = "pipeline"
    work_root: Path = env("DKT_WORK_ROOT", REPO_ROOT / "var" / "work", "per-run work folders of the DAG steps", "path")
    run_dir: Path = env(
        "DKT_RUN_DIR", REPO_ROOT / "run", "pids, logs and serving state of `make up` and local deploys", "path"
    )
    bentoml_home: Path = env(
        "BENTOML_HOME",
        REPO_ROOT / "var" / "bentoml",
        "BentoML's model and bento store for deploys and `make up`; BentoML reads it too (its own default when"
        " unset: ~/bentoml, for a bare `bentoml serve` or `dkt pack`)",
        "path",
    )
    test_share: float = env(
        "DKT_TEST_SHARE", 0.1, "share of the students a data update puts in the test split", "fraction"
    )
    export_cmd: str | None = env(
        "DKT_EXPORT_CMD",
        None,
        "the exporter the data update runs (shell words); unset: `<python> -m dkt client"
        " export-interactions`; `dkt file-export --source DIR` ingests CSV drops",
    )
    fault_point: str | None = env(
        "DKT_FAULT_POINT",
        None,
        "tests only: the data update SIGKILLs itself at this named point (pipeline/data_update.py)",
    )
    deploy_mode: Literal["local", "swarm"] = env(
        "DKT_DEPLOY_MODE",
        "local",
        "`local`: blue/green `bentoml serve` on this host; `swarm`: a rolling update of the stack",
    )
    deploy_strategy: Literal["swap", "restart"] = env(
        "DKT_DEPLOY_STRATEGY",
        "swap",
        "local mode: `swap` writes the new bundle's name where the running server reads it (no pack, no new server;"
        " docs/pipeline.md#the-cycle-new-answers---served), `restart` packs a Bento and switches blue/green",
    )
    serve_port: int = env("DKT_SERVE_PORT", 3000, "local blue/green ports: this one and the next", "port")
    verify_timeout: float = env(
        "DKT_VERIFY_TIMEOUT", 60.0, "how long deploy's verify step waits for /metadata to show the new version", "s"
    )
    ready_timeout: float = env("DKT_READY_TIMEOUT", 180.0, "how long a new local server may take to pass /readyz", "s")
    drain_seconds: float = env(
        "DKT_DRAIN_SECONDS", 5.0, "how long the old local server keeps serving after the switch", "s"
    )
    drift_psi_threshold: float = env(
        "DKT_DRIFT_PSI_THRESHOLD",
        0.2,
        "a new data version triggers retraining when a feature's population stability index against production's"
        " training data reaches this (0.2: the usual 'significant shift'; 0: retrain on every new version;"
        " docs/monitoring.md#drift)",
        "PSI",
        ge=0.0,
    )
    drift_min_answers: int = env(
        "DKT_DRIFT_MIN_ANSWERS",
        200,
        "fewer new answers than this never trigger retraining by drift (PSI of a small sample is mostly noise)",
        "answers",
        ge=1,
    )


# -- training (pipeline/retrain.py, `make up`'s first model) ----------------------------------------------
class TrainingSettings(Group):
    title: ClassVar[str] = "training"
    config: Path = env(
        "DKT_TRAIN_CONFIG",
        REPO_ROOT / "config" / "lstm.json",
        "the model config `make up` trains its first model with",
        "path",
    )
    candidates: str = env(
        "DKT_TRAIN_CANDIDATES",
        "lstm,saint",
        "retraining: the model kinds trained each cycle (names of config/<name>.json or config paths, comma-separated);"
        " the best on the time holdout goes to the promotion gate (docs/pipeline.md#model-selection)",
        "names",
    )
    epochs: int | None = env(
        "DKT_TRAIN_EPOCHS", None, "epochs per training; unset: the config's (early stopping decides)", "epochs"
    )
    warm_epochs: int = env(
        "DKT_WARM_EPOCHS",
        # 1: every measured fine-tune's best epoch was its first (docs/pipeline.md#the-cycle-new-answers---served)
        1,
        "retraining: most epochs of a candidate warm-started from production (a short fine-tune; DKT_TRAIN_EPOCHS,"
        " when set, caps it too; docs/pipeline.md#warm-start)",
        "epochs",
        ge=1,
    )
    warm_patience: int = env(
        "DKT_WARM_PATIENCE",
        1,
        "retraining: early-stopping patience of a warm-started candidate (epochs without a validation gain)",
        "epochs",
        ge=1,
    )
    device: str = env("DKT_TRAIN_DEVICE", "auto", "train.py --device: auto, cpu, cuda, cuda:N")
    promote_tolerance: float = env(
        "DKT_PROMOTE_TOLERANCE",
        0.005,
        "promotion gates: promoted when the upper 95% bound of production's AUC minus the candidate's is at most"
        " this (docs/pipeline.md#promotion-gates)",
        "AUC",
    )
    holdout_fraction: float = env(
        "DKT_HOLDOUT_FRACTION",
        0.1,
        "retrain gate: the newest share of the data version's answers (by Timestamp) held out of training",
        "share",
        gt=0,
        lt=1,
    )
    gate_min_answers: int = env(
        "DKT_GATE_MIN_ANSWERS",
        500,
        "retrain gate: fewer time-holdout answers than this: the user-split test set decides",
        "answers",
        ge=1,
    )
    shadow_min_answers: int = env(
        "DKT_SHADOW_MIN_ANSWERS",
        200,
        "shadow gate: explored answers (DKT_EXPLORE_RATE) both production and the shadow scored before it decides",
        "answers",
        ge=1,
    )
    gate_bootstrap: int = env(
        "DKT_GATE_BOOTSTRAP",
        1000,
        "promotion gates: paired bootstrap resamples of the AUC difference",
        "resamples",
        ge=100,
    )


# -- `make up` (pipeline/stack.py) -------------------------------------------------------------------------
class StackSettings(Group):
    title: ClassVar[str] = "make up (one host)"
    var_dir: Path = env(
        "DKT_VAR_DIR",
        REPO_ROOT / "var",
        "where `make up` keeps the store, client database, Airflow home, BentoML store",
        "path",
    )
    sim_dir: Path = env(
        "DKT_SIM_DIR", REPO_ROOT / "data" / "sim", "where `make up` simulates the initial data set", "path"
    )
    sim_users: int = env("DKT_SIM_USERS", 500, "students in `make up`'s initial data set", "students")
    airflow_venv: Path = env(
        "DKT_AIRFLOW_VENV",
        REPO_ROOT / ".venv-airflow",
        "Airflow's virtualenv (also init_for_train_server.sh, bench/cycle_bench.py)",
        "path",
    )
    airflow_home: Path | None = env(
        "AIRFLOW_HOME", None, "Airflow's home (Airflow reads it too); unset: $DKT_VAR_DIR/airflow for `make up`", "path"
    )
    airflow_port: int = env(
        "DKT_AIRFLOW_PORT", 8080, "Airflow api-server / UI port (init_for_inference_server.sh: 8081)", "port"
    )
    airflow_host: str = env(
        "DKT_AIRFLOW_HOST", "127.0.0.1", "the api-server's bind address; 0.0.0.0 lets a remote edge worker in"
    )
    dags_folder: Path | None = env(
        "AIRFLOW__CORE__DAGS_FOLDER", None, "Airflow's DAG folder; unset: dags/ of this repository", "path"
    )
    jwt_secret: SecretStr | None = env(
        "AIRFLOW__API_AUTH__JWT_SECRET",
        None,
        "the api-server's JWT key edge workers sign with; unset: generated once into var/secrets/airflow_jwt_secret",
        secret=True,
    )


# -- Prometheus of `make up` (pipeline/prometheus.py, config/prometheus/) ------------------------------------
class PrometheusSettings(Group):
    title: ClassVar[str] = "prometheus (`make up`)"
    port: int = env(
        "DKT_PROMETHEUS_PORT", 9090, "the Prometheus server `make up` starts: binds 127.0.0.1 to this port", "port"
    )
    scrape_interval: str = env(
        "DKT_PROMETHEUS_SCRAPE_INTERVAL",
        "15s",
        "how often Prometheus scrapes the service, the client and itself, and evaluates the alert rules"
        " (a Prometheus duration: 500ms, 15s, 1m)",
        "duration",
        pattern=r"^[1-9][0-9]*(ms|s|m|h)$",
    )
    retention: str = env(
        "DKT_PROMETHEUS_RETENTION",
        "15d",
        "how long Prometheus keeps samples in $DKT_VAR_DIR/prometheus/data (a Prometheus duration: 12h, 15d, 4w)",
        "duration",
        pattern=r"^[1-9][0-9]*(h|d|w|y)$",
    )


# -- MLflow tracking (dkt/tracking.py: every training run; pipeline/mlflow_server.py: `make up`'s server) -----
class MlflowSettings(Group):
    title: ClassVar[str] = "mlflow tracking"
    tracking_uri: str | None = env(
        "DKT_MLFLOW_TRACKING_URI",
        None,
        "the MLflow tracking server every training run is recorded in (http://host:port); unset: runs are not"
        " tracked and each training says so in one warning line; `make up` sets it to the server it starts"
        " (docs/tracking.md)",
        "URL",
        pattern=r"^https?://[^/\s]+",
    )
    experiment: str = env("DKT_MLFLOW_EXPERIMENT", "dkt", "the MLflow experiment training runs are recorded under")
    timeout: float = env(
        "DKT_MLFLOW_TIMEOUT",
        10.0,
        "how long a training waits for the tracking server to answer its first request before going on untracked",
        "s",
        gt=0,
        allow_inf_nan=False,
    )
    port: int = env(
        "DKT_MLFLOW_PORT",
        5050,
        "the tracking server `make up` starts: binds 127.0.0.1 to this port (not MLflow's 5000: DKT_REGISTRY's)",
        "port",
    )
    venv: Path = env(
        "DKT_MLFLOW_VENV",
        REPO_ROOT / ".venv-mlflow",
        "the tracking server's own virtualenv (`mlflow` conflicts with the app's gunicorn; `make mlflow-venv`)",
        "path",
    )


# -- Airflow DAGs (dags/, run in .venv-airflow) ---------------------------------------------------------
class AirflowSettings(Group):
    title: ClassVar[str] = "airflow DAGs"
    app_python: Path = env(
        "DKT_APP_PYTHON", REPO_ROOT / ".venv" / "bin" / "python", "the app venv's python every task runs", "path"
    )
    train_queue: str = env(
        "DKT_TRAIN_QUEUE", "train", "queue of the train-host tasks (and of the edge worker serving them)"
    )
    train_executor: Literal["local", "edge"] = env(
        "DKT_TRAIN_EXECUTOR",
        "local",
        "`local`: every task runs on the scheduler host; `edge`: train-queue tasks go to the Edge executor (GPU host)",
    )
    task_retries: int = env("DKT_TASK_RETRIES", 2, "retries of a failed task", "retries")
    retry_delay_seconds: int = env("DKT_RETRY_DELAY_SECONDS", 30, "wait before a retry", "s")
    update_schedule: str = env("DKT_UPDATE_SCHEDULE", "@daily", "update_data_dag's schedule (cron or preset)")
    promote_shadow_schedule: str = env(
        "DKT_PROMOTE_SHADOW_SCHEDULE", "@hourly", "promote_shadow_dag's schedule (cron or preset)"
    )


# -- train host (init_for_train_server.sh) ----------------------------------------------------------------
class TrainHostSettings(Group):
    title: ClassVar[str] = "train host"
    airflow_url: str = env(
        "DKT_AIRFLOW_URL",
        "http://127.0.0.1:8081",
        "the inference host's Airflow api-server as seen from the train host",
        "URL",
        reader="init_for_train_server.sh",
    )
    jwt_secret_file: str = env(
        "DKT_AIRFLOW_JWT_SECRET_FILE",
        "var/secrets/airflow_jwt_secret",
        "a copy of the inference host's JWT secret file",
        "path",
        reader="init_for_train_server.sh",
    )
    edge_hostname: str | None = env(
        "DKT_EDGE_HOSTNAME",
        None,
        "the worker's name in Airflow; unset: the fully qualified host name",
        reader="init_for_train_server.sh",
    )
    worker_wait: int = env(
        "DKT_WORKER_WAIT", 120, "how long to wait for the worker to register", "s", reader="init_for_train_server.sh"
    )
    torch_cuda_index: str = env(
        "DKT_TORCH_CUDA_INDEX",
        "https://download.pytorch.org/whl/cu126",
        "pip index of the CUDA torch build",
        "URL",
        reader="init_for_train_server.sh",
    )


# -- swarm (pipeline/swarm.py) ------------------------------------------------------------------------------
# A Go duration as compose and `docker service` take it (10s, 1m30s, 500ms): checked here, not by a failed deploy.
DOCKER_DURATION = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"


class SwarmSettings(Group):
    title: ClassVar[str] = "swarm"
    registry: str = env("DKT_REGISTRY", "127.0.0.1:5000", "registry the images are pushed to and the swarm pulls from")
    stack: str | None = env("DKT_STACK", None, "the stack name; unset: config/swarm.json's `stack` (dkt)")
    stack_config: Path = env(
        "DKT_STACK_CONFIG", REPO_ROOT / "config" / "swarm.json", "image specs and service names", "path"
    )
    compose_file: Path = env("DKT_COMPOSE_FILE", REPO_ROOT / "docker-compose.yml", "the stack file", "path")
    base_image: str = env(
        "DKT_BASE_IMAGE",
        "local/python:3.11-bookworm",
        "base of every image (python:3.11-slim where a registry is reachable)",
    )
    client_host_port: int = env(
        "DKT_CLIENT_HOST_PORT", 8080, "host port the proxy publishes the client on (compose file)", "port"
    )
    inference_host_port: int = env(
        "DKT_INFERENCE_HOST_PORT", 3000, "host port the proxy publishes inference on (compose file)", "port"
    )
    prometheus_host_port: int = env(
        "DKT_PROMETHEUS_HOST_PORT",
        9090,
        "host port the stack's Prometheus publishes on (compose file; mode host, like the proxy's)",
        "port",
    )
    client_url: str | None = env(
        "DKT_CLIENT_URL",
        None,
        "the client as the host reaches it; unset: http://127.0.0.1:$DKT_CLIENT_HOST_PORT",
        "URL",
    )
    metadata_url: str | None = env(
        "DKT_METADATA_URL",
        None,
        "inference /metadata through the proxy; unset: http://127.0.0.1:$DKT_INFERENCE_HOST_PORT/metadata",
        "URL",
    )
    timeout: float = env("DKT_SWARM_TIMEOUT", 300.0, "how long to wait for a rollout or a scale", "s", gt=0)
    inference_replicas: int = env(
        "DKT_INFERENCE_REPLICAS",
        3,
        "inference replicas (`pipeline.swarm deploy --replicas` sets it)",
        "replicas",
        reader="docker-compose.yml",
    )
    inference_cpus: str = env(
        "DKT_INFERENCE_CPUS", "1.0", "CPU limit per inference replica", "CPUs", reader="docker-compose.yml"
    )
    inference_memory: str = env(
        "DKT_INFERENCE_MEMORY",
        "1536M",
        "memory limit per inference replica",
        "bytes (Docker units)",
        reader="docker-compose.yml",
    )
    # One at a time by default: a host that starts every new replica at once shares its CPU among all of their
    # model loads (and the old replicas still serving). Start-first either way: the old ones serve until the new
    # are healthy, so more at once costs CPU, never a failed request; the Docker tests start both of theirs at once.
    inference_update_parallelism: int = env(
        "DKT_INFERENCE_UPDATE_PARALLELISM",
        1,
        "inference replicas a rolling update (and its rollback) starts at once, start-first; 0: all at once",
        "replicas",
        reader="docker-compose.yml",
        ge=0,
    )
    inference_update_monitor: str = env(
        "DKT_INFERENCE_UPDATE_MONITOR",
        "10s",
        "how long after a new inference task turns healthy its failure still rolls the update back; Swarm reports "
        "the update complete only after it",
        "Docker duration",
        reader="docker-compose.yml",
        pattern=DOCKER_DURATION,
    )
    # Generous: a replica that is still loading its model when the period ends fails 3 checks and is replaced (on
    # a busy 2-core host a start took 40-90 s). An image that never turns ready is rolled back only after it.
    inference_start_period: str = env(
        "DKT_INFERENCE_START_PERIOD",
        "240s",
        "how long a new inference replica may take to turn ready before its failed readiness checks count",
        "Docker duration",
        reader="docker-compose.yml",
        pattern=DOCKER_DURATION,
    )
    client_db_name: str = env(
        "DKT_CLIENT_DB_NAME",
        "client.db",
        "the database's file name inside the client container's /data (set from DKT_CLIENT_DB)",
        reader="docker-compose.yml",
    )
    client_data_dir: str | None = env(
        "DKT_CLIENT_DATA_DIR",
        None,
        "host folder bind-mounted at /data (set by `pipeline.swarm deploy` from DKT_CLIENT_DB)",
        "path",
        reader="docker-compose.yml",
    )
    client_user: str | None = env(
        "DKT_CLIENT_USER",
        None,
        "uid:gid the client container runs as (set by `pipeline.swarm deploy`: the folder's owner)",
        reader="docker-compose.yml",
    )
    client_node: str | None = env(
        "DKT_CLIENT_NODE",
        None,
        "swarm node holding the folder (set by `pipeline.swarm deploy`)",
        reader="docker-compose.yml",
    )
    inference_image: str | None = env(
        "DKT_INFERENCE_IMAGE",
        None,
        "inference image reference (set by `pipeline.swarm deploy`)",
        reader="docker-compose.yml",
    )
    client_image: str | None = env(
        "DKT_CLIENT_IMAGE", None, "client image reference (set by `pipeline.swarm deploy`)", reader="docker-compose.yml"
    )
    proxy_image: str | None = env(
        "DKT_PROXY_IMAGE", None, "proxy image reference (set by `pipeline.swarm deploy`)", reader="docker-compose.yml"
    )
    prometheus_image: str | None = env(
        "DKT_PROMETHEUS_IMAGE",
        None,
        "the stack's Prometheus image reference (set by `pipeline.swarm deploy`)",
        reader="docker-compose.yml",
    )

    @model_validator(mode="after")
    def _derive(self) -> SwarmSettings:
        # The compose file publishes on these host ports: follow them unless the URLs are given outright.
        self.client_url = self.client_url or f"http://127.0.0.1:{self.client_host_port}"
        self.metadata_url = self.metadata_url or f"http://127.0.0.1:{self.inference_host_port}/metadata"
        return self


# -- containers (docker/*.Dockerfile, docker/haproxy.cfg; set by the images or the compose file) -------------
class ContainerSettings(Group):
    title: ClassVar[str] = "containers"
    port: int = env(
        "DKT_PORT",
        8000,
        "the port the client (8000) or inference (3000) container serves on",
        "port",
        reader="docker/*.Dockerfile",
    )
    model_version: str | None = env(
        "DKT_MODEL_VERSION",
        None,
        "the model version baked into an inference image (a label for operators)",
        reader="docker/bento.Dockerfile.j2",
    )
    gunicorn_workers: int = env(
        "GUNICORN_WORKERS",
        2,
        "gunicorn workers of the client container",
        "processes",
        reader="docker/client.Dockerfile",
    )
    gunicorn_threads: int = env(
        "GUNICORN_THREADS",
        4,
        "threads per gunicorn worker of the client container",
        "threads",
        reader="docker/client.Dockerfile",
    )
    proxy_client_port: int = env(
        "DKT_PROXY_CLIENT_PORT", 8080, "the proxy's client port", "port", reader="docker/haproxy.cfg"
    )
    proxy_inference_port: int = env(
        "DKT_PROXY_INFERENCE_PORT", 3000, "the proxy's inference port", "port", reader="docker/haproxy.cfg"
    )
    client_service: str = env(
        "DKT_CLIENT_SERVICE", "client", "the client's service name the proxy resolves", reader="docker/haproxy.cfg"
    )
    inference_service: str = env(
        "DKT_INFERENCE_SERVICE",
        "inference",
        "the inference service name the proxy resolves",
        reader="docker/haproxy.cfg",
    )
    inference_port: int = env(
        "DKT_INFERENCE_PORT",
        3000,
        "the inference containers' port the proxy sends to",
        "port",
        reader="docker/haproxy.cfg",
    )
    client_health_path: str = env(
        "DKT_CLIENT_HEALTH_PATH", "/", "the client path the proxy checks", reader="docker/haproxy.cfg"
    )
    base_from: Literal["auto", "host", "debootstrap"] = env(
        "DKT_BASE_FROM",
        "auto",
        "how the offline base image is built: `host` copies this Debian host's installed packages (seconds),"
        " `debootstrap` builds from the mirror (minutes), `auto` the first when it can",
        reader="docker_manual/build_base_image.sh",
    )
    extra_ca_dir: Path = env(
        "DKT_EXTRA_CA_DIR",
        Path("/usr/local/share/ca-certificates"),
        "extra CA certificates copied into the base image",
        "path",
        reader="docker_manual/build_base_image.sh",
    )
    swarm_addr: str = env(
        "DKT_SWARM_ADDR",
        "127.0.0.1",
        "the address the single-node swarm advertises",
        reader="docker_manual/start_docker.sh",
    )
    dockerd_log: Path = env(
        "DKT_DOCKERD_LOG",
        Path("/var/log/dockerd.log"),
        "dockerd's log when started without systemd",
        "path",
        reader="docker_manual/start_docker.sh",
    )
    registry_root: Path = env(
        "DKT_REGISTRY_ROOT",
        Path("/var/lib/dkt-registry"),
        "where the local image registry keeps its blobs",
        "path",
        reader="docker_manual/start_registry.sh",
    )
    registry_log: Path = env(
        "DKT_REGISTRY_LOG",
        Path("/var/log/dkt-registry.log"),
        "the local image registry's log",
        "path",
        reader="docker_manual/start_registry.sh",
    )
    debian_mirror: str | None = env(
        "DKT_DEBIAN_MIRROR",
        None,
        "the Debian mirror debootstrap uses; unset: the first URI in /etc/apt/sources.list.d/*.sources",
        reader="docker_manual/build_base_image.sh",
    )


# -- tests and benchmarks (tests/, bench/) --------------------------------------------------------------------
class DevSettings(Group):
    title: ClassVar[str] = "tests and benchmarks"
    bundle: Path | None = env("DKT_BUNDLE", None, "the bundle bench/naive_server.py serves (required there)", "path")
    keep_images: bool = env(
        "DKT_TEST_KEEP_IMAGES",
        False,
        "tests/docker keeps the images it built (a cache for local reruns); unset: removes everything it made",
        reader="tests/docker",
    )
    e2e_diag_dir: Path = env(
        "DKT_E2E_DIAG_DIR",
        Path("/tmp"),
        "where the swarm end-to-end test writes diagnostics",
        "path",
        reader="tests/docker",
    )
    out_dir: Path | None = env(
        "OUT", None, "bench/gpu_bench.py writes gpu_bench.json here (the device run's output folder)", "path"
    )
    screenshot_dir: Path | None = env(
        "DKT_SCREENSHOT_DIR", None, "keep the browser test's screenshots here", "path", reader="tests/client"
    )


GROUPS: tuple[type[Group], ...] = (
    ClientSettings,
    ServiceSettings,
    StoreSettings,
    PipelineSettings,
    TrainingSettings,
    StackSettings,
    PrometheusSettings,
    MlflowSettings,
    AirflowSettings,
    TrainHostSettings,
    SwarmSettings,
    ContainerSettings,
    DevSettings,
)

G = TypeVar("G", bound=Group)


@contextmanager
def _environ(environ: Mapping[str, str] | None) -> Iterator[None]:
    token = _ENVIRON.set(environ)
    try:
        yield
    finally:
        _ENVIRON.reset(token)


def _problem(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "int_parsing" or kind == "int_from_float":
        return "not an integer"
    if kind == "float_parsing":
        return "not a number"
    if kind == "finite_number":
        return "not a finite number"
    if kind == "literal_error":
        return f"expected {ctx.get('expected', 'one of the listed values')}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        words = {"greater_than": "above", "greater_than_equal": "at least", "less_than": "below"}
        bound = next(iter(ctx.values()))
        return f"expected a value {words.get(kind, 'at most')} {bound}"
    return str(err["msg"]).removeprefix("Value error, ")


def load(cls: type[G], environ: Mapping[str, str] | None = None, **overrides: Any) -> G:
    """The group's settings from ``environ`` (default: ``os.environ``); ``overrides`` (field names) win.

    A bad value raises ``SettingsError`` with one line: ``NAME='value': what is wrong``."""
    with _environ(environ):
        try:
            return cls(**overrides)
        except ValidationError as exc:
            err = exc.errors()[0]
            name = str(err["loc"][0]) if err["loc"] else ""
            if name in cls.model_fields:  # given as an override by field name
                name = str(cls.model_fields[name].validation_alias)
            if not name:  # a check across fields: its message names the variables
                raise SettingsError(_problem(err)) from None
            raw = err.get("input")
            shown = MASK if cls.variables().get(name) and _is_secret(cls.variables()[name]) else raw
            raise SettingsError(f"{name}={shown!r}: {_problem(err)}") from None


def group_of(name: str) -> type[Group]:
    """The group declaring environment variable ``name``; ``KeyError`` for an undeclared one."""
    for group in GROUPS:
        if name in group.variables():
            return group
    raise KeyError(f"{name} is not declared in dkt/settings.py")


def value(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The effective value of one declared variable (its whole group is validated, as at start-up)."""
    group = group_of(name)
    field = next(k for k, f in group.model_fields.items() if f.validation_alias == name)
    return getattr(load(group, environ), field)


def load_or_exit(cls: type[G], environ: Mapping[str, str] | None = None, **overrides: Any) -> G:
    """``load`` for start-up code: a bad value prints ``error: ...`` (one line) and exits 2."""
    try:
        return load(cls, environ, **overrides)
    except SettingsError as exc:
        stop(str(exc))


class BadSetting(SystemExit):
    """Exit 2 over a setting; ``str()`` is the problem (the line ``stop`` printed), for callers and tests."""

    def __init__(self, problem: str) -> None:
        super().__init__(2)
        self.problem = problem

    def __str__(self) -> str:
        return self.problem


def stop(problem: str) -> NoReturn:
    """Stop start-up over a setting: ``error: <problem>`` on stderr, exit 2, no traceback."""
    print(f"error: {problem}", file=sys.stderr, flush=True)
    raise BadSetting(problem)


def is_set(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether declared variable ``name`` has a (non-empty) value: for code that fills gaps in a child's env."""
    group_of(name)  # only declared variables
    return bool((os.environ if environ is None else environ).get(name))


def _is_secret(f: FieldInfo) -> bool:
    extra = f.json_schema_extra
    return bool(isinstance(extra, dict) and extra.get("secret"))


def _meta(f: FieldInfo, key: str) -> str:
    extra = f.json_schema_extra
    return str(extra.get(key) or "") if isinstance(extra, dict) else ""


def shown(value: Any) -> str:
    """A value as ``show`` prints it: secrets masked, paths under the repository relative to it."""
    if value is None:
        return "(unset)"
    if value == "":
        return "(empty)"
    if isinstance(value, SecretStr):
        return MASK if value.get_secret_value() else "(unset)"
    if isinstance(value, Path) and value.is_relative_to(REPO_ROOT):
        return str(value.relative_to(REPO_ROOT)) or "."
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _type_name(f: FieldInfo) -> str:
    ann = f.annotation
    if get_origin(ann) in (Union, UnionType):  # X | None: optional, shown by its default "(none)"
        ann = next(a for a in get_args(ann) if a is not type(None))
    if get_origin(ann) is Literal:
        return "one of " + ", ".join(map(str, get_args(ann)))
    names: dict[Any, str] = {SecretStr: "secret", Path: "path", bool: "flag"}
    return names.get(ann, getattr(ann, "__name__", str(ann)))


def _default(f: FieldInfo) -> str:
    return "(none)" if f.default is None else ("(empty)" if f.default == "" else shown(f.default))


def markdown() -> str:
    """The README's table of variables, one section per group."""
    lines = [
        "Generated by `dkt settings markdown --write README.md` from `dkt/settings.py`; "
        "paths are relative to the repository root; an empty variable counts as unset.",
        "",
    ]
    for group in GROUPS:
        lines += [f"**{group.title}**", ""]
        lines += ["| variable | type | default | unit | meaning |", "|---|---|---|---|---|"]
        for name, f in group.variables().items():
            doc = (f.description or "").replace("|", "\\|")
            if reader := _meta(f, "reader"):
                doc += f" (read by {reader})"
            if _is_secret(f):
                doc += "; secret: masked by `show`"
            cells = [f"`{name}`", _type_name(f), f"`{_default(f)}`", _meta(f, "unit"), doc]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def replace_table(text: str, table: str) -> str:
    """``text`` with what lies between the settings markers replaced by ``table``."""
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise SettingsError(f"no {README_BEGIN} ... {README_END} markers")
    return text[: start + len(README_BEGIN)] + "\n" + table + text[end:]


def show(environ: Mapping[str, str] | None = None) -> str:
    """The effective settings per group, secrets masked; a bad value raises ``SettingsError``."""
    out: list[str] = []
    for group in GROUPS:
        s = load(group, environ)
        out.append(f"[{s.title}]")
        values = s.env_values()
        width = max(map(len, values))
        out += [f"  {name.ljust(width)}  {shown(value)}" for name, value in values.items()]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="dkt settings", description="The product's environment variables (dkt/settings.py).")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("show", help="the effective settings per group, secrets masked (default)")
    md = sub.add_parser("markdown", help="the README table of variables")
    md.add_argument("--write", type=Path, metavar="FILE", help="replace the table between the markers in FILE")
    p.add_argument("--markdown", action="store_true", help="same as the `markdown` command")
    args = p.parse_args(argv)
    try:
        if args.command == "markdown" or args.markdown:
            table = markdown()
            target: Path | None = getattr(args, "write", None)
            if target is None:
                sys.stdout.write(table)
            else:
                target.write_text(replace_table(target.read_text(), table))
            return 0
        sys.stdout.write(show())
    except (SettingsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

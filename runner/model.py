"""The typed, immutable pipeline: what `config.py` builds and every other module reads.

Nothing after `config.py` sees a YAML dict; it sees these frozen dataclasses.
Secrets are held as `Secret` (repr `'***'`), expressions as `Expr` (compiled
once at load). Defaults here are the documented defaults of the language.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from jmespath.parser import ParsedResult

from runner.transform import expressions
from runner.transform.types import FieldType

if TYPE_CHECKING:  # templates.py builds on this module
    from runner.config.templates import Template


class Secret:
    """A credential; its repr and str are '***' so it never leaks through formatting."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Expr:
    """A JMESPath expression compiled at load; `key` is where it stands in the file."""

    text: str
    parsed: ParsedResult = field(repr=False, compare=False)
    key: str = ""
    _evaluate: expressions.Evaluate = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_evaluate", expressions.evaluator(self.parsed.parsed))

    def search(self, data: Any) -> Any:
        return self._evaluate(data)


def frozen_map(values: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(values or {}))




# --- HTTP behaviour shared by the source and the http target -----------------


@dataclass(frozen=True, slots=True)
class Timeout:
    connect: float = 5.0
    read: float = 30.0
    write: float = 30.0
    pool: float = 10.0


@dataclass(frozen=True, slots=True)
class Retry:
    max_attempts: int = 5
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    max_elapsed: float = 300.0
    also_on: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests_per_second: float


@dataclass(frozen=True, slots=True)
class BearerAuth:
    token: Secret
    hosts: tuple[str, ...] = ()  # origins besides the first request's that get the credentials
    type: Literal["bearer"] = "bearer"


@dataclass(frozen=True, slots=True)
class BasicAuth:
    username: str
    password: Secret
    hosts: tuple[str, ...] = ()  # origins besides the first request's that get the credentials
    type: Literal["basic"] = "basic"


@dataclass(frozen=True, slots=True)
class ApiKeyAuth:
    name: str
    value: Secret
    location: Literal["header", "query"] = "header"  # the file's key is `in`
    hosts: tuple[str, ...] = ()  # origins besides the first request's that get the credentials
    type: Literal["api_key"] = "api_key"


ClientAuth = Literal["body", "basic"]  # where an OAuth2 client sends its id and secret


@dataclass(frozen=True, slots=True)
class OAuth2ClientCredentials:
    token_url: str
    client_id: str
    client_secret: Secret
    scopes: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()  # origins besides the first request's that get the credentials
    client_auth: ClientAuth = "body"
    grant_type: str = "client_credentials"  # Zoom's server-to-server apps: "account_credentials"
    params: Mapping[str, str] = field(default_factory=frozen_map)  # extra form fields
    type: Literal["oauth2_client_credentials"] = "oauth2_client_credentials"


@dataclass(frozen=True, slots=True)
class OAuth2RefreshToken:
    """The refresh-token grant (RFC 6749 section 6); a rotated refresh token lives only in memory."""

    token_url: str
    client_id: str
    client_secret: Secret
    refresh_token: Secret
    scopes: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()  # origins besides the first request's that get the credentials
    client_auth: ClientAuth = "body"
    params: Mapping[str, str] = field(default_factory=frozen_map)  # extra form fields
    type: Literal["oauth2_refresh_token"] = "oauth2_refresh_token"


@dataclass(frozen=True, slots=True)
class OAuth2JwtBearer:
    """A service account's signed assertion (RFC 7523): `credentials_file`, or the three keys it holds."""

    credentials_file: str | None = None  # a service-account JSON key file, read when the run starts
    client_email: str | None = None
    private_key: Secret | None = None  # PEM
    token_url: str | None = None
    scopes: tuple[str, ...] = ()
    subject: str | None = None  # the user to act as (domain-wide delegation)
    hosts: tuple[str, ...] = ()  # origins besides the first request's that get the credentials
    type: Literal["oauth2_jwt_bearer"] = "oauth2_jwt_bearer"


OAuth2 = OAuth2ClientCredentials | OAuth2RefreshToken | OAuth2JwtBearer
Auth = BearerAuth | BasicAuth | ApiKeyAuth | OAuth2


# --- source --------------------------------------------------------------------


# Every style takes `stop_when` (a truthy JMESPath on the body ends paging after that page)
# and `params_first_page_only` (`params` go with the first request only). `cursor`, `page`
# and `offset` also take `location` (the file's `in`): where their parameters are sent.
PagingLocation = Literal["query", "body", "header"]


@dataclass(frozen=True, slots=True)
class NoPagination:
    stop_when: Expr | None = None
    params_first_page_only: bool = False
    type: Literal["none"] = "none"


@dataclass(frozen=True, slots=True)
class NextUrlPagination:
    path: Expr
    stop_when: Expr | None = None
    params_first_page_only: bool = False
    type: Literal["next_url"] = "next_url"


@dataclass(frozen=True, slots=True)
class LinkHeaderPagination:
    stop_when: Expr | None = None
    params_first_page_only: bool = False
    type: Literal["link_header"] = "link_header"


@dataclass(frozen=True, slots=True)
class CursorPagination:
    param: str
    path: Expr | None = None  # the token in the body; or
    header: str | None = None  # the token in this response header
    location: PagingLocation = "query"
    stop_when: Expr | None = None
    params_first_page_only: bool = False
    type: Literal["cursor"] = "cursor"


@dataclass(frozen=True, slots=True)
class PagePagination:
    param: str = "page"
    start: int = 1
    size_param: str | None = None
    size: int | None = None
    total_pages: Expr | None = None
    location: PagingLocation = "query"
    stop_when: Expr | None = None
    params_first_page_only: bool = False
    type: Literal["page"] = "page"


@dataclass(frozen=True, slots=True)
class OffsetPagination:
    limit: int
    param: str = "offset"
    limit_param: str = "limit"
    total: Expr | None = None
    location: PagingLocation = "query"
    stop_when: Expr | None = None
    params_first_page_only: bool = False
    type: Literal["offset"] = "offset"


Pagination = (
    NoPagination
    | NextUrlPagination
    | LinkHeaderPagination
    | CursorPagination
    | PagePagination
    | OffsetPagination
)


@dataclass(frozen=True, slots=True)
class Limits:
    """Hard stops every run has; reaching one ends paging with a warning, not an error."""

    max_pages: int = 100_000
    max_items: int = 10_000_000
    max_seconds: float = 3600.0


@dataclass(frozen=True, slots=True)
class Incremental:
    cursor_field: Expr
    param: str | None
    initial_value: str | int | float | None = None
    lookback: float | None = None  # seconds for timestamps, units for numbers
    order: Literal["asc"] | None = None  # the source lists records in ascending cursor order


@dataclass(frozen=True, slots=True)
class IncrementalToken:
    """Incremental by a sync token: `token` on each page's body; the next run sends the last
    one as `param` on its first request, or (`as_url`) requests it as its first URL."""

    token: Expr
    param: str | None = None
    as_url: bool = False
    reset_on: frozenset[int] = frozenset({410})  # statuses that mean the token expired
    reset_when: Expr | None = None  # narrows reset_on: JMESPath on the error body


@dataclass(frozen=True, slots=True)
class Source:
    url: str  # the file's `url`, or its `base_url` and `path` joined
    method: Literal["GET", "POST"] = "GET"
    params: Mapping[str, Any] = field(default_factory=frozen_map)
    headers: Mapping[str, str] = field(default_factory=frozen_map)
    json: Any = None
    auth: Auth | None = None
    records: Expr | None = None  # None means '@'
    # on every 2xx body: truthy retries it like a 503 (checked first), or fails the run
    retry_when: Expr | None = None
    error_when: Expr | None = None
    pagination: Pagination = NoPagination()
    timeout: Timeout = Timeout()
    retry: Retry = Retry()
    rate_limit: RateLimit | None = None
    limits: Limits = Limits()
    incremental: Incremental | IncrementalToken | None = None
    concurrency: int = 4  # pages in flight for `page` and `offset`
    max_response_bytes: int = 50 * 1024 * 1024
    # `{{ EXPR }}` in url, path, params, headers and json, compiled at load; filled per run (or per parent)
    templates: tuple[Template, ...] = ()


# --- mapping -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MappingSpec:
    external_id: Expr
    fields: tuple[tuple[str, Expr], ...]
    filter: Expr | None = None
    # typed fields only (`{path, type}`), in file order; an untyped field keeps its JSON value
    types: tuple[tuple[str, FieldType], ...] = ()
    required: frozenset[str] = frozenset()  # fields whose null or missing value fails the record
    deleted: Expr | None = None  # truthy -> the record is a deletion of its key

    @property
    def column_types(self) -> dict[str, FieldType]:
        """The typed fields' types by name (the targets' column types)."""
        return dict(self.types)

    @property
    def names(self) -> list[str]:
        """The output field names, in the file's order (the target's columns, the hash's fields)."""
        return [name for name, _ in self.fields]


# --- targets -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deletes:
    """`target.deletes`: whether a complete run deletes the keys it did not read, and how."""

    missing: bool = False
    mode: Literal["hard", "soft"] = "hard"
    max_fraction: float = 0.5


@dataclass(frozen=True, slots=True)
class SqliteTargetConfig:
    path: Path
    table: str
    deletes: Deletes = Deletes()
    type: Literal["sqlite"] = "sqlite"


@dataclass(frozen=True, slots=True)
class PostgresTargetConfig:
    dsn: Secret
    table: str
    schema: str | None = None
    deletes: Deletes = Deletes()
    type: Literal["postgres"] = "postgres"


@dataclass(frozen=True, slots=True)
class JsonlTargetConfig:
    path: str  # '-' is stdout
    deletes: Deletes = Deletes()
    type: Literal["jsonl"] = "jsonl"


@dataclass(frozen=True, slots=True)
class HttpOperation:
    method: str
    path: str
    id_path: Expr | None = None  # `create` only


@dataclass(frozen=True, slots=True)
class HttpBatch:
    """`target.batch`: up to `size` records in one request, per-record outcomes from `results`."""

    path: str
    method: str = "POST"
    size: int = 100
    body: Expr | None = None  # on the list of mapped records; None is `@`
    results: Expr | None = None  # on the response: one entry per record, in order
    id_path: Expr | None = None  # on each entry of `results`: the target's id


@dataclass(frozen=True, slots=True)
class HttpTargetConfig:
    base_url: str
    upsert: HttpOperation | None = None
    create: HttpOperation | None = None
    update: HttpOperation | None = None
    delete: HttpOperation | None = None
    auth: Auth | None = None
    headers: Mapping[str, str] = field(default_factory=frozen_map)
    timeout: Timeout = Timeout()
    retry: Retry = Retry()
    rate_limit: RateLimit | None = None
    idempotency_key: bool = True
    deletes: Deletes = Deletes()
    concurrency: int = 4  # writes in flight at once
    batch: HttpBatch | None = None
    type: Literal["http"] = "http"


TargetConfig = SqliteTargetConfig | PostgresTargetConfig | JsonlTargetConfig | HttpTargetConfig


@dataclass(frozen=True, slots=True)
class StateConfig:
    path: Path = Path(".etl/state.db")
    dsn: Secret | None = None


@dataclass(frozen=True, slots=True)
class Pipeline:
    name: str
    source: Source
    mapping: MappingSpec
    target: TargetConfig
    state: StateConfig = StateConfig()
    description: str = ""
    file: str = ""
    # every secret value of the file (auth credentials, env values used in auth, DSNs):
    # the log filter and the error path scrub them
    secrets: frozenset[str] = field(default=frozenset(), repr=False)
    # the resources form: every endpoint, in file order (a parent before its children);
    # `source`, `mapping` and `target` above are then the first resource's. Empty in the simple form.
    resources: tuple[Resource, ...] = ()

    def state_key(self, resource: str | None = None) -> str:
        """Where the state store keeps a resource's state: the pipeline's name in the simple
        form (so stores written before resources existed keep working), `name/resource` else."""
        return self.name if resource is None else f"{self.name}/{resource}"


# --- resources --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resource:
    """One endpoint of a file in the resources form, its defaults already laid in."""

    name: str
    source: Source  # a `from_parent` child's is its parent's (it makes no request)
    mapping: MappingSpec
    target: TargetConfig
    parent: str | None = None
    changed_only: bool = False  # children only for parent records this run created or updated
    from_parent: Expr | None = None  # the child's records are this list inside the parent record

"""A Stats API request (Plausible's v1, ../docs/api.md) parsed into a query: pure code.

Every check answers with Plausible's own message (`{"error": message}` is what its
clients show), and adds which parameter is at fault and a machine-readable code.
"""

from __future__ import annotations

import calendar
import dataclasses
import re
from collections.abc import Mapping
from datetime import date, timedelta

from processor.rollups import ENTRY_PAGE, EVENT_NAME, EXIT_PAGE, PAGE, PROPS_PREFIX
from processor.visits import VISIT_DIMENSIONS

DOCS = "https://plausible.io/docs/stats-api"

# The properties this server keeps, by Plausible's names.
VISIT_PROPERTIES = frozenset(
    {f"visit:{name}" for name in VISIT_DIMENSIONS} | {ENTRY_PAGE, EXIT_PAGE}
)
KEPT_PROPERTIES = VISIT_PROPERTIES | {PAGE, EVENT_NAME}
# Plausible's properties that this server does not keep (it answers so, by name).
NOT_KEPT = frozenset({"event:goal", "visit:channel", "visit:region", "visit:city"})
# A filter only, as with Plausible (read from the raw events: report/raw.py).
HOSTNAME = "event:hostname"

METRICS = (
    "visitors",
    "visits",
    "pageviews",
    "views_per_visit",
    "bounce_rate",
    "visit_duration",
    "events",
    "time_on_page",
    "conversion_rate",
)
SESSION_METRICS = frozenset({"visits", "bounce_rate", "visit_duration", "views_per_visit"})
PERIODS = ("day", "7d", "30d", "month", "6mo", "12mo", "custom")
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


class QueryError(ValueError):
    """A request the API answers 400: `message` is Plausible's text."""

    def __init__(self, field: str, code: str, message: str):
        super().__init__(message)
        self.field = field
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True, slots=True)
class Filter:
    """`property` compared with `values` (any of them; `pattern` for a wildcard)."""

    property: str
    negated: bool
    values: tuple[str, ...] = ()
    pattern: str | None = None  # a PostgreSQL regular expression, anchored


@dataclasses.dataclass(frozen=True, slots=True)
class Period:
    first: date
    last: date  # inclusive

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    def previous(self) -> Period:
        """The period of as many days just before (compare=previous_period)."""
        return Period(self.first - timedelta(days=self.days), self.first - timedelta(days=1))


@dataclasses.dataclass(frozen=True, slots=True)
class Query:
    endpoint: str  # aggregate, timeseries or breakdown
    site_id: str
    time_zone: str  # the site's: where its days and hours are
    period: Period
    period_name: str
    metrics: tuple[str, ...]
    filters: tuple[Filter, ...]
    compare: bool = False
    interval: str = "day"  # timeseries: "hour" (period=day), "day" or "month"
    property: str | None = None  # breakdown
    limit: int = DEFAULT_LIMIT
    page: int = 1


def parse(
    endpoint: str, params: Mapping[str, str], site_id: str, time_zone: str, today: date
) -> Query:
    """`endpoint`: "realtime", "aggregate", "timeseries" or "breakdown"; `today`: in the
    site's time zone (where periods end by default). Realtime takes no other parameter:
    Plausible ignores them."""
    if endpoint == "realtime":
        return Query(endpoint, site_id, time_zone, Period(today, today), "day", ("visitors",), ())
    period_name = params.get("period", "30d")
    period = parse_period(period_name, params.get("date"), today)
    filters = parse_filters(params.get("filters", ""))
    prop = None
    limit, page = DEFAULT_LIMIT, 1
    if endpoint == "breakdown":
        prop = _breakdown_property(params.get("property"))
        limit = _number("limit", params.get("limit"), DEFAULT_LIMIT, MAX_LIMIT,
                        "Please provide limit as a number between 1 and 1000.")  # fmt: skip
        page = _number(
            "page", params.get("page"), 1, None, "Please provide page as a number of 1 or more."
        )
    metrics = parse_metrics(params.get("metrics", "visitors"), prop, filters)
    interval = "day"
    if endpoint == "timeseries":
        interval = _interval(params.get("interval"), period_name)
    return Query(
        endpoint=endpoint,
        site_id=site_id,
        time_zone=time_zone,
        period=period,
        period_name=period_name,
        metrics=metrics,
        filters=filters,
        compare=params.get("compare") == "previous_period",
        interval=interval,
        property=prop,
        limit=limit,
        page=page,
    )


def parse_period(name: str, raw_date: str | None, today: date) -> Period:
    if name not in PERIODS:
        raise QueryError(
            "period",
            "invalid_period",
            f"Error parsing `period` parameter: invalid period `{name}`. "
            f"Please find accepted values in our docs: {DOCS}#time-periods",
        )
    if name == "custom":
        if not raw_date:
            raise QueryError(
                "date",
                "missing_date",
                f"The `date` parameter is required when using a custom period. See {DOCS}#time-periods",
            )
        parts = raw_date.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            first, last = (_iso_date(part.strip()) for part in parts)
        except ValueError:
            raise QueryError(
                "date",
                "invalid_date",
                "Invalid format for `date` parameter. When using a custom period, please "
                f"include two ISO-8601 formatted dates joined by a comma. See {DOCS}#time-periods",
            ) from None
        if last < first:
            first, last = last, first
        return Period(first, last)
    if raw_date is None:
        day = today
    else:
        try:
            day = _iso_date(raw_date)
        except ValueError:
            raise QueryError(
                "date",
                "invalid_date",
                "Error parsing `date` parameter: invalid_format. "
                "Please specify a valid date in ISO-8601 format.",
            ) from None
    if name == "day":
        return Period(day, day)
    if name in ("7d", "30d"):  # the n days before `date` (Plausible's current code)
        days = int(name[:-1])
        return Period(day - timedelta(days=days), day - timedelta(days=1))
    if name == "month":
        return Period(day.replace(day=1), month_end(day))
    back = 5 if name == "6mo" else 11
    month_index = day.year * 12 + day.month - 1 - back
    return Period(date(month_index // 12, month_index % 12 + 1, 1), month_end(day))


def month_end(day: date) -> date:
    """The last day of `day`'s month."""
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _iso_date(text: str) -> date:
    if not _ISO_DATE.match(text):
        raise ValueError(text)
    return date.fromisoformat(text)


def parse_filters(text: str) -> tuple[Filter, ...]:
    """`;`-joined `property==value` or `property!=value` parts (B.4 of the contracts):
    `|` separates values (`\\|` is a pipe), `*` is a wildcard. Parts that are not a
    comparison, and countries that are not two letters, are dropped, as Plausible does."""
    if text.lstrip().startswith(("[", "{")):
        raise QueryError(
            "filters",
            "unsupported_filters",
            "Filters in JSON are not supported: write them as "
            "property==value;property!=value (https://plausible.io/docs/stats-api#filtering).",
        )
    filters = []
    for part in text.split(";"):
        negated = "!=" in part and ("==" not in part or part.index("!=") < part.index("=="))
        name, separator, raw = part.partition("!=" if negated else "==")
        if not separator:
            continue
        name, raw = name.strip(), raw.strip()
        _check_property("filters", name, filter_=True)
        if "*" in raw:
            filters.append(Filter(name, negated, pattern=_wildcard(raw)))
            continue
        values = tuple(v.replace("\\|", "|") for v in re.split(r"(?<!\\)\|", raw))
        if name == "visit:country" and any(len(v.encode()) != 2 for v in values):
            continue
        filters.append(Filter(name, negated, values))
    return tuple(filters)


def _wildcard(raw: str) -> str:
    """Plausible's page_regex: `*` and `**` match anything, `|` separates alternatives."""
    parts = [re.escape(alternative).replace(r"\*", "*") for alternative in raw.split("|")]
    body = "|".join(re.sub(r"\*+", ".*", part) for part in parts)
    return f"^({body})$"


def _breakdown_property(name: str | None) -> str:
    if not name:
        raise QueryError(
            "property",
            "missing_property",
            "The `property` parameter is required. "
            "Please provide at least one property to show a breakdown by.",
        )
    if name == "event:hostname":
        raise QueryError(
            "property",
            "invalid_property",
            "Property 'event:hostname' is currently not supported for breakdowns.  "
            f"Please provide a valid property for the breakdown endpoint: {DOCS}#properties",
        )
    _check_property("property", name, filter_=False)
    return name


def _check_property(field: str, name: str, *, filter_: bool) -> None:
    valid = (
        name in KEPT_PROPERTIES
        or name in NOT_KEPT
        or name == HOSTNAME
        or (name.startswith(PROPS_PREFIX) and len(name) > len(PROPS_PREFIX))
    )
    if not valid:
        if filter_:
            message = (
                f"Invalid filter property '{name}'. "
                f"Please provide a valid filter property: {DOCS}#properties"
            )
        else:
            message = (
                f"Invalid property '{name}'. "
                f"Please provide a valid property for the breakdown endpoint: {DOCS}#properties"
            )
        raise QueryError(field, "invalid_property", message)
    if name == "event:goal":
        raise QueryError(
            field,
            "goal_not_configured",
            "Goals are not kept by this server: no goal is configured for this site. "
            f"Find out how to configure goals here: {DOCS}#filtering-by-goals",
        )
    if name in NOT_KEPT:
        raise QueryError(
            field, "property_not_kept", f"Property '{name}' is not kept by this server."
        )


def parse_metrics(text: str, prop: str | None, filters: tuple[Filter, ...]) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(","))
    for name in names:
        if name not in METRICS:
            raise QueryError(
                "metrics",
                "invalid_metric",
                f"The metric `{name}` is not recognized. "
                f"Find valid metrics from the documentation: {DOCS}#metrics",
            )
    if len(set(names)) < len(names):
        raise QueryError("metrics", "repeated_metric", "Metrics cannot be queried multiple times.")
    event_only = [f.property for f in filters if _event_only(f.property)]
    page_filtered = any(f.property == PAGE for f in filters)
    for name in names:
        if name in SESSION_METRICS:
            if prop is not None and _event_only(prop):
                raise QueryError(
                    "metrics",
                    "session_metric",
                    f"Session metric `{name}` cannot be queried for breakdown by `{prop}`.",
                )
            if event_only:
                raise QueryError(
                    "metrics",
                    "session_metric",
                    f"Session metric `{name}` cannot be queried when using a filter on "
                    f"`{event_only[0]}`.",
                )
        if name == "views_per_visit":
            if page_filtered:
                raise QueryError(
                    "metrics",
                    "views_per_visit",
                    "Metric `views_per_visit` cannot be queried with a filter on `event:page`.",
                )
            if prop is not None:
                raise QueryError(
                    "metrics",
                    "views_per_visit",
                    "Metric `views_per_visit` is not supported in breakdown queries.",
                )
        if name == "conversion_rate":
            raise QueryError(
                "metrics",
                "conversion_rate",
                "Metric `conversion_rate` can only be queried in a goal breakdown or with a goal filter",
            )
        if name == "time_on_page" and not (prop == PAGE or (prop is None and page_filtered)):
            raise QueryError(
                "metrics",
                "time_on_page",
                "Metric `time_on_page` can only be queried in a page breakdown or with a page filter.",
            )
        if name == "events" and (prop == PAGE or page_filtered):
            raise QueryError(
                "metrics",
                "events_by_page",
                "Metric `events` is not kept per page by this server: "
                "query pageviews for `event:page`.",
            )
    return names


def _event_only(name: str) -> bool:
    return name == EVENT_NAME or name.startswith(PROPS_PREFIX)


def _number(field: str, raw: str | None, default: int, most: int | None, message: str) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise QueryError(field, f"invalid_{field}", message) from None
    if value < 1 or (most is not None and value > most):
        raise QueryError(field, f"invalid_{field}", message)
    return value


def _interval(raw: str | None, period_name: str) -> str:
    if raw is None:
        return {"day": "hour", "6mo": "month", "12mo": "month"}.get(period_name, "day")
    interval = "day" if raw == "date" else raw
    if interval not in ("day", "month"):
        raise QueryError(
            "interval",
            "invalid_interval",
            f"Error parsing `interval` parameter: invalid interval `{raw}`. "
            "Valid intervals are `day`, `month`",
        )
    return interval

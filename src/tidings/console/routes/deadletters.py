"""Dead letters: a page at a time with filters, one letter, replay and purge (the semantics of
`tidings dlq`: ids or the letters matching filters; undecodable letters are skipped when not
named; purging asks first)."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.datastructures import FormData, ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from tidings import dlq, ops
from tidings.console.security import form_value
from tidings.console.views import changing_form, console_of, fail, int_param, render, text_param
from tidings.errors import ConfigError
from tidings.ops import DeadLetterFilter

FILTERS = ("service", "reason", "handler", "type", "topic")
REASONS = (
    dlq.REASON_EXHAUSTED,
    dlq.REASON_PERMANENT,
    dlq.REASON_INVALID,
    dlq.REASON_UNDECODABLE,
    dlq.REASON_UNPROCESSABLE,
    dlq.REASON_UNPUBLISHABLE,
)
PAGE = 50
CONFIRM_BY_ID = 500


def _filters(values: ImmutableMultiDict[str, str] | FormData) -> DeadLetterFilter:
    def get(name: str) -> str | None:
        value = values.get(name)
        return text_param(value) if isinstance(value, str) else None

    return DeadLetterFilter(
        service=get("service"),
        reason=get("reason"),
        handler=get("handler"),
        event_type=get("type"),
        topic=get("topic"),
    )


async def letters_page(request: Request) -> Response:
    console = console_of(request)
    params = request.query_params
    where = _filters(params)
    limit = int_param(params.get("limit"), "limit", minimum=1) or PAGE
    if limit > 500:
        raise ConfigError(f"limit must be <= 500, got {limit}")
    resolved = params.get("resolved") == "1"
    page = await ops.dead_letter_page(
        console.broker,
        where,
        include_resolved=resolved,
        cursor=text_param(params.get("cursor")),
        limit=limit,
    )
    services = sorted(
        i.name.removesuffix(dlq.DLQ_SUFFIX)
        for i in await ops.list_topics(console.broker)
        if dlq.is_dead_letter_topic(i.name)
    )
    kept = {k: v for k, v in params.items() if k in (*FILTERS, "resolved", "limit") and v}
    return render(
        request,
        "dlq.html",
        title="Dead letters",
        page=page,
        where=where,
        resolved=resolved,
        services=services,
        reasons=REASONS,
        params=kept,
        next_url=None
        if page.cursor is None
        else "/dlq?" + urlencode({**kept, "cursor": page.cursor}),
        notice=_notice(params),
    )


def _notice(params: ImmutableMultiDict[str, str]) -> str | None:
    replayed, skipped, purged = (params.get(k) for k in ("replayed", "skipped", "purged"))
    if replayed is not None and replayed.isdigit():
        text = f"replayed {replayed} dead letter(s)"
        if skipped and skipped.isdigit() and int(skipped):
            text += (
                f"; skipped {skipped} that do not decode into an event (replaying would only "
                "dead-letter them again: inspect them, or purge them)"
            )
        return text
    if purged is not None and purged.isdigit():
        return f"purged {purged} dead letter(s)"
    return None


async def letter_page(request: Request) -> Response:
    letter = await ops.get_dead_letter(console_of(request).broker, request.path_params["position"])
    return render(request, "dlq_letter.html", title=f"Dead letter {letter.id}", letter=letter)


def _selection(form: FormData, action: str) -> tuple[list[str], DeadLetterFilter]:
    """The ids (positions) and filters of a replay or purge form, as `tidings dlq` wants them:
    ids, or every letter matching the filters (`all`), never neither nor both."""
    ids = [i for i in form.getlist("id") if isinstance(i, str) and i]
    where = _filters(form)
    select_all = form_value(form, "all") == "1"
    if ids and select_all:
        raise ConfigError(f"give dead letters or all of them, not both (nothing was {action})")
    if not ids and not select_all:
        raise ConfigError(f"select the dead letters to {action[:-1]} (nothing was {action})")
    return ids, where


async def replay(request: Request) -> Response:
    form = await changing_form(request)
    if isinstance(form, Response):
        return form
    broker = console_of(request).broker
    ids, where = _selection(form, "replayed")
    letters = await ops.select_dead_letters(broker, ids, where)
    result = await ops.replay_dead_letters(broker, letters, skip_undecodable=not ids)
    counts = {"replayed": len(result.replayed), "skipped": len(result.skipped)}
    return RedirectResponse("/dlq?" + urlencode({**_kept(form), **counts}), 303)


async def purge(request: Request) -> Response:
    form = await changing_form(request)
    if isinstance(form, Response):
        return form
    broker = console_of(request).broker
    ids, where = _selection(form, "purged")
    letters = await ops.select_dead_letters(broker, ids, where)
    if form_value(form, "confirm") != "yes":
        if not letters:
            return fail(request, 404, "no dead letters match; nothing was purged")
        # what is purged is what was shown: by position, unless that list is very long
        named = ids or ([x.position for x in letters] if len(letters) <= CONFIRM_BY_ID else [])
        return render(
            request,
            "dlq_confirm.html",
            title="Purge dead letters?",
            letters=letters[:200],
            count=len(letters),
            ids=named,
            select_all=not named,
            filters={} if named else _kept(form),
        )
    purged = await ops.purge_dead_letters(broker, letters) if letters else []
    return RedirectResponse("/dlq?" + urlencode({**_kept(form), "purged": len(purged)}), 303)


def _kept(form: FormData) -> dict[str, str]:
    return {k: v for k in FILTERS if isinstance(v := form.get(k), str) and v}


routes = [
    Route("/dlq", letters_page),
    Route("/dlq/replay", replay, methods=["POST"]),
    Route("/dlq/purge", purge, methods=["POST"]),
    Route("/dlq/{position:path}", letter_page),
]

"""`distill review NAME --serve`: a local web page to review a run's critiques and revisions.

The page (static/review.html, review.js, review.css: plain files served from the package, no build
step, no CDN) lists a round's training rows with the prompt, the student's original, the teacher's
critiques and issues, the revision with a word diff, the checks and the judge's two verdicts; a
switch shows the rejected rows with their filter and reason. The reviewer accepts, rejects or edits
(j/k, a/r/e); every decision is saved at once through `review_data.ReviewState` into the same
sft.reviewed.jsonl the CSV import writes, so `distill train --reviewed` reads it unchanged.

Security, since the texts are untrusted model output and a browser can be made to send requests to
localhost: the server binds 127.0.0.1 unless told otherwise; every request needs the random token
from the printed URL (`?token=` on a GET, the X-Distill-Token header on a POST; a POST never takes
it from the URL, so a cross-site form cannot post), compared in constant time; answers and revisions
go out as JSON and the page inserts them with textContent; the Content-Security-Policy allows only
the page's own script, so even markup that slipped through would run nothing.

A multi-round run serves each round-K/ (the page has a selector), and its report at /report.html
with a link to each round's review page (`report.review_report`).
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
from importlib import resources
from pathlib import Path
from typing import Any, Awaitable, Callable, MutableMapping

from distill.errors import InputError
from distill.evaluation.review import Decision
from distill.evaluation.review_data import ReviewState, page_rows, rejected_rows, review_rounds
from distill.serving.http import ThreadedServer

TOKEN_HEADER = "X-Distill-Token"
STATIC = ("review.html", "review.js", "review.css")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
REPORT_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

Scope = MutableMapping[str, Any]
ASGI = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def static_text(name: str) -> str:
    """One of the page's files, read from the installed package (package data, see pyproject.toml)."""
    return (resources.files("distill.evaluation") / "static" / name).read_text(encoding="utf-8")


class TokenGuard:
    """ASGI middleware: 403 unless the request carries the token (a GET in `?token=` or the header, any
    other method in the header only). Every response gets no-store, nosniff and no-referrer headers, so
    the token in the URL is neither cached nor sent on to another site."""

    def __init__(self, app: ASGI, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse

        request = Request(scope)
        given = request.headers.get(TOKEN_HEADER, "")
        if not given and request.method in ("GET", "HEAD"):
            given = request.query_params.get("token", "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return await PlainTextResponse("403: the token from the URL `distill review --serve` printed is "
                                           "missing or wrong", status_code=403)(scope, receive, send)

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] += [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"),
                                       (b"referrer-policy", b"no-referrer")]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class ReviewApp:
    """The review server's routes over one run folder (its rounds' states are loaded on first use)."""

    def __init__(self, run_dir: Path, token: str | None = None):
        self.run_dir = run_dir
        self.rounds = review_rounds(run_dir)
        self.token = token or secrets.token_urlsafe(24)
        self._states: dict[str, ReviewState] = {}
        self._lock = threading.Lock()

    def state(self, label: str) -> ReviewState:
        if label not in self.rounds:
            raise InputError(f"round {label!r}: not in {self.run_dir}; choose one of "
                             f"{', '.join(repr(r) for r in self.rounds)}")
        with self._lock:
            if label not in self._states:
                self._states[label] = ReviewState(self.rounds[label])
            return self._states[label]

    def asgi(self) -> ASGI:
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.routing import Route

        routes = [Route("/", self.page), Route("/review.js", self.asset), Route("/review.css", self.asset),
                  Route("/report.html", self.report), Route("/api/rows", self.rows),
                  Route("/api/decision", self.decide, methods=["POST"])]
        return Starlette(routes=routes, middleware=[Middleware(TokenGuard, token=self.token)])

    async def page(self, request: Any) -> Any:
        from starlette.responses import Response

        html = static_text("review.html").replace("__TOKEN__", self.token)  # url-safe base64: needs no escaping
        return Response(html, media_type="text/html", headers={"content-security-policy": PAGE_POLICY})

    async def asset(self, request: Any) -> Any:
        from starlette.responses import Response

        name = request.url.path.lstrip("/")
        return Response(static_text(name), headers={"content-type": _TYPES[Path(name).suffix],
                                                    "content-security-policy": PAGE_POLICY})

    async def report(self, request: Any) -> Any:
        from starlette.responses import PlainTextResponse, Response

        from distill.evaluation.report import review_report

        try:
            html = review_report(self.run_dir, lambda k: f"./?token={self.token}&round={k}")
        except InputError as err:
            return PlainTextResponse(f"404: {err}", status_code=404)
        return Response(html, media_type="text/html", headers={"content-security-policy": REPORT_POLICY})

    async def rows(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, PlainTextResponse

        label = request.query_params.get("round", next(iter(self.rounds)))
        try:
            state = self.state(label)
            folder = self.rounds[label]
            body = {"run": self.run_dir.name, "round": label, "rounds": list(self.rounds),
                    "rows": page_rows(folder), "rejected": rejected_rows(folder), "decisions": state.as_json()}
        except InputError as err:
            return PlainTextResponse(f"400: {err}", status_code=400)
        return JSONResponse(body)

    async def decide(self, request: Any) -> Any:
        """Body: {"round", "id", "decision": "accept" | "reject" | "edit" | null (clears), "edited", "note"}."""
        from starlette.responses import JSONResponse, PlainTextResponse

        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict) or not isinstance(body.get("id"), str):
                raise InputError("the body must be a JSON object with a string 'id'")
            state = self.state(str(body.get("round", next(iter(self.rounds)))))
            verdict = body.get("decision")
            decision = None if verdict is None else Decision(
                body["id"], str(verdict), str(body.get("edited") or ""), str(body.get("note") or ""))
            state.record(decision, body["id"])
        except (InputError, ValueError) as err:
            return PlainTextResponse(f"400: {err}", status_code=400)
        return JSONResponse({"saved": True, "decisions": state.as_json()})


class ReviewServer(ThreadedServer):
    """The review app on a uvicorn server in a background thread: `with ReviewServer(run) as s: s.url`.
    Port 0 picks a free port. `wait()` blocks until Ctrl-C; leaving the block stops the server."""

    def __init__(self, run_dir: Path, host: str = "127.0.0.1", port: int = 0, token: str | None = None):
        self.app = ReviewApp(run_dir, token)
        super().__init__(self.app.asgi(), host, port, "the review server")

    @property
    def url(self) -> str:
        return f"{self.origin}/?token={self.app.token}"

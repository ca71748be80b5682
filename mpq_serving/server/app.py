"""FastAPI app of the embedded OpenAI-compatible server (for machines without vLLM or SGLang).

Requests are decoded together by the continuous-batching scheduler (`scheduler.py`); the model
runs in a worker thread, so the event loop keeps accepting, validating, queueing and streaming.
Everything a request can get wrong is rejected before the response starts, so streamed answers
only fail for server faults, which arrive as an error event before `[DONE]`. A client that goes
away (a closed stream or a dropped non-streaming request) frees its batch slot at the next step.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.sse import EventSourceResponse, format_sse_event
from jinja2 import TemplateError
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .generation import Delta, Generation, LanguageModel, SamplingParams, TokenLogprob
from .metrics import CONTENT_TYPE, ServerMetrics
from .protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChoiceLogprobs,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    ErrorInfo,
    ErrorResponse,
    ModelCard,
    ModelList,
    SamplingRequest,
    TokenLogprobEntry,
    TopLogprob,
    Usage,
)
from .scheduler import Overloaded, Scheduler, Submission

DEFAULT_MAX_NUM_SEQS = 32
"""Sequences decoded together at most; more wait (vLLM's --max-num-seqs)."""

DEFAULT_MAX_WAITING = 128
"""Sequences allowed to wait for a slot; beyond, requests get 503 with Retry-After."""

RETRY_AFTER_SECONDS = 1

T = TypeVar("T")

logger = logging.getLogger(__name__)

MIN_LOGPROB = -9999.0
"""JSON has no -inf: impossible tokens get this logprob instead, as in vLLM."""


class APIError(Exception):
    """A request the server refuses; becomes an OpenAI-style error body with this status."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers


def _error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> ErrorResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return ErrorResponse(error=ErrorInfo(message=message, type=kind, param=param, code=code))


def _error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(_error_body(status, message, param, code).model_dump(), status_code=status, headers=headers)


class Engine:
    """The model behind its scheduler, plus turning requests into prompts and sampling parameters."""

    def __init__(self, lm: LanguageModel, model_name: str, max_num_seqs: int, max_waiting: int) -> None:
        self.lm = lm
        self.model_name = model_name
        self.metrics = ServerMetrics(model_name)
        self.scheduler = Scheduler(lm, self.metrics, max_num_seqs, max_waiting)

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(404, f"The model `{name}` does not exist.", "model", "model_not_found")

    def completion_prompts(self, prompt: str | list[str] | list[int] | list[list[int]]) -> list[tuple[list[int], str]]:
        """Token ids and echo text of each prompt; token-id prompts are checked against the vocabulary."""
        tokenizer = self.lm.tokenizer
        if isinstance(prompt, str) or isinstance(prompt[0], int):
            prompt = [prompt]
        prompts = []
        for item in prompt:
            if isinstance(item, str):
                prompts.append((tokenizer(item).input_ids, item))
                continue
            if max(item) >= self.lm.vocab_size:
                raise APIError(400, f"Token id {max(item)} is outside the vocabulary ({self.lm.vocab_size}).", "prompt")
            prompts.append((item, tokenizer.decode(item)))
        return prompts

    def chat_prompt(self, request: ChatCompletionRequest) -> list[int]:
        """Render the messages with the tokenizer's chat template, then tokenize without extra specials."""
        try:
            text = self.lm.tokenizer.apply_chat_template(
                [m.template_dict() for m in request.messages],
                tokenize=False,
                add_generation_prompt=True,
                **(request.chat_template_kwargs or {}),
            )
        except (TemplateError, ValueError) as exc:
            raise APIError(400, f"Cannot apply the chat template: {exc}", "messages") from exc
        return self.lm.tokenizer(text, add_special_tokens=False).input_ids

    def fit_max_tokens(self, prompt_len: int, max_tokens: int | None, prompt_param: str) -> int:
        """The completion budget, defaulting to the rest of the context, or a 400 if it does not fit."""
        limit = self.lm.max_model_len
        if prompt_len == 0:
            raise APIError(400, "The prompt is empty after tokenization.", prompt_param)
        if prompt_len > limit:
            raise APIError(
                400,
                f"This model's maximum context length is {limit} tokens, but the prompt has {prompt_len} tokens.",
                prompt_param,
                "context_length_exceeded",
            )
        if max_tokens is None:
            return limit - prompt_len
        if prompt_len + max_tokens > limit:
            raise APIError(
                400,
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for the completion). "
                "Please reduce the length of the prompt or of the completion.",
                "max_tokens",
                "context_length_exceeded",
            )
        return max_tokens

    def generations(
        self,
        request: SamplingRequest,
        prompts: Sequence[tuple[list[int], int]],
        logprobs: int | None,
        prompt_logprobs: int | None = None,
    ) -> list[Generation]:
        """`request.n` sequences per (prompt ids, max_tokens); the i-th sample of a seeded request draws
        from seed + i (vLLM's rule), so each replays whatever it is batched with."""
        if request.logit_bias and max(request.logit_bias) >= self.lm.vocab_size:
            raise APIError(
                400, f"logit_bias names a token id outside the vocabulary ({self.lm.vocab_size}).", "logit_bias"
            )
        defaults = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, **self.lm.sampling_defaults}
        chosen = {k: v if (v := getattr(request, k)) is not None else defaults[k] for k in defaults}
        gens = []
        for ids, max_tokens in prompts:
            params = SamplingParams(
                max_tokens=max_tokens,
                temperature=chosen["temperature"],
                top_p=chosen["top_p"],
                top_k=int(chosen["top_k"]),
                repetition_penalty=chosen["repetition_penalty"],
                stop=request.stop_strings,
                logprobs=logprobs,
                prompt_logprobs=prompt_logprobs,
                presence_penalty=request.presence_penalty,
                frequency_penalty=request.frequency_penalty,
                logit_bias=request.logit_bias,
                ignore_eos=request.ignore_eos,
            )
            seeds = [None if request.seed is None else request.seed + i for i in range(request.n)]
            gens.extend(Generation(self.lm, ids, params, self.lm.rng(seed)) for seed in seeds)
        return gens

    def submit(self, gens: Sequence[Generation]) -> Submission:
        """Queue the sequences before any response starts, so a full server answers 503 + Retry-After."""
        capacity = self.scheduler.max_num_seqs + self.scheduler.max_waiting
        if len(gens) > capacity:  # would be refused forever: not a matter of retrying
            raise APIError(400, f"The request asks for {len(gens)} sequences; this server holds at most {capacity} "
                           "at once (--max-num-seqs + --max-waiting).", "n")
        try:
            return self.scheduler.submit(gens)
        except Overloaded as exc:
            raise APIError(503, str(exc), code="server_busy", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from exc

    async def run(self, submission: Submission) -> AsyncIterator[tuple[int, Delta]]:
        """(sequence index, delta) as the batch produces them; closing early cancels the sequences."""
        try:
            async for event in submission.deltas():
                yield event
        finally:
            self.scheduler.cancel(submission)

    async def run_to_end(self, submission: Submission) -> list[list[TokenLogprob]]:
        """Run without streaming; the text and finish reason stay on each generation, logprobs come back."""
        logprobs: list[list[TokenLogprob]] = [[] for _ in submission.gens]
        async with aclosing(self.run(submission)) as events:
            async for index, delta in events:
                logprobs[index].extend(delta.logprobs)
        return logprobs


def _finite(logprob: float | None) -> float | None:
    return None if logprob is None else max(logprob, MIN_LOGPROB)


def _legacy_logprobs(entries: Sequence[TokenLogprob], offset: int) -> CompletionLogprobs:
    """The completions API's logprobs block; `offset` is where the first token starts in the choice text.

    As in vLLM, each top-logprobs dict also holds the chosen token.
    """
    block = CompletionLogprobs()
    for entry in entries:
        block.tokens.append(entry.token)
        block.text_offset.append(offset)
        offset += len(entry.token)
        block.token_logprobs.append(_finite(entry.logprob))
        if entry.top is None:
            block.top_logprobs.append(None)
            continue
        top: dict[str, float] = {}
        for token, logprob in [*entry.top, (entry.token, entry.logprob)]:
            top.setdefault(token, _finite(logprob))  # tokens that decode alike keep the likelier
        block.top_logprobs.append(top)
    return block


class _CompletionPieces:
    """Turns one completion choice's deltas into text and logprobs: the echoed prompt leads, offsets run on."""

    def __init__(self, gen: Generation, echo: str | None, logprobs: bool) -> None:
        self._gen, self._echo, self._logprobs = gen, echo, logprobs
        self._offset = 0

    def __call__(self, text: str, entries: Sequence[TokenLogprob]) -> tuple[str, CompletionLogprobs | None]:
        if self._echo is not None:
            text, entries = self._echo + text, [*(self._gen.prompt_logprobs or ()), *entries]
            self._echo = None
        if not self._logprobs:
            return text, None
        block = _legacy_logprobs(entries, self._offset)
        self._offset += sum(len(e.token) for e in entries)
        return text, block


def _utf8(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def _chat_logprobs(entries: Sequence[TokenLogprob]) -> ChatChoiceLogprobs:
    """The chat API's logprobs block (generated tokens only, so every entry has a logprob)."""
    return ChatChoiceLogprobs(
        content=[
            TokenLogprobEntry(
                token=e.token,
                logprob=_finite(e.logprob),
                bytes=_utf8(e.token),
                top_logprobs=[TopLogprob(token=t, logprob=_finite(lp), bytes=_utf8(t)) for t, lp in e.top or ()],
            )
            for e in entries
        ]
    )


def _usage(prompt_lens: Sequence[int], gens: Sequence[Generation]) -> Usage:
    prompt_tokens, completion_tokens = sum(prompt_lens), sum(g.num_generated for g in gens)
    return Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


def _sse(payload: BaseModel) -> bytes:
    return format_sse_event(data_str=payload.model_dump_json())


async def _sse_stream(events: AsyncIterator[BaseModel]) -> AsyncIterator[bytes]:
    """`data: {...}` per chunk then `data: [DONE]`; a server fault mid-stream becomes an error chunk."""
    try:
        async with aclosing(events):
            async for payload in events:
                yield _sse(payload)
    except Exception as exc:
        logger.exception("generation failed mid-stream")
        yield _sse(_error_body(500, f"{type(exc).__name__}: {exc}"))
    yield format_sse_event(data_str="[DONE]")


class ClientGone(Exception):
    """The client of a non-streaming request disconnected before its answer was ready."""


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it when the client disconnects first (vLLM's `with_cancellation`)."""
    result: list[T] = []
    failure: list[Exception] = []
    async with anyio.create_task_group() as group:

        async def finish() -> None:
            try:
                result.append(await work)
            except Exception as exc:  # noqa: BLE001 - re-raised as itself below, not inside an exception group
                failure.append(exc)
            group.cancel_scope.cancel()

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(finish)
        group.start_soon(watch)
    if failure:
        raise failure[0]
    if not result:
        raise ClientGone
    return result[0]


def _engine(request: Request) -> Engine:
    return request.app.state.engine


class _GuardedRoute(APIRoute):
    """Replies 500 to an unexpected exception itself: an exception handler would let Starlette re-raise
    it to uvicorn, which then drops the client's keep-alive connection."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except (APIError, ClientGone, RequestValidationError, HTTPException):
                raise
            except Exception as exc:
                logger.exception("request failed")
                return _error_response(500, f"{type(exc).__name__}: {exc}")

        return guarded


EngineDep = Annotated[Engine, Depends(_engine)]
router = APIRouter(route_class=_GuardedRoute)


@router.get("/health")
async def health() -> Response:
    return Response(status_code=200)


@router.get("/metrics")
async def metrics(engine: EngineDep) -> Response:
    return Response(engine.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/v1/models")
async def list_models(engine: EngineDep) -> ModelList:
    name = engine.model_name
    return ModelList(data=[ModelCard(id=name, root=name, max_model_len=engine.lm.max_model_len)])


@router.post("/v1/completions", response_model=CompletionResponse, responses={400: {"model": ErrorResponse}})
async def create_completion(
    body: CompletionRequest, engine: EngineDep, request: Request
) -> Response | CompletionResponse:
    engine.check_model(body.model)
    prompts = engine.completion_prompts(body.prompt)
    budgets = [(ids, engine.fit_max_tokens(len(ids), body.max_tokens, "prompt")) for ids, _ in prompts]
    echo_logprobs = body.logprobs if body.echo else None
    gens = engine.generations(body, budgets, body.logprobs, echo_logprobs)
    submission = engine.submit(gens)
    echoes = [text if body.echo else None for _, text in prompts for _ in range(body.n)]
    pieces = [_CompletionPieces(gen, echo, body.logprobs is not None) for gen, echo in zip(gens, echoes, strict=True)]
    request_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    if body.stream:

        async def chunks() -> AsyncIterator[CompletionResponse]:
            async with aclosing(engine.run(submission)) as events:
                async for index, delta in events:
                    text, logprobs = pieces[index](delta.text, delta.logprobs)
                    choice = CompletionChoice(
                        index=index,
                        text=text,
                        logprobs=logprobs,
                        finish_reason=delta.finish_reason,
                        stop_reason=delta.stop_reason,
                    )
                    yield CompletionResponse(id=request_id, created=created, model=body.model, choices=[choice])
            if body.stream_options and body.stream_options.include_usage:
                usage = _usage([len(ids) for ids, _ in prompts], gens)
                yield CompletionResponse(id=request_id, created=created, model=body.model, choices=[], usage=usage)

        return EventSourceResponse(_sse_stream(chunks()))

    collected = await _unless_disconnected(request, engine.run_to_end(submission))
    choices = []
    for index, gen in enumerate(gens):
        text, logprobs = pieces[index](gen.text, collected[index])
        choices.append(
            CompletionChoice(
                index=index, text=text, logprobs=logprobs, finish_reason=gen.finish_reason, stop_reason=gen.stop_reason
            )
        )
    usage = _usage([len(ids) for ids, _ in prompts], gens)
    return CompletionResponse(id=request_id, created=created, model=body.model, choices=choices, usage=usage)


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses={400: {"model": ErrorResponse}})
async def create_chat_completion(
    body: ChatCompletionRequest, engine: EngineDep, request: Request
) -> Response | ChatCompletionResponse:
    engine.check_model(body.model)
    ids = engine.chat_prompt(body)
    max_tokens = engine.fit_max_tokens(len(ids), body.completion_limit, "messages")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    gens = engine.generations(body, [(ids, max_tokens)], logprobs)
    submission = engine.submit(gens)
    request_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    if body.stream:

        async def chunks() -> AsyncIterator[ChatCompletionChunk]:
            def chunk(*choices: ChatChunkChoice) -> ChatCompletionChunk:
                return ChatCompletionChunk(id=request_id, created=created, model=body.model, choices=list(choices))

            yield chunk(
                *(ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content="")) for i in range(body.n))
            )
            async with aclosing(engine.run(submission)) as events:
                async for index, delta in events:
                    yield chunk(
                        ChatChunkChoice(
                            index=index,
                            delta=DeltaMessage(content=delta.text or None),
                            logprobs=_chat_logprobs(delta.logprobs) if body.logprobs else None,
                            finish_reason=delta.finish_reason,
                            stop_reason=delta.stop_reason,
                        )
                    )
            if body.stream_options and body.stream_options.include_usage:
                yield ChatCompletionChunk(
                    id=request_id, created=created, model=body.model, choices=[], usage=_usage([len(ids)], gens)
                )

        return EventSourceResponse(_sse_stream(chunks()))

    collected = await _unless_disconnected(request, engine.run_to_end(submission))
    choices = [
        ChatChoice(
            index=index,
            message=AssistantMessage(content=gen.text),
            logprobs=_chat_logprobs(collected[index]) if body.logprobs else None,
            finish_reason=gen.finish_reason,
            stop_reason=gen.stop_reason,
        )
        for index, gen in enumerate(gens)
    ]
    return ChatCompletionResponse(
        id=request_id, created=created, model=body.model, choices=choices, usage=_usage([len(ids)], gens)
    )


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One line for all of pydantic's complaints, and the top-level field of the first as `param`
    (deeper locations name union branches, which mean nothing to a client)."""
    errors = exc.errors()
    if errors[0]["type"] == "json_invalid":
        return f"Invalid JSON body: {errors[0].get('ctx', {}).get('error', 'cannot be parsed')}", None
    paths = [".".join(str(part) for part in error["loc"][1:]) or "body" for error in errors]
    message = "; ".join(f"{path}: {error['msg']}" for path, error in zip(paths, errors, strict=True))
    loc = errors[0]["loc"]
    return message, str(loc[1]) if len(loc) > 1 else None


def create_app(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model_name: str,
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
    max_waiting: int = DEFAULT_MAX_WAITING,
) -> FastAPI:
    """The OpenAI-compatible app serving `model` under `model_name`; run it with any ASGI server."""
    engine = Engine(LanguageModel(model, tokenizer), model_name, max_num_seqs, max_waiting)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.scheduler.close()

    app = FastAPI(title="mpq-serving", summary="Embedded OpenAI-compatible server", lifespan=lifespan)
    app.state.engine = engine
    app.include_router(router)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it; nginx's code for a closed client

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _error_response(400, message, param)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error_response(exc.status_code, str(exc.detail))

    return app

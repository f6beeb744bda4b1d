"""The worker API (channel 2): what ``orchestrator-cli`` calls from inside a worker.

Authenticated by the worker's own short-lived token (``Authorization: Worker <token>``), which
is scoped to one run: a token used on another run's URL is refused.
"""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import extend_schema, inline_serializer
from pydantic import BaseModel, ValidationError
from rest_framework import authentication, exceptions, permissions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents import services
from agents.contracts import AgentResult, AskIn, ProgressIn, describe_errors
from agents.models import WorkerSession
from config.api import JSONParser
from config.errors import ValidationFailed


class WorkerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Worker"

    def authenticate(self, request: Request):
        header = authentication.get_authorization_header(request).decode("latin-1").split()
        if not header or header[0] != self.keyword:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("The worker token header is malformed.")
        session = services.session_for_token(header[1])
        if session is None:
            raise exceptions.AuthenticationFailed("The worker token is invalid or has expired.")
        return AnonymousUser(), session

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class WorkerTokenScheme(OpenApiAuthenticationExtension):
    """Documents the worker token in the schema (drf-spectacular finds it by ``target_class``)."""

    target_class = WorkerTokenAuthentication
    name = "workerToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": 'The worker\'s own token, with the prefix "Worker": `Worker <token>`. Valid only '
            "while its run is active and its worker is running, until it reports a result.",
        }


class IsWorkerOfThisRun(permissions.BasePermission):
    message = "This worker token belongs to another run."

    def has_permission(self, request: Request, view) -> bool:
        if not isinstance(request.auth, WorkerSession):
            raise exceptions.NotAuthenticated("A worker token is required.")
        return request.auth.run_id == view.kwargs["run_id"]


def _parse(model: type[BaseModel], data) -> BaseModel:
    if not isinstance(data, dict):
        raise ValidationFailed("The body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(f"Invalid {model.__name__}: {describe_errors(exc, root='body')}") from exc


ACCEPTED = inline_serializer("WorkerAccepted", {"accepted": serializers.BooleanField()})


class _WorkerView(APIView):
    authentication_classes = [WorkerTokenAuthentication]
    permission_classes = [IsWorkerOfThisRun]
    parser_classes = [JSONParser]
    model: type[BaseModel]

    def act(self, session: WorkerSession, body) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def post(self, request: Request, run_id: int) -> Response:
        body = _parse(self.model, request.data)
        self.act(request.auth, body)
        return Response({"accepted": True}, status=202)


class WorkerProgressView(_WorkerView):
    model = ProgressIn

    @extend_schema(request=ProgressIn, responses={202: ACCEPTED}, summary="orchestrator-cli progress")
    def post(self, request: Request, run_id: int) -> Response:
        return super().post(request, run_id)

    def act(self, session: WorkerSession, body: ProgressIn) -> None:
        services.worker_progress(session=session, message=body.message)


class WorkerAskView(_WorkerView):
    model = AskIn

    @extend_schema(request=AskIn, responses={202: ACCEPTED}, summary="orchestrator-cli ask")
    def post(self, request: Request, run_id: int) -> Response:
        return super().post(request, run_id)

    def act(self, session: WorkerSession, body: AskIn) -> None:
        services.worker_ask(session=session, question=body.question)


class WorkerResultView(_WorkerView):
    model = AgentResult

    @extend_schema(
        request=AgentResult,
        responses={202: ACCEPTED},
        summary="orchestrator-cli result (the worker's token ends with it)",
    )
    def post(self, request: Request, run_id: int) -> Response:
        return super().post(request, run_id)

    def act(self, session: WorkerSession, body: AgentResult) -> None:
        services.session_report_result(session_id=session.id, result=body)


__all__ = ["WorkerAskView", "WorkerProgressView", "WorkerResultView"]

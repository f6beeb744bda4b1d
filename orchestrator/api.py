"""The engine's side of the project API: a project's Telegram bot, and what a person does to a live
project that needs the engine (stop, start, rollback, delete).

``ProjectEngineViewSet`` is the project API the URLconf registers: ``projects.api.ProjectViewSet``
(reads, creation, change requests, redeploys: domain work) plus the actions that stop or start
releases, which only the engine may do (domain apps never import it).

The bot: a person's own token in, the bot's name out.

``PUT /api/projects/<id>/bot/`` with ``{"token": "..."}`` checks the token with Telegram (the
chain of ``orchestrator.bots.validate_token``), stores it encrypted and makes the project run as
that bot; it answers the bot's identity, never the token. ``GET`` answers the project's bot (404
``no_bot`` when it has none yet), ``DELETE`` lets it go. Owner-scoped like the other project
endpoints: another person's project is 404, staff see every project.

It lives in the engine because validating a token calls Telegram; the secrets API
(``secrets_meta.api``) refuses ``TELEGRAM_BOT_TOKEN`` and points here.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import Conflict, NotFound
from config.schema import ErrorSerializer, error_response
from orchestrator import bots, maintenance, releases
from projects import services
from projects.api import OBJECT_ID, DeploymentSerializer, ProjectViewSet
from projects.models import Deployment, Project
from projects.selectors import projects_visible_to
from secrets_meta.models import BotToken

MAX_ID = 2**63 - 1  # ids are bigint: a larger one is simply not found
# What a token looks like to a client (the first check of the chain; Telegram decides the rest).
TOKEN_PATTERN = bots.TOKEN_FORMAT.pattern
TOKEN_MAX_LENGTH = 200


class BotSerializer(serializers.Serializer):
    """What anybody sees of a project's bot: never its token."""

    username = serializers.CharField(help_text="The bot's @username, without the @.")
    bot_id = serializers.IntegerField(help_text="The bot's Telegram id.")
    source = serializers.ChoiceField(
        choices=BotToken.Source.choices,
        help_text="`user`: the person's own bot; `pool`: a bot from the factory's pool.",
    )


class BotDetailSerializer(BotSerializer):
    status = serializers.ChoiceField(
        choices=BotToken.Status.choices, help_text="`assigned` while it serves the project."
    )
    last_validated_at = serializers.DateTimeField(
        allow_null=True, help_text="When Telegram last accepted the token (its checks, or a deploy)."
    )
    last_error = serializers.CharField(
        allow_blank=True, help_text="Why Telegram last refused the bot, if it did (empty when all is well)."
    )


@extend_schema_field(
    {
        "type": "string",
        "minLength": 1,
        "maxLength": TOKEN_MAX_LENGTH,
        "writeOnly": True,
        "description": "The bot's token from @BotFather (/mybots → your bot → API Token), e.g. `123456789:AAE…`: "
        "digits, a colon, then at least 35 letters, digits, _ or -. Never shown again, by any endpoint.",
    }
)
class TokenField(serializers.CharField):
    """Text only (DRF's CharField takes the number 12 as "12"); its format is the chain's first check,
    so a malformed token gets the same message here as in the chat."""

    def __init__(self, **kwargs):
        super().__init__(allow_blank=False, max_length=TOKEN_MAX_LENGTH, **kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class BotPutSerializer(serializers.Serializer):
    token = TokenField()


# drf-spectacular names the path's ``pk`` ``id`` (as for the other project endpoints).
PROJECT_ID = OpenApiParameter("id", int, OpenApiParameter.PATH, description="The project's id.")
UNREACHABLE = OpenApiResponse(
    ErrorSerializer,
    description="Telegram could not be reached to check the token (`bot_token_unchecked`); nothing changed. "
    "Try again in a minute.",
)


def _visible_project(request: Request, pk: int) -> Project:
    visible = projects_visible_to(request.user).select_related(None)
    project = visible.filter(id=pk).only("id", "kind").first() if pk <= MAX_ID else None
    if project is None:
        raise NotFound("No such project.", code="project_not_found")
    return project


def _assigned(project_id: int) -> BotToken | None:
    return BotToken.objects.filter(project_id=project_id, status=BotToken.Status.ASSIGNED).first()


class ProjectBotView(APIView):
    @extend_schema(
        parameters=[PROJECT_ID],
        responses={200: BotDetailSerializer},
        summary="The project's Telegram bot",
        description="The bot the project runs as: the person's own (`source: user`) or one from the factory's "
        "pool (`source: pool`). 404 `no_bot` while it has none (a pool bot is taken when the project is first "
        "deployed). Never the token.",
    )
    def get(self, request: Request, pk: int) -> Response:
        project = _visible_project(request, pk)
        row = _assigned(project.id)
        if row is None:
            raise NotFound(
                f"Project #{project.id} has no bot yet. Give your own with PUT /api/projects/{project.id}/bot/; "
                "otherwise a bot from the factory's pool is taken when it is deployed.",
                code="no_bot",
            )
        return Response(BotDetailSerializer(row).data)

    @extend_schema(
        parameters=[PROJECT_ID],
        request=BotPutSerializer,
        responses={200: BotSerializer, 409: error_response(409), 503: UNREACHABLE},
        summary="Run the project as your own Telegram bot",
        description="Checks the token with Telegram, each refusal with its own code (400): `bot_token_format` "
        "(not a token), `bot_token_rejected` (wrong or revoked), `bot_token_webhook` (a webhook is set: the bot "
        "is in use elsewhere), `bot_token_polled` (another program polls it), `bot_token_in_use` (it serves "
        "another project here). An accepted token is stored encrypted and the project runs as that bot from "
        "its next deploy (a bot it had before is let go); a run waiting for a token goes on. The answer is the "
        "bot's identity, never the token. 409 `not_a_bot_project` for a project planned as a web service; "
        "503 when Telegram cannot be reached.",
    )
    def put(self, request: Request, pk: int) -> Response:
        project = _visible_project(request, pk)
        body = BotPutSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if project.kind == Project.Kind.WEB_SERVICE:
            raise Conflict(f"Project #{project.id} is a web service: it runs no bot.", code="not_a_bot_project")
        row = bots.own_token_intake(project.id, body.validated_data["token"], actor=f"user:{request.user.id}")
        return Response(BotSerializer(row).data, status=status.HTTP_200_OK)

    @extend_schema(
        parameters=[PROJECT_ID],
        responses={
            204: OpenApiResponse(description="The project has no bot any more (or had none)."),
            409: error_response(409),
        },
        summary="Let the project's bot go",
        description="The bot stops serving the project: its webhook and commands are cleared at Telegram, a pool "
        "bot goes back to the pool and a person's own bot is forgotten (its token deleted). The next deploy takes "
        "a pool bot or asks for a token. 409 `bot_serving` while a release of the project runs as the bot.",
    )
    def delete(self, request: Request, pk: int) -> Response:
        project = _visible_project(request, pk)
        row = _assigned(project.id)
        if row is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        if Deployment.objects.filter(project_id=project.id, status__in=Deployment.HOLDS_PORT).exists():
            # Let go now, a pool bot could be handed to another project while this release polls it.
            raise Conflict(
                f"@{row.username} serves the project's running release: it can be let go once the release is "
                "stopped (deleting the project does both).",
                code="bot_serving",
                extra={"bot": row.username},
            )
        bots.bot_release(project.id, actor=f"user:{request.user.id}", why="released by the person")
        return Response(status=status.HTTP_204_NO_CONTENT)


class RollbackSerializer(serializers.Serializer):
    release = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_ID,
        help_text="The release (deployment id) to serve again; default: the one before the live one.",
    )


class StoppedSerializer(serializers.Serializer):
    stopped = serializers.ListField(child=serializers.IntegerField(), help_text="The releases stopped (ids).")


class ProjectEngineViewSet(ProjectViewSet):
    """The project API with the engine's actions on a live project."""

    @extend_schema(
        parameters=[OBJECT_ID],
        request=None,
        responses={200: StoppedSerializer, 409: error_response(409)},
        summary="Stop the project's releases",
        description="Stops every release of the project and removes its route; the project, its bot and its kept "
        "releases stay (`start` serves the last one again). Safe to repeat (`stopped` is then empty). 409 "
        "`run_in_progress` while a run is under way.",
    )
    @action(detail=True, methods=["post"], url_path="stop", url_name="stop")
    def stop(self, request: Request, pk=None, **kwargs) -> Response:
        project = self.visible_project(pk)
        services.project_check_idle(project_id=project.id)
        return Response({"stopped": releases.project_stop(project=project)})

    @extend_schema(
        parameters=[OBJECT_ID],
        request=None,
        responses={200: DeploymentSerializer, 409: error_response(409)},
        summary="Start the project's last release again",
        description="Starts the last release that served (kept on disk: no rebuild) and routes the project's name "
        "to it once healthy. 409 `already_live`, `no_release` (nothing kept to start), `start_failed` (it did not "
        "become healthy), `run_in_progress`.",
    )
    @action(detail=True, methods=["post"], url_path="start", url_name="start")
    def start(self, request: Request, pk=None, **kwargs) -> Response:
        project = self.visible_project(pk)
        services.project_check_idle(project_id=project.id)
        return Response(DeploymentSerializer(releases.project_start(project=project)).data)

    @extend_schema(
        parameters=[OBJECT_ID],
        request=RollbackSerializer,
        responses={200: DeploymentSerializer, 409: error_response(409)},
        summary="Roll the project back to an earlier release",
        description="The live release is stopped and an earlier kept release (default: the one before) serves on "
        "the same port and name, in seconds, with no rebuild. 409 `not_live`, `no_previous_release`, "
        "`rollback_failed` (the earlier release did not start: the one before serves again), `run_in_progress`; "
        "404 `release_not_found` for a release that is not an earlier kept one of this project.",
    )
    @action(detail=True, methods=["post"], url_path="rollback", url_name="rollback")
    def rollback(self, request: Request, pk=None, **kwargs) -> Response:
        project = self.visible_project(pk)
        body = RollbackSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        services.project_check_idle(project_id=project.id)
        restored = releases.rollback_by_hand(project=project, to_deployment_id=body.validated_data.get("release"))
        return Response(DeploymentSerializer(restored).data)

    @extend_schema(
        parameters=[OBJECT_ID],
        responses={204: OpenApiResponse(description="Deleted."), 409: error_response(409)},
        summary="Delete the project",
        description="Stops its releases, removes its route, ends its workers and gives its bot back; the project "
        "then answers 404 and leaves every list, while its row, runs and releases are kept as history (its "
        "name stays taken). 409 `run_in_progress` while a run is under way (cancel it first).",
    )
    def destroy(self, request: Request, pk=None, **kwargs) -> Response:
        project = self.visible_project(pk)
        services.project_mark_deleted(project_id=project.id)
        maintenance.project_teardown(project_id=project.id)
        return Response(status=status.HTTP_204_NO_CONTENT)


__all__ = ["ProjectBotView", "ProjectEngineViewSet"]

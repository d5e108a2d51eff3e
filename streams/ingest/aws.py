"""boto3 clients for the forwarders: adaptive retries, optional assumed roles that
renew themselves, and the few error classifications the forwarders act on."""

from __future__ import annotations

from typing import Any

from streams.ingest.forward import ForwardError

THROTTLING = frozenset({"ThrottlingException", "TooManyRequestsException", "Throttling"})


def check_credentials() -> None:
    import boto3

    if boto3.session.Session().get_credentials() is None:
        raise ForwardError("no AWS credentials found (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY, or run with an instance/task role)")


def make_client(service: str, region: str, *, endpoint_url: str | None, max_attempts: int,
                role_arn: str | None = None, sts_endpoint_url: str | None = None) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "adaptive", "max_attempts": max_attempts},
                    connect_timeout=5, read_timeout=60)
    session = boto3.session.Session()
    if role_arn:
        session = _assumed_session(session, role_arn, region, sts_endpoint_url, config)
    return session.client(service, region_name=region, endpoint_url=endpoint_url, config=config)


def _assumed_session(base: Any, role_arn: str, region: str, sts_endpoint_url: str | None,
                     config: Any) -> Any:
    """A session whose credentials assume `role_arn` and renew themselves before they
    expire (a continuous poller outlives the default one hour)."""
    import boto3
    import botocore.session
    from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials

    def create_client(service: str, **kwargs: Any) -> Any:
        kwargs.update(region_name=region, endpoint_url=sts_endpoint_url, config=config)
        return base._session.create_client(service, **kwargs)

    fetcher = AssumeRoleCredentialFetcher(
        client_creator=create_client, source_credentials=base.get_credentials(), role_arn=role_arn,
        extra_args={"RoleSessionName": "flapguard-forward"})
    core = botocore.session.Session()
    # botocore has no public setter for a session's credential provider.
    core._credentials = DeferredRefreshableCredentials(method="assume-role",
                                                       refresh_using=fetcher.fetch_credentials)
    return boto3.session.Session(botocore_session=core)


def is_aws_error(exc: BaseException) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(exc, BotoCoreError | ClientError)


def is_throttling(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in THROTTLING

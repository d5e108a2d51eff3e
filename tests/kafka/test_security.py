"""Broker security settings (streams/kafka/security.py) and their command line: checks, the
aiokafka keywords and Faust credentials they become, MSK IAM tokens (signed offline with
fake credentials), secrets kept out of repr and --help, loopback-only listeners."""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import faust
import pytest

from streams.cli import build_parser, main
from streams.cli.options import security_from
from streams.cli.worker import worker_settings_from
from streams.config import ConfigError
from streams.kafka.msk_iam import MskIamTokenProvider
from streams.kafka.security import FLAGS, PLAINTEXT, BrokerSecurity, env_name
from streams.worker.settings import WorkerSettings
from tests.secure_kafka import KEY_PASSWORD, Pki, make_pki

SECRET = "pw-7c1d0e-never-printed"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def scram(**overrides: str | None) -> BrokerSecurity:
    given: dict[str, str | None] = {"protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                                    "sasl_username": "alice", "sasl_password": SECRET}
    given.update(overrides)
    return BrokerSecurity(**given)  # type: ignore[arg-type]


def test_default_is_plaintext_without_credentials() -> None:
    assert BrokerSecurity() == PLAINTEXT == WorkerSettings().security
    assert PLAINTEXT.aiokafka_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert PLAINTEXT.faust_credentials() is None
    assert PLAINTEXT.ssl_context() is None


@pytest.mark.parametrize(("given", "message"), [
    ({"protocol": "TLS"}, "unknown protocol 'TLS'"),
    ({"protocol": "PLAINTEXT", "ca_file": "ca.pem"}, "--ssl-ca-file needs --security-protocol SSL"),
    ({"protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "a",
      "sasl_password": "p", "cert_file": "c.pem"}, "--ssl-cert-file needs --security-protocol SSL"),
    ({"protocol": "SSL", "key_file": "k.pem"}, "--ssl-key-file needs --ssl-cert-file"),
    ({"protocol": "SSL", "sasl_username": "alice"}, "--sasl-username needs --security-protocol SASL"),
    ({"protocol": "SSL", "sasl_mechanism": "PLAIN"}, "--sasl-mechanism needs --security-protocol SASL"),
    ({"protocol": "PLAINTEXT", "msk_iam_region": "eu-west-1"}, "--msk-iam-region needs --security-protocol"),
    ({"protocol": "SASL_SSL"}, "SASL_SSL needs --sasl-mechanism"),
    ({"protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "unknown mechanism 'GSSAPI'"),
    ({"protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256"}, "SCRAM-SHA-256 needs --sasl-username"),
    ({"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "a"},
     "PLAIN needs --sasl-password"),
    ({"protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"}, "OAUTHBEARER needs --msk-iam-region"),
    ({"protocol": "SASL_PLAINTEXT", "msk_iam_region": "eu-west-1"}, "MSK IAM is TLS only"),
    ({"protocol": "SASL_SSL", "msk_iam_region": "eu-west-1", "sasl_username": "a"},
     "--sasl-username is not used with MSK IAM"),
    ({"protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "a",
      "sasl_password": SECRET, "msk_iam_region": "eu-west-1"}, "needs --sasl-mechanism OAUTHBEARER"),
])
def test_combinations_that_cannot_work_are_one_line_errors(given: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        BrokerSecurity(**given)  # type: ignore[arg-type]
    assert "\n" not in str(error.value) and SECRET not in str(error.value)


def test_names_are_normalised_and_blank_values_are_unset() -> None:
    security = BrokerSecurity(protocol="sasl_ssl", sasl_mechanism="scram_sha_256", sasl_username=" a ",
                              sasl_password=SECRET, ca_file="")
    assert (security.protocol, security.sasl_mechanism, security.sasl_username) == (
        "SASL_SSL", "SCRAM-SHA-256", "a")
    assert security.ca_file is None
    # MSK IAM implies OAUTHBEARER.
    assert BrokerSecurity("SASL_SSL", msk_iam_region="eu-west-1").sasl_mechanism == "OAUTHBEARER"


def test_repr_and_str_never_show_a_password() -> None:
    security = scram(protocol="SSL", sasl_mechanism=None, sasl_username=None, sasl_password=None,
                     cert_file="c.pem", key_file="k.pem", key_password=SECRET)
    for shown in (repr(security), str(security), repr(scram()), str(scram()), scram().describe()):
        assert SECRET not in shown
    assert "alice" in str(scram()) and "SCRAM-SHA-512" in repr(scram())


def test_sasl_ssl_becomes_aiokafka_keywords_and_faust_sasl_credentials(pki: Pki) -> None:
    security = scram(ca_file=str(pki.ca))
    kwargs = security.aiokafka_kwargs()
    assert {k: v for k, v in kwargs.items() if k != "ssl_context"} == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice", "sasl_plain_password": SECRET}
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert kwargs["ssl_context"].check_hostname
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    credentials = security.faust_credentials()
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.protocol.value, credentials.mechanism.value) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (credentials.username, credentials.password) == ("alice", SECRET)
    assert isinstance(credentials.ssl_context, ssl.SSLContext)
    assert SECRET not in repr(credentials)
    # Over plain TCP there is no context, and Faust then says SASL_PLAINTEXT.
    plain = scram(protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN").faust_credentials()
    assert plain.protocol.value == "SASL_PLAINTEXT" and plain.ssl_context is None


def test_ssl_with_a_client_certificate_and_an_encrypted_key(pki: Pki) -> None:
    security = BrokerSecurity("SSL", ca_file=str(pki.ca), cert_file=str(pki.client_cert),
                              key_file=str(pki.client_key_encrypted), key_password=KEY_PASSWORD)
    kwargs = security.aiokafka_kwargs()
    assert kwargs["security_protocol"] == "SSL" and "sasl_mechanism" not in kwargs
    credentials = security.faust_credentials()
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.protocol.value == "SSL" and isinstance(credentials.context, ssl.SSLContext)


def test_unreadable_tls_files_are_one_line_errors(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--ssl-ca-file: file not found: .*missing\.pem"):
        BrokerSecurity("SSL", ca_file=str(tmp_path / "missing.pem")).aiokafka_kwargs()
    wrong = BrokerSecurity("SSL", ca_file=str(pki.ca), cert_file=str(pki.client_cert),
                           key_file=str(pki.client_key_encrypted), key_password="not-the-password")
    with pytest.raises(ConfigError, match="wrong --ssl-key-password") as error:
        wrong.ssl_context()
    assert "not-the-password" not in str(error.value) and "\n" not in str(error.value)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load --ssl-ca-file"):
        BrokerSecurity("SSL", ca_file=str(garbage)).ssl_context()


def fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_CONFIG_FILE",
                 "AWS_SHARED_CREDENTIALS_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFLAPGUARDTEST000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-access-key-for-the-signer")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_msk_iam_signs_a_token_offline_and_reuses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_aws(monkeypatch)
    security = BrokerSecurity("SASL_SSL", msk_iam_region="eu-central-1")
    kwargs = security.aiokafka_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == "OAUTHBEARER"
    assert "sasl_plain_password" not in kwargs
    provider = kwargs["sasl_oauth_token_provider"]
    assert isinstance(provider, MskIamTokenProvider)

    async def two_tokens() -> tuple[str, str]:
        return await provider.token(), await provider.token()

    token, again = asyncio.run(two_tokens())
    assert token == again  # one signature until shortly before it expires
    url = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert parts.hostname == "kafka.eu-central-1.amazonaws.com"
    assert query["Action"] == ["kafka-cluster:Connect"]
    assert query["X-Amz-Credential"][0].startswith("AKIAFLAPGUARDTEST000/")
    assert "/eu-central-1/kafka-cluster/" in query["X-Amz-Credential"][0]
    assert "fake-secret-access-key" not in url

    credentials = security.faust_credentials()
    assert isinstance(credentials, faust.OAuthCredentials)
    assert credentials.protocol.value == "SASL_SSL" and credentials.mechanism.value == "OAUTHBEARER"
    assert isinstance(credentials.oauth_cb, MskIamTokenProvider)
    assert isinstance(credentials.ssl_context, ssl.SSLContext)


def test_msk_iam_without_aws_credentials_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    provider = MskIamTokenProvider("eu-central-1")
    with pytest.raises(ConfigError, match="MSK IAM: cannot sign a token in eu-central-1") as error:
        asyncio.run(provider.token())
    assert "\n" not in str(error.value)


def test_environment_round_trip_for_child_processes() -> None:
    security = scram(ca_file="/etc/ca.pem")
    env = security.to_env()
    assert env["FLAPGUARD_SASL_PASSWORD"] == SECRET
    assert env["FLAPGUARD_SSL_CERT_FILE"] == ""  # unset, whatever the parent's environment says
    assert set(env) == {env_name(flag) for flag in FLAGS.values()}
    assert BrokerSecurity.from_env(env) == security
    assert BrokerSecurity.from_env({}) == PLAINTEXT


def test_flags_and_environment_variables_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAPGUARD_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("FLAPGUARD_SECURITY_PROTOCOL", "SASL_SSL")
    parser = build_parser()
    settings = worker_settings_from(parser.parse_args(
        ["worker", "--sasl-mechanism", "SCRAM-SHA-256", "--sasl-username", "bob"]))
    assert settings.security == BrokerSecurity("SASL_SSL", sasl_mechanism="SCRAM-SHA-256",
                                               sasl_username="bob", sasl_password=SECRET)
    commands = [["replay", "--input", "x"], ["demo"], ["backtest", "--input", "x"], ["notify"],
                ["forward", "securityhub"], ["forward", "sqs"]]
    for argv in commands:
        args = parser.parse_args([*argv, "--sasl-mechanism", "PLAIN", "--sasl-username", "bob"])
        assert security_from(args).sasl_password == SECRET, argv


def test_a_misfit_is_a_one_line_cli_error(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAPGUARD_SASL_PASSWORD", SECRET)
    code = main(["worker", "--security-protocol", "SSL", "--sasl-username", "bob",
                 "--metrics-address", "off"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines() == [
        "flapguard worker: error: --sasl-username needs --security-protocol SASL_SSL or "
        "SASL_PLAINTEXT (it is SSL)"]


def test_help_never_shows_secret_values(capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAPGUARD_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("FLAPGUARD_SSL_KEY_PASSWORD", SECRET + "-key")
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    out = capsys.readouterr().out
    assert SECRET not in out
    for flag in ("--sasl-password", "--ssl-key-password"):
        help_text = " ".join(out.split(flag)[2].split()[:20])  # after the usage line
        assert "prefer the environment variable" in help_text and "default" not in help_text


def test_every_listener_binds_to_loopback_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Metrics of the worker, the notifier and the forwarders; Faust's web server is off
    (and would bind to loopback)."""
    from streams.worker.app import Worker

    for name in [n for n in list(__import__("os").environ) if n.startswith("FLAPGUARD_")]:
        monkeypatch.delenv(name)
    parser = build_parser()
    addresses = {
        "worker": parser.parse_args(["worker"]).metrics_address,
        "notify": parser.parse_args(["notify"]).metrics_address,
        "forward securityhub": parser.parse_args(["forward", "securityhub"]).metrics_address,
        "forward sqs": parser.parse_args(["forward", "sqs"]).metrics_address,
    }
    for command, address in addresses.items():
        assert address.rsplit(":", 1)[0] == "127.0.0.1", (command, address)
    app = Worker(WorkerSettings()).app
    assert app.conf.web_enabled is False
    assert app.conf.web_bind == "127.0.0.1"

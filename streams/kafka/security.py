"""Broker security in one typed place: TLS, SASL (PLAIN, SCRAM) and MSK IAM.

:class:`BrokerSecurity` says how every Kafka client of flapguard connects; the
converters turn it into aiokafka client keyword arguments (:meth:`aiokafka_kwargs`),
Faust ``broker_credentials`` (:meth:`faust_credentials`) and the environment of a child
``flapguard worker`` (:meth:`to_env`). Constructing one checks the combination (a
mechanism the protocol cannot use, SASL without a user...); the files are read only
when a context is built. Every error is a one-line :class:`streams.config.ConfigError`.

Secrets (the SASL password, the key password) never appear in ``repr()``/``str()``,
nor in any error message. MSK IAM is SASL OAUTHBEARER over TLS with a token signed by
``aws-msk-iam-sasl-signer-python`` from the default AWS credential chain.

Pure: nothing is read, and no network is touched, at import.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streams.config import ConfigError, env_name

if TYPE_CHECKING:
    from streams.kafka.msk_iam import MskIamTokenProvider

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
TLS_PROTOCOLS = ("SSL", "SASL_SSL")
SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
OAUTHBEARER = "OAUTHBEARER"

#: Field -> command line flag (its environment variable is FLAPGUARD_ + the flag).
FLAGS = {
    "protocol": "--security-protocol",
    "ca_file": "--ssl-ca-file",
    "cert_file": "--ssl-cert-file",
    "key_file": "--ssl-key-file",
    "key_password": "--ssl-key-password",
    "sasl_mechanism": "--sasl-mechanism",
    "sasl_username": "--sasl-username",
    "sasl_password": "--sasl-password",
    "msk_iam_region": "--msk-iam-region",
}
SECRET_FIELDS = frozenset({"key_password", "sasl_password"})


@dataclass(frozen=True, slots=True)
class BrokerSecurity:
    """How to connect to the brokers. The default is PLAINTEXT with no credentials."""

    protocol: str = "PLAINTEXT"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password: str | None = field(default=None, repr=False)
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    msk_iam_region: str | None = None

    def __post_init__(self) -> None:
        # Blank values (an empty environment variable) mean "not set".
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str) and f.name not in SECRET_FIELDS:
                value = value.strip()
            if value == "":
                value = None
            object.__setattr__(self, f.name, value)
        protocol = (self.protocol or "PLAINTEXT").upper().replace("-", "_")
        object.__setattr__(self, "protocol", protocol)
        if protocol not in PROTOCOLS:
            raise ConfigError(f"--security-protocol: unknown protocol {self.protocol!r} "
                         f"(one of {', '.join(PROTOCOLS)})")
        mechanism = self.sasl_mechanism.upper().replace("_", "-") if self.sasl_mechanism else None
        if mechanism is None and self.msk_iam_region:
            mechanism = OAUTHBEARER
        object.__setattr__(self, "sasl_mechanism", mechanism)
        self._check()

    def _check(self) -> None:
        protocol, mechanism = self.protocol, self.sasl_mechanism
        tls, sasl = protocol in TLS_PROTOCOLS, protocol in SASL_PROTOCOLS
        if not tls:
            for name in ("ca_file", "cert_file", "key_file", "key_password"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{FLAGS[name]} needs --security-protocol SSL or SASL_SSL "
                                 f"(it is {protocol})")
        if self.key_file is not None and self.cert_file is None:
            raise ConfigError("--ssl-key-file needs --ssl-cert-file (the client certificate)")
        if self.key_password is not None and self.cert_file is None:
            raise ConfigError("--ssl-key-password needs --ssl-cert-file and its key")
        if mechanism is not None and mechanism not in MECHANISMS:
            raise ConfigError(f"--sasl-mechanism: unknown mechanism {self.sasl_mechanism!r} "
                         f"(one of {', '.join(MECHANISMS)})")
        if not sasl:
            for name in ("msk_iam_region", "sasl_mechanism", "sasl_username", "sasl_password"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{FLAGS[name]} needs --security-protocol SASL_SSL or "
                                 f"SASL_PLAINTEXT (it is {protocol})")
            return
        if mechanism is None:
            raise ConfigError(f"{protocol} needs --sasl-mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, "
                         "or --msk-iam-region for MSK IAM)")
        if mechanism == OAUTHBEARER:
            if not self.msk_iam_region:
                raise ConfigError("--sasl-mechanism OAUTHBEARER needs --msk-iam-region (MSK IAM is "
                             "the only token provider)")
            if protocol != "SASL_SSL":
                raise ConfigError("--msk-iam-region needs --security-protocol SASL_SSL (MSK IAM is "
                             "TLS only)")
            for name in ("sasl_username", "sasl_password"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{FLAGS[name]} is not used with MSK IAM (OAUTHBEARER): "
                                 "it signs with AWS credentials")
            return
        if self.msk_iam_region:
            raise ConfigError(f"--msk-iam-region needs --sasl-mechanism OAUTHBEARER (not {mechanism})")
        if not self.sasl_username:
            raise ConfigError(f"SASL {mechanism} needs --sasl-username")
        if self.sasl_password is None:
            raise ConfigError(f"SASL {mechanism} needs --sasl-password "
                         f"(prefer {env_name('--sasl-password')})")

    # -- reading -----------------------------------------------------------------------

    @property
    def tls(self) -> bool:
        return self.protocol in TLS_PROTOCOLS

    @property
    def sasl(self) -> bool:
        return self.protocol in SASL_PROTOCOLS

    def describe(self) -> str:
        """A one-line summary for logs; never a secret."""
        parts = [self.protocol]
        if self.sasl:
            parts.append(f"{self.sasl_mechanism}")
            if self.msk_iam_region:
                parts.append(f"MSK IAM in {self.msk_iam_region}")
            elif self.sasl_username:
                parts.append(f"as {self.sasl_username}")
        if self.cert_file:
            parts.append("with a client certificate")
        return " ".join(parts)

    def __str__(self) -> str:
        return f"BrokerSecurity({self.describe()})"

    # -- converters --------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context (hostname checked; the system CAs unless --ssl-ca-file), or
        None without TLS. Missing or unreadable files are one-line errors."""
        if not self.tls:
            return None
        from aiokafka.helpers import create_ssl_context

        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{FLAGS[name]}: file not found: {path}")
        try:
            context: ssl.SSLContext = create_ssl_context(
                cafile=self.ca_file, certfile=self.cert_file, keyfile=self.key_file,
                password=self.key_password)
        except ssl.SSLError as exc:
            what = (f"{FLAGS['ca_file']} {self.ca_file}" if self.cert_file is None
                    else f"{FLAGS['cert_file']} / {FLAGS['key_file']}")
            hint = " (wrong --ssl-key-password?)" if self.cert_file else ""
            raise ConfigError(f"cannot load {what}: {exc.reason or exc}{hint}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read the TLS files: {exc.strerror or exc}") from None
        return context

    def token_provider(self) -> MskIamTokenProvider | None:
        if self.sasl_mechanism != OAUTHBEARER or not self.msk_iam_region:
            return None
        from streams.kafka.msk_iam import MskIamTokenProvider  # aiokafka, only when used

        return MskIamTokenProvider(self.msk_iam_region)

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer, AIOKafkaAdminClient."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            kwargs["ssl_context"] = self.ssl_context()
        if self.sasl:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            if self.sasl_mechanism == OAUTHBEARER:
                kwargs["sasl_oauth_token_provider"] = self.token_provider()
            else:
                kwargs["sasl_plain_username"] = self.sasl_username
                kwargs["sasl_plain_password"] = self.sasl_password
        return kwargs

    def faust_credentials(self) -> Any:
        """Faust's `broker_credentials` (None for PLAINTEXT). Faust's aiokafka driver maps
        SSLCredentials, SASLCredentials and OAuthCredentials onto the same keywords as
        :meth:`aiokafka_kwargs`; SASL over TLS carries the context in the credentials."""
        if self.protocol == "PLAINTEXT":
            return None
        import faust

        context = self.ssl_context()
        if not self.sasl:
            return faust.SSLCredentials(context)
        if self.sasl_mechanism == OAUTHBEARER:
            return faust.OAuthCredentials(oauth_cb=self.token_provider(), ssl_context=context)
        return faust.SASLCredentials(username=self.sasl_username, password=self.sasl_password,
                                     ssl_context=context, mechanism=self.sasl_mechanism)

    def to_env(self) -> dict[str, str]:
        """The FLAPGUARD_* variables that give a child `flapguard` process the same
        security (secrets travel in its environment, never on its command line). Unset
        fields are empty variables, which the command line reads as unset: whatever the
        parent's environment held, the child gets exactly this."""
        return {env_name(FLAGS[f.name]): getattr(self, f.name) or "" for f in fields(self)}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BrokerSecurity:
        """From FLAPGUARD_* variables (the Lambda handler; the CLI reads them itself)."""
        given = {name: env[env_name(flag)] for name, flag in FLAGS.items() if env.get(env_name(flag))}
        return cls(**given)


PLAINTEXT = BrokerSecurity()

"""What every command needs: the console's home, its database, and (once initialised) its keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from appliance.console.errors import Refused
from appliance.console.fleet import Fleet
from appliance.console.home import Home
from appliance.console.store import CONSOLE_USERNAME, Store
from appliance.core.protocol import DEFAULT_TOPIC_PREFIX
from appliance.core.signing import private_key_from_pem


@dataclass
class Context:
    home: Home
    json: bool = False
    _store: Store | None = field(default=None, repr=False)

    @property
    def store(self) -> Store:
        if self._store is None:
            self.home.ensure()
            self._store = Store(self.home.database)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def require_init(self) -> str:
        url = self.store.get_meta("broker_url")
        if not url:
            raise Refused(f"{self.home.root} is not initialised yet: run `appliance-console init --broker-url mqtts://HOST:8883`")
        return url

    def console_url(self) -> str:
        """Where the console itself logs in: the broker's console listener (`init --console-port`; a home
        made before there was one: the broker URL's port + 1, as `broker-config` writes it)."""
        url = self.require_init()
        saved = self.store.get_meta("console_url")
        if saved:
            return saved
        parts = urlsplit(url)
        return f"mqtts://{parts.hostname}:{(parts.port or 8883) + 1}"

    def signing_key(self) -> Any:
        self.require_init()
        try:
            return private_key_from_pem(self.home.signing_key.read_bytes())
        except (OSError, ValueError) as exc:
            raise Refused(f"cannot read the console's signing key {self.home.signing_key}: {exc}") from None

    @property
    def topic_prefix(self) -> str:
        """The fleet's MQTT topic prefix, chosen once by `init --topic-prefix`."""
        return self.store.get_meta("topic_prefix") or DEFAULT_TOPIC_PREFIX

    def fleet(self, timeout: float = 5.0) -> Fleet:
        url = self.console_url()
        credentials = self.store.get_meta("console_credentials")
        return Fleet(url, CONSOLE_USERNAME, credentials["password"], str(self.home.ca_cert), self.topic_prefix,
                     timeout=timeout)

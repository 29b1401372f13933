"""Where alerts go: a webhook taking Slack-compatible JSON (a Slack incoming webhook, or anything that reads
{"text": ...}), and Slack's API through dagster-slack when a bot token and a channel are set.

FEATURE_STORE_ALERT_WEBHOOK_URL and FEATURE_STORE_SLACK_TOKEN are secrets (a Slack webhook URL carries its
token in the path): they reach the resource as EnvVars, hidden in the UI, and no error message quotes them.
"""

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import dagster as dg
from pydantic import Field

from feature_assets.errors import AlertDeliveryError, ConfigError

__all__ = ["AlertChannels", "alert_channels_from_env"]


class AlertChannels(dg.ConfigurableResource):
    webhook_url: str | None = Field(default=None, description="POST target of Slack-compatible JSON (a secret).")
    slack_token: str | None = Field(default=None, description="Slack bot token, with slack_channel (a secret).")
    slack_channel: str | None = Field(default=None, description="Slack channel the bot posts to, e.g. #features.")
    ui_url: str = Field(default="http://127.0.0.1:3000", description="The Dagster UI that alert links point to.")
    timeout_seconds: float = Field(default=10.0, description="Most one delivery may take.")

    @property
    def configured(self) -> bool:
        return bool(self.webhook_url or (self.slack_token and self.slack_channel))

    def describe(self) -> str:
        """Where alerts go, without a secret: e.g. "the webhook FEATURE_STORE_ALERT_WEBHOOK_URL names"."""
        channels = []
        if self.webhook_url:
            channels.append("the webhook FEATURE_STORE_ALERT_WEBHOOK_URL names")
        if self.slack_token and self.slack_channel:
            channels.append(f"Slack channel {self.slack_channel}")
        return " and ".join(channels) or "no channel"

    def link(self, path: str) -> str:
        return f"{self.ui_url.rstrip('/')}/{path}"

    def send(self, message: Mapping[str, Any]) -> None:
        """Delivers one Slack-compatible message ({"text", "blocks"}) to every configured channel; raises
        AlertDeliveryError if any refuses it."""
        if self.webhook_url:
            self._post_to_webhook(self.webhook_url, message)
        if self.slack_token and self.slack_channel:
            self._post_to_slack(self.slack_token, self.slack_channel, message)

    def _post_to_webhook(self, url: str, message: Mapping[str, Any]) -> None:
        request = urllib.request.Request(
            url,
            data=json.dumps(message).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                response.read()
        except urllib.error.HTTPError as error:
            raise AlertDeliveryError(f"the alert webhook answered HTTP {error.code} {error.reason}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise AlertDeliveryError(
                f"the alert webhook could not be reached ({type(reason).__name__}: {reason})"
            ) from None

    def _post_to_slack(self, token: str, channel: str, message: Mapping[str, Any]) -> None:
        # Not exercised against real Slack by the tests: a thin call through dagster-slack's client.
        from dagster_slack import SlackResource
        from slack_sdk.errors import SlackClientError

        client = SlackResource(token=token).get_client()
        client.timeout = int(self.timeout_seconds)
        try:
            client.chat_postMessage(channel=channel, text=message["text"], blocks=message.get("blocks"))
        except (SlackClientError, OSError) as error:
            raise AlertDeliveryError(f"the alert could not be posted to Slack channel {channel}: {error}") from None


def _secret(name: str, environ: Mapping[str, str]) -> dg.EnvVar | None:
    return dg.EnvVar(name) if environ.get(name) else None


def alert_channels_from_env(environ: Mapping[str, str] = os.environ) -> AlertChannels:
    """The channels the environment configures: secrets as EnvVars (resolved when the sensor runs), and only
    those that are set, so an unconfigured deployment loads and its alert sensor says what to set."""
    ui_url = environ.get("FEATURE_STORE_UI_URL", "http://127.0.0.1:3000")
    if not ui_url.startswith(("http://", "https://")):
        raise ConfigError(f"FEATURE_STORE_UI_URL must be an http:// or https:// URL, got {ui_url[:60]!r}")
    if bool(environ.get("FEATURE_STORE_SLACK_TOKEN")) != bool(environ.get("FEATURE_STORE_SLACK_CHANNEL")):
        raise ConfigError("set both FEATURE_STORE_SLACK_TOKEN and FEATURE_STORE_SLACK_CHANNEL, or neither")
    return AlertChannels(
        webhook_url=_secret("FEATURE_STORE_ALERT_WEBHOOK_URL", environ),
        slack_token=_secret("FEATURE_STORE_SLACK_TOKEN", environ),
        slack_channel=environ.get("FEATURE_STORE_SLACK_CHANNEL") or None,
        ui_url=ui_url,
    )

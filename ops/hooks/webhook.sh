#!/bin/sh
# An event hook for `chatctl start --on-event`: posts what happened to a chatctl app to a
# webhook (Slack, Mattermost, Discord or your own) as {"text": ...}, with curl; jq builds the
# JSON. The webhook's URL is a secret: it stays in a curl config file (mode 0600, one line
# `url = "https://hooks.example.com/..."`), never on a command line every user can read.
#   chatctl start --on-event '/usr/local/bin/chatctl-webhook /etc/chatctl/webhook.curl'
set -eu
config=${1:-/etc/chatctl/webhook.curl}
jq -n --arg app "$CHATCTL_APP" --arg event "$CHATCTL_EVENT" --arg text "$CHATCTL_MESSAGE" \
      --arg lines "${CHATCTL_LOG_LINES:-}" \
      '{text: ("\($app): \($event): \($text)" + (if $lines == "" then "" else "\n```\n\($lines)\n```" end))}' |
  curl -sS --fail --max-time 5 -K "$config" \
       -H 'Content-Type: application/json' --data-binary @- -o /dev/null

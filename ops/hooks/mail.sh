#!/bin/sh
# An event hook for `chatctl start --on-event`: mails what happened to a chatctl app, with the
# worker's last output lines, through the local MTA (sendmail from Debian's exim4, postfix or
# msmtp-mta).
#   chatctl start --on-event '/usr/local/bin/chatctl-mail ops@example.com'
set -eu
to=${1:?usage: mail.sh ADDRESS}
{
  printf 'To: %s\nSubject: [%s] %s: %s\n\n' "$to" "$(hostname)" "$CHATCTL_APP" "$CHATCTL_EVENT"
  printf '%s\n' "$CHATCTL_MESSAGE"
  if [ -n "${CHATCTL_LOG_LINES:-}" ]; then
    printf '\nlast lines of worker %s:\n%s\n' "${CHATCTL_WORKER:--}" "$CHATCTL_LOG_LINES"
  fi
} | /usr/sbin/sendmail -t

#!/bin/sh
# Caddy for compose.yaml: the factory's own HTTP server with the admin site and Flower by name;
# the factory adds one route per live project through the admin API (127.0.0.1:2019) and
# re-applies them within a minute when this Caddy restarts (beat: maintenance.sync_routes).
set -eu
: "${BASE_DOMAIN:?BASE_DOMAIN is required (scripts/server-init writes it)}"
if [ "${CADDY_HTTPS:-false}" = "true" ]; then
  listen='[":443", ":80"]'; auto='{}'
else
  listen='[":80"]'; auto='{"disable": true}'
fi
route() { # id host upstream
  printf '{"@id": "%s", "match": [{"host": ["%s"]}], "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": "%s"}]}], "terminal": true}' "$1" "$2" "$3"
}
cat >/tmp/caddy.json <<JSON
{
  "admin": {"listen": "127.0.0.1:2019", "config": {"persist": false}},
  "apps": {"http": {"servers": {"factory": {
    "listen": $listen,
    "automatic_https": $auto,
    "routes": [
      $(route factory--web "factory.$BASE_DOMAIN" "127.0.0.1:8000"),
      $(route factory--flower "flower.$BASE_DOMAIN" "127.0.0.1:5555"),
      {"@id": "factory--fallback", "handle": [{"handler": "static_response", "status_code": 404,
        "body": "No service of this factory answers at this name.\n"}], "terminal": true}
    ]
  }}}}
}
JSON
exec caddy run --config /tmp/caddy.json

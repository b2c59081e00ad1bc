#!/usr/bin/env bash
# Sign a command with the console's Ed25519 key and publish it with mosquitto_pub; needs only
# openssl (3.x), jq and mosquitto-clients. Usage:
#   sign-and-send.sh KEY.pem SITE TYPE 'BODY-JSON' [mosquitto_pub options...]
# e.g. sign-and-send.sh console.pem kalibaru meeting.start \
#        '{"meeting_id":"musrenbang-2026","title":"Musrenbang","program_url":"srt://media.example.go.id:9000",
#          "ingest_url":"rtmp://media.example.go.id/live/{site}"}' -h broker.example -p 8883 --cafile ca.pem -u console -P secret
set -euo pipefail
key=$1 site=$2 type=$3 body=$4
shift 4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
expires=$(date -u -d '+10 min' +%Y-%m-%dT%H:%M:%SZ)
id="cmd-$(date -u +%Y%m%d%H%M%S)-$RANDOM"

# The signed bytes: keys sorted, no spaces, UTF-8 as is, no trailing newline (jq -cSj),
# which is exactly json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False).
jq -cSj -n --arg id "$id" --arg type "$type" --arg now "$now" --arg exp "$expires" --arg site "$site" \
   --argjson body "$body" \
   '{v: 1, id: $id, type: $type, issued_at: $now, expires_at: $exp, to: [$site], body: $body}' > "$work/unsigned.json"
sig=$(openssl pkeyutl -sign -inkey "$key" -rawin -in "$work/unsigned.json" | base64 -w0)
jq -c --arg sig "$sig" '. + {sig: $sig}' "$work/unsigned.json" > "$work/signed.json"

mosquitto_pub -q 1 -t "rapat/v1/site/$site/cmd" -f "$work/signed.json" "$@"
echo "sent $type $id to $site"

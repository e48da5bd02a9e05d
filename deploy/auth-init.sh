#!/bin/sh
# The one-shot `auth-init` service of docker-compose.yml (run as root, before `embedstream`):
# an Ed25519 signing key pair and a demo service client, kept in the `auth` volume so that the
# service starts with authentication on, as it must. Idempotent: existing files are kept.
#   $dir/signing-key.pem, $dir/jwks.json   `embedstream auth keygen`, kid $kid
#   $dir/clients.toml                      client "demo", scopes recs:read and events:write,
#                                          only the argon2id hash of its secret
#   $dir/demo-client-secret                the demo client's secret (also printed below), for
#                                          `POST /v1/auth/token` with grant_type=client_credentials
# Environment (for tests outside a container): EMBEDSTREAM_AUTH_DIR (default /auth),
# EMBEDSTREAM_AUTH_KID (default compose-1), EMBEDSTREAM_BIN (default embedstream).
set -eu
dir=${EMBEDSTREAM_AUTH_DIR:-/auth}
kid=${EMBEDSTREAM_AUTH_KID:-compose-1}
bin=${EMBEDSTREAM_BIN:-embedstream}
umask 077
mkdir -p "$dir"
if [ ! -f "$dir/signing-key.pem" ]; then
  "$bin" auth keygen --dir "$dir" --kid "$kid" >/dev/null
fi
if [ ! -f "$dir/clients.toml" ]; then
  secret=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
  hash=$(printf '%s' "$secret" | "$bin" auth hash-secret)
  printf '%s\n' "$secret" > "$dir/demo-client-secret"
  printf '[[clients]]\nclient_id = "demo"\nsecret_hash = "%s"\nscopes = ["recs:read", "events:write"]\n' \
    "$hash" > "$dir/clients.toml.tmp"
  mv "$dir/clients.toml.tmp" "$dir/clients.toml"
fi
# The image's service user (Dockerfile: uid 10001) reads these; outside a container this may fail.
chown -R 10001:10001 "$dir" 2>/dev/null || true
echo "demo client: client_id=demo client_secret=$(cat "$dir/demo-client-secret")"

#!/usr/bin/env bash
# Regenerates the pushwire DEVELOPMENT AND TEST certificates in this folder.
#
# Every private key written here is public (it is committed to the repository),
# so nothing produced by this script may ever be used in production.
#
# Usage: bash certs/generate.sh   (from any working directory)
# Needs: bash and the openssl CLI (written against OpenSSL 3.0).
#
# All keys are ECDSA P-256 (named curve), which rustls with the `ring` provider
# accepts, and every signature is ecdsa-with-SHA256.
set -euo pipefail

# Write next to this script, whatever the caller's working directory is.
OUT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

DAYS=36500                 # ~100 years: development certificates should not rot.
PASSWORD="mypassword"      # Password of server.key.pem (documented in README.md).
PBKDF2_ITER=2048           # OpenSSL's default; dev-only key, keeps debug-build tests fast.
EXPIRED_START="20200101000000Z"
EXPIRED_END="20210101000000Z"

# CSRs, extension configs and the `openssl ca` database live in a private temp
# directory that is removed however the script exits.
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Our own config, so the result does not depend on the system openssl.cnf
# (whose default sections could add or duplicate extensions).
cat >"$WORK/openssl.cnf" <<EOF
[ req ]
distinguished_name = req_dn
prompt             = no
utf8               = yes
string_mask        = utf8only

[ req_dn ]

[ ca_ext ]
basicConstraints       = critical, CA:TRUE
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash

[ server_ext ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[ client_ext ]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = clientAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

# Only used for the expired certificate: \`openssl x509 -req\` in 3.0 cannot set
# an arbitrary notBefore, \`openssl ca -startdate/-enddate\` can.
[ ca ]
default_ca = expired_ca

[ expired_ca ]
database        = $WORK/index.txt
new_certs_dir   = $WORK
serial          = $WORK/ca.serial
default_md      = sha256
policy          = policy_any
unique_subject  = no
copy_extensions = none
email_in_dn     = no

[ policy_any ]
organizationName = optional
commonName       = supplied
EOF

# new_key FILE: unencrypted PKCS#8 ("BEGIN PRIVATE KEY") ECDSA P-256 key.
new_key() {
    openssl genpkey -algorithm EC \
        -pkeyopt ec_paramgen_curve:P-256 \
        -pkeyopt ec_param_enc:named_curve \
        -out "$1"
    chmod 600 "$1"
}

# A random positive 128-bit serial (RFC 5280 wants unique, <= 20 octets).
serial() {
    echo "0x$(openssl rand -hex 16)"
}

# new_ca NAME SUBJECT: self-signed root CA -> NAME.cert.pem + NAME.key.pem.
new_ca() {
    local name="$1" subject="$2"
    new_key "$OUT/$name.key.pem"
    openssl req -new -x509 -config "$WORK/openssl.cnf" \
        -key "$OUT/$name.key.pem" -sha256 -days "$DAYS" \
        -set_serial "$(serial)" -subj "$subject" \
        -extensions ca_ext -out "$OUT/$name.cert.pem"
}

# new_csr KEY SUBJECT CSR
new_csr() {
    openssl req -new -config "$WORK/openssl.cnf" -key "$1" -sha256 -subj "$2" -out "$3"
}

# new_leaf NAME SUBJECT EXT CA: NAME.cert.pem + NAME.key.pem signed by CA.
new_leaf() {
    local name="$1" subject="$2" ext="$3" ca="$4"
    new_key "$OUT/$name.key.pem"
    new_csr "$OUT/$name.key.pem" "$subject" "$WORK/$name.csr"
    openssl x509 -req -in "$WORK/$name.csr" \
        -CA "$OUT/$ca.cert.pem" -CAkey "$OUT/$ca.key.pem" -set_serial "$(serial)" \
        -days "$DAYS" -sha256 \
        -extfile "$WORK/openssl.cnf" -extensions "$ext" \
        -out "$OUT/$name.cert.pem"
}

echo "writing development certificates into $OUT"

# 1. The development root CA every pushwire dev/test peer trusts.
new_ca ca "/O=pushwire/CN=pushwire Development Root CA"

# 2. The server certificate. Its key is generated unencrypted in the temp dir,
#    then stored only as an encrypted PKCS#8 (PBES2: PBKDF2-HMAC-SHA256 +
#    AES-256-CBC), the format the engine decrypts with the `pkcs8` crate.
new_key "$WORK/server.plain.key.pem"
new_csr "$WORK/server.plain.key.pem" "/O=pushwire/CN=localhost" "$WORK/server.csr"
openssl x509 -req -in "$WORK/server.csr" \
    -CA "$OUT/ca.cert.pem" -CAkey "$OUT/ca.key.pem" -set_serial "$(serial)" \
    -days "$DAYS" -sha256 \
    -extfile "$WORK/openssl.cnf" -extensions server_ext \
    -out "$OUT/server.cert.pem"
openssl pkcs8 -topk8 -in "$WORK/server.plain.key.pem" \
    -v2 aes-256-cbc -v2prf hmacWithSHA256 -iter "$PBKDF2_ITER" \
    -passout "pass:$PASSWORD" -out "$OUT/server.key.pem"
chmod 600 "$OUT/server.key.pem"

# 3. The client certificate for mutual TLS.
new_leaf client "/O=pushwire/CN=pushwire-dev-client" client_ext ca

# 4. Negative tests: an unrelated CA and a server certificate it signed, with
#    exactly the real server's names, so only the issuer makes it untrusted.
new_ca other-ca "/O=pushwire/CN=pushwire Unrelated Test CA"
new_leaf other-server "/O=pushwire/CN=localhost" server_ext other-ca

# 5. Negative tests: a server certificate from the real dev CA whose whole
#    validity period lies in the past.
new_key "$OUT/expired-server.key.pem"
new_csr "$OUT/expired-server.key.pem" "/O=pushwire/CN=localhost" "$WORK/expired-server.csr"
: >"$WORK/index.txt"
openssl rand -hex 16 >"$WORK/ca.serial"
openssl ca -batch -notext -preserveDN -config "$WORK/openssl.cnf" \
    -cert "$OUT/ca.cert.pem" -keyfile "$OUT/ca.key.pem" \
    -startdate "$EXPIRED_START" -enddate "$EXPIRED_END" \
    -extfile "$WORK/openssl.cnf" -extensions server_ext \
    -in "$WORK/expired-server.csr" -out "$OUT/expired-server.cert.pem" 2>"$WORK/ca.log" \
    || { cat "$WORK/ca.log" >&2; exit 1; }

# Sanity checks, so a broken regeneration fails loudly here and not in tests.
openssl verify -CAfile "$OUT/ca.cert.pem" "$OUT/server.cert.pem" "$OUT/client.cert.pem" >/dev/null
openssl verify -CAfile "$OUT/other-ca.cert.pem" "$OUT/other-server.cert.pem" >/dev/null
openssl verify -CAfile "$OUT/ca.cert.pem" -no_check_time "$OUT/expired-server.cert.pem" >/dev/null
openssl pkey -in "$OUT/server.key.pem" -passin "pass:$PASSWORD" -noout
if openssl x509 -in "$OUT/expired-server.cert.pem" -noout -checkend 0 >/dev/null; then
    echo "expired-server.cert.pem is unexpectedly still valid" >&2
    exit 1
fi

echo "done:"
ls -1 "$OUT"/*.pem

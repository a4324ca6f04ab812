#!/bin/sh
# The compose cluster's init step (README, "Containers"): writes a private CA,
# certificates and secrets into the `secrets` volume, once. Nothing here is
# ever committed; every key is made on the machine that runs the cluster.
#
#   /ca       ca.key: the CA's key, in a volume of its own that no service mounts
#   /secrets  ca.pem; relay.pem/.key (relay1-3, localhost, 127.0.0.1);
#             postgres.pem/.key (postgres-primary, postgres-standby);
#             clients as `cpis-relay certs init` names them (ed-rr8, gp-y02,
#             la-706, la-855, auditor: .pem/.key, the subjects of certs/README.md);
#             db-password, replication-password, webhook.secret (whsec_...),
#             grafana-admin-password; access-log.key, the deployment's one
#             access log signing key (Ed25519, PKCS#8) every relay node signs with
#
# Files the relay image reads (user 10001) are 10001's and private; PostgreSQL's
# are root's (its entrypoint copies them for the postgres user); Grafana's
# password is 472's (the grafana image's user).
set -eu
umask 077
cd /secrets
if [ -s ca.pem ]; then
  echo "init: /secrets already holds a CA; nothing changed (remove the cpis_secrets and cpis_ca volumes to start afresh)"
  exit 0
fi

openssl ecparam -name prime256v1 -genkey -noout -out /ca/ca.key 2>/dev/null
openssl req -new -x509 -key /ca/ca.key -sha256 -days 825 -subj "/CN=cpis-relay compose CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem

issue() { # name subject extensions
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
  printf 'basicConstraints = CA:FALSE\nkeyUsage = digitalSignature\n%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey /ca/ca.key -CAcreateserial -CAserial /ca/ca.srl \
    -days 825 -sha256 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
issue relay "/CN=cpis-relay" "extendedKeyUsage = serverAuth
subjectAltName = DNS:relay1, DNS:relay2, DNS:relay3, DNS:localhost, IP:127.0.0.1"
issue postgres "/CN=postgres" "extendedKeyUsage = serverAuth
subjectAltName = DNS:postgres-primary, DNS:postgres-standby"
client="extendedKeyUsage = clientAuth"
issue ed-rr8 "/CN=RR8/O=LEEDS TEACHING HOSPITALS NHS TRUST/OU=unscheduled-care" "$client"
issue gp-y02 "/CN=Y02999/O=CPIS TEST GP PRACTICE/OU=scheduled-care" "$client"
issue la-706 "/CN=706/O=LONDON BOROUGH OF ISLINGTON/OU=social-care" "$client"
issue la-855 "/CN=855/O=LEICESTERSHIRE COUNTY COUNCIL/OU=social-care" "$client"
issue auditor "/CN=X26/O=NHS ENGLAND/OU=auditor" "$client"

openssl rand -hex 24 > db-password
openssl rand -hex 24 > replication-password
openssl rand -hex 24 > grafana-admin-password
echo "whsec_$(openssl rand -base64 32)" > webhook.secret
# One access log key for every node (a node with another key refuses to start).
# Its verifier key is printed by a relay node's log at start ("access log signing key loaded").
openssl genpkey -algorithm ed25519 -outform DER -out access-log.key

chmod 0644 ca.pem ./*.pem
chown 10001:10001 relay.key ed-rr8.key gp-y02.key la-706.key la-855.key auditor.key db-password webhook.secret access-log.key
chown 472:472 grafana-admin-password
chmod 0755 /secrets
echo "init: wrote a CA, certificates and secrets in the secrets volume:"
ls -l /secrets

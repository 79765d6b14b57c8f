# See which runner secrets and mounts exist (metadata) and read their values for redaction.
path "kv/metadata/disinto/runner/*" {
  capabilities = ["read"]
}
path "kv/data/disinto/runner/*" {
  capabilities = ["read"]
}

# Check that the runner policies exist.
path "sys/policies/acl/runner-*" {
  capabilities = ["read"]
}

# Mint single-use claims through the role, and nothing else.
path "auth/token/create/vault-runner" {
  capabilities = ["update"]
}

# Follow and revoke claims by accessor.
path "auth/token/lookup-accessor" {
  capabilities = ["update"]
}
path "auth/token/revoke-accessor" {
  capabilities = ["update"]
}

# Let `reconciler doctor` check the token role (read only).
path "auth/token/roles/vault-runner" {
  capabilities = ["read"]
}

path "kv/data/disinto/sidecar/forge" {
  capabilities = ["read"]
}

path "kv/data/disinto/reconciler/forge" {
  capabilities = ["read"]
}

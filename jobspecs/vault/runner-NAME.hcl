# Template of runner-<NAME>: one policy per runner secret; replace <NAME> (e.g. GITHUB_TOKEN).
path "kv/data/disinto/runner/<NAME>" {
  capabilities = ["read"]
}

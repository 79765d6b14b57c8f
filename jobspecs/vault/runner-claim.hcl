# The claim of a run that declares no secrets: it proves the claim and reads nothing.
path "kv/data/disinto/runner/*" {
  capabilities = ["deny"]
}

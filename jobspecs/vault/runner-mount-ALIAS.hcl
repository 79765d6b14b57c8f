# Template of runner-mount-<alias>: one policy per credential mount; replace <alias> (ssh, gpg, sops).
path "kv/data/disinto/runner/mounts/<alias>" {
  capabilities = ["read"]
}

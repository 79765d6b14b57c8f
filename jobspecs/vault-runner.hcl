# vault-runner: the parameterized batch job the reconciler dispatches, once per
# attempt of an approved vault action.
#
# - Lives in its own namespace; only the reconciler may dispatch, read and list it
#   (see jobspecs/nomad-acl/).
# - The payload carries the response-wrapped claim token and nothing else; it is
#   written to local/claim.json, which the entry step reads and deletes.
# - Meta names the run and its declared secrets and mounts - nothing secret: any
#   holder of list-jobs can read it.
# - No vault {} block and no templates: the entry step unwraps its single-use claim
#   itself, so a copy Nomad starts on its own finds the claim taken and exits.
# - No restart and no reschedule: the reconciler decides about new attempts.
# - Credential mounts (ssh, gpg, sops) are least-privilege: the claim carries one policy
#   runner-mount-<alias> per declared mount, reading exactly
#   kv/data/disinto/runner/mounts/<alias>, and the entry step writes the files under
#   $NOMAD_SECRETS_DIR. No client node keeps keys on a host volume, and there is no
#   volume or volume_mount here at all.
# - No Docker socket, no privileged mode, no host network.
# - Registered by `reconciler jobspecs apply` (reconciler/jobspecs.py) with the operator
#   token; the reconciler refuses to dispatch it if it changes behind its back.

variable "namespace" {
  type    = string
  default = "runners"
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "image" {
  type    = string
  default = "ghcr.io/disinto/reconciler-runner:latest"
}

variable "vault_addr" {
  type    = string
  default = "http://127.0.0.1:8200"
}

# TLS to Vault, as the vault CLI reads it (empty: unset). Paths as the task sees them: the
# CA certificate is public and belongs in the image (or the node's CA directory), never in meta.
variable "vault_cacert" {
  type    = string
  default = ""
}

variable "vault_capath" {
  type    = string
  default = ""
}

variable "vault_client_cert" {
  type    = string
  default = ""
}

variable "vault_client_key" {
  type    = string
  default = ""
}

variable "vault_tls_server_name" {
  type    = string
  default = ""
}

variable "factory_root" {
  type    = string
  default = "/opt/factory"
}

variable "agent_command" {
  type    = string
  default = ""
}

job "vault-runner" {
  namespace   = var.namespace
  datacenters = var.datacenters
  type        = "batch"

  parameterized {
    payload       = "required"
    meta_required = ["run_id", "attempt", "action_id", "formula", "timeout_seconds", "wrapped_accessor"]
    meta_optional = ["secrets", "mounts"]
  }

  group "runner" {
    count = 1

    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    # Nomad >= 1.8 (scheduler/reconciler/filters.go): an allocation on a down or disconnected
    # node stays `unknown` instead of being replaced by a second copy. The runner's single-use
    # claim stays the real guard (older clusters, or an operator, can defeat this block).
    disconnect {
      replace = false
    }

    task "runner" {
      driver = "docker"

      config {
        image   = var.image
        command = "python3"
        args    = ["-m", "reconciler.runner"]
      }

      dispatch_payload {
        file = "claim.json"
      }

      env {
        VAULT_ADDR            = var.vault_addr
        VAULT_CACERT          = var.vault_cacert
        VAULT_CAPATH          = var.vault_capath
        VAULT_CLIENT_CERT     = var.vault_client_cert
        VAULT_CLIENT_KEY      = var.vault_client_key
        VAULT_TLS_SERVER_NAME = var.vault_tls_server_name
        FACTORY_ROOT          = var.factory_root
        RUNNER_AGENT_COMMAND  = var.agent_command
      }

      resources {
        cpu    = 500
        memory = 512
      }

      kill_timeout = "30s"
    }
  }
}

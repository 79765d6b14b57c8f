# sidecar: the parameterized batch job the reconciler dispatches for a bug report on the
# project's issue tracker (kinds reproduce, triage, verify), once per attempt.
#
# - Lives in the runners namespace beside vault-runner; only the reconciler may dispatch,
#   read and list it (see jobspecs/nomad-acl/reconciler.hcl).
# - Meta names the issue, the formula, the project and the run - nothing secret (any holder
#   of list-jobs reads it). All five keys are required: the reconciler always sends them.
# - No payload: there is no single-use claim to carry.
# - Secrets come from Vault through a vault {} block and a template, unlike vault-runner.
#   Why the difference: a sidecar is not claim-based. It runs with one fixed, low-value
#   credential (the forge bot token, policy `sidecar`, jobspecs/vault/sidecar.hcl) that is
#   the same for every dispatch, so Nomad deriving a token for the task is exactly right;
#   a copy Nomad starts on its own (lost node) can only comment on an issue twice.
#   vault-runner instead carries per-run, approval-gated secrets that must be used once.
# - The factory checkout (formulas) and the project TOMLs are read-only host volumes;
#   no Docker socket, no privileged mode, no credential on any host volume.
# - No restart and no reschedule: the reconciler decides about new attempts.

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
  default = "ghcr.io/disinto/factory-sidecar:latest"
}

variable "command" {
  type    = string
  default = "disinto-sidecar"
}

variable "vault_role" {
  type    = string
  default = "sidecar"
}

variable "forge_url" {
  type    = string
  default = ""
}

variable "forge_repo" {
  type    = string
  default = ""
}

variable "factory_volume" {
  type    = string
  default = "factory"
}

variable "projects_volume" {
  type    = string
  default = "projects"
}

job "sidecar" {
  namespace   = var.namespace
  datacenters = var.datacenters
  type        = "batch"

  parameterized {
    payload       = "forbidden"
    meta_required = ["issue_number", "formula", "project", "run_id", "attempt"]
    meta_optional = []
  }

  group "sidecar" {
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

    volume "factory" {
      type      = "host"
      source    = var.factory_volume
      read_only = true
    }

    volume "projects" {
      type      = "host"
      source    = var.projects_volume
      read_only = true
    }

    task "sidecar" {
      driver = "docker"

      config {
        image   = var.image
        command = var.command
        args = [
          "--issue", "${NOMAD_META_issue_number}",
          "--formula", "${NOMAD_META_formula}",
          "--project", "${NOMAD_META_project}",
        ]
      }

      volume_mount {
        volume      = "factory"
        destination = "/factory"
        read_only   = true
      }

      volume_mount {
        volume      = "projects"
        destination = "/projects"
        read_only   = true
      }

      # Workload identity: Nomad logs in to Vault's JWT auth role var.vault_role, whose
      # only policy is `sidecar` (reads kv/data/disinto/sidecar/forge).
      vault {
        role        = var.vault_role
        change_mode = "restart"
      }

      template {
        destination = "secrets/forge.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        {{ with secret "kv/data/disinto/sidecar/forge" }}FORGE_TOKEN={{ .Data.data.token }}{{ end }}
        EOT
      }

      env {
        FORGE_URL    = var.forge_url
        FORGE_REPO   = var.forge_repo
        FACTORY_ROOT = "/factory"
        PROJECTS_DIR = "/projects"
      }

      resources {
        cpu    = 500
        memory = 1024
      }

      kill_timeout = "30s"
    }
  }
}

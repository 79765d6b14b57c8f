# reconciler: the reconciler itself, as a long-running Nomad service job.
#
# - One instance (count = 1): two reconcilers would dispatch the same run from two places,
#   which Nomad's idempotency tokens do not make safe (CONTRACTS.md, issue 26690).
# - State (the SQLite run store) lives on the host volume `reconciler-state`, mounted where
#   RECONCILER_DB points, so a restart on the same node resumes where it stopped; durable
#   claims in Nomad Variables let it rebuild safely even without that file.
# - Vault: the vault {} block logs in with the task's workload identity to Vault's JWT auth
#   role var.vault_role, whose token policies are `reconciler-dispatcher` and
#   `reconciler-forge` (jobspecs/vault/); Nomad hands the token over as VAULT_TOKEN.
# - Nomad: the task's workload identity (identity { env = true } -> NOMAD_TOKEN) carries the
#   ACL policy jobspecs/nomad-acl/reconciler.hcl, attached to this job with
#   `nomad acl policy apply -namespace <ns> -job reconciler reconciler reconciler.hcl`.
# - The forge token comes from Vault through a template (kv/data/disinto/reconciler/forge).
# - No Docker socket, no privileged mode: it only talks HTTP to Nomad, Vault and the forge.
# - Environment variables are the ones shared/docs/INTERFACE.md names.

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
  default = "ghcr.io/disinto/reconciler:latest"
}

variable "nomad_addr" {
  type    = string
  default = "http://127.0.0.1:4646"
}

variable "vault_addr" {
  type    = string
  default = "http://127.0.0.1:8200"
}

variable "vault_role" {
  type    = string
  default = "reconciler"
}

variable "forge_url" {
  type    = string
  default = ""
}

variable "forge_ops_repo" {
  type    = string
  default = ""
}

variable "forge_repo" {
  type    = string
  default = ""
}

variable "primary_branch" {
  type    = string
  default = "main"
}

variable "factory_root" {
  type    = string
  default = "/factory"
}

variable "runner_job" {
  type    = string
  default = "vault-runner"
}

variable "sidecar_job" {
  type    = string
  default = "sidecar"
}

variable "state_volume" {
  type    = string
  default = "reconciler-state"
}

variable "factory_volume" {
  type    = string
  default = "factory"
}

job "reconciler" {
  namespace   = var.namespace
  datacenters = var.datacenters
  type        = "service"

  group "reconciler" {
    count = 1

    restart {
      attempts = 3
      interval = "10m"
      delay    = "15s"
      mode     = "delay"
    }

    volume "state" {
      type      = "host"
      source    = var.state_volume
      read_only = false
    }

    volume "factory" {
      type      = "host"
      source    = var.factory_volume
      read_only = true
    }

    task "reconciler" {
      driver = "docker"

      config {
        image   = var.image
        command = "python3"
        args    = ["-m", "reconciler", "run"]
      }

      volume_mount {
        volume      = "state"
        destination = "/var/lib/reconciler"
        read_only   = false
      }

      volume_mount {
        volume      = "factory"
        destination = var.factory_root
        read_only   = true
      }

      identity {
        env = true
      }

      vault {
        role        = var.vault_role
        change_mode = "restart"
      }

      template {
        destination = "secrets/forge.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        {{ with secret "kv/data/disinto/reconciler/forge" }}FORGE_TOKEN={{ .Data.data.token }}{{ end }}
        EOT
      }

      env {
        NOMAD_ADDR             = var.nomad_addr
        NOMAD_NAMESPACE        = var.namespace
        VAULT_ADDR             = var.vault_addr
        FORGE_URL              = var.forge_url
        FORGE_OPS_REPO         = var.forge_ops_repo
        FORGE_REPO             = var.forge_repo
        PRIMARY_BRANCH         = var.primary_branch
        FACTORY_ROOT           = var.factory_root
        OPS_REPO_ROOT          = "/var/lib/reconciler/ops"
        RECONCILER_DB          = "/var/lib/reconciler/reconciler.db"
        RECONCILER_RUNNER_JOB  = var.runner_job
        RECONCILER_SIDECAR_JOB = var.sidecar_job
      }

      resources {
        cpu    = 500
        memory = 512
      }

      # Clients cap kill_timeout at their max_kill_timeout (default 30 s): asking for more is a no-op.
      kill_timeout = "30s"
    }
  }
}

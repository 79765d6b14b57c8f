# The reconciler's Nomad token (or its job's workload identity): nothing outside namespace
# "runners", and there only what dispatching, watching and stopping runs takes.
# Nomad 1.x variant: stopping a job takes submit-job there (which also lets this token
# register jobs); on Nomad >= 2.0 use reconciler.hcl (deregister-job) instead.
namespace "runners" {
  capabilities = ["dispatch-job", "read-job", "list-jobs", "read-logs", "submit-job"]

  variables {
    path "reconciler/*" {
      capabilities = ["read", "write", "list", "destroy"]
    }
  }
}

# The reconciler's Nomad token (or its job's workload identity): nothing outside namespace
# "runners", and there only what dispatching, watching and stopping runs takes.
# Stopping children (timeouts, lost copies, cancels) takes deregister-job (Nomad >= 2.0;
# for 1.x see reconciler-nomad1.hcl). dispatch-job implies no stop.
namespace "runners" {
  capabilities = ["dispatch-job", "read-job", "list-jobs", "read-logs", "deregister-job"]

  variables {
    path "reconciler/*" {
      capabilities = ["read", "write", "list", "destroy"]
    }
  }
}

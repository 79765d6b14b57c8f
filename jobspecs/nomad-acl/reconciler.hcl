# The reconciler's Nomad token (or its job's workload identity): nothing outside namespace
# "runners", and there only what dispatching and watching runs takes.
namespace "runners" {
  capabilities = ["dispatch-job", "read-job", "list-jobs", "read-logs"]

  variables {
    path "reconciler/*" {
      capabilities = ["read", "write", "list", "destroy"]
    }
  }
}

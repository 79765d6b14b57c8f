# The separate token that registers the project's jobspecs (`reconciler jobspecs apply`).
# The reconciler's own token cannot submit jobs; this one cannot dispatch them.
# Writing ACL policies themselves takes a management token (Nomad allows nothing less).
namespace "runners" {
  capabilities = ["submit-job", "parse-job", "read-job", "list-jobs"]

  variables {
    path "reconciler/jobspecs/*" {
      capabilities = ["read", "write", "list"]
    }
  }
}

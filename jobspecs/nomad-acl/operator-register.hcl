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

# Registering a job that mounts a host volume needs a rule for its source: the reconciler
# writes its store on reconciler-state; factory and projects are mounted read-only.
host_volume "reconciler-state" {
  capabilities = ["mount-readwrite"]
}

host_volume "factory" {
  capabilities = ["mount-readonly"]
}

host_volume "projects" {
  capabilities = ["mount-readonly"]
}

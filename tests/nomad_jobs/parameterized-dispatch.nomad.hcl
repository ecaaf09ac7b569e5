# expect: dispatch
# A parameterized job: each dispatch is a child job with its own meta.
job "nj-params" {
  datacenters = ["*"]
  type        = "batch"

  parameterized {
    payload       = "optional"
    meta_required = ["target"]
  }

  group "run" {
    task "deploy" {
      driver = "exec"

      config {
        command = "/bin/sh"
        args    = ["-c", "test \"$NOMAD_META_target\" = staging && echo deployed $NOMAD_META_target"]
      }
    }
  }
}

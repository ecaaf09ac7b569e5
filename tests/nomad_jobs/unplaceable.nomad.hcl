# expect: pending
# No node runs Windows: planned as a failure, left pending with the reason.
job "nj-unplaceable" {
  datacenters = ["*"]
  type        = "batch"

  constraint {
    attribute = "${attr.kernel.name}"
    value     = "windows"
  }

  group "never" {
    task "t" {
      driver = "exec"

      config {
        command = "/bin/true"
      }
    }
  }
}

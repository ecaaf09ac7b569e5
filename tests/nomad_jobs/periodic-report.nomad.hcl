# expect: periodic
# A periodic batch job: registered, then run through its children.
job "nj-periodic" {
  datacenters = ["*"]
  type        = "batch"

  periodic {
    crons            = ["0 3 * * *"]
    time_zone        = "UTC"
    prohibit_overlap = true
  }

  group "report" {
    task "write" {
      driver = "exec"

      config {
        command = "/bin/sh"
        args    = ["-c", "echo report for $NOMAD_JOB_ID"]
      }
    }
  }
}

# expect: complete
# expect-restarts: 2
# A flaky batch step: it fails twice, and the group's restart block starts it
# again on the same node until it succeeds.
job "nj-flaky" {
  datacenters = ["*"]
  type        = "batch"

  group "step" {
    restart {
      attempts = 3
      interval = "1m"
      delay    = "500ms"
      mode     = "fail"
    }

    task "try" {
      driver = "exec"

      config {
        command = "/bin/sh"
        args = ["-c", <<-EOT
          echo try >> "$NOMAD_ALLOC_DIR/tries"
          [ "$(wc -l < "$NOMAD_ALLOC_DIR/tries")" -ge 3 ]
          EOT
        ]
      }
    }
  }
}

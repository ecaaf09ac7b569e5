# expect: complete
# A batch job whose shell script is a heredoc; it checks its own environment.
job "nj-heredoc" {
  datacenters = ["*"]
  type        = "batch"

  group "work" {
    count = 2

    task "script" {
      driver = "exec"

      config {
        command = "/bin/sh"
        args = ["-c", <<-EOT
          set -eu
          test "$NOMAD_JOB_NAME" = "nj-heredoc"
          test "$NOMAD_GROUP_NAME" = "work"
          test -d "$NOMAD_TASK_DIR"
          # Shell variables stay the shell's: $${HOME} reaches sh as ${HOME}.
          test -n "$${HOME}"
          echo "alloc $NOMAD_ALLOC_INDEX of ${NOMAD_JOB_NAME} done"
          EOT
        ]
      }

      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}

# expect: complete
# Two groups, job and group meta, env interpolating Nomad variables, durations.
job "nj-multi" {
  datacenters = ["*"]
  type        = "batch"

  meta {
    team = "core"
  }

  group "first" {
    count = 2

    meta {
      tier = "one"
    }

    task "check-env" {
      driver = "exec"

      env {
        ALLOC  = "${NOMAD_ALLOC_NAME}"
        LIMITS = "${NOMAD_CPU_LIMIT}/${NOMAD_MEMORY_LIMIT}"
      }

      config {
        command = "/bin/sh"
        args = ["-c", <<-EOT
          test "$NOMAD_META_team" = core
          test "$NOMAD_META_tier" = one
          test "$ALLOC" = "nj-multi.first[$NOMAD_ALLOC_INDEX]"
          test "$LIMITS" = 60/48
          EOT
        ]
      }

      resources {
        cpu    = 60
        memory = 48
      }

      kill_timeout = "2s"
    }
  }

  group "second" {
    shutdown_delay = "1s"

    task "sleep-short" {
      driver = "raw_exec"

      config {
        command = "/bin/sleep"
        args    = ["0.2"]
      }
    }
  }
}
